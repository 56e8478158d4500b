package faults

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// The alert rules and the Grafana dashboard shipped with the Helm chart,
// relative to this package's directory.
const (
	alertRulesFile = "../../deploy/helm/sluice/files/alerts.yaml"
	dashboardFile  = "../../deploy/helm/sluice/files/dashboard.json"
)

// A real Prometheus scrapes capture and two writers of a sink and
// evaluates the chart's alert rules. Stopping the sink's Redis during a
// workload makes SluiceRedisUnavailable fire for each writer, and the
// backlog alerts (SluiceSinkBacklogGrowing, SluiceSinkBehind) for the
// sink; restarting it (empty) fires SluiceRedisReset, and once the sink
// has caught up the others resolve. Every rule evaluates without error on
// the services' real series, and every metric the rules and the dashboard
// name is one the services expose.
func TestMonitoring(t *testing.T) {
	harness.PrometheusBin(t) // before starting anything
	rules := testRules(t)

	e := harness.NewEnv(t)
	harness.Fill(e, 2000) // rows that only the backfill below brings to Redis
	ports := make([]string, 3)
	for i := range ports {
		p, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	captureAddr, writerAddrs := ports[0], ports[1:]
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: 4}
sinks:
  - name: cache
    writers: 2
    ack_wait: 1s
    failover: 3s
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.PG.URL, e.NATS.URL(), e.Redis.Port))
	capture := harness.Start(t, "sluice-capture", "--config", cfg, "--http", captureAddr)
	e.WaitStreaming(capture)
	for _, addr := range writerAddrs {
		harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache", "--http", addr)
	}
	prom := harness.StartPrometheus(t, []harness.ScrapeJob{
		{Name: "sluice-capture", Targets: []string{captureAddr}},
		{Name: "sluice-redis-writer", Targets: writerAddrs},
	}, rules)

	// Every name any scrape of the services showed: some series exist only
	// in some states (a running backfill, a Redis reset).
	exposed := map[string]bool{}
	scrape := func() string {
		for _, addr := range ports {
			names, err := harness.MetricNames("http://" + addr + "/metrics")
			if err != nil {
				return err.Error()
			}
			for n := range names {
				exposed[n] = true
			}
		}
		return ""
	}
	query := func(expr string) []harness.Sample {
		s, err := prom.Query(expr)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Prometheus scrapes the three services, and capture has read the
	// sink's backlog from JetStream once.
	harness.Eventually(t, time.Minute, func() string {
		if up := query(`up == 1`); len(up) != 3 {
			return fmt.Sprintf("targets up: %v", up)
		}
		if b := query(`sluice_sink_backlog_messages{sink="cache"}`); len(b) != 4 {
			return fmt.Sprintf("backlog of the 4 partitions: %v", b)
		}
		if w := query(`sluice_sink_writers{sink="cache"} == 2`); len(w) != 1 {
			return "the sink's 2 writers are not both live"
		}
		return ""
	})

	t.Run("alerts", func(t *testing.T) {
		// Backfill the rows. The gauges of a backfill exist only while it is
		// active, and capture reads them every 10 s: a lock on the table holds
		// the backfill until capture has exported them.
		ctx := context.Background()
		lock, err := pgx.Connect(ctx, e.PG.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Close(ctx)
		tx, err := lock.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE`); err != nil {
			t.Fatal(err)
		}
		bf := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts")
		harness.Eventually(t, time.Minute, func() string {
			if msg := scrape(); msg != "" {
				return msg
			}
			for _, n := range []string{"sluice_backfill_rows_done", "sluice_backfill_rows_estimated"} {
				if !exposed[n] {
					return "capture does not expose " + n + " during the backfill"
				}
			}
			return ""
		})
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if code := bf.WaitExit(time.Minute); code != 0 || !strings.Contains(bf.Output(), "done: 2000 rows") {
			t.Fatalf("sluice backfill exited %d:\n%s", code, bf.Output())
		}
		e.WaitMatch(time.Minute, harness.Accounts)

		// Nothing wrong yet: the alerts of the outage are inactive (or
		// become so, should a transient of the backfill have set one off).
		watched := []string{"SluiceRedisUnavailable", "SluiceSinkBacklogGrowing", "SluiceSinkBehind"}
		harness.Eventually(t, time.Minute, func() string {
			if a := alerts(t, prom, watched...); len(a) > 0 {
				return fmt.Sprintf("before the outage: %v", a)
			}
			return ""
		})

		// Redis stopped during a workload.
		stopLoad := harness.Background(t, e.PG.URL, 500, 23)
		e.Redis.Stop()
		harness.Eventually(t, 2*time.Minute, func() string {
			active := alerts(t, prom, watched...)
			var missing []string
			for _, w := range writerAddrs {
				if !firing(active, "SluiceRedisUnavailable", "instance", w) {
					missing = append(missing, "SluiceRedisUnavailable of writer "+w)
				}
			}
			for _, name := range watched[1:] {
				if !firing(active, name, "sink", "cache") {
					missing = append(missing, name+" of sink cache")
				}
			}
			if len(missing) > 0 {
				return fmt.Sprintf("with Redis stopped, not firing: %s; active: %v; backlog %v", strings.Join(missing, ", "), active,
					query(`sum without (partition) (sluice_sink_backlog_messages)`))
			}
			return ""
		})
		t.Logf("%d changes during the outage; alerts %v", stopLoad(), alertNames(alerts(t, prom)))

		// Redis back, empty: the writers refill it, the sink catches up, and
		// the alerts resolve.
		if err := e.Redis.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		e.WaitMatch(2*time.Minute, harness.Accounts)
		harness.Eventually(t, 2*time.Minute, func() string {
			if a := alerts(t, prom, watched...); len(a) > 0 {
				return fmt.Sprintf("after Redis restarted and the sink caught up, still active: %v", a)
			}
			if !firing(alerts(t, prom, "SluiceRedisReset"), "SluiceRedisReset", "sink", "cache") {
				return "Redis came back empty, and SluiceRedisReset does not fire"
			}
			return ""
		})
		// And no other alert: the outage set off nothing else that lasts.
		for _, a := range alerts(t, prom) {
			if a.Labels["alertname"] != "SluiceRedisReset" {
				t.Errorf("after the outage, active: %v", a)
			}
		}

		// Every rule evaluated on the real series without error (a mismatch
		// of labels between series, say).
		harness.Eventually(t, 30*time.Second, func() string {
			rs, err := prom.Rules()
			if err != nil {
				return err.Error()
			}
			for _, r := range rs {
				if r.Health != "ok" {
					return fmt.Sprintf("rule %s: health %s %s", r.Name, r.Health, r.LastError)
				}
			}
			return ""
		})
	})

	t.Run("metrics", func(t *testing.T) {
		harness.Eventually(t, 30*time.Second, scrape)
		// Names in the rules (comments included) and in the dashboard
		// (queries, variables and descriptions).
		name := regexp.MustCompile(`\bsluice_[a-z_]+`)
		for _, file := range []string{alertRulesFile, dashboardFile} {
			doc, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			used := name.FindAllString(string(doc), -1)
			if len(used) == 0 {
				t.Errorf("%s names no sluice metric", file)
			}
			slices.Sort(used)
			for _, n := range slices.Compact(used) {
				if !exposed[n] {
					t.Errorf("%s names %s, which no service exposes", filepath.Base(file), n)
				}
			}
		}
		if t.Failed() {
			t.Logf("exposed: %v", sortedKeys(exposed))
		}
	})
}

// testRules writes a copy of the alert rules for the test: every for:
// shortened to 5s, and the thresholds of the backlog alerts lowered to
// what a short outage reaches (1000 messages and 300 s in the chart). The
// expressions are otherwise the chart's.
func testRules(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(alertRulesFile)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	forLine := regexp.MustCompile(`(?m)^(\s+for:\s*)\S+\s*$`)
	if len(forLine.FindAllString(doc, -1)) == 0 {
		t.Fatalf("%s: no for: to shorten", alertRulesFile)
	}
	doc = forLine.ReplaceAllString(doc, "${1}5s")
	for old, lowered := range map[string]string{
		"sum without (partition) (sluice_sink_backlog_messages) > 1000":        "sum without (partition) (sluice_sink_backlog_messages) > 100",
		"max without (partition) (sluice_sink_oldest_unapplied_seconds) > 300": "max without (partition) (sluice_sink_oldest_unapplied_seconds) > 5",
	} {
		if n := strings.Count(doc, old); n != 1 {
			t.Fatalf("%s: %q found %d times; update the test's copy of the rules", alertRulesFile, old, n)
		}
		doc = strings.Replace(doc, old, lowered, 1)
	}
	path := filepath.Join(t.TempDir(), "alerts.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// alerts returns Prometheus's active alerts, of the names given if any.
func alerts(t *testing.T, prom *harness.Prometheus, names ...string) []harness.Alert {
	t.Helper()
	all, err := prom.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	var out []harness.Alert
	for _, a := range all {
		if len(names) == 0 || slices.Contains(names, a.Labels["alertname"]) {
			out = append(out, a)
		}
	}
	return out
}

// firing says whether alerts hold a firing alert called name with the
// label given.
func firing(alerts []harness.Alert, name, label, value string) bool {
	return slices.ContainsFunc(alerts, func(a harness.Alert) bool {
		return a.Labels["alertname"] == name && a.Labels[label] == value && a.State == "firing"
	})
}

// alertNames lists the alerts' names and states.
func alertNames(alerts []harness.Alert) []string {
	var out []string
	for _, a := range alerts {
		out = append(out, a.Labels["alertname"]+" "+a.State)
	}
	slices.Sort(out)
	return out
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
