package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// The alert rules, their unit tests and the dashboard, relative to deploy/.
const (
	alertRulesFile = "helm/sluice/files/alerts.yaml"
	alertTestsFile = "prometheus/alerts_test.yaml"
	dashboardFile  = "helm/sluice/files/dashboard.json"
)

// sluiceMetricTypes lists every metric the services expose, with its type.
// The rules and the dashboard may use only these names (histograms also
// with _bucket, _sum and _count). This list is what the rules are written
// against; the end-to-end tests scrape the running services and check
// that they really expose these metrics.
var sluiceMetricTypes = map[string]string{
	// capture
	"sluice_capture_slot_lag_bytes":              "gauge",
	"sluice_capture_slot_read_timestamp_seconds": "gauge",
	"sluice_capture_streaming":                   "gauge",
	"sluice_capture_restarts_total":              "counter",
	"sluice_capture_events_published_total":      "counter",
	"sluice_capture_publish_seconds":             "histogram",
	"sluice_capture_commit_to_stream_seconds":    "histogram",
	"sluice_capture_in_flight":                   "gauge",
	"sluice_capture_confirmed_lsn":               "gauge",
	"sluice_capture_source_refused":              "gauge",
	// sinks, measured by capture from JetStream
	"sluice_sink_backlog_messages":         "gauge",
	"sluice_sink_oldest_unapplied_seconds": "gauge",
	"sluice_sink_dead_letters":             "gauge",
	"sluice_sink_writers":                  "gauge",
	"sluice_sink_writers_expected":         "gauge",
	// backfills, measured by capture
	"sluice_backfill_rows_done":      "gauge",
	"sluice_backfill_rows_estimated": "gauge",
	"sluice_backfill_active":         "gauge",
	// both services
	"sluice_nats_up":    "gauge",
	"sluice_build_info": "gauge",
	// writers
	"sluice_writer_changes_total":           "counter",
	"sluice_writer_redis_up":                "gauge",
	"sluice_writer_redis_resets_total":      "counter",
	"sluice_writer_redis_evicts":            "gauge",
	"sluice_writer_commit_to_redis_seconds": "histogram",
	"sluice_writer_redis_seconds":           "histogram",
	"sluice_writer_batch_size":              "histogram",
	"sluice_writer_partitions":              "gauge",
	"sluice_writer_pending":                 "gauge",
}

// TestAlertRulesCheck: Prometheus accepts the rule file.
func TestAlertRulesCheck(t *testing.T) {
	out, err := runPromtool(t, ".", "check", "rules", alertRulesFile)
	if err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", alertRulesFile, err, out)
	}
	t.Logf("promtool check rules:\n%s", out)
}

// TestAlertRulesUnitTests: every alert fires on bad series and stays quiet
// on healthy ones (prometheus/alerts_test.yaml).
func TestAlertRulesUnitTests(t *testing.T) {
	dir, file := filepath.Split(alertTestsFile)
	out, err := runPromtool(t, dir, "test", "rules", file)
	if err != nil {
		t.Fatalf("promtool test rules %s: %v\n%s", alertTestsFile, err, out)
	}
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules %s did not report SUCCESS:\n%s", alertTestsFile, out)
	}
}

// TestAlertRulesComplete: each alert is labelled and annotated for an
// operator, and the unit tests cover it both ways.
func TestAlertRulesComplete(t *testing.T) {
	var rules alertRuleFile
	if err := yaml.UnmarshalStrict(readDeployFile(t, alertRulesFile), &rules); err != nil {
		t.Fatalf("%s: %v", alertRulesFile, err)
	}
	severities := []string{"critical", "warning", "info"}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("%s: group %q: a name and rules are required", alertRulesFile, g.Name)
		}
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("%s: group %s: rule %q is not an alert", alertRulesFile, g.Name, r.Expr)
				continue
			}
			if alerts[r.Alert] {
				t.Errorf("%s: alert %s defined twice", alertRulesFile, r.Alert)
			}
			alerts[r.Alert] = true
			if !slices.Contains(severities, r.Labels["severity"]) {
				t.Errorf("%s: alert %s: severity %q, want one of %v", alertRulesFile, r.Alert, r.Labels["severity"], severities)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("%s: alert %s has no summary", alertRulesFile, r.Alert)
			}
			// A description says what happens and what to do about it.
			if d := r.Annotations["description"]; len(d) < 100 {
				t.Errorf("%s: alert %s: description %q too short to say what to do", alertRulesFile, r.Alert, d)
			}
			for k := range r.Annotations {
				if k != "summary" && k != "description" && k != "runbook_url" {
					t.Errorf("%s: alert %s: unexpected annotation %q", alertRulesFile, r.Alert, k)
				}
			}
		}
	}
	if len(alerts) == 0 {
		t.Fatalf("%s: no alerts", alertRulesFile)
	}

	var tests alertTestFile
	if err := yaml.UnmarshalStrict(readDeployFile(t, alertTestsFile), &tests); err != nil {
		t.Fatalf("%s: %v", alertTestsFile, err)
	}
	if want := "../" + alertRulesFile; !slices.Contains(tests.RuleFiles, want) {
		t.Errorf("%s: rule_files %v, want %s", alertTestsFile, tests.RuleFiles, want)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if !alerts[a.Alertname] {
				t.Errorf("%s: test %q: no alert %s in %s", alertTestsFile, tc.Name, a.Alertname, alertRulesFile)
			}
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, name := range sortedNames(alerts) {
		if !fires[name] {
			t.Errorf("%s: no case where %s fires", alertTestsFile, name)
		}
		if !quiet[name] {
			t.Errorf("%s: no case where %s must not fire (exp_alerts: [])", alertTestsFile, name)
		}
	}
}

