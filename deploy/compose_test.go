package deploy

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"

	"github.com/sluicehq/sluice/pkg/config"
)

const composeFile = "compose.yaml"

// TestComposeServices: the Compose file loads with the specification's own
// loader, and runs the servers Sluice needs as Sluice needs them.
func TestComposeServices(t *testing.T) {
	p := loadCompose(t)
	for _, name := range []string{"postgres", "capture", "prometheus", "grafana", "sluice"} {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("%s: no service %s", composeFile, name)
		}
	}
	if s, ok := p.Services["sluice"]; ok && len(s.Profiles) == 0 {
		t.Error("the sluice tool service would start (and exit) with every `up`: give it a profile")
	}

	pg := p.Services["postgres"]
	if pg.Image != "postgres:17" {
		t.Errorf("postgres image %q, want postgres:17", pg.Image)
	}
	if !slices.Contains(composeFlagValues(pg.Command, "-c"), "wal_level=logical") {
		t.Errorf("postgres command %q: capture needs -c wal_level=logical", pg.Command)
	}

	var captures []string
	for _, s := range composeServices(p) {
		if !strings.HasPrefix(s.Image, "sluice") {
			continue
		}
		if !strings.HasSuffix(s.Image, ":latest") || s.PullPolicy != types.PullPolicyNever {
			t.Errorf("%s: image %q (pull_policy %q), want the :latest that `make images` builds, never pulled", s.Name, s.Image, s.PullPolicy)
		}
		if !s.ReadOnly || !slices.Equal(s.CapDrop, []string{"ALL"}) {
			t.Errorf("%s: read_only %v, cap_drop %v; want a read-only root and every capability dropped, as on Kubernetes", s.Name, s.ReadOnly, s.CapDrop)
		}
		if s.Image == "sluice-capture:latest" {
			captures = append(captures, s.Name)
		}
	}
	// Postgres lets one process stream from the slot.
	if len(captures) != 1 {
		t.Errorf("capture services %v, want exactly one", captures)
	}
}

