package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// PrometheusBin finds the Prometheus server. Without it the test fails
// under CI and is skipped elsewhere.
func PrometheusBin(t testing.TB) string {
	t.Helper()
	return testenv.Tool(t, "prometheus", "Debian: apt-get install prometheus")
}

// ScrapeJob is a Prometheus job: its name and its targets (host:port).
type ScrapeJob struct {
	Name    string
	Targets []string
}

// Prometheus is a Prometheus server running as a child process.
type Prometheus struct {
	URL  string
	proc *testenv.Process
}

// StartPrometheus starts a Prometheus that scrapes jobs' /metrics and
// evaluates the rule files every second, with its own storage; the test's
// end stops it, and a failed test shows its output.
func StartPrometheus(t testing.TB, jobs []ScrapeJob, ruleFiles ...string) *Prometheus {
	t.Helper()
	bin := PrometheusBin(t)
	dir := t.TempDir()
	var cfg strings.Builder
	// Scrapes and evaluations every second, so that alerts follow the
	// services within seconds.
	cfg.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n")
	rules, _ := json.Marshal(ruleFiles)
	fmt.Fprintf(&cfg, "rule_files: %s\nscrape_configs:\n", rules)
	for _, j := range jobs {
		name, _ := json.Marshal(j.Name)
		targets, _ := json.Marshal(j.Targets)
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs: [{targets: %s}]\n", name, targets)
	}
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	// The port was free a moment ago; another process may take it first.
	for attempt := 0; ; attempt++ {
		port, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		proc, err := testenv.StartProcess("prometheus", filepath.Join(dir, "prometheus.log"), nil, bin,
			"--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
			"--web.listen-address="+addr)
		if err != nil {
			t.Fatal(err)
		}
		p := &Prometheus{URL: "http://" + addr, proc: proc}
		ready := p.waitReady(30 * time.Second)
		if ready == nil {
			t.Cleanup(func() {
				proc.Stop(syscall.SIGKILL, time.Second)
				if t.Failed() {
					t.Logf("prometheus output:\n%s", proc.Tail(4000))
				}
			})
			return p
		}
		proc.Stop(syscall.SIGKILL, time.Second)
		if attempt < 2 && strings.Contains(proc.Output(), "address already in use") {
			continue
		}
		t.Fatalf("prometheus: %v\nconfig:\n%s\noutput:\n%s", ready, cfg.String(), proc.Tail(4000))
	}
}

func (p *Prometheus) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(p.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/-/ready answers %s", resp.Status)
		}
		if p.proc.Exited() {
			return fmt.Errorf("exited before it was ready")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// api GETs an endpoint of the HTTP API and decodes its data into data.
func (p *Prometheus) api(path string, query url.Values, data any) error {
	u := p.URL + path
	if query != nil {
		u += "?" + query.Encode()
	}
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}

// Sample is one series of an instant vector.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Query evaluates expr now; it must give an instant vector.
func (p *Prometheus) Query(expr string) ([]Sample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := p.api("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s gives a %s, not a vector", expr, data.ResultType)
	}
	out := make([]Sample, len(data.Result))
	for i, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v", expr, r.Value[1])
		}
		out[i] = Sample{Labels: r.Metric, Value: v}
	}
	return out, nil
}

// Alert is an active alert: pending (its condition holds, for less than
// its rule's for:) or firing.
type Alert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
	Value  string            `json:"value"`
}

func (a Alert) String() string {
	var labels []string
	for k, v := range a.Labels {
		if k != "alertname" {
			labels = append(labels, k+"="+strconv.Quote(v))
		}
	}
	slices.Sort(labels)
	return fmt.Sprintf("%s{%s} %s (%s)", a.Labels["alertname"], strings.Join(labels, ", "), a.State, a.Value)
}

// Alerts lists the active alerts.
func (p *Prometheus) Alerts() ([]Alert, error) {
	var data struct {
		Alerts []Alert `json:"alerts"`
	}
	err := p.api("/api/v1/alerts", nil, &data)
	return data.Alerts, err
}

// Rule is an alerting or recording rule as last evaluated.
type Rule struct {
	Name      string `json:"name"`
	Health    string `json:"health"` // ok, err or unknown (not evaluated yet)
	LastError string `json:"lastError"`
}

// Rules lists the rules of every group.
func (p *Prometheus) Rules() ([]Rule, error) {
	var data struct {
		Groups []struct {
			Rules []Rule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.api("/api/v1/rules", nil, &data); err != nil {
		return nil, err
	}
	var out []Rule
	for _, g := range data.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// MetricNames scrapes a /metrics endpoint (Prometheus text format) and
// returns the names it exposes: each family's (from # TYPE) and each
// sample's, so a histogram gives its own name and its _bucket, _sum and
// _count.
func MetricNames(metricsURL string) (map[string]bool, error) {
	resp, err := http.Get(metricsURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", metricsURL, resp.Status)
	}
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				names[f[0]] = true
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names, sc.Err()
}
