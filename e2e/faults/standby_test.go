package faults

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
)

// Three captures with one config: one streams, the others stand by (ready,
// and saying so). SIGKILL the streaming one, then SIGSTOP its successor
// past postgres.failover and wake it: each time another takes over, the
// woken one stands by, Redis ends equal to Postgres, and the stream holds
// every change exactly once, in commit order per key.
func TestStandbyCaptures(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	const failover = 3 * time.Second
	cfg := e.WriteConfig(strings.Replace(e.ConfigText([]string{"accounts"}, true),
		"status_interval: 200ms", "status_interval: 200ms\n  failover: 3s", 1))
	var captures []*harness.Served
	for range 3 {
		captures = append(captures, harness.StartServing(t, "sluice-capture", "--config", cfg))
	}
	harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	// streaming waits until exactly one of the live captures leads and
	// streams, and the others stand by; it returns the leader.
	streaming := func(live ...int) int {
		t.Helper()
		leader := -1
		harness.Eventually(t, 60*time.Second, func() string {
			leader = -1
			for _, i := range live {
				m := captures[i].Get("/metrics")
				lead := strings.Contains(m, "\nsluice_capture_leader 1\n")
				switch {
				case lead && leader >= 0:
					return fmt.Sprintf("captures %d and %d both lead", leader, i)
				case lead && !strings.Contains(m, "\nsluice_capture_streaming 1\n"):
					return fmt.Sprintf("capture %d leads and does not stream yet", i)
				case lead:
					leader = i
				case !strings.Contains(captures[i].Get("/readyz"), "standing by"):
					return fmt.Sprintf("capture %d neither leads nor stands by: %s", i, captures[i].Get("/readyz"))
				}
			}
			if leader < 0 {
				return "no capture streams"
			}
			return ""
		})
		return leader
	}
	first := streaming(0, 1, 2)
	st := harness.Start(t, "sluice", "status", "--config", cfg, "--output", "json")
	if code := st.WaitExit(30 * time.Second); code != 0 || !regexp.MustCompile(`"leader": "[^"]+"`).MatchString(st.Output()) {
		t.Errorf("sluice status does not name the streaming capture (exit %d):\n%s", code, st.Output())
	}
	stop := harness.Background(t, e.PG.URL, 300, 21)
	rest := func(except ...int) []int {
		var out []int
		for i := range captures {
			if !slices.Contains(except, i) {
				out = append(out, i)
			}
		}
		return out
	}
	// A workload under way when the leader dies.
	underWay := func() {
		t.Helper()
		from := e.WALPosition()
		harness.Eventually(t, 30*time.Second, func() string {
			if n := e.WALPosition() - from; n < 64<<10 {
				return fmt.Sprintf("the workload wrote %d bytes of WAL", n)
			}
			return ""
		})
	}
	underWay()

	captures[first].Signal(syscall.SIGKILL)
	began := time.Now()
	second := streaming(rest(first)...)
	t.Logf("SIGKILL of the streaming capture: capture %d streams after %s (failover %s)", second, time.Since(began).Round(100*time.Millisecond), failover)

	underWay()
	captures[second].Signal(syscall.SIGSTOP)
	began = time.Now()
	third := rest(first, second)[0]
	harness.Eventually(t, 60*time.Second, func() string {
		if m := captures[third].Get("/metrics"); !strings.Contains(m, "\nsluice_capture_leader 1\n") || !strings.Contains(m, "\nsluice_capture_streaming 1\n") {
			return fmt.Sprintf("capture %d does not stream", third)
		}
		return ""
	})
	t.Logf("SIGSTOP of the streaming capture: capture %d streams after %s", third, time.Since(began).Round(100*time.Millisecond))
	captures[second].Signal(syscall.SIGCONT)
	if got := streaming(second, third); got != third {
		t.Fatalf("after the paused capture woke, capture %d streams, not %d", got, third)
	}
	if !strings.Contains(captures[second].Output(), "lost the lease") {
		t.Errorf("the woken capture did not say it lost the lease:\n%s", captures[second].Tail(3000))
	}

	total := stop()
	e.WaitMatch(90*time.Second, harness.Accounts)
	harness.CheckStream(t, e.NATS.URL(), total)
}