// TestDashboardDatasource: the dashboard parses, and every panel and query
// reads the Prometheus chosen in the datasource variable, never a
// datasource of the machine it was exported from.
func TestDashboardDatasource(t *testing.T) {
	dash := readDashboard(t)
	if v, _ := dash["schemaVersion"].(float64); v < 36 {
		t.Errorf("schemaVersion %v: want 36 or later", dash["schemaVersion"])
	}
	if uid, _ := dash["uid"].(string); uid == "" {
		t.Error("the dashboard has no uid: provisioning would give it a new one each time")
	}

	vars := map[string]map[string]any{}
	for _, v := range asList(asObject(dash["templating"])["list"]) {
		m := asObject(v)
		name, _ := m["name"].(string)
		vars[name] = m
	}
	if ds := vars["datasource"]; ds == nil || ds["type"] != "datasource" || ds["query"] != "prometheus" {
		t.Errorf("templating: want a variable datasource of type datasource, query prometheus; got %v", ds)
	}
	if s := vars["sink"]; s == nil || !isDatasourceVariable(s["datasource"]) ||
		!strings.Contains(fmt.Sprint(s["query"]), "label_values(sluice_sink_backlog_messages, sink)") {
		t.Errorf("templating: want a variable sink, label_values(sluice_sink_backlog_messages, sink) from ${datasource}; got %v", s)
	}

	panels := dashboardPanels(dash)
	if len(panels) < 10 {
		t.Fatalf("%d panels: the dashboard looks empty", len(panels))
	}
	ids := map[float64]bool{}
	queries := 0
	for _, p := range panels {
		title, _ := p["title"].(string)
		id, _ := p["id"].(float64)
		if ids[id] {
			t.Errorf("panel %q: id %v used twice", title, id)
		}
		ids[id] = true
		if _, ok := p["gridPos"].(map[string]any); !ok {
			t.Errorf("panel %q has no gridPos", title)
		}
		if !isDatasourceVariable(p["datasource"]) {
			t.Errorf("panel %q: datasource %v, want {type: prometheus, uid: ${datasource}}", title, p["datasource"])
		}
		targets := asList(p["targets"])
		if p["type"] != "row" && len(targets) == 0 {
			t.Errorf("panel %q has no query", title)
		}
		for _, tg := range targets {
			m := asObject(tg)
			if !isDatasourceVariable(m["datasource"]) {
				t.Errorf("panel %q: query %v: datasource %v, want ${datasource}", title, m["refId"], m["datasource"])
			}
			if e, _ := m["expr"].(string); strings.TrimSpace(e) == "" {
				t.Errorf("panel %q: query %v has no expr", title, m["refId"])
			}
			queries++
		}
	}

	// No datasource anywhere else names a uid, except Grafana's own
	// annotations.
	walkJSON(dash, func(key string, v any) {
		if key != "datasource" {
			return
		}
		if m, ok := v.(map[string]any); ok && m["uid"] == "-- Grafana --" && m["type"] == "grafana" {
			return
		}
		if !isDatasourceVariable(v) {
			t.Errorf("datasource %v: want ${datasource}", v)
		}
	})
	t.Logf("%d panels, %d queries", len(panels), queries)
}

