package faults

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/topology"
)

// controlConfig is a sink of partitions partitions with a short failover,
// for the tests of the writers' control plane.
func controlConfig(e *harness.Env, partitions int) string {
	return e.SinkConfig(partitions, "    batch_size: 50\n    ack_wait: 1s\n    failover: 3s\n    max_deliver: 1000\n")
}

// A NATS restart loses the writers' membership bucket (it is kept in
// memory): the writers make it again and share the partitions as before,
// and a writer killed after the restart has its partitions taken over.
// The two writers start at once, so that their first views of the group
// disagree: this is also how a partition's fence came to belong to a
// writer that no longer owned it (see TestFenceTakenBack).
func TestWritersSurviveNATSRestart(t *testing.T) {
	const partitions = 4
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := controlConfig(e, partitions)
	e.RunPipeline(cfg)
	w1, w2 := startWriter(t, cfg), startWriter(t, cfg)
	balanced(t, 15*time.Second, partitions, w1, w2)
	stopLoad := harness.Background(t, e.PG.URL, 50, 7)

	if err := e.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	// Both writers are members of the group made again.
	harness.Eventually(t, 30*time.Second, func() string {
		if n := members(e); n != 2 {
			return fmt.Sprintf("%d members after the restart", n)
		}
		return ""
	})
	balanced(t, 15*time.Second, partitions, w1, w2)

	w2.Signal(syscall.SIGKILL)
	balanced(t, 15*time.Second, partitions, w1)
	// sluice status says what the writer consumes, not only what the
	// group assigns it.
	harness.Eventually(t, 15*time.Second, func() string {
		st := harness.Start(t, "sluice", "status", "--config", cfg, "--output", "json")
		st.WaitExit(30 * time.Second)
		if out := st.Output(); !strings.Contains(out, `"consuming": {`) || !regexp.MustCompile(`"consuming": \{\s*"[^"]+": \[\s*0,\s*1,\s*2,\s*3\s*\]\s*\}`).MatchString(out) {
			return "sluice status does not show the writer consuming every partition:\n" + out
		}
		return ""
	})
	changes := stopLoad()
	t.Logf("%d changes", changes)
	e.WaitMatch(60*time.Second, harness.Accounts)
}

// Two writers' views of the group disagree for a moment (both start at
// once): each takes a partition and sets its fence, and the one that set
// it last may then give the partition up, leaving its owner's writes
// refused by the fence for good, handed back and redelivered in a loop.
// Here the fence of every partition is set by another writer (as the
// later of the two would) while one writer owns them all: it takes them
// back, and Redis ends equal to Postgres.
func TestFenceTakenBack(t *testing.T) {
	const partitions = 4
	e, w, stop := underLoad(t, partitions, 11)
	for p := range partitions {
		if err := e.RC.Set(context.Background(), fmt.Sprintf("sluice:fence:cache:%d", p), "another-writer:x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	<-harness.After(2 * time.Second) // changes written after the fences
	changes := stop()
	e.WaitMatch(60*time.Second, harness.Accounts)
	if out := w.Output(); !strings.Contains(out, "another writer fenced a partition this one owns") {
		t.Errorf("the writer did not say it took its partitions back:\n%s", harness.Tail(out, 2000))
	}
	t.Logf("%d changes", changes)
}

// underLoad runs capture and one writer of a sink of partitions
// partitions (controlConfig: ack_wait 1s) under a workload of seed, once
// its changes reach Redis.
func underLoad(t *testing.T, partitions int, seed uint64) (*harness.Env, *writerProc, func() int) {
	t.Helper()
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := controlConfig(e, partitions)
	e.RunPipeline(cfg)
	w := startWriter(t, cfg)
	balanced(t, 15*time.Second, partitions, w)
	stop := harness.Background(t, e.PG.URL, 50, seed)
	underWay(t, e)
	return e, w, stop
}

// underWay waits until the workload's changes reach Redis.
func underWay(t *testing.T, e *harness.Env) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, func() string {
		if n, _ := e.RC.DBSize(context.Background()).Result(); n < 100 {
			return fmt.Sprintf("%d keys in redis", n)
		}
		return ""
	})
}

// jetStream connects to the env's NATS for the test's own reads.
func jetStream(t *testing.T, e *harness.Env) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(e.NATS.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return js
}

// members counts the keys of the sink's membership bucket; -1 when it
// cannot be read.
func members(e *harness.Env) int {
	nc, err := nats.Connect(e.NATS.URL())
	if err != nil {
		return -1
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, topology.Topology{Stream: config.DefaultStream}.MembersBucket("cache"))
	if err != nil {
		return -1
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		return 0
	}
	return len(keys)
}

// A partition consumer deleted under a running writer (by an operator, or
// lost with the only NATS server that held it) is made again: the writer
// notices, creates it, and the partition is delivered from the stream's
// start, its old changes refused as older than what the keys hold.
func TestLostConsumerMadeAgain(t *testing.T) {
	const partitions = 4
	e, w, stop := underLoad(t, partitions, 13)
	js := jetStream(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range []int{0, 2} {
		if err := js.DeleteConsumer(ctx, config.DefaultStream, topology.ConsumerName("cache", p)); err != nil {
			t.Fatal(err)
		}
	}
	<-harness.After(2 * time.Second) // changes made while they are gone
	changes := stop()
	e.WaitMatch(60*time.Second, harness.Accounts)
	if out := w.Output(); strings.Count(out, "the partition's consumer was gone; created it again") < 2 {
		t.Errorf("the writer did not say it made both consumers again:\n%s", harness.Tail(out, 2000))
	}
	t.Logf("%d changes", changes)
}

// A batch that takes longer than ack_wait (here Redis hangs for four times
// ack_wait, under a workload) is kept alive while the writer applies it or
// holds it for Redis to answer: JetStream redelivers none of its messages.
func TestSlowBatchKeptAlive(t *testing.T) {
	const partitions = 4
	e, _, stop := underLoad(t, partitions, 17)
	if err := e.Redis.Pause(); err != nil {
		t.Fatal(err)
	}
	<-harness.After(4 * time.Second)
	if err := e.Redis.Resume(); err != nil {
		t.Fatal(err)
	}
	changes := stop()
	e.WaitMatch(60*time.Second, harness.Accounts)

	js := jetStream(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, config.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	topo := topology.Topology{Stream: config.DefaultStream}
	for p := range partitions {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(topo.Subject(p)))
		if err != nil {
			t.Fatal(err)
		}
		c, err := st.Consumer(ctx, topology.ConsumerName("cache", p))
		if err != nil {
			t.Fatal(err)
		}
		msgs, deliveries := info.State.Subjects[topo.Subject(p)], c.CachedInfo().Delivered.Consumer
		if deliveries != msgs {
			t.Errorf("partition %d: %d deliveries of %d messages", p, deliveries, msgs)
		}
	}
	t.Logf("%d changes", changes)
}
