package rediswriter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/topology"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

// prefetchBytes bounds what the client fetches ahead, per partition: with
// every partition, a writer holds at most 16 times this in waiting batches.
const prefetchBytes = 1 << 20

// consumers runs the partition consumers a writer owns; all of them hand
// their messages to one function, which queues them for the writer's
// batches. Only the writer's loop uses it.
//
// A partition changes hands in order: the writer that gives it up stops
// pulling, hands back (naks) every message of it that it had not started,
// and only then unpins the consumer, so that the next owner receives those
// messages first, then the ones after them. The next owner fences the
// partition in Redis (store.Acquire) before it consumes: a former owner
// that wakes up late cannot write it any more.
type consumers struct {
	stream    jetstream.Stream
	store     *store.Store
	topo      topology.Topology
	sink      config.Sink
	receive   func(gen uint64) jetstream.MessageHandler
	gen       uint64         // of the last consumer started
	gens      map[int]uint64 // of each running partition's consumer
	expiry    time.Duration
	log       *zap.Logger
	warn      *throttle
	want      []int // the partitions assigned
	running   map[int]jetstream.ConsumeContext
	handlers  map[int]jetstream.Consumer
	releasing map[int]bool          // draining, not yet unpinned
	heard     map[int]time.Time     // when each running partition last delivered, or started
	drained   chan int              // partitions whose consumer stopped
	consuming atomic.Pointer[[]int] // running, sorted, for the group's reports
	onChange  func()                // after consuming changed
}

func newConsumers(stream jetstream.Stream, st *store.Store, topo topology.Topology, sink config.Sink, receive func(gen uint64) jetstream.MessageHandler, expiry time.Duration, log *zap.Logger, warn *throttle) *consumers {
	// One release at a time per partition: its drained notice never waits.
	return &consumers{stream: stream, store: st, topo: topo, sink: sink, receive: receive, expiry: expiry, log: log, warn: warn,
		running: map[int]jetstream.ConsumeContext{}, handlers: map[int]jetstream.Consumer{}, gens: map[int]uint64{},
		releasing: map[int]bool{}, heard: map[int]time.Time{}, drained: make(chan int, topo.Partitions)}
}

// set makes the running consumers those of partitions: it releases the
// others and starts the new ones. A partition that cannot start now (Redis
// or NATS unavailable) is tried again by the next call; resume makes one.
func (c *consumers) set(ctx context.Context, partitions []int) (released []int, err error) {
	c.want = partitions
	want := map[int]bool{}
	for _, p := range partitions {
		want[p] = true
	}
	for p := range c.running {
		if !want[p] {
			c.release(p)
			released = append(released, p)
		}
	}
	var errs []error
	for _, p := range partitions {
		if _, ok := c.running[p]; ok || c.releasing[p] {
			continue
		}
		if err := c.start(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("partition %d: %w", p, err))
		}
	}
	c.changed()
	return released, errors.Join(errs...)
}

// resume starts the assigned partitions that are not running.
func (c *consumers) resume(ctx context.Context) error {
	_, err := c.set(ctx, c.want)
	return err
}

func (c *consumers) start(ctx context.Context, p int) error {
	cons, err := c.stream.Consumer(ctx, topology.ConsumerName(c.sink.Name, p))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		// Deleted, or lost with the only server that held it. Made again,
		// it delivers the partition from the stream's start: the changes
		// already written are refused as older than what their keys hold.
		if cons, err = c.stream.CreateOrUpdateConsumer(ctx, c.topo.ConsumerConfig(c.sink, p)); err == nil {
			c.log.Warn("the partition's consumer was gone; created it again, and it delivers the partition from the start of the stream", zap.Int("partition", p))
		}
	}
	if err != nil {
		return err
	}
	if err := c.store.Acquire(ctx, p); err != nil {
		return err
	}
	c.gen++
	gen := c.gen
	cc, err := cons.Consume(c.receive(gen),
		jetstream.PullPriorityGroup(topology.PriorityGroup),
		jetstream.PullExpiry(c.expiry),
		jetstream.PullMaxBytes(prefetchBytes),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrPinIDMismatch) || errors.Is(err, jetstream.ErrNoHeartbeat) {
				c.log.Debug("partition handover", zap.Int("partition", p), zap.Error(err))
				return
			}
			c.warn.log(c.log, "consume partition "+strconv.Itoa(p), err)
		}))
	if err != nil {
		c.store.Release(p)
		return err
	}
	c.running[p], c.handlers[p], c.gens[p], c.heard[p] = cc, cons, gen, time.Now()
	return nil
}