// TestDashboardExprs: every query of the dashboard is valid PromQL. Promtool
// has no command to parse an expression, so they go into a rule file as
// recording rules, which `promtool check rules` parses.
func TestDashboardExprs(t *testing.T) {
	exprs := dashboardExprs(readDashboard(t))
	if len(exprs) == 0 {
		t.Fatal("no queries in the dashboard")
	}
	// Grafana's variables, replaced by what they may stand for.
	vars := strings.NewReplacer(
		"$__rate_interval", "5m", "${__rate_interval}", "5m",
		"$__interval", "1m", "${__interval}", "1m",
		"$__range", "1h", "${__range}", "1h",
		"${sink}", ".*", "$sink", ".*",
	)
	var file alertRuleFile
	g := alertRuleGroup{Name: "dashboard"}
	for i, e := range exprs {
		promql := vars.Replace(e)
		if strings.Contains(promql, "$") {
			t.Errorf("query %q: a variable the test does not know", e)
			continue
		}
		g.Rules = append(g.Rules, alertRule{Record: fmt.Sprintf("dashboard:query_%d", i), Expr: promql})
	}
	file.Groups = append(file.Groups, g)
	doc, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard_rules.yaml")
	if err := os.WriteFile(path, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runPromtool(t, ".", "check", "rules", path)
	if err != nil {
		t.Fatalf("a dashboard query is not valid PromQL: promtool check rules: %v\n%s\nrules:\n%s", err, out, doc)
	}
	t.Logf("%d dashboard queries parsed", len(exprs))
}

// TestAlertAndDashboardMetricNames: the rules, their tests and the
// dashboard name only metrics the services expose.
func TestAlertAndDashboardMetricNames(t *testing.T) {
	name := regexp.MustCompile(`\bsluice_[a-z_]+`)
	for _, file := range []string{alertRulesFile, alertTestsFile, dashboardFile} {
		used := map[string]bool{}
		for _, n := range name.FindAllString(string(readDeployFile(t, file)), -1) {
			used[n] = true
		}
		if len(used) == 0 {
			t.Errorf("%s names no sluice metric", file)
		}
		for _, n := range sortedNames(used) {
			if !knownMetric(n) {
				t.Errorf("%s: %s is not a metric the services expose", file, n)
			}
		}
	}
}

// knownMetric: name is in sluiceMetricTypes, or a histogram's series.
func knownMetric(name string) bool {
	if _, ok := sluiceMetricTypes[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && sluiceMetricTypes[base] == "histogram" {
			return true
		}
	}
	return false
}

// TestAlertMetricNameMatcher: the check above tells histogram series from
// other names.
func TestAlertMetricNameMatcher(t *testing.T) {
	for name, want := range map[string]bool{
		"sluice_capture_slot_lag_bytes":                true,
		"sluice_writer_redis_seconds_bucket":           true,
		"sluice_writer_commit_to_redis_seconds_count":  true,
		"sluice_capture_slot_lag_bytes_bucket":         false, // a gauge
		"sluice_writer_redis_up_sum":                   false,
		"sluice_writer_redis_errors_total":             false,
		"sluice_capture_slot_lag":                      false,
		"sluice_writer_batch_size_sum":                 true,
		"sluice_writer_changes_total_bucket":           false,
		"sluice_sink_writers_expected":                 true,
		"sluice_sink_writer":                           false,
		"sluice_capture_slot_read_timestamp_seconds_x": false,
	} {
		if got := knownMetric(name); got != want {
			t.Errorf("knownMetric(%s) = %v, want %v", name, got, want)
		}
	}
}

// alertRuleFile is a Prometheus rule file (the fields Sluice's use).
type alertRuleFile struct {
	Groups []alertRuleGroup `json:"groups"`
}

type alertRuleGroup struct {
	Name     string      `json:"name"`
	Interval string      `json:"interval,omitempty"`
	Rules    []alertRule `json:"rules"`
}

type alertRule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// alertTestFile is a promtool unit test file.
type alertTestFile struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name        string `json:"name"`
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// runPromtool runs promtool in dir (relative to deploy/) and returns its
// output. Without promtool the test fails under CI and is skipped
// elsewhere.
func runPromtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	promtool := testenv.Tool(t, "promtool", "Debian: apt-get install prometheus")
	cmd := exec.Command(promtool, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func readDeployFile(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readDashboard(t *testing.T) map[string]any {
	t.Helper()
	var dash map[string]any
	if err := json.Unmarshal(readDeployFile(t, dashboardFile), &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return dash
}

// dashboardPanels: every panel, those inside collapsed rows included.
func dashboardPanels(dash map[string]any) []map[string]any {
	var all []map[string]any
	var walk func(list []any)
	walk = func(list []any) {
		for _, p := range list {
			m := asObject(p)
			all = append(all, m)
			walk(asList(m["panels"]))
		}
	}
	walk(asList(dash["panels"]))
	return all
}

func dashboardExprs(dash map[string]any) []string {
	var exprs []string
	for _, p := range dashboardPanels(dash) {
		for _, tg := range asList(p["targets"]) {
			if e, _ := asObject(tg)["expr"].(string); e != "" {
				exprs = append(exprs, e)
			}
		}
	}
	return exprs
}

// isDatasourceVariable: v is {type: prometheus, uid: ${datasource}}.
func isDatasourceVariable(v any) bool {
	m, ok := v.(map[string]any)
	return ok && m["type"] == "prometheus" && m["uid"] == "${datasource}"
}

// walkJSON calls f with every key and value of objects within v.
func walkJSON(v any, f func(key string, v any)) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			f(k, e)
			walkJSON(e, f)
		}
	case []any:
		for _, e := range v {
			walkJSON(e, f)
		}
	}
}

func asObject(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func sortedNames(m map[string]bool) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