// TestComposeConfig: every Sluice service loads the configuration file
// mounted into it as it would at start, with its own environment; each
// sink has the writers its `writers` says (at least two); NATS is a
// 3-node cluster whose routes name every node.
func TestComposeConfig(t *testing.T) {
	p := loadCompose(t)
	var (
		cfgFile string
		cfg     *config.Config
		writers = map[string][]string{} // sink: services
	)
	for _, s := range composeServices(p) {
		if !strings.HasPrefix(s.Image, "sluice") {
			continue
		}
		path := composeFlagValues(s.Command, "--config")
		if len(path) != 1 {
			t.Errorf("%s: command %q, want one --config FILE", s.Name, s.Command)
			continue
		}
		file := composeHostPath(t, s, path[0])
		if cfgFile == "" {
			cfgFile = file
		} else if file != cfgFile {
			t.Errorf("%s reads %s, other services %s: one file configures them all", s.Name, file, cfgFile)
		}
		scope := config.Everything
		switch s.Image {
		case "sluice-capture:latest":
			scope = config.Capture
		case "sluice-redis-writer:latest":
			sink := composeFlagValues(s.Command, "--sink")
			if len(sink) != 1 {
				t.Errorf("%s: command %q, want one --sink NAME", s.Name, s.Command)
				continue
			}
			scope = config.Writer(sink[0])
			writers[sink[0]] = append(writers[sink[0]], s.Name)
		}
		env := s.Environment
		c, err := config.Parse(readDeployFile(t, file), scope, func(name string) (string, bool) {
			v, ok := env[name]
			if !ok || v == nil {
				return "", false
			}
			return *v, true
		})
		if err != nil {
			t.Errorf("%s: %s does not load for %s with the service's environment: %v", s.Name, file, scope, err)
			continue
		}
		if scope == config.Everything {
			cfg = c
		}
	}
	if cfg == nil {
		t.Fatal("no service reads the whole configuration (the sluice tool)")
	}

	redis := map[string]bool{}
	for _, sink := range cfg.Sinks {
		if n := len(writers[sink.Name]); n != sink.Writers || n < 2 {
			t.Errorf("sink %s: writer services %v, writers: %d in the configuration; want them equal and at least 2", sink.Name, writers[sink.Name], sink.Writers)
		}
		delete(writers, sink.Name)
		host := sink.Destination.Host
		if s, ok := p.Services[host]; !ok || !strings.HasPrefix(s.Image, "redis:7") {
			t.Errorf("sink %s: destination %s is not a redis:7 service", sink.Name, host)
		}
		if redis[host] {
			t.Errorf("sink %s: Redis %s is another sink's too; want one target per sink", sink.Name, host)
		}
		redis[host] = true
	}
	for sink, services := range writers {
		t.Errorf("writers %v run sink %s, which the configuration lacks", services, sink)
	}

	// NATS: three JetStream servers, all routed to all, and the services
	// connecting to each.
	var nats []string
	for _, s := range composeServices(p) {
		if strings.HasPrefix(s.Image, "nats:") {
			nats = append(nats, s.Name)
		}
	}
	if len(nats) != 3 || cfg.NATS.Replicas != 3 {
		t.Fatalf("NATS services %v, nats.replicas %d; want a 3-node cluster keeping 3 replicas", nats, cfg.NATS.Replicas)
	}
	clusterNames, serverNames := map[string]bool{}, map[string]bool{}
	for _, name := range nats {
		s := p.Services[name]
		if s.Image != "nats:2.11-alpine" {
			t.Errorf("%s: image %q, want nats:2.11-alpine", name, s.Image)
		}
		if !slices.Contains(s.Command, "--jetstream") {
			t.Errorf("%s: command %q lacks --jetstream", name, s.Command)
		}
		for _, v := range composeFlagValues(s.Command, "--cluster_name") {
			clusterNames[v] = true
		}
		for _, v := range composeFlagValues(s.Command, "--name") {
			serverNames[v] = true
		}
		listen := composeFlagValues(s.Command, "--cluster")
		routes := composeFlagValues(s.Command, "--routes")
		if len(listen) != 1 || len(routes) != 1 {
			t.Errorf("%s: command %q, want one --cluster and one --routes", name, s.Command)
			continue
		}
		port := composeURLPort(t, listen[0])
		if got := composeURLHosts(t, routes[0], port); !slices.Equal(got, nats) {
			t.Errorf("%s: routes %s reach %v on the cluster port %s, want every node %v", name, routes[0], got, port, nats)
		}
	}
	if len(clusterNames) != 1 || len(serverNames) != 3 {
		t.Errorf("NATS cluster names %v, server names %v: want one cluster of three distinct servers", clusterNames, serverNames)
	}
	if got := composeURLHosts(t, cfg.NATS.URL, "4222"); !slices.Equal(got, nats) {
		t.Errorf("nats.url %s reaches %v, want every node %v", cfg.NATS.URL, got, nats)
	}
}

