package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
)

// electionTimeout is the longest a JetStream group of the servers' defaults
// waits without hearing its leader before it elects another.
const electionTimeout = 9 * time.Second

// Capture and two writers on a 3-node cluster with nats.replicas 3, started
// together with it, before it has elected its leaders: they wait for the
// leaders rather than exit. Then, under a workload: SIGKILL the stream's
// leader node and start it again; SIGSTOP another node past the election
// timeout and wake it; restart every node, one after the other, each
// once the cluster is healthy again (a rolling upgrade). Through it all no
// service exits, and at the end Redis equals Postgres, the stream holds
// every change exactly once, in commit order per partition, and no key
// ever went back to an older value.
func TestNodeFailures(t *testing.T) {
	e := harness.NewClusterEnv(t, 3)
	launched := time.Now()
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	capture := harness.Start(t, "sluice-capture", "--config", cfg)
	procs := []*harness.Proc{capture,
		harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache"),
		harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")}
	alive := func() {
		t.Helper()
		for _, p := range procs {
			if p.Exited() {
				t.Fatalf("%s exited: %s", p.Name, p.Tail(3000))
			}
		}
	}
	e.WaitStreaming(capture)
	t.Logf("capture streams %s after the cluster was launched", time.Since(launched).Round(100*time.Millisecond))
	obs := harness.Observe(t, e.Redis, "sequin:accounts:*")
	stop := harness.Paced(t, e.PG.URL, 300, 41, 2*time.Millisecond)

	nc, js, err := e.Cluster.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := context.Background()
	// Polls ask with a short timeout, so that the times measured are not
	// those of requests to a dead leader.
	poll := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 500*time.Millisecond) }
	// lastSeq is the stream's last sequence, 0 when it cannot be read.
	lastSeq := func() uint64 {
		ctx, cancel := poll()
		defer cancel()
		st, err := js.Stream(ctx, "SLUICE")
		if err != nil {
			return 0
		}
		return st.CachedInfo().State.LastSeq
	}
	// published waits until capture publishes past what the stream holds
	// now, and says how long after began it did.
	published := func(began time.Time) time.Duration {
		t.Helper()
		var from uint64
		harness.Eventually(t, 60*time.Second, func() string {
			if from == 0 {
				from = lastSeq()
				return "reading the stream"
			}
			if seq := lastSeq(); seq <= from {
				return fmt.Sprintf("capture publishes nothing past sequence %d", from)
			}
			return ""
		})
		return time.Since(began).Round(100 * time.Millisecond)
	}
	// leader waits until the stream has a leader other than not, and
	// returns its node.
	leader := func(not int) int {
		t.Helper()
		at := -1
		harness.Eventually(t, 60*time.Second, func() string {
			ctx, cancel := poll()
			defer cancel()
			var err error
			if at, err = e.Cluster.StreamLeader(ctx, js, "SLUICE"); err != nil {
				return err.Error()
			}
			if at < 0 || at == not {
				return fmt.Sprintf("the stream's leader is node %d", at)
			}
			return ""
		})
		return at
	}
	// healthy waits until every node runs caught up and the stream has its
	// leader and current replicas.
	healthy := func() {
		t.Helper()
		harness.Eventually(t, 90*time.Second, func() string {
			if err := e.Cluster.Healthy(ctx); err != nil {
				return err.Error()
			}
			if err := e.Cluster.StreamHealthy(ctx, js, "SLUICE"); err != nil {
				return err.Error()
			}
			return ""
		})
	}
	// underWay waits until the workload's changes reach the stream.
	underWay := func() {
		t.Helper()
		published(time.Now())
		alive()
	}
	healthy()
	underWay()

	// The stream's leader dies.
	killed := leader(-1)
	e.Cluster.Kill(killed)
	began := time.Now()
	next := leader(killed)
	t.Logf("SIGKILL of node %s, the stream's leader: node %s leads after %s; capture published again after %s",
		e.Cluster.Nodes[killed].Name, e.Cluster.Nodes[next].Name, time.Since(began).Round(100*time.Millisecond), published(began))
	if err := e.Cluster.Start(ctx, killed); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	healthy()
	t.Logf("node %s restarted: the cluster is healthy after %s", e.Cluster.Nodes[killed].Name, time.Since(began).Round(100*time.Millisecond))
	underWay()

	// Another node hangs past the election timeout: the stream's leader if
	// that is not the node just restarted.
	current := leader(-1)
	paused := current
	if paused == killed {
		paused = (killed + 1) % len(e.Cluster.Nodes)
	}
	wasLeader := paused == current
	e.Cluster.Pause(paused)
	began = time.Now()
	if wasLeader {
		next = leader(paused)
		t.Logf("SIGSTOP of node %s, the stream's leader: node %s leads after %s",
			e.Cluster.Nodes[paused].Name, e.Cluster.Nodes[next].Name, time.Since(began).Round(100*time.Millisecond))
	}
	// Held stopped past the election timeout, as a hung node is: its
	// groups elect leaders without it, and it must rejoin as a follower.
	time.Sleep(time.Until(began.Add(electionTimeout + time.Second)))
	e.Cluster.Resume(paused)
	t.Logf("SIGSTOP of node %s for %s: capture published again %s after it stopped",
		e.Cluster.Nodes[paused].Name, time.Since(began).Round(100*time.Millisecond), published(began))
	resumed := time.Now()
	healthy()
	t.Logf("node %s woken: the cluster is healthy after %s", e.Cluster.Nodes[paused].Name, time.Since(resumed).Round(100*time.Millisecond))
	underWay()

	// A rolling upgrade: each node in turn stopped (SIGTERM) and started
	// again, the next only once the cluster is healthy.
	for i, n := range e.Cluster.Nodes {
		began := time.Now()
		if err := e.Cluster.Restart(ctx, i); err != nil {
			t.Fatal(err)
		}
		healthy()
		t.Logf("rolling restart of node %s: healthy again after %s", n.Name, time.Since(began).Round(100*time.Millisecond))
		underWay()
	}

	total := stop()
	e.WaitMatch(90*time.Second, harness.Accounts)
	alive()
	harness.CheckStream(t, e.NATSURL(), total)
	time.Sleep(200 * time.Millisecond) // the observer's last notifications
	obs.Stop()                         // waits for its watcher: its counts are final
	t.Logf("%d changes; the observer read %d values of %d keys", total, obs.Sets, len(obs.Floor))
	if len(obs.Regressions) > 0 {
		t.Fatalf("%d regressions, first: %s", len(obs.Regressions), strings.Join(obs.Regressions[:min(5, len(obs.Regressions))], "; "))
	}
	if obs.Sets < 100 {
		t.Fatalf("the observer read only %d values", obs.Sets)
	}
}