// release stops pulling partition p. Drain, not Stop: the messages the
// client already fetched still arrive, and are handed back rather than
// waiting out the ack wait. Once drained, the loop calls unpin.
func (c *consumers) release(p int) {
	cc := c.running[p]
	delete(c.running, p)
	delete(c.handlers, p)
	delete(c.gens, p)
	delete(c.heard, p)
	c.store.Release(p)
	pending.DeleteLabelValues(c.sink.Name, strconv.Itoa(p))
	c.releasing[p] = true
	c.changed()
	cc.Drain()
	go func() {
		<-cc.Closed()
		c.drained <- p
	}()
}

// unpin lets the partition's next owner be served, once this writer has
// handed back all of it.
func (c *consumers) unpin(ctx context.Context, p int) {
	delete(c.releasing, p)
	uctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_ = c.stream.UnpinConsumer(uctx, topology.ConsumerName(c.sink.Name, p), topology.PriorityGroup)
}

// owns reports whether messages of partition p that the consumer of
// generation gen delivered are this writer's to write, and notes that p
// delivered.
func (c *consumers) owns(p int, gen uint64) bool {
	g, ok := c.gens[p]
	if ok && g == gen {
		c.heard[p] = time.Now()
	}
	return ok && g == gen
}

// quiet returns the running partitions that have work waiting in the
// stream (pending, as updatePending last read it) but delivered nothing
// for stall: their consumer is stuck.
func (c *consumers) quiet(pending map[int]uint64, stall time.Duration) []int {
	var stuck []int
	for p, n := range pending {
		if heard, ok := c.heard[p]; ok && n > 0 && time.Since(heard) > stall {
			stuck = append(stuck, p)
		}
	}
	return stuck
}

// releaseAll gives up every partition.
func (c *consumers) releaseAll() []int {
	var released []int
	for p := range c.running {
		c.release(p)
		released = append(released, p)
	}
	return released
}

// changed records which partitions run, for the metric and the group.
func (c *consumers) changed() {
	running := slices.Sorted(maps.Keys(c.running))
	if old := c.consuming.Swap(&running); (old == nil || !slices.Equal(*old, running)) && c.onChange != nil {
		c.onChange()
	}
	partitionsOwned.WithLabelValues(c.sink.Name).Set(float64(len(running)))
}

// state is the writer's Member, as JSON; safe from any goroutine.
func (c *consumers) state() []byte {
	m := topology.Member{Consuming: []int{}}
	if p := c.consuming.Load(); p != nil {
		m.Consuming = *p
	}
	b, _ := json.Marshal(m)
	return b
}

// updatePending reads each owned partition's backlog into the pending
// gauge, and returns it, and the partitions whose consumer is gone. The
// partitions are asked all at once: one after the other, a loaded server
// held the writer's loop for tens of milliseconds every tick.
func (c *consumers) updatePending(ctx context.Context) (backlog map[int]uint64, gone []int) {
	backlog = map[int]uint64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for p, cons := range c.handlers {
		wg.Go(func() {
			info, err := cons.Info(ctx)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				backlog[p] = info.NumPending + uint64(info.NumAckPending)
				pending.WithLabelValues(c.sink.Name, strconv.Itoa(p)).Set(float64(backlog[p]))
			case errors.Is(err, jetstream.ErrConsumerNotFound):
				gone = append(gone, p)
			}
		})
	}
	wg.Wait()
	return backlog, gone
}

// partition is the partition of a message of the change stream, from its
// subject "<stream>.changes.<partition>"; -1 for any other message.
func partition(m jetstream.Msg) int {
	subject := m.Subject()
	i := strings.LastIndexByte(subject, '.')
	if i < 0 || !strings.HasSuffix(subject[:i], ".changes") {
		return -1
	}
	p, err := strconv.Atoi(subject[i+1:])
	if err != nil {
		return -1
	}
	return p
}
