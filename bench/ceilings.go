package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/csv"
	"errors"
	"fmt"
	"log"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

// ceiling is the throughput of one stage alone, on the same data.
type ceiling struct {
	Stage        string  `json:"stage"`
	Operations   int     `json:"operations"`
	Seconds      float64 `json:"seconds"`
	OpsPerSecond float64 `json:"ops_per_second"`
	Method       string  `json:"method"`
	PayloadBytes int     `json:"payload_bytes,omitempty"`
	// Error is why the stage could not be measured.
	Error string `json:"error,omitempty"`
}

// measureCeiling runs one ceiling; a failure is recorded, not fatal, so
// that one missing tool or stall costs only its own figure.
func measureCeiling(c ceiling, err error) ceiling {
	if err != nil {
		log.Printf("ceiling: %s: %v", c.Stage, err)
		c.Error = err.Error()
		c.OpsPerSecond, c.Seconds = 0, 0
	}
	return c
}

// recvlogicalCeiling times pg_recvlogical decoding the backlog's WAL with
// pgoutput, from the slot made before the backlog to its end.
func recvlogicalCeiling(ctx context.Context, e *env, bl backlog) (ceiling, error) {
	c := ceiling{Stage: "postgres decoding (pg_recvlogical)", Operations: bl.Changes,
		Method: "pg_recvlogical --start -o proto_version=1 -o publication_names=sluice --endpos <end of backlog> -f /dev/null"}
	dir, err := testenv.PostgresBinDir()
	if err != nil {
		return c, err
	}
	log.Printf("ceiling: pg_recvlogical decoding the backlog")
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "pg_recvlogical"), "-d", e.pg.URL, "--slot", ceilingSlot, "--start",
		"-P", "pgoutput", "-o", "proto_version=1", "-o", "publication_names="+publication,
		"--endpos", bl.endLSN, "--no-loop", "-f", "/dev/null")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	if err != nil {
		return c, fmt.Errorf("pg_recvlogical: %w: %s", err, out)
	}
	if _, err := e.conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", ceilingSlot); err != nil {
		return c, fmt.Errorf("drop slot %s: %w", ceilingSlot, err)
	}
	return c.timed(elapsed), nil
}

func (c ceiling) timed(d time.Duration) ceiling {
	c.Seconds = round(d.Seconds(), 2)
	c.OpsPerSecond = round(float64(c.Operations)/d.Seconds(), 0)
	log.Printf("ceiling: %s: %d in %.2fs, %.0f/s", c.Stage, c.Operations, c.Seconds, c.OpsPerSecond)
	return c
}

// jetstreamCeiling publishes n events of the captured events' average size
// asynchronously to a stream configured like the change stream, with a
// message id each as capture sends, and at most as many unacknowledged as
// capture keeps.
func jetstreamCeiling(ctx context.Context, e *env, n int) (ceiling, error) {
	c := ceiling{Stage: "JetStream async publish", Operations: n}
	size, err := averageEventSize(ctx, e)
	if err != nil {
		return c, err
	}
	c.PayloadBytes = size
	c.Method = fmt.Sprintf("in-process PublishMsgAsync, %d-byte payloads with Nats-Msg-Id, %d subjects, file storage, 4096 pending", size, e.partitions)
	nc, err := nats.Connect(e.nats.URL())
	if err != nil {
		return c, err
	}
	defer nc.Close()
	var mu sync.Mutex
	var failed error
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			mu.Lock()
			defer mu.Unlock()
			failed = cmp.Or(failed, err)
		}))
	if err != nil {
		return c, err
	}
	top := topology.Topology{Stream: "CEILING", Partitions: e.partitions, Replicas: 1, MaxBytes: -1}
	if _, err := js.CreateStream(ctx, top.StreamConfig()); err != nil {
		return c, fmt.Errorf("create stream CEILING: %w", err)
	}
	defer js.DeleteStream(context.WithoutCancel(ctx), top.Stream)
	subjects := make([]string, e.partitions)
	for p := range subjects {
		subjects[p] = top.Subject(p)
	}
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	log.Printf("ceiling: JetStream async publish of %d events of %d bytes", n, size)
	start := time.Now()
	for i := range n {
		m := &nats.Msg{Subject: subjects[i%len(subjects)], Data: payload,
			Header: nats.Header{jetstream.MsgIDHeader: []string{strconv.Itoa(1e9+i) + ":0"}}}
		// A stall is the server being slow, which is what is measured.
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			return c, fmt.Errorf("publish: %w", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return c, ctx.Err()
	}
	elapsed := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	if failed != nil {
		return c, fmt.Errorf("publish: %w", failed)
	}
	return c.timed(elapsed), nil
}

// averageEventSize samples the change stream's events: a message holds a
// batch of them.
func averageEventSize(ctx context.Context, e *env) (int, error) {
	st, err := e.js.Stream(ctx, streamName)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	first, last := info.State.FirstSeq, info.State.LastSeq
	const samples = 500
	total, got := 0, 0
	for i := range samples {
		seq := first + (last-first)*uint64(i)/samples
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // a gap
		}
		total += len(m.Data)
		got += max(change.CountEvents(m.Data), 1)
	}
	if got == 0 {
		return 0, errors.New("the change stream holds no events to size")
	}
	return total / got, nil
}

// redisCeiling runs redis-benchmark's pipelined SETs of values of the
// stored values' average size, in another database of the same server.
func redisCeiling(ctx context.Context, e *env, n int) (ceiling, error) {
	c := ceiling{Stage: "Redis pipelined SET (redis-benchmark)", Operations: n}
	size, err := averageValueSize(ctx, e)
	if err != nil {
		return c, err
	}
	c.PayloadBytes = size
	args := []string{"-t", "set", "-n", strconv.Itoa(n), "-P", "500", "-d", strconv.Itoa(size), "-r", strconv.Itoa(n), "--dbnum", "1", "--csv"}
	c.Method = "redis-benchmark " + strings.Join(args, " ")
	bin, err := exec.LookPath("redis-benchmark")
	if err != nil {
		return c, errors.New("redis-benchmark not found in PATH; install it (Debian: apt-get install redis-tools)")
	}
	log.Printf("ceiling: %s", c.Method)
	start := time.Now()
	out, err := exec.CommandContext(ctx, bin, append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(e.redis.Port)}, args...)...).Output()
	elapsed := time.Since(start)
	if err != nil {
		return c, fmt.Errorf("redis-benchmark: %w: %s", err, out)
	}
	c = c.timed(elapsed)
	// The tool's own figure leaves out its start and connection set-up.
	rows, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		return c, fmt.Errorf("redis-benchmark output: %w: %s", err, out)
	}
	for _, r := range rows {
		if len(r) > 1 && r[0] == "SET" {
			if rps, err := strconv.ParseFloat(r[1], 64); err == nil {
				c.OpsPerSecond = round(rps, 0)
				c.Seconds = round(float64(n)/rps, 2)
			}
		}
	}
	return c, nil
}

// averageValueSize samples the sink's values.
func averageValueSize(ctx context.Context, e *env) (int, error) {
	keys, _, err := e.rc.Scan(ctx, 0, benchTable.KeyPrefix+":"+benchTable.Name+":*", 1000).Result()
	if err != nil {
		return 0, err
	}
	total, got := 0, 0
	for _, k := range keys {
		if n, err := e.rc.StrLen(ctx, k).Result(); err == nil && n > 0 {
			total += int(n)
			got++
		}
	}
	if got == 0 {
		return 0, errors.New("redis holds no values to size")
	}
	return total / got, nil
}
