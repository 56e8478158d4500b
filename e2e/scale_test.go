package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// observer watches Redis keyspace notifications and checks that no key ever
// goes back to an older change: each value read after a SET must be at
// least as new as anything read of the key before, its value or, after a
// DEL, its version record (the DEL's version, or a newer SET's). Reads lag
// the notifications, so they may see later states; they can never see an
// earlier one if the key never regressed.
type observer struct {
	mu          sync.Mutex
	floor       map[string][2]uint64 // key → newest (commit_lsn, commit_idx) read
	sets        int
	regressions []string
	stop        func()
}

func observe(t *testing.T, r *testenv.Redis, pattern string) *observer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rc := r.Client()
	if err := rc.ConfigSet(ctx, "notify-keyspace-events", "K$g").Err(); err != nil {
		t.Fatal(err)
	}
	sub := rc.PSubscribe(ctx, "__keyspace@0__:"+pattern)
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	o := &observer{floor: map[string][2]uint64{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for msg := range sub.Channel() {
			key := strings.TrimPrefix(msg.Channel, "__keyspace@0__:")
			switch msg.Payload {
			case "del":
				v, err := rc.Get(ctx, "sluice:v:{"+key+"}").Result()
				if err != nil || len(v) != 24 {
					continue
				}
				lsn, _ := strconv.ParseUint(v[:16], 16, 64)
				idx, _ := strconv.ParseUint(v[16:], 16, 64)
				o.check(key, [2]uint64{lsn, idx}, false)
			case "set":
				raw, err := rc.Get(ctx, key).Result()
				if err != nil {
					continue // deleted meanwhile, or shutting down
				}
				var v struct {
					Metadata struct {
						LSN uint64 `json:"commit_lsn"`
						Idx uint64 `json:"commit_idx"`
					}
				}
				if json.Unmarshal([]byte(raw), &v) != nil {
					continue
				}
				o.check(key, [2]uint64{v.Metadata.LSN, v.Metadata.Idx}, true)
			}
		}
	}()
	o.stop = func() { sub.Close(); cancel(); wg.Wait(); rc.Close() }
	t.Cleanup(o.stop)
	return o
}

func (o *observer) check(key string, v [2]uint64, value bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if value {
		o.sets++
	}
	floor := o.floor[key]
	if v[0] < floor[0] || v[0] == floor[0] && v[1] < floor[1] {
		if value {
			o.regressions = append(o.regressions, fmt.Sprintf("%s went back from %v to %v", key, floor, v))
		}
		return
	}
	o.floor[key] = v
}

// writerProc is a writer with its metrics endpoint.
type writerProc struct {
	*proc
	addr string
}

func startWriter(t *testing.T, cfg string) *writerProc {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return &writerProc{proc: start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache", "--http", addr), addr: addr}
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
	eventually(t, timeout, func() string {
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
	e := newEnv(t)
	e.exec(accountsSchema)
	cfg := e.writeConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: %d}
sinks:
  - name: cache
    batch_size: 50
    ack_wait: 1s
    failover: %s
    max_deliver: 1000
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.pg.URL, e.nats.URL(), partitions, failover, e.redis.Port))
	e.runPipeline(cfg)
	obs := observe(t, e.redis, "sequin:accounts:*")

	w1 := startWriter(t, cfg)
	balanced(t, 10*time.Second, partitions, w1)
	stop := make(chan struct{})
	var changes int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); changes = workload(t, e.pg.URL, 20, 5, stop) }()

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
	if err := e.rc.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := e.rc.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}

	// A writer stopped with SIGTERM drains and exits 0.
	w4.Signal(syscall.SIGTERM)
	if code := w4.wait(30 * time.Second); code != 0 {
		t.Fatalf("writer exited %d after SIGTERM", code)
	}
	balanced(t, 10*time.Second, partitions, w1, w3)

	close(stop)
	wg.Wait()
	e.waitMatch(60*time.Second, accounts)
	time.Sleep(200 * time.Millisecond) // the observer's last notifications
	obs.stop()
	obs.mu.Lock()
	defer obs.mu.Unlock()
	t.Logf("%d changes; the observer read %d values of %d keys", changes, obs.sets, len(obs.floor))
	if len(obs.regressions) > 0 {
		t.Fatalf("%d regressions, first: %s", len(obs.regressions), strings.Join(obs.regressions[:min(5, len(obs.regressions))], "; "))
	}
	if obs.sets < 100 {
		t.Fatalf("the observer read only %d values", obs.sets)
	}
}
