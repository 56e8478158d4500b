// Package group shares a sink's partitions among its live writers.
//
// Each writer announces itself with a key in the sink's key-value bucket
// and refreshes it every third of the failover time; the bucket expires a
// key that is not refreshed for the failover time. Every writer watches the
// bucket and computes the same assignment (topology.Assign) from the sorted
// list of live writers.
//
// Views can briefly disagree while a change spreads. That is harmless: the
// partition consumers are pinned (one writer receives a partition at a
// time) and the writes are versioned (a late write cannot regress a key).
package group

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.uber.org/zap"
)

// Group is one writer's membership.
type Group struct {
	js  jetstream.JetStream
	cfg jetstream.KeyValueConfig
	kv  jetstream.KeyValue
	id  string
	ttl time.Duration
	log *zap.Logger
	// The lease: until when the member's key lives (its last refresh was
	// sent then less ttl), and how many times it ran out.
	until  atomic.Int64
	lapses atomic.Uint64
	stuck  bool // alive said no at the last heartbeat; Run's alone
	// state is the value of the member's key, read at each refresh.
	state func() []byte
	touch chan struct{} // a refresh wanted now: state changed
}

// NewID returns a member id that tells an operator where the writer runs.
func NewID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, host)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), strings.ToLower(nuid.Next()[18:]))
}

// Join announces member id in bucket, creating the bucket when missing.
func Join(ctx context.Context, js jetstream.JetStream, bucket, id string, ttl time.Duration, replicas int, log *zap.Logger) (*Group, error) {
	g := &Group{js: js, id: id, ttl: ttl, log: log, touch: make(chan struct{}, 1), cfg: jetstream.KeyValueConfig{
		Bucket:         bucket,
		Description:    "Sluice writers of one sink",
		TTL:            ttl,
		LimitMarkerTTL: ttl, // watchers learn of expired members
		History:        1,
		Storage:        jetstream.MemoryStorage,
		Replicas:       replicas,
	}}
	if err := g.open(ctx); err != nil {
		return nil, err
	}
	if _, err := g.refresh(ctx); err != nil {
		return nil, fmt.Errorf("join writer group %s: %w", bucket, err)
	}
	return g, nil
}

// open creates the bucket when missing: also after a NATS restart, which
// loses it (membership is kept in memory: it only says who is alive now).
func (g *Group) open(ctx context.Context) error {
	kv, err := g.js.CreateOrUpdateKeyValue(ctx, g.cfg)
	if err != nil {
		return fmt.Errorf("open writer group %s: %w", g.cfg.Bucket, err)
	}
	g.kv = kv
	return nil
}

// refresh puts the member's key, which lives ttl from the server's receipt
// of it: no other member takes this one's partitions before then. The lease
// ends a tenth of ttl earlier, a margin for the writer to stop in time.
func (g *Group) refresh(ctx context.Context) (revision uint64, err error) {
	sent := time.Now()
	var value []byte
	if g.state != nil {
		value = g.state()
	}
	if revision, err = g.kv.Put(ctx, g.id, value); err != nil {
		return 0, err
	}
	if until := g.until.Load(); until != 0 && sent.UnixNano() > until {
		// The lease ran out before this refresh: the writer gave up its
		// partitions (or the key expired and others took them over), and
		// takes them again only when the group is reported anew.
		g.lapses.Add(1)
	}
	g.until.Store(sent.Add(g.ttl - g.ttl/10).UnixNano())
	return revision, nil
}

// Lease returns until when this member surely owns its partitions, and how
// many times the lease ran out before: a writer that sees the count change,
// or the time pass, may have been replaced, and gives up what it holds.
// Both use one definition of running out, so that a writer that gave up
// its partitions always hears the group again.
func (g *Group) Lease() (until time.Time, lapses uint64) {
	return time.Unix(0, g.until.Load()), g.lapses.Load()
}

// Report makes state the value of the member's key from its next refresh
// on. Call it before Run; state must be safe to call from Run's goroutine.
func (g *Group) Report(state func() []byte) { g.state = state }

// Touch asks Run for a refresh soon, so that the others read the new
// state without waiting for the next heartbeat. It never blocks.
func (g *Group) Touch() {
	select {
	case g.touch <- struct{}{}:
	default:
	}
}

// ID is this member's id.
func (g *Group) ID() string { return g.id }

// Run keeps the membership alive and calls changed with the sorted live
// members each time they change, and after the member's lease ran out,
// until ctx is done. Then it removes the
// member, so the others take its partitions at once, and returns nil.
//
// It refreshes the membership only while alive reports true: a member
// whose work is stuck (not merely slow) lets its key expire, and the
// others take its partitions; it joins again once alive.
func (g *Group) Run(ctx context.Context, alive func() bool, changed func(members []string)) error {
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = g.kv.Delete(dctx, g.id)
	}()
	for ctx.Err() == nil {
		err := g.watch(ctx, alive, changed)
		if ctx.Err() != nil {
			break
		}
		// The watch ended (a NATS outage, say): start over after a pause,
		// with the bucket created again if NATS lost it.
		g.log.Warn("writer group membership interrupted; rejoining", zap.Error(err))
		select {
		case <-ctx.Done():
		case <-time.After(g.ttl / 3):
		}
		if err := g.open(ctx); err == nil {
			_, _ = g.refresh(ctx)
		}
	}
	return nil
}

func (g *Group) watch(ctx context.Context, alive func() bool, changed func(members []string)) error {
	w, err := g.kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	live := map[string]bool{}
	var last []string
	report := func() {
		members := make([]string, 0, len(live))
		for id := range live {
			members = append(members, id)
		}
		slices.Sort(members)
		if !slices.Equal(members, last) {
			last = members
			changed(members)
		}
	}
	heartbeat := time.NewTicker(g.ttl / 3)
	defer heartbeat.Stop()
	initial := true
	var echo uint64 // the revision of our last refresh, until the watch shows it
	refresh := func() (uint64, error) {
		lapses := g.lapses.Load()
		rev, err := g.refresh(ctx)
		if err == nil && g.lapses.Load() != lapses && !initial {
			// The member gave up its partitions when its lease ran out:
			// it hears the group again, changed or not.
			changed(last)
		}
		return rev, err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat.C:
			if echo != 0 {
				// A watch that did not show our own refresh is dead: the
				// bucket was lost and made again (a NATS restart), say.
				return fmt.Errorf("watch of %s stalled", g.kv.Bucket())
			}
			if !alive() {
				if !g.stuck {
					g.log.Warn("the writer makes no progress; it stops refreshing its membership, so that the other writers take its partitions")
					g.stuck = true
				}
				continue
			}
			if g.stuck {
				g.log.Info("the writer makes progress again; rejoining its group")
				g.stuck = false
			}
			// Put also brings the member back after a pause made it expire.
			rev, err := refresh()
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("refresh membership: %w", err)
			}
			echo = rev
		case <-g.touch:
			// Not a heartbeat: the watch's echo of it is not awaited, and
			// a stuck member stays silent.
			if !g.stuck {
				_, _ = refresh()
			}
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("watch of %s ended", g.kv.Bucket())
			}
			if e == nil { // the initial values are all in
				initial = false
				report()
				continue
			}
			if e.Revision() >= echo {
				echo = 0
			}
			if e.Operation() == jetstream.KeyValuePut {
				live[e.Key()] = true
			} else {
				delete(live, e.Key())
			}
			if !initial {
				report()
			}
		}
	}
}