// TestComposeMonitoring: Prometheus loads the chart's alert rules and
// scrapes every Sluice service; Grafana provisions the chart's dashboard.
func TestComposeMonitoring(t *testing.T) {
	p := loadCompose(t)
	prom := p.Services["prometheus"]
	var promCfg struct {
		RuleFiles     []string `json:"rule_files"`
		ScrapeConfigs []struct {
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	promFile := composeHostPath(t, prom, "/etc/prometheus/prometheus.yml")
	if err := yaml.Unmarshal(readDeployFile(t, promFile), &promCfg); err != nil {
		t.Fatalf("%s: %v", promFile, err)
	}
	rules := composeAbs(t, alertRulesFile)
	if len(promCfg.RuleFiles) == 0 {
		t.Errorf("%s loads no rule file", promFile)
	}
	for _, f := range promCfg.RuleFiles {
		if got := composeHostPath(t, prom, f); got != rules {
			t.Errorf("Prometheus rule file %s is %s, want the chart's %s", f, got, alertRulesFile)
		}
	}

	targets := map[string]bool{}
	for _, sc := range promCfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				targets[tg] = true
			}
		}
	}
	cfg := composeConfig(t, p)
	_, port, err := net.SplitHostPort(cfg.HTTP.Listen)
	if err != nil {
		t.Fatalf("http.listen %q: %v", cfg.HTTP.Listen, err)
	}
	for _, s := range composeServices(p) {
		if (s.Image == "sluice-capture:latest" || s.Image == "sluice-redis-writer:latest") && !targets[net.JoinHostPort(s.Name, port)] {
			t.Errorf("Prometheus does not scrape %s:%s", s.Name, port)
		}
	}

	graf := p.Services["grafana"]
	var provider struct {
		Providers []struct {
			Options struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	provFile := composeHostPath(t, graf, "/etc/grafana/provisioning/dashboards/sluice.yaml")
	if err := yaml.Unmarshal(readDeployFile(t, provFile), &provider); err != nil || len(provider.Providers) != 1 {
		t.Fatalf("%s: want one dashboard provider (%v)", provFile, err)
	}
	dashboards := provider.Providers[0].Options.Path
	found := false
	for _, v := range graf.Volumes {
		if v.Type == types.VolumeTypeBind && filepath.Dir(v.Target) == dashboards && v.Source == composeAbs(t, dashboardFile) {
			found = true
		}
	}
	if !found {
		t.Errorf("Grafana does not mount %s into %s, where its provider looks", dashboardFile, dashboards)
	}
	var ds struct {
		Datasources []struct {
			Type string `json:"type"`
			URL  string `json:"url"`
		} `json:"datasources"`
	}
	dsFile := composeHostPath(t, graf, "/etc/grafana/provisioning/datasources/sluice.yaml")
	if err := yaml.Unmarshal(readDeployFile(t, dsFile), &ds); err != nil || len(ds.Datasources) != 1 {
		t.Fatalf("%s: want one datasource (%v)", dsFile, err)
	}
	if d := ds.Datasources[0]; d.Type != "prometheus" || d.URL != "http://prometheus:9090" {
		t.Errorf("Grafana datasource %+v, want the prometheus service", d)
	}
}

// TestComposePrometheusConfig: Prometheus accepts its configuration (the
// rule file it names exists only in the container: TestComposeMonitoring
// checks that).
func TestComposePrometheusConfig(t *testing.T) {
	out, err := runPromtool(t, ".", "check", "config", "--syntax-only", "compose/prometheus.yml")
	if err != nil {
		t.Fatalf("promtool check config compose/prometheus.yml: %v\n%s", err, out)
	}
}

// loadCompose loads compose.yaml as `docker compose` does: checked
// against the Compose schema, references between services checked, paths
// resolved. The environment is empty, so that ${VAR:-default} takes its
// default whatever the caller's environment holds.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{composeFile},
		cli.WithWorkingDirectory("."),
		cli.WithEnv(nil),
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	if len(p.DisabledServices) > 0 {
		t.Fatalf("%s: services %v left out", composeFile, p.DisabledServiceNames())
	}
	return p
}

// composeServices returns the services sorted by name.
func composeServices(p *types.Project) []types.ServiceConfig {
	var out []types.ServiceConfig
	for _, name := range p.ServiceNames() {
		out = append(out, p.Services[name])
	}
	return out
}

// composeConfig is the configuration the sluice tool service reads, whole.
func composeConfig(t *testing.T, p *types.Project) *config.Config {
	t.Helper()
	s := p.Services["capture"]
	file := composeHostPath(t, s, composeFlagValues(s.Command, "--config")[0])
	cfg, err := config.Parse(readDeployFile(t, file), config.Everything, dummy)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return cfg
}

// composeFlagValues returns the value after each occurrence of flag.
func composeFlagValues(cmd []string, flag string) []string {
	var out []string
	for i, a := range cmd {
		if a == flag && i+1 < len(cmd) {
			out = append(out, cmd[i+1])
		}
	}
	return out
}

// composeHostPath returns the file a service's bind mount puts at target
// in its container, which must exist.
func composeHostPath(t *testing.T, s types.ServiceConfig, target string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if rest, ok := strings.CutPrefix(target, v.Target); ok && (rest == "" || strings.HasPrefix(rest, "/")) {
			path := v.Source + rest
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("%s: mounts %s at %s: %v", s.Name, path, target, err)
			}
			return path
		}
	}
	t.Fatalf("%s: nothing mounted at %s", s.Name, target)
	return ""
}

func composeAbs(t *testing.T, path string) string {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// composeURLHosts returns the sorted hosts of a comma-separated URL list,
// each of which must use port.
func composeURLHosts(t *testing.T, list, port string) []string {
	t.Helper()
	var hosts []string
	for _, s := range strings.Split(list, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil {
			t.Errorf("%q: %v", s, err)
			continue
		}
		if u.Port() != port {
			t.Errorf("%s: port %q, want %s", s, u.Port(), port)
		}
		hosts = append(hosts, u.Hostname())
	}
	slices.Sort(hosts)
	return hosts
}

func composeURLPort(t *testing.T, s string) string {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil || u.Port() == "" {
		t.Fatalf("%q: want a URL with a port (%v)", s, err)
	}
	return u.Port()
}
