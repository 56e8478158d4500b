// Package topology names and creates the JetStream objects that connect
// capture to the sink writers: one stream of change events, partitioned by
// subject, and one durable consumer per sink.
//
// Capture and writers both call Ensure, so either may start first; the
// definitions live here alone so that they cannot disagree.
package topology

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/config"
)

// MaxAckPending bounds the messages of a partition delivered to writers
// and not yet acknowledged.
const MaxAckPending = 8

// PriorityGroup is the priority group of every partition consumer: the
// server delivers a partition to one pinned writer at a time.
const PriorityGroup = "writers"

// Topology is the stream layout of one configuration.
type Topology struct {
	Stream     string
	Partitions int
	Replicas   int
	MaxAge     time.Duration
	MaxBytes   int64
}

// New returns the topology of a configuration.
func New(c config.NATS) Topology {
	return Topology{Stream: c.Stream, Partitions: c.Partitions, Replicas: c.Replicas, MaxAge: c.MaxAge, MaxBytes: c.MaxBytes}
}

// Subject is the subject of a partition: "<stream>.changes.<partition>".
func (t Topology) Subject(partition int) string {
	return t.Stream + ".changes." + strconv.Itoa(partition)
}

// Subjects matches the subjects of every partition.
func (t Topology) Subjects() string { return t.Stream + ".changes.*" }

// FragmentSubject is where the fragments of a partition's events too large
// for one message are stored (package fragment); no consumer reads it.
func (t Topology) FragmentSubject(partition int) string {
	return t.Stream + ".fragments." + strconv.Itoa(partition)
}

// Partition hashes a row's table and primary key into a partition, so that
// every change of one row travels on one subject. The hash (FNV-1a, 32 bit)
// is part of the contract: changing it would reorder keys across a restart.
func (t Topology) Partition(schema, table string, pk []string) int {
	// FNV-1a written out: hash/fnv through its interface allocates, and this
	// runs for every change.
	h := uint32(2166136261)
	add := func(s string) {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint32(s[i])) * 16777619
		}
	}
	add(schema)
	add("\x00")
	add(table)
	for _, v := range pk {
		add("\x00")
		add(v)
	}
	return int(h % uint32(t.Partitions))
}

// StreamConfig is the change stream. It keeps messages by limits, not by
// interest, so that every sink reads it independently, and refuses new
// messages when full rather than dropping ones a lagging sink still needs:
// capture then waits, and Postgres keeps the WAL.
func (t Topology) StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        t.Stream,
		Description: "Sluice change events",
		Subjects:    []string{t.Subjects(), t.Stream + ".fragments.*"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxAge:      t.MaxAge,
		MaxBytes:    t.MaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Duplicates:  2 * time.Minute,
		Metadata:    map[string]string{partitionsKey: strconv.Itoa(t.Partitions)},
	}
}

// partitionsKey records in the stream's metadata how many partitions its
// changes are spread over: a key's changes must stay in one partition.
const partitionsKey = "sluice.partitions"

// checkPartitions refuses a partition count other than the one the stream
// was made with: a key's changes would go to another partition than those
// still waiting, and be applied out of order (or a lower count would leave
// the higher partitions' backlog to no one).
func (t Topology) checkPartitions(info *jetstream.StreamInfo) error {
	was, ok := info.Config.Metadata[partitionsKey]
	if !ok || was == strconv.Itoa(t.Partitions) {
		return nil // streams of earlier releases record nothing
	}
	return fmt.Errorf("stream %s spreads changes over %s partitions, and nats.partitions is %d: "+
		"to change the count, stop capture, wait until every sink's backlog is empty (sluice status), "+
		"delete the stream (nats stream rm %s), then start capture with the new count (it resumes from the slot)",
		t.Stream, was, t.Partitions, t.Stream)
}

// ConsumerName is the durable consumer of one partition of a sink.
func ConsumerName(sink string, partition int) string {
	return "sink-" + sink + "-" + strconv.Itoa(partition)
}

