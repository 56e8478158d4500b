package faults

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// writerProc is a writer with its metrics endpoint.
type writerProc struct {
	*harness.Proc
	addr string
}

func startWriter(t *testing.T, cfg string) *writerProc {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return &writerProc{Proc: harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache", "--http", addr), addr: addr}
}

var metricsClient = &http.Client{Timeout: time.Second}

// partitions scrapes how many partitions the writer owns; -1 when it does
// not answer.
func (w *writerProc) partitions() int {
	resp, err := metricsClient.Get("http://" + w.addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "sluice_writer_partitions{") {
			n, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			return int(n)
		}
	}
	return 0
}

// balanced waits until the live writers own all partitions, none more than
// one partition more than another.
func balanced(t *testing.T, timeout time.Duration, partitions int, live ...*writerProc) {
	t.Helper()
	harness.Eventually(t, timeout, func() string {
		sum, lo, hi := 0, partitions, 0
		var counts []int
		for _, w := range live {
			n := w.partitions()
			counts = append(counts, n)
			sum, lo, hi = sum+n, min(lo, n), max(hi, n)
		}
		if sum != partitions || hi-lo > 1 {
			return fmt.Sprintf("writers own %v partitions of %d", counts, partitions)
		}
		return ""
	})
}

// Writers join, die, pause and come back, and Redis refuses writes for a
// while, during a workload of many updates to few rows: partitions are
// rebalanced each time, a dead or paused writer is replaced within the
// failover time, no key ever goes back to an older value, and Redis ends
// equal to Postgres.
func TestScaleOut(t *testing.T) {
	const partitions, failover = 8, 3 * time.Second
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: %d}
sinks:
  - name: cache
    batch_size: 50
    ack_wait: 1s
    failover: %s
    max_deliver: 1000
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.PG.URL, e.NATS.URL(), partitions, failover, e.Redis.Port))
	e.RunPipeline(cfg)
	obs := harness.Observe(t, e.Redis, "sequin:accounts:*")

	w1 := startWriter(t, cfg)
	balanced(t, 10*time.Second, partitions, w1)
	stopLoad := harness.Background(t, e.PG.URL, 20, 5)

	time.Sleep(500 * time.Millisecond)
	w2, w3 := startWriter(t, cfg), startWriter(t, cfg)
	balanced(t, 10*time.Second, partitions, w1, w2, w3)

	// A dead writer's partitions move within the failover time.
	w2.Signal(syscall.SIGKILL)
	balanced(t, failover+5*time.Second, partitions, w1, w3)

	// A paused writer (a "zombie") is replaced, then rejoins.
	w4 := startWriter(t, cfg)
	balanced(t, 10*time.Second, partitions, w1, w3, w4)
	w3.Signal(syscall.SIGSTOP)
	balanced(t, failover+5*time.Second, partitions, w1, w4)
	time.Sleep(time.Second)
	w3.Signal(syscall.SIGCONT)
	balanced(t, 10*time.Second, partitions, w1, w3, w4)

	// Redis refuses every write for a while (out of memory).
	ctx := context.Background()
	if err := e.RC.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := e.RC.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}

	// A writer stopped with SIGTERM drains and exits 0.
	w4.Signal(syscall.SIGTERM)
	if code := w4.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("writer exited %d after SIGTERM", code)
	}
	balanced(t, 10*time.Second, partitions, w1, w3)

	changes := stopLoad()
	e.WaitMatch(60*time.Second, harness.Accounts)
	time.Sleep(200 * time.Millisecond) // the observer's last notifications
	obs.Stop()                         // waits for its watcher: its counts are final
	t.Logf("%d changes; the observer read %d values of %d keys", changes, obs.Sets, len(obs.Floor))
	if len(obs.Regressions) > 0 {
		t.Fatalf("%d regressions, first: %s", len(obs.Regressions), strings.Join(obs.Regressions[:min(5, len(obs.Regressions))], "; "))
	}
	if obs.Sets < 100 {
		t.Fatalf("the observer read only %d values", obs.Sets)
	}
}
