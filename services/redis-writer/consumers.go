package rediswriter

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/topology"
)

// prefetchBytes bounds what the client fetches ahead, per partition: with
// every partition, a writer holds at most 16 times this in waiting batches.
const prefetchBytes = 1 << 20

// consumers runs the partition consumers a writer owns; all of them hand
// their messages to one function, which queues them for the writer's
// batches.
type consumers struct {
	stream   jetstream.Stream
	sink     string
	receive  func(jetstream.Msg)
	expiry   time.Duration
	log      *zap.Logger
	warn     *throttle
	running  map[int]jetstream.ConsumeContext
	handlers map[int]jetstream.Consumer
}

// set makes the running consumers those of partitions: it stops the others,
// unpinning them so their new owner is served at once, and starts the new.
func (c *consumers) set(ctx context.Context, partitions []int) error {
	want := map[int]bool{}
	for _, p := range partitions {
		want[p] = true
	}
	for p := range c.running {
		if !want[p] {
			c.stop(p)
		}
	}
	for _, p := range partitions {
		if _, ok := c.running[p]; ok {
			continue
		}
		name := topology.ConsumerName(c.sink, p)
		cons, err := c.stream.Consumer(ctx, name)
		if err != nil {
			return err
		}
		cc, err := cons.Consume(c.receive,
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
			return err
		}
		c.running[p], c.handlers[p] = cc, cons
	}
	partitionsOwned.WithLabelValues(c.sink).Set(float64(len(c.running)))
	return nil
}

// stop stops pulling partition p. Drain, not Stop: the messages the client
// already fetched still reach the handler and are written, rather than wait
// out the ack wait before their redelivery.
func (c *consumers) stop(p int) {
	c.running[p].Drain()
	delete(c.running, p)
	delete(c.handlers, p)
	pending.DeleteLabelValues(c.sink, strconv.Itoa(p))
	uctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.stream.UnpinConsumer(uctx, topology.ConsumerName(c.sink, p), topology.PriorityGroup)
}

func (c *consumers) stopAll() {
	for p := range c.running {
		c.stop(p)
	}
	partitionsOwned.WithLabelValues(c.sink).Set(0)
}

// updatePending reads each owned partition's backlog into the pending gauge.
func (c *consumers) updatePending(ctx context.Context) {
	for p, cons := range c.handlers {
		if info, err := cons.Info(ctx); err == nil {
			pending.WithLabelValues(c.sink, strconv.Itoa(p)).Set(float64(info.NumPending + uint64(info.NumAckPending)))
		}
	}
}
