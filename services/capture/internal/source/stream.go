package source

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
)

// Stream is a replication connection reading the slot with pgoutput.
type Stream struct {
	conn *pgconn.PgConn
	// silent is how long Receive has waited, in all, since the server last
	// sent anything; a status update asks for a reply while it is not zero.
	silent time.Duration
	// watched is the context whose deadline the socket has, and unwatch
	// stops its cancellation from cutting the wait short; mu orders a late
	// cancellation of a context watched before against the next one's
	// deadline, which gen tells apart.
	watched context.Context
	unwatch func() bool
	mu      sync.Mutex
	gen     uint64
	co      *coalescer // nil where the socket cannot coalesce
}

// XLogData carries one pgoutput message. Data is valid until the next Receive.
type XLogData struct {
	WALStart pgoutput.LSN
	Data     []byte
}

// Keepalive is the server's heartbeat. WALEnd is how far the server has
// sent; every transaction that committed before it has been received.
type Keepalive struct {
	WALEnd         pgoutput.LSN
	ReplyRequested bool
}

// StartStream opens a replication connection with the session settings
// Connect was given, which fix the text formats of values, and starts streaming the slot from its
// confirmed position: only committed transactions, in commit order.
func (s *Source) StartStream(ctx context.Context) (*Stream, error) {
	conn, err := s.replication(ctx)
	if err != nil {
		return nil, err
	}
	err = pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", s.cfg.Publication), "messages 'true'"},
	})
	if err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("start replication from slot %s: %w", s.cfg.Slot, err)
	}
	return &Stream{conn: conn, co: newCoalescer(conn.Conn())}, nil
}

// replication opens a replication connection.
func (s *Source) replication(ctx context.Context) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(s.cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("postgres.url: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "sluice-capture"
	for k, v := range s.params {
		cfg.RuntimeParams[k] = v
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = s.cfg.Timeout
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	return conn, nil
}

// Identity tells one Postgres source from another, and the state of the
// slot.
type Identity struct {
	// SystemID is the cluster's system identifier.
	SystemID string
	// WALPos is how far the server's WAL goes.
	WALPos pgoutput.LSN
	// SlotExists and SlotLost: the slot is there, and it was invalidated
	// (max_slot_wal_keep_size removed WAL it still needed).
	SlotExists, SlotLost bool
}

// Identify reads the server's identity (IDENTIFY_SYSTEM, which a
// replication role may run) and the slot's state.
func (s *Source) Identify(ctx context.Context) (Identity, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var id Identity
	conn, err := s.replication(ctx)
	if err != nil {
		return id, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return id, fmt.Errorf("identify the postgres server: %w", err)
	}
	id.SystemID, id.WALPos = sys.SystemID, pgoutput.LSN(sys.XLogPos)
	err = s.conn.QueryRow(ctx, `SELECT coalesce(wal_status = 'lost', false) FROM pg_replication_slots WHERE slot_name = $1`,
		s.cfg.Slot).Scan(&id.SlotLost)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return id, nil
	case err != nil:
		return id, fmt.Errorf("inspect replication slot %s: %w", s.cfg.Slot, err)
	}
	id.SlotExists = true
	return id, nil
}

// DropSlot drops the slot, when it exists and no process uses it.
func (s *Source) DropSlot(ctx context.Context) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	_, err := s.conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot)
	if err != nil {
		return fmt.Errorf("drop replication slot %s: %w", s.cfg.Slot, err)
	}
	return nil
}

