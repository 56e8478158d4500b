package status

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/backlog"
)

// Report is what status read; `--output json` prints it as it is. Counts
// say their unit: a stream message holds one or more changes, of every
// table of its partition; a dead letter or a backfill row is one change of
// the sink's own tables.
type Report struct {
	At       time.Time `json:"at"`
	Postgres Postgres  `json:"postgres"`
	NATS     NATS      `json:"nats"`
	// Capture is nil when NATS could not be reached.
	Capture *Capture `json:"capture,omitempty"`
	// Stream is nil when NATS could not be reached.
	Stream    *Stream    `json:"stream,omitempty"`
	Sinks     []Sink     `json:"sinks"`
	Backfills []Backfill `json:"backfills"`
}

// Capture is which capture process streams (the others stand by), and the
// source the stream's changes come from.
type Capture struct {
	// Leader is the process holding the capture lease; "" when none does.
	Leader string `json:"leader"`
	// SystemID is the Postgres cluster the stream's changes come from;
	// "" before capture first streamed.
	SystemID string `json:"system_id,omitempty"`
	// ResyncPending: `sluice resync` asked for one that capture has not
	// carried out yet.
	ResyncPending bool `json:"resync_pending,omitempty"`
}

// Postgres is the source side: its address (never its credentials) and the
// replication slot, or why it could not be read.
type Postgres struct {
	Host     string `json:"host,omitempty"`
	Database string `json:"database,omitempty"`
	Slot     *Slot  `json:"slot,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Slot is the replication slot.
type Slot struct {
	Name              string `json:"name"`
	Exists            bool   `json:"exists"`
	Active            bool   `json:"active"`
	WalsenderPID      int32  `json:"walsender_pid,omitempty"`
	ConfirmedFlushLSN string `json:"confirmed_flush_lsn,omitempty"`
	RetainedWALBytes  uint64 `json:"retained_wal_bytes"`
}

// NATS is the server read, its URL redacted, and why it could not be read.
type NATS struct {
	URL   string `json:"url"`
	Error string `json:"error,omitempty"`
}

// Stream is the change stream.
type Stream struct {
	Name     string    `json:"name"`
	Exists   bool      `json:"exists"`
	Messages uint64    `json:"messages"`
	Bytes    uint64    `json:"bytes"`
	FirstSeq uint64    `json:"first_seq"`
	LastSeq  uint64    `json:"last_seq"`
	LastTime time.Time `json:"last_time,omitzero"`
}

// Sink is where a sink stands (package backlog), with what the writers
// recorded of its Redis.
type Sink struct {
	backlog.Sink
	// PendingMessages and OldestUnapplied sum up the partitions.
	PendingMessages uint64    `json:"pending_messages"`
	OldestUnapplied time.Time `json:"oldest_unapplied,omitzero"`
	// Assignment maps each live writer to its partitions.
	Assignment     map[string][]int `json:"assignment"`
	RedisResets    int              `json:"redis_resets"`
	LastRedisReset time.Time        `json:"last_redis_reset,omitzero"`
}

// Backfill is one listed backfill job, without its cursor and keys (row
// values, and possibly many).
type Backfill struct {
	ID    string     `json:"id"`
	Sink  string     `json:"sink"`
	Table string     `json:"table"`
	Where string     `json:"where,omitempty"`
	Keys  int        `json:"keys,omitempty"` // a backfill by key: how many
	State jobs.State `json:"state"`
	// Rows are changes of Table.
	RowsRead      int64     `json:"rows_read"`
	RowsEstimated int64     `json:"rows_estimated"`
	RowsPerSecond float64   `json:"rows_per_second,omitempty"`
	ETASeconds    float64   `json:"eta_seconds,omitempty"`
	Error         string    `json:"error,omitempty"`
	Created       time.Time `json:"created"`
	Updated       time.Time `json:"updated"`
}

// writeText prints the report for people, one subject a line, the label
// in the first column.
func writeText(w io.Writer, r Report) {
	pg := r.Postgres
	switch {
	case pg.Error != "":
		where := ""
		if pg.Host != "" {
			where = " at " + pg.Host + "/" + pg.Database
		}
		fmt.Fprintf(w, "postgres  could not be reached%s: %s\n", where, pg.Error)
	case pg.Slot == nil:
	case !pg.Slot.Exists:
		fmt.Fprintf(w, "postgres  slot %s does not exist yet (capture creates it)\n", pg.Slot.Name)
	default:
		s := pg.Slot
		state := "idle: no capture is streaming it"
		if s.Active && s.WalsenderPID != 0 {
			state = fmt.Sprintf("streaming (walsender pid %d)", s.WalsenderPID)
		}
		fmt.Fprintf(w, "postgres  slot %s: %s, confirmed %s, retains %s of WAL\n", s.Name, state, s.ConfirmedFlushLSN, size(s.RetainedWALBytes))
	}
	if c := r.Capture; c != nil {
		leader := "no capture holds the lease: none is streaming"
		if c.Leader != "" {
			leader = "streaming: " + c.Leader + " (the others stand by)"
		}
		if c.ResyncPending {
			leader += "; a resync waits for it"
		}
		fmt.Fprintf(w, "capture   %s\n", leader)
	}
	if st := r.Stream; st != nil {
		if st.Exists {
			fmt.Fprintf(w, "stream    %s: %d messages held (%s; a message holds one or more changes), sequence %d, last at %s\n",
				st.Name, st.Messages, size(st.Bytes), st.LastSeq, when(st.LastTime))
		} else {
			fmt.Fprintf(w, "stream    %s does not exist yet (capture creates it)\n", st.Name)
		}
	}
	for _, s := range r.Sinks {
		writeSink(w, s, r.At)
	}
	for _, b := range r.Backfills {
		line := fmt.Sprintf("backfill  %s %s → %s: %s, %d of ~%d rows", b.ID, b.Table, b.Sink, b.State, b.RowsRead, b.RowsEstimated)
		if b.State == jobs.Running {
			line += fmt.Sprintf(", %.0f rows/s", b.RowsPerSecond)
			if b.ETASeconds > 0 {
				line += ", ETA " + (time.Duration(b.ETASeconds) * time.Second).String()
			}
		}
		if b.Error != "" {
			line += ": " + b.Error
		}
		fmt.Fprintln(w, line)
	}
	if r.NATS.Error != "" {
		fmt.Fprintf(w, "nats      could not be read: %s\n", r.NATS.Error)
	}
}

func writeSink(w io.Writer, s Sink, now time.Time) {
	var busy []string
	for _, p := range s.Partitions {
		switch {
		case !p.Consumer:
			busy = append(busy, fmt.Sprintf("%d: no consumer", p.Partition))
		case p.Pending > 0:
			busy = append(busy, fmt.Sprintf("%d: %d", p.Partition, p.Pending))
		}
	}
	detail := ""
	if len(busy) > 0 {
		detail = " (partition " + strings.Join(busy, ", ") + ")"
	}
	if !s.OldestUnapplied.IsZero() {
		detail += ", oldest unapplied " + age(now.Sub(s.OldestUnapplied)) + " ago"
	}
	fmt.Fprintf(w, "sink      %s: %d messages pending%s, %d dead letters\n", s.Name, s.PendingMessages, detail, s.DeadLetters)
	if len(s.Writers) == 0 {
		fmt.Fprintln(w, "  writers none running")
	}
	for i, m := range s.Writers {
		label := "         "
		if i == 0 {
			label = "  writers"
		}
		consuming, ok := s.Consuming[m]
		now := partitions(consuming)
		if !ok {
			now = "?" // a writer that does not say
		}
		fmt.Fprintf(w, "%s %s  assigned %s  consuming %s\n", label, m, partitions(s.Assignment[m]), now)
	}
	if s.RedisResets > 0 {
		fmt.Fprintf(w, "  redis lost its data %d times, last at %s\n", s.RedisResets, when(s.LastRedisReset))
	}
}

// age rounds a duration to what a person reads at a glance.
func age(d time.Duration) string {
	switch {
	case d < time.Second:
		return "<1s"
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}

// partitions lists partitions, or says there are none.
func partitions(v []int) string {
	if len(v) == 0 {
		return "none"
	}
	return ints(v)
}

func ints(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func size(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}
