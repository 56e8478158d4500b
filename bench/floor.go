package main

import (
	"context"
	"fmt"
	"log"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// floorResult is Postgres alone at a steady rate: how long after its
// commit each inserted or updated row reaches a bare replication client,
// streaming pgoutput as capture does and doing nothing but note the time.
// No pipeline delivers a change sooner: it is the floor under the
// steady-state latencies, with the same load on the same machine, as
// pg_recvlogical's rate is the ceiling over the catch-up's.
type floorResult struct {
	Rate     int     `json:"rate"`
	Achieved float64 `json:"achieved_per_second"`
	// Its samples are the inserts and updates: the changes that leave a
	// value in Redis, as the observer times them there.
	spread
	CPU []cpuUse `json:"cpu"`
	// Error is why it could not be measured.
	Error string `json:"error,omitempty"`
}

// floorRuns numbers the floor runs' slots.
var floorRuns atomic.Int64

// postgresFloor commits rate changes a second for d, as steadyState does,
// with the services stopped, while a bare client on a temporary slot of
// its own receives them.
func postgresFloor(ctx context.Context, e *env, g *generator, rate int, d time.Duration) (floorResult, error) {
	r := floorResult{Rate: rate}
	log.Printf("floor: %d changes/s for %s, received by a bare replication client", rate, d)
	cfg, err := pgconn.ParseConfig(e.pg.URL)
	if err != nil {
		return r, err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return r, fmt.Errorf("connect for replication: %w", err)
	}
	// Closing the connection drops the temporary slot.
	defer conn.Close(context.WithoutCancel(ctx))
	// A name of its own per run: the last run's temporary slot may not be
	// gone yet.
	floorSlot := "bench_floor_" + strconv.FormatInt(floorRuns.Add(1), 10)
	slot, err := pglogrepl.CreateReplicationSlot(ctx, conn, floorSlot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{Temporary: true})
	if err != nil {
		return r, fmt.Errorf("create slot %s: %w", floorSlot, err)
	}
	from, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		return r, fmt.Errorf("slot %s: %w", floorSlot, err)
	}
	if err := pglogrepl.StartReplication(ctx, conn, floorSlot, from, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'", "messages 'true'"},
	}); err != nil {
		return r, fmt.Errorf("start replication on %s: %w", floorSlot, err)
	}

	rc := &floorClient{conn: conn}
	rctx, stop := context.WithCancel(ctx)
	// Closed once the client stops using the connection.
	received := make(chan error, 1)
	go func() {
		received <- rc.receive(rctx)
		close(received)
	}()
	before := e.sampleCPU(ctx, nil)
	var committed atomic.Int64
	start := time.Now()
	_, err = hold(ctx, g, rate, d, start, &committed)
	loadEnd := time.Now()
	if err == nil {
		err = rc.await(ctx, committed.Load(), received)
	}
	r.CPU = cpuBetween(before, e.sampleCPU(ctx, nil))
	stop()
	for range received { // the connection and lat are the client's until it returns
	}
	if err != nil {
		return r, fmt.Errorf("at %d/s: %w", rate, err)
	}
	r.Achieved = round(float64(committed.Load())/loadEnd.Sub(start).Seconds(), 0)
	r.spread = summarise(rc.lat)
	log.Printf("floor: %d/s achieved %.0f/s; p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.1f ms over %d values",
		rate, r.Achieved, r.P50Ms, r.P99Ms, r.P999Ms, r.MaxMs, r.Samples)
	return r, nil
}

// floorClient receives a slot's pgoutput stream and times its changes.
// Its slot is made just before, so every change it receives is the load's.
type floorClient struct {
	conn    *pgconn.PgConn
	changes atomic.Int64 // inserts, updates and deletes received
	lat     []float64    // milliseconds; receive's until it returns
}

// receive reads the stream until ctx ends, stamping each insert and
// update with the time since its transaction's commit.
func (c *floorClient) receive(ctx context.Context) error {
	var commit time.Time
	var pos pglogrepl.LSN
	nextStatus := time.Now().Add(time.Second)
	for {
		if time.Now().After(nextStatus) {
			if err := c.confirm(ctx, pos); err != nil {
				return err
			}
			nextStatus = time.Now().Add(time.Second)
		}
		msg, err := c.conn.ReceiveMessage(ctx)
		if err != nil {
			return err
		}
		at := time.Now()
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				return pgconn.ErrorResponseToPgError(e)
			}
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			k, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return err
			}
			if k.ReplyRequested {
				nextStatus = time.Time{}
			}
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return fmt.Errorf("replication message: %w", err)
			}
			if len(x.WALData) == 0 {
				continue
			}
			pos = max(pos, x.WALStart)
			switch x.WALData[0] {
			case 'B':
				m, err := pglogrepl.Parse(x.WALData)
				if err != nil {
					return err
				}
				commit = m.(*pglogrepl.BeginMessage).CommitTime
			case 'I', 'U':
				c.changes.Add(1)
				c.lat = append(c.lat, float64(at.Sub(commit).Microseconds())/1000)
			case 'D':
				c.changes.Add(1)
			}
		}
	}
}

// confirm tells the server how far the client has received.
func (c *floorClient) confirm(ctx context.Context, pos pglogrepl.LSN) error {
	return pglogrepl.SendStandbyStatusUpdate(ctx, c.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos})
}

// await waits until the client has received n changes.
func (c *floorClient) await(ctx context.Context, n int64, received <-chan error) error {
	deadline := time.Now().Add(time.Minute)
	for c.changes.Load() < n {
		select {
		case err := <-received:
			return fmt.Errorf("receive: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the client received %d of %d changes in a minute", c.changes.Load(), n)
		}
	}
	return nil
}