// Receive returns the next *XLogData or *Keepalive. When ctx's deadline
// passes first, or ctx is cancelled, it returns an error for which
// IsTimeout is true, and the stream stays usable.
func (st *Stream) Receive(ctx context.Context) (any, error) {
	began := time.Now()
	st.watch(ctx)
	msg, err := st.conn.ReceiveMessage(context.Background())
	if err != nil {
		if pgconn.Timeout(err) {
			st.silent += time.Since(began)
		}
		return nil, err
	}
	st.silent = 0
	if st.co != nil {
		st.co.received.Add(1)
	}
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		if len(m.Data) == 0 {
			return nil, errors.New("replication: empty message")
		}
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			k, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
			if err != nil {
				return nil, fmt.Errorf("replication: %w", err)
			}
			return &Keepalive{WALEnd: pgoutput.LSN(k.ServerWALEnd), ReplyRequested: k.ReplyRequested}, nil
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return nil, fmt.Errorf("replication: %w", err)
			}
			return &XLogData{WALStart: pgoutput.LSN(x.WALStart), Data: x.WALData}, nil
		}
		return nil, fmt.Errorf("replication: unknown message %q", m.Data[0])
	case *pgproto3.ErrorResponse:
		return nil, pgconn.ErrorResponseToPgError(m)
	case *pgproto3.CopyDone:
		return nil, errors.New("replication: server ended the stream")
	}
	return nil, fmt.Errorf("replication: unexpected %T", msg)
}

// watch bounds the socket's reads by ctx: its deadline, or the moment it
// is cancelled. pgconn would watch a context of its own for each message,
// which cost a tenth of capture's CPU while catching up; this is done once
// per context. A timed-out read leaves the connection usable, as pgconn's
// own deadlines do.
func (st *Stream) watch(ctx context.Context) {
	if ctx == st.watched {
		return
	}
	st.unwatched()
	st.watched = ctx
	deadline, _ := ctx.Deadline() // none: the zero time, no deadline
	conn := st.conn.Conn()
	st.mu.Lock()
	st.gen++
	gen := st.gen
	conn.SetReadDeadline(deadline)
	st.mu.Unlock()
	st.unwatch = context.AfterFunc(ctx, func() {
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.gen == gen {
			conn.SetReadDeadline(time.Now())
		}
	})
}

// unwatched stops watching the last context.
func (st *Stream) unwatched() {
	if st.unwatch != nil {
		st.unwatch()
		st.unwatch, st.watched = nil, nil
	}
}

// Idle reports whether nothing more has arrived from the server: nothing
// waits to be read, neither in the connection's buffer nor in its socket.
// False when it cannot tell (a TLS connection).
func (st *Stream) Idle() bool {
	if st.conn.Frontend().ReadBufferLen() > 0 {
		return false
	}
	n, ok := queued(st.conn.Conn())
	return ok && n == 0
}

// IsTimeout reports whether a Receive error is only its context's deadline.
func IsTimeout(err error) bool { return pgconn.Timeout(err) }

// SendStatus tells the server that everything up to lsn is safely
// delivered, which lets the slot release the WAL before it. While the
// server has been silent it asks for a reply, so that a live server is
// never silent for long (see Silent). ctx bounds the write.
func (st *Stream) SendStatus(ctx context.Context, lsn pgoutput.LSN) error {
	pos := pglogrepl.LSN(lsn)
	return pglogrepl.SendStandbyStatusUpdate(ctx, st.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ClientTime: time.Now(),
		ReplyRequested: st.silent > 0,
	})
}

// CheckAlive fails when Receive has waited longer than timeout, in all,
// without the server sending anything: not even the replies to status
// updates came, so the server hangs or the connection was dropped without
// a word. Time spent elsewhere (waiting for room to publish) does not
// count.
func (st *Stream) CheckAlive(timeout time.Duration) error {
	if timeout > 0 && st.silent > timeout {
		return &silentError{st.silent}
	}
	return nil
}

type silentError struct{ silent time.Duration }

func (e *silentError) Error() string {
	return fmt.Sprintf("postgres sent nothing on the replication connection for %s, not even replies to status updates (postgres.timeout): taking the connection for lost", e.silent.Round(time.Second))
}

// Behind tells the stream whether capture is far behind the server (the
// transaction it reads committed long ago): while it is, reads wait for
// many changes rather than take one or two (see coalescer).
func (st *Stream) Behind(behind bool) {
	if st.co != nil {
		st.co.behind(behind)
	}
}

// Close closes the connection.
func (st *Stream) Close(ctx context.Context) error {
	st.Behind(false)
	st.unwatched()
	return st.conn.Close(ctx)
}