// ConsumerConfig is the durable consumer of one partition of a sink. The
// sink's writers share the partitions (see the writer's group package); the
// pinned priority group makes the server hand a partition to one writer at
// a time, and to another when that one stops pulling for the failover time.
func (t Topology) ConsumerConfig(sink config.Sink, partition int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName(sink.Name, partition),
		Description:   fmt.Sprintf("Sluice sink %s, partition %d", sink.Name, partition),
		FilterSubject: t.Subject(partition),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       sink.AckWait,
		// Dead letters are the writer's decision, after sink.MaxDeliver.
		MaxDeliver: -1,
		// Messages are batches of changes: a few in flight keep a writer
		// busy, and bound what it holds (the client pulls more whenever a
		// pull expires, whether or not it kept up). Room for a dead
		// writer's unacknowledged ones and its successor's, so that a
		// takeover need not wait for AckWait.
		MaxAckPending:  MaxAckPending,
		Replicas:       t.Replicas,
		PriorityGroups: []string{PriorityGroup},
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PinnedTTL:      sink.Failover,
	}
}

// RetryStream holds, for every sink, references to the changes that failed
// on their own (not because Redis was unavailable) and wait for their next
// attempt, so that they do not hold back the partition they came from. A
// work queue: a reference is removed once its change is applied or
// dead-lettered.
func (t Topology) RetryStream() string { return t.Stream + "_RETRY" }

// RetrySubject is where a sink's changes wait for their next attempt.
func (t Topology) RetrySubject(sink string) string { return t.Stream + ".retry." + sink }

// retryPending bounds the retries of a sink in flight at once.
const retryPending = 64

// EnsureRetries creates the retry stream and the sink's consumer of it,
// which every writer of the sink pulls from.
func (t Topology) EnsureRetries(ctx context.Context, js jetstream.JetStream, sink config.Sink) (jetstream.Consumer, error) {
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        t.RetryStream(),
		Description: "Sluice changes waiting for another attempt",
		Subjects:    []string{t.Stream + ".retry.*"},
		Retention:   jetstream.WorkQueuePolicy,
		MaxAge:      t.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("create retry stream %s: %w", t.RetryStream(), err)
	}
	c, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       "retry-" + sink.Name,
		Description:   fmt.Sprintf("Sluice sink %s, changes to retry", sink.Name),
		FilterSubject: t.RetrySubject(sink.Name),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       sink.AckWait,
		MaxDeliver:    -1, // the writer counts attempts
		MaxAckPending: retryPending,
		Replicas:      t.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("create the retry consumer of sink %s: %w", sink.Name, err)
	}
	return c, nil
}

// CaptureLeaseBucket is the key-value bucket whose CaptureLeaderKey names
// the capture process that streams (see capture's leader package).
func (t Topology) CaptureLeaseBucket() string { return t.Stream + "_capture" }

// CaptureLeaderKey is the capture lease's key.
const CaptureLeaderKey = "leader"

// MembersBucket is the key-value bucket where a sink's live writers
// announce themselves: a key per writer, whose value is its Member.
func (t Topology) MembersBucket(sink string) string { return t.Stream + "_writers_" + sink }

// Member is what a writer says of itself in the members bucket, as of its
// last refresh: the partitions it consumes now, which may differ for a
// moment from those the group assigns it (a handover under way), or for
// long (a partition that cannot start).
type Member struct {
	Consuming []int `json:"consuming"`
}

// Ensure creates or updates the stream and the consumers of sinks.
func (t Topology) Ensure(ctx context.Context, js jetstream.JetStream, sinks ...config.Sink) (jetstream.Stream, error) {
	if st, err := js.Stream(ctx, t.Stream); err == nil {
		if err := t.checkPartitions(st.CachedInfo()); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("read stream %s: %w", t.Stream, err)
	}
	st, err := js.CreateOrUpdateStream(ctx, t.StreamConfig())
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", t.Stream, err)
	}
	for _, s := range sinks {
		for p := range t.Partitions {
			if _, err := st.CreateOrUpdateConsumer(ctx, t.ConsumerConfig(s, p)); err != nil {
				return nil, fmt.Errorf("create consumer %s of stream %s: %w", ConsumerName(s.Name, p), t.Stream, err)
			}
		}
	}
	return st, nil
}

// Assign returns the partitions of writer id among the live writers
// members (sorted): partition p belongs to the (p mod n)-th, so no writer
// has more than one partition more than another. Every writer computes it
// from the same list.
func (t Topology) Assign(members []string, id string) []int {
	i := slices.Index(members, id)
	if i < 0 {
		return nil
	}
	var mine []int
	for p := i; p < t.Partitions; p += len(members) {
		mine = append(mine, p)
	}
	return mine
}
