package deploy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/sluicehq/sluice/pkg/config"
)

const (
	chartDir  = "helm/sluice"
	release   = "sluice"
	namespace = "cdc"
)

// The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) is
// 1.26; render for a current one, which also flags deprecated APIs.
var kubeVersion = chartutil.KubeVersion{Version: "v1.33.0", Major: "1", Minor: "33"}

// TestChartLint runs Helm's own linter (chart file, values against
// values.schema.json, templates rendered and parsed) with each example
// values file.
func TestChartLint(t *testing.T) {
	for _, file := range valuesFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			vals := readValues(t, file)
			linter := lint.AllWithKubeVersion(chartDir, vals, namespace, &kubeVersion)
			for _, m := range linter.Messages {
				if m.Severity >= support.WarningSev {
					t.Error(m)
				}
			}
		})
	}
}

// TestChartTemplates renders the chart with each example values file,
// decodes every object strictly against its Kubernetes (or Prometheus
// Operator) type, and checks what Sluice needs of it.
func TestChartTemplates(t *testing.T) {
	c := loadChart(t)
	if !chartutil.IsCompatibleRange(c.Metadata.KubeVersion, kubeVersion.Version) {
		t.Fatalf("Chart.yaml kubeVersion %q excludes %s", c.Metadata.KubeVersion, kubeVersion.Version)
	}
	for _, file := range valuesFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			vals := readValues(t, file)
			objs := decodeAll(t, mustRender(t, c, vals))
			coalesced, err := chartutil.CoalesceValues(c, vals)
			if err != nil {
				t.Fatal(err)
			}
			checkRelease(t, objs, coalesced)
		})
	}
}

// checkRelease checks a rendered release against the values it came from.
func checkRelease(t *testing.T, objs *objects, vals chartutil.Values) {
	t.Helper()
	cfgText, cfg := checkConfigMap(t, objs)

	// Capture: one Deployment, a leader and standbys, replaced one pod at
	// a time so that a standby is left to take over.
	capture := objs.deployments("capture")
	if len(capture) != 1 {
		t.Fatalf("%d capture Deployments, want 1", len(capture))
	}
	cd := capture[0]
	if cd.Spec.Replicas == nil || *cd.Spec.Replicas < 1 {
		t.Errorf("capture replicas = %v", cd.Spec.Replicas)
	}
	if ru := cd.Spec.Strategy.RollingUpdate; cd.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType ||
		ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 1 {
		t.Errorf("capture strategy = %+v, want a rolling update of one pod at a time", cd.Spec.Strategy)
	}
	if args := container(t, cd).Args; slices.Contains(args, "--sink") {
		t.Errorf("capture args %q name a sink", args)
	}
	wantVars := union(varsOf(t, cfg["postgres"]), varsOf(t, cfg["nats"]))
	checkSecretEnv(t, cd, wantVars)
	checkLoads(t, cd, cfgText, config.Capture)
	for _, s := range asList(cfg["sinks"]) {
		for v := range varsOf(t, s) {
			if !wantVars[v] && hasEnv(container(t, cd), v) {
				t.Errorf("capture gets ${%s}, a variable of sink %v only", v, asMap(s)["name"])
			}
		}
	}

	// Writers: one Deployment per sink, running that sink, with that sink's
	// secrets only, as many as the sink's `writers` says.
	writers := objs.deployments("writer")
	sinks := asList(cfg["sinks"])
	if len(writers) != len(sinks) {
		t.Errorf("%d writer Deployments for %d sinks", len(writers), len(sinks))
	}
	for i, s := range sinks {
		sink := asMap(s)
		name, _ := sink["name"].(string)
		var d *appsv1.Deployment
		for _, w := range writers {
			if sinkArg(t, w) == name {
				if d != nil {
					t.Errorf("sink %s has two Deployments: %s and %s", name, d.Name, w.Name)
				}
				d = w
			}
		}
		if d == nil {
			t.Errorf("no writer Deployment runs --sink %s", name)
			continue
		}
		checkSecretEnv(t, d, union(varsOf(t, cfg["nats"]), varsOf(t, s)))
		if wc := checkLoads(t, d, cfgText, config.Writer(name)); wc != nil {
			if own, err := wc.Sink(name); err != nil || own.Destination.Host+strings.Join(own.Destination.Addresses, ",") == "" {
				t.Errorf("sink %s: its writer reads no destination (%v)", name, err)
			}
		}

		settings := writerSettings(vals, i)
		autoscaled := asMap(settings["autoscaling"])["enabled"] == true
		hpa := objs.hpaFor(d.Name)
		if autoscaled != (hpa != nil) {
			t.Errorf("sink %s: autoscaling.enabled = %v, but HorizontalPodAutoscaler present = %v", name, autoscaled, hpa != nil)
		}
		var want int32
		if hpa != nil {
			if d.Spec.Replicas != nil {
				t.Errorf("sink %s: the Deployment sets replicas although an autoscaler owns them", name)
			}
			if hpa.Spec.MinReplicas == nil {
				t.Fatalf("sink %s: autoscaler without minReplicas", name)
			}
			want = *hpa.Spec.MinReplicas
			if v := toInt(asMap(settings["autoscaling"])["minReplicas"]); int32(v) != want {
				t.Errorf("sink %s: autoscaler minReplicas = %d, values say %d", name, want, v)
			}
			if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.APIVersion != "apps/v1" {
				t.Errorf("sink %s: autoscaler targets %+v", name, hpa.Spec.ScaleTargetRef)
			}
		} else {
			if d.Spec.Replicas == nil {
				t.Fatalf("sink %s: Deployment without replicas and without an autoscaler", name)
			}
			want = *d.Spec.Replicas
			if v := toInt(settings["replicas"]); int32(v) != want {
				t.Errorf("sink %s: replicas = %d, values say %d", name, want, v)
			}
		}
		if got, ok := sink["writers"]; !ok || toInt(got) != int(want) {
			t.Errorf("sink %s: config writers = %v, want %d (the Deployment's replicas or the autoscaler's minReplicas)", name, got, want)
		}
		pdb := objs.pdbFor(d)
		if wantPDB := asMap(settings["podDisruptionBudget"])["enabled"] == true; wantPDB != (pdb != nil) {
			t.Errorf("sink %s: podDisruptionBudget.enabled = %v, but a PodDisruptionBudget present = %v", name, wantPDB, pdb != nil)
		}
		if pdb != nil && (pdb.Spec.UnhealthyPodEvictionPolicy == nil || *pdb.Spec.UnhealthyPodEvictionPolicy != policyv1.AlwaysAllow) {
			t.Errorf("sink %s: PodDisruptionBudget must let not-ready writers be evicted (a Redis outage would block drains)", name)
		}
	}
	wantPDB := asMap(asMap(vals["capture"])["podDisruptionBudget"])["enabled"] == true
	if got := objs.pdbFor(cd) != nil; got != wantPDB {
		t.Errorf("capture.podDisruptionBudget.enabled = %v, but a PodDisruptionBudget present = %v", wantPDB, got)
	}
	if n := len(objs.hpas); n > len(writers) {
		t.Errorf("%d autoscalers for %d writer Deployments", n, len(writers))
	}

	registry, _ := asMap(vals["image"])["registry"].(string)
	tag, _ := asMap(vals["image"])["tag"].(string)
	if tag == "" {
		tag = objs.chart.Metadata.AppVersion
	}
	prefix := ""
	if registry != "" {
		prefix = registry + "/"
	}
	for _, d := range objs.deploys {
		checkPod(t, d, toInt(vals["httpPort"]), cfgText)
		want := prefix + "sluice-redis-writer:" + tag
		if d.Labels["app.kubernetes.io/component"] == "capture" {
			want = prefix + "sluice-capture:" + tag
		}
		if got := container(t, d).Image; got != want {
			t.Errorf("%s: image %q, want %q", d.Name, got, want)
		}
		svc := objs.serviceFor(d)
		if svc == nil {
			t.Errorf("%s: no Service selects its pods (the ServiceMonitor scrapes through one)", d.Name)
			continue
		}
		if !svc.Spec.PublishNotReadyAddresses {
			t.Errorf("Service %s leaves out not-ready pods, whose metrics tell why they are not ready", svc.Name)
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "http" || svc.Spec.Ports[0].TargetPort.StrVal != "http" {
			t.Errorf("Service %s ports %+v, want one named http to the pods' http port", svc.Name, svc.Spec.Ports)
		}
	}
	checkSelectorsDisjoint(t, objs.deploys)
	checkMonitoring(t, objs, vals)
}

// checkConfigMap finds the config ConfigMap and parses the whole file, as
// the operator's commands read it, every ${VAR} resolved to a dummy value.
func checkConfigMap(t *testing.T, objs *objects) (string, map[string]any) {
	t.Helper()
	cm := objs.configMaps[release+"-config"]
	if cm == nil {
		t.Fatalf("no ConfigMap %s-config", release)
	}
	text, ok := cm.Data["sluice.yaml"]
	if !ok || len(cm.Data) != 1 {
		t.Fatalf("ConfigMap %s holds %v, want sluice.yaml alone", cm.Name, slices.Collect(maps.Keys(cm.Data)))
	}
	if _, err := config.Parse([]byte(text), config.Everything, dummy); err != nil {
		t.Fatalf("the rendered configuration does not load: %v\n%s", err, text)
	}
	var raw map[string]any
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatal(err)
	}
	for _, s := range asList(raw["sinks"]) {
		if _, ok := asMap(s)["writer"]; ok {
			t.Errorf("sink %v: the chart's writer settings leaked into the configuration file", asMap(s)["name"])
		}
	}
	return text, raw
}

// dummy resolves every variable.
func dummy(string) (string, bool) { return "dummy", true }

// checkLoads parses the configuration as the pod's service does: its own
// scope, and only the env vars the pod really gets. A variable its part
// needs and the pod lacks fails here as it would fail the pod at start.
func checkLoads(t *testing.T, d *appsv1.Deployment, text string, scope config.Scope) *config.Config {
	t.Helper()
	c := container(t, d)
	lookup := func(name string) (string, bool) {
		if hasEnv(c, name) {
			return "from-" + name, true
		}
		return "", false
	}
	cfg, err := config.Parse([]byte(text), scope, lookup)
	if err != nil {
		t.Errorf("%s: the configuration does not load for %s with the pod's env: %v", d.Name, scope, err)
	}
	return cfg
}

// checkPod checks what every Sluice pod needs: the config mounted and
// rolled on change, probes on the services' endpoints, the restricted
// security context, resources.
func checkPod(t *testing.T, d *appsv1.Deployment, port int, cfgText string) {
	t.Helper()
	pod := d.Spec.Template.Spec
	c := container(t, d)
	sum := sha256.Sum256([]byte(strings.TrimSuffix(cfgText, "\n")))
	if got := d.Spec.Template.Annotations["checksum/config"]; got != hex.EncodeToString(sum[:]) {
		t.Errorf("%s: checksum/config %q is not the configuration's sha256: a change would not roll the pods", d.Name, got)
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--config /etc/sluice/sluice.yaml", fmt.Sprintf("--http :%d", port)} {
		if !strings.Contains(args, want) {
			t.Errorf("%s: args %q lack %q", d.Name, args, want)
		}
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/etc/sluice" && m.ReadOnly {
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == release+"-config" {
					mounted = true
				}
			}
		}
	}
	if !mounted {
		t.Errorf("%s: the config ConfigMap is not mounted read-only at /etc/sluice", d.Name)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" || int(c.Ports[0].ContainerPort) != port {
		t.Errorf("%s: ports %+v, want http on %d", d.Name, c.Ports, port)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", d.Name, p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.StrVal != "http" {
			t.Errorf("%s: %s probe GET %s on %s, want %s on http", d.Name, p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}

	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v, want runAsNonRoot and seccomp RuntimeDefault", d.Name, psc)
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Errorf("%s: runs as root", d.Name)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Errorf("%s: no container securityContext", d.Name)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("%s: allowPrivilegeEscalation is not false", d.Name)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("%s: root filesystem is writable", d.Name)
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("%s: capabilities %+v, want all dropped, none added", d.Name, sc.Capabilities)
	case sc.Privileged != nil && *sc.Privileged:
		t.Errorf("%s: privileged", d.Name)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: mounts a service account token it never uses", d.Name)
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Errorf("%s: shares a host namespace", d.Name)
	}
	r := c.Resources
	if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v, want cpu and memory requests and a memory limit", d.Name, r)
	}
}

// checkSecretEnv checks that a pod gets, from Secrets, exactly the
// variables its part of the configuration refers to: in the examples every
// ${VAR} is a secret, and a pod must get no other service's secrets.
func checkSecretEnv(t *testing.T, d *appsv1.Deployment, want map[string]bool) {
	t.Helper()
	got := map[string]bool{}
	for _, e := range container(t, d).Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			if e.ValueFrom.SecretKeyRef.Name == "" || e.ValueFrom.SecretKeyRef.Key == "" {
				t.Errorf("%s: env %s refers to no Secret key", d.Name, e.Name)
			}
			got[e.Name] = true
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("%s: secret env %v, want the variables of its part of the configuration: %v", d.Name, sortedKeys(got), sortedKeys(want))
	}
}

// checkSelectorsDisjoint: no Deployment's selector may take another's
// pods, or the two would fight over them.
func checkSelectorsDisjoint(t *testing.T, deploys []*appsv1.Deployment) {
	t.Helper()
	for _, a := range deploys {
		sel := selector(t, a.Spec.Selector)
		if !sel.Matches(labels.Set(a.Spec.Template.Labels)) {
			t.Errorf("%s: selector %s does not match its own pods %v", a.Name, sel, a.Spec.Template.Labels)
		}
		for _, b := range deploys {
			if a != b && sel.Matches(labels.Set(b.Spec.Template.Labels)) {
				t.Errorf("%s's selector %s takes %s's pods", a.Name, sel, b.Name)
			}
		}
	}
}

// checkMonitoring checks the ServiceMonitor, the PrometheusRule and the
// dashboard against their switches and against the files they embed.
func checkMonitoring(t *testing.T, objs *objects, vals chartutil.Values) {
	t.Helper()
	enabled := func(key string) bool { return asMap(vals[key])["enabled"] == true }

	if enabled("serviceMonitor") != (len(objs.serviceMonitors) == 1) {
		t.Errorf("serviceMonitor.enabled = %v, %d ServiceMonitors", enabled("serviceMonitor"), len(objs.serviceMonitors))
	}
	for _, sm := range objs.serviceMonitors {
		sel := selector(t, &sm.Spec.Selector)
		for _, svc := range objs.services {
			if !sel.Matches(labels.Set(svc.Labels)) {
				t.Errorf("ServiceMonitor %s does not select Service %s", sm.Name, svc.Name)
			}
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "http" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor %s endpoints %+v, want /metrics on port http", sm.Name, sm.Spec.Endpoints)
		}
		for k, v := range asMap(asMap(vals["serviceMonitor"])["labels"]) {
			if sm.Labels[k] != v {
				t.Errorf("ServiceMonitor %s lacks the label %s=%v that Prometheus selects it by", sm.Name, k, v)
			}
		}
	}

	if enabled("prometheusRule") != (len(objs.rules) == 1) {
		t.Errorf("prometheusRule.enabled = %v, %d PrometheusRules", enabled("prometheusRule"), len(objs.rules))
	}
	for _, r := range objs.rules {
		// The groups must reach Prometheus as the rule file has them,
		// annotation templates ({{ $labels.sink }}) included.
		var file monitoringv1.PrometheusRuleSpec
		strictYAML(t, "files/alerts.yaml", readFile(t, filepath.Join(chartDir, "files/alerts.yaml")), &file)
		if len(file.Groups) == 0 {
			t.Fatal("files/alerts.yaml has no groups")
		}
		if !reflect.DeepEqual(r.Spec, file) {
			got, _ := yaml.Marshal(r.Spec)
			t.Errorf("PrometheusRule %s differs from files/alerts.yaml:\n%s", r.Name, got)
		}
	}

	dash := objs.configMaps[release+"-dashboard"]
	if enabled("dashboard") != (dash != nil) {
		t.Errorf("dashboard.enabled = %v, dashboard ConfigMap present = %v", enabled("dashboard"), dash != nil)
	}
	if dash != nil {
		if dash.Labels["grafana_dashboard"] != "1" {
			t.Errorf("dashboard ConfigMap labels %v lack grafana_dashboard: \"1\"", dash.Labels)
		}
		want := strings.TrimRight(string(readFile(t, filepath.Join(chartDir, "files/dashboard.json"))), "\n")
		if got := dash.Data["sluice.json"]; got != want {
			t.Error("the dashboard ConfigMap does not hold files/dashboard.json as it is")
		} else if !json.Valid([]byte(got)) {
			t.Error("files/dashboard.json is not JSON")
		}
		if ns, _ := asMap(vals["dashboard"])["namespace"].(string); dash.Namespace != ns {
			t.Errorf("dashboard ConfigMap in namespace %q, want %q", dash.Namespace, ns)
		}
	}
}

// TestChartRejects: values the chart must refuse at install, with a
// message naming the problem, rather than pods that crash-loop. Where the
// templates check too (template), they must still refuse with the schema
// skipped (helm --skip-schema-validation).
func TestChartRejects(t *testing.T) {
	c := loadChart(t)
	minimal := func() map[string]any { return readValues(t, filepath.Join(chartDir, "ci/minimal-values.yaml")) }
	sink := func(v map[string]any) map[string]any {
		return asMap(asList(asMap(v["config"])["sinks"])[0])
	}
	cases := []struct {
		name     string
		values   func() map[string]any
		want     string
		template string
	}{
		{"defaults alone", func() map[string]any { return map[string]any{} }, "config.postgres.url is required", "config.postgres.url is required"},
		{"no sinks", func() map[string]any {
			v := minimal()
			asMap(v["config"])["sinks"] = []any{}
			return v
		}, "config.sinks must list at least one sink", "config.sinks must list at least one sink"},
		{"writers set by hand", func() map[string]any {
			v := minimal()
			sink(v)["writers"] = 3
			return v
		}, "'writers' not allowed", "leave out writers"},
		{"sink names alike", func() map[string]any {
			v := minimal()
			other := maps.Clone(sink(v))
			other["name"] = "Cache"
			asMap(v["config"])["sinks"] = append(asList(asMap(v["config"])["sinks"]), other)
			return v
		}, "would share the Kubernetes name", "would share the Kubernetes name"},
		{"a misspelt sink field", func() map[string]any {
			v := minimal()
			sink(v)["destinaton"] = sink(v)["destination"]
			return v
		}, "destinaton", ""},
		{"a misspelt chart setting", func() map[string]any {
			v := minimal()
			v["serviceMonitors"] = map[string]any{"enabled": true}
			return v
		}, "serviceMonitors", ""},
		{"a secret without its key", func() map[string]any {
			v := minimal()
			asMap(asMap(v["capture"])["secretEnv"])["PG_PASSWORD"] = map[string]any{"secretName": "pg"}
			return v
		}, "key", "secretEnv.PG_PASSWORD.key is required"},
		{"a NATS password in config and from nats.auth", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"auth": map[string]any{"username": "sluice", "password": map[string]any{"secretName": "nats", "key": "password"}}}
			asMap(asMap(v["config"])["nats"])["password"] = "s3cr3t"
			return v
		}, "config.nats.password: the NATS credentials come from nats.auth", "config.nats.password: the NATS credentials come from nats.auth"},
		{"a NATS token in config beside an nkey from nats.auth", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"auth": map[string]any{"nkey": map[string]any{"secretName": "nats", "key": "seed"}}}
			asMap(asMap(v["config"])["nats"])["token"] = "${NATS_TOKEN}"
			return v
		}, "config.nats.token: the NATS credentials come from nats.auth", "config.nats.token: the NATS credentials come from nats.auth"},
		{"NATS user info in the URL and nats.auth", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"auth": map[string]any{"creds": map[string]any{"secretName": "nats", "key": "sluice.creds"}}}
			asMap(asMap(v["config"])["nats"])["url"] = "nats://n1:4222, nats://sluice:${NATS_PASSWORD}@n2:4222"
			return v
		}, "config.nats.url holds a user, password or token", "config.nats.url holds a user, password or token"},
		{"two ways to authenticate in nats.auth", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"auth": map[string]any{
				"token": map[string]any{"secretName": "nats", "key": "token"},
				"creds": map[string]any{"secretName": "nats", "key": "sluice.creds"},
			}}
			return v
		}, "give one way to authenticate", "give one way to authenticate"},
		{"a NATS password without a user", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"auth": map[string]any{"password": map[string]any{"secretName": "nats", "key": "password"}}}
			return v
		}, "nats.auth.password needs nats.auth.username", "nats.auth.password needs nats.auth.username"},
		{"a NATS password given as it is", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"auth": map[string]any{"username": "sluice", "password": "s3cr3t"}}
			return v
		}, "password", "nats.auth.password must be {secretName, key}"},
		{"a NATS nkey without its key", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"auth": map[string]any{"nkey": map[string]any{"secretName": "nats"}}}
			return v
		}, "key", "nats.auth.nkey.key is required"},
		{"a NATS CA in config and from nats.tls", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"tls": map[string]any{"enabled": true, "secretName": "nats-tls"}}
			asMap(asMap(v["config"])["nats"])["tls_ca_file"] = "/etc/ca/ca.crt"
			return v
		}, "config.nats.tls_ca_file: nats.tls.enabled sets the NATS TLS settings", "config.nats.tls_ca_file: nats.tls.enabled sets the NATS TLS settings"},
		{"a NATS TLS Secret with TLS off", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"tls": map[string]any{"secretName": "nats-tls"}}
			return v
		}, "need nats.tls.enabled: true", "need nats.tls.enabled: true"},
		{"a NATS client certificate without its key", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"tls": map[string]any{"enabled": true, "secretName": "nats-tls", "key": ""}}
			return v
		}, "give both (the client certificate and its key) or neither", "give both (the client certificate and its key) or neither"},
		{"an env var of nats.auth in secretEnv too", func() map[string]any {
			v := minimal()
			v["nats"] = map[string]any{"auth": map[string]any{"token": map[string]any{"secretName": "nats", "key": "token"}}}
			asMap(asMap(v["capture"])["secretEnv"])["SLUICE_NATS_TOKEN"] = map[string]any{"secretName": "other", "key": "token"}
			return v
		}, "secretEnv.SLUICE_NATS_TOKEN: the chart sets SLUICE_NATS_TOKEN from nats.auth", "secretEnv.SLUICE_NATS_TOKEN: the chart sets SLUICE_NATS_TOKEN from nats.auth"},
		{"CPU autoscaling without a CPU request", func() map[string]any {
			v := minimal()
			sink(v)["writer"] = map[string]any{
				"autoscaling": map[string]any{"enabled": true},
				"resources":   map[string]any{"requests": map[string]any{"memory": "64Mi"}},
			}
			return v
		}, "needs writer.resources.requests.cpu", "needs writer.resources.requests.cpu"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(c, tc.values())
			if err == nil {
				t.Fatalf("rendered; want an error mentioning %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if tc.template == "" {
				return
			}
			_, err = renderValues(c, tc.values(), true)
			if err == nil || !strings.Contains(err.Error(), tc.template) {
				t.Errorf("without the schema: error %v, want one mentioning %q", err, tc.template)
			}
		})
	}
}

// TestChartOverrides: a sink's writer settings override the defaults key by
// key, a false included (Sprig's merge would let a default true win), and a
// change of the configuration changes every pod's checksum.
func TestChartOverrides(t *testing.T) {
	c := loadChart(t)
	v := readValues(t, filepath.Join(chartDir, "ci/minimal-values.yaml"))
	before := decodeAll(t, mustRender(t, c, v))

	v["writer"] = map[string]any{"autoscaling": map[string]any{"enabled": true, "maxReplicas": 5}}
	sink := asMap(asList(asMap(v["config"])["sinks"])[0])
	asMap(sink["writer"])["autoscaling"] = map[string]any{"enabled": false}
	asMap(sink["writer"])["podDisruptionBudget"] = map[string]any{"enabled": false}
	asMap(sink["writer"])["replicas"] = 5
	asMap(v["config"])["log"] = map[string]any{"level": "debug"}
	after := decodeAll(t, mustRender(t, c, v))

	w := after.deployments("writer")[0]
	if len(after.hpas) != 0 || w.Spec.Replicas == nil || *w.Spec.Replicas != 5 {
		t.Errorf("the sink's autoscaling.enabled false did not win over the default's true (autoscalers %d, replicas %v)", len(after.hpas), w.Spec.Replicas)
	}
	if after.pdbFor(w) != nil {
		t.Error("the sink's podDisruptionBudget.enabled false did not win over the default's true")
	}
	for _, d := range after.deploys {
		for _, b := range before.deploys {
			if d.Name == b.Name && d.Spec.Template.Annotations["checksum/config"] == b.Spec.Template.Annotations["checksum/config"] {
				t.Errorf("%s: a configuration change left checksum/config as it was: the pods would not roll", d.Name)
			}
		}
	}
}

// TestChartNames: release and sink names that are long, or hold what
// Kubernetes names refuse, still give valid, distinct names.
func TestChartNames(t *testing.T) {
	c := loadChart(t)
	v := readValues(t, filepath.Join(chartDir, "ci/minimal-values.yaml"))
	base := asMap(asList(asMap(v["config"])["sinks"])[0])
	var sinks []any
	for _, name := range []string{
		strings.Repeat("a", 60) + "_eu", strings.Repeat("a", 60) + "_us", // alike past the cut
		"Cache_EU", "_x_",
	} {
		s := maps.Clone(base)
		s["name"] = name
		sinks = append(sinks, s)
	}
	asMap(v["config"])["sinks"] = sinks
	v["fullnameOverride"] = strings.Repeat("sluice-production-", 3)
	objs := decodeAll(t, mustRender(t, c, v))
	if n := len(objs.deployments("writer")); n != len(sinks) {
		t.Errorf("%d writer Deployments for %d sinks", n, len(sinks))
	}
	for _, svc := range objs.services {
		for _, msg := range validation.IsDNS1035Label(svc.Name) {
			t.Errorf("Service name %q: %s", svc.Name, msg)
		}
	}
}

// TestChartSchemaMatchesConfig: values.schema.json describes the
// configuration file field by field (so that a misspelt field fails the
// install, not the pods); it must follow pkg/config's fields.
func TestChartSchemaMatchesConfig(t *testing.T) {
	var schema map[string]any
	if err := json.Unmarshal(readFile(t, filepath.Join(chartDir, "values.schema.json")), &schema); err != nil {
		t.Fatal(err)
	}
	node := asMap(asMap(schema["properties"])["config"])
	compareSchema(t, "config", node, reflect.TypeFor[config.Config]())
}

func compareSchema(t *testing.T, path string, node map[string]any, typ reflect.Type) {
	t.Helper()
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		if typ.Kind() == reflect.Slice {
			node = asMap(node["items"])
		}
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct || node["additionalProperties"] != false {
		return
	}
	props := asMap(node["properties"])
	fields := map[string]reflect.Type{}
	for f := range typ.Fields() {
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag != "" && tag != "-" {
			fields[tag] = f.Type
		}
	}
	for name, ft := range fields {
		if path == "config.sinks[]" && name == "writers" {
			// The chart sets it; the schema keeps it out of the values.
			continue
		}
		p, ok := props[name]
		if !ok {
			t.Errorf("values.schema.json: %s.%s, a field of the configuration, is missing", path, name)
			continue
		}
		child := path + "." + name
		if ft.Kind() == reflect.Slice {
			child += "[]"
		}
		compareSchema(t, child, asMap(p), ft)
	}
	for name := range props {
		if _, ok := fields[name]; !ok && !(path == "config.sinks[]" && name == "writer") {
			t.Errorf("values.schema.json: %s.%s is not a field of the configuration", path, name)
		}
	}
	if path == "config.sinks[]" {
		if _, ok := fields["writers"]; !ok {
			t.Error("the configuration has no sinks[].writers, which the chart sets")
		}
	}
}

// TestChartNATSExample: the NATS chart values the documentation points to
// make a 3-node JetStream cluster with persistent storage.
func TestChartNATSExample(t *testing.T) {
	v := readValues(t, filepath.Join(chartDir, "examples/nats-values.yaml"))
	cfg := asMap(v["config"])
	cluster, js := asMap(cfg["cluster"]), asMap(cfg["jetstream"])
	if cluster["enabled"] != true || toInt(cluster["replicas"]) != 3 {
		t.Errorf("config.cluster = %v, want enabled with 3 replicas", cluster)
	}
	fs := asMap(js["fileStore"])
	if js["enabled"] != true || fs["enabled"] != true || asMap(fs["pvc"])["enabled"] != true || asMap(fs["pvc"])["size"] == nil {
		t.Errorf("config.jetstream = %v, want JetStream on a file store in a PVC", js)
	}
}

// Rendering.

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func valuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("%d example values files in %s/ci, want at least 3", len(files), chartDir)
	}
	return files
}

func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValuesFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func readFile(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// render is `helm template`: values coalesced with the chart's, checked
// against values.schema.json, templates rendered for an install.
func render(c *chart.Chart, vals map[string]any) (map[string]string, error) {
	return renderValues(c, vals, false)
}

// renderValues is render, or `helm template --skip-schema-validation`.
func renderValues(c *chart.Chart, vals map[string]any, skipSchema bool) (map[string]string, error) {
	coalesced, err := chartutil.CoalesceValues(c, vals)
	if err != nil {
		return nil, err
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = kubeVersion
	opts := chartutil.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true}
	top, err := chartutil.ToRenderValuesWithSchemaValidation(c, coalesced, opts, caps, skipSchema)
	if err != nil {
		return nil, err
	}
	return engine.Render(c, top)
}

func mustRender(t *testing.T, c *chart.Chart, vals map[string]any) *rendered {
	t.Helper()
	out, err := render(c, vals)
	if err != nil {
		t.Fatal(err)
	}
	return &rendered{chart: c, files: out}
}

type rendered struct {
	chart *chart.Chart
	files map[string]string
}

// objects are a release's objects by type.
type objects struct {
	chart           *chart.Chart
	deploys         []*appsv1.Deployment
	services        []*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	pdbs            []*policyv1.PodDisruptionBudget
	serviceMonitors []*monitoringv1.ServiceMonitor
	rules           []*monitoringv1.PrometheusRule
}

// decodeAll decodes every rendered object strictly: an unknown or
// duplicate field, or a kind the chart should not make, fails the test.
func decodeAll(t *testing.T, r *rendered) *objects {
	t.Helper()
	objs := &objects{chart: r.chart, configMaps: map[string]*corev1.ConfigMap{}}
	seen := map[string]bool{}
	for _, file := range slices.Sorted(maps.Keys(r.files)) {
		if !strings.HasSuffix(file, ".yaml") {
			continue // NOTES.txt, helpers
		}
		reader := k8syaml.NewYAMLReader(bufio.NewReader(strings.NewReader(r.files[file])))
		for {
			doc, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			var generic map[string]any
			if err := yaml.Unmarshal(doc, &generic); err != nil {
				t.Fatalf("%s: %v\n%s", file, err, doc)
			}
			if generic == nil {
				continue // an empty document: a switched-off template
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			var meta *metav1.ObjectMeta
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				o := &appsv1.Deployment{}
				strictYAML(t, file, doc, o)
				objs.deploys, meta = append(objs.deploys, o), &o.ObjectMeta
			case "v1 Service":
				o := &corev1.Service{}
				strictYAML(t, file, doc, o)
				objs.services, meta = append(objs.services, o), &o.ObjectMeta
			case "v1 ConfigMap":
				o := &corev1.ConfigMap{}
				strictYAML(t, file, doc, o)
				objs.configMaps[o.Name], meta = o, &o.ObjectMeta
			case "autoscaling/v2 HorizontalPodAutoscaler":
				o := &autoscalingv2.HorizontalPodAutoscaler{}
				strictYAML(t, file, doc, o)
				objs.hpas, meta = append(objs.hpas, o), &o.ObjectMeta
			case "policy/v1 PodDisruptionBudget":
				o := &policyv1.PodDisruptionBudget{}
				strictYAML(t, file, doc, o)
				objs.pdbs, meta = append(objs.pdbs, o), &o.ObjectMeta
			case "monitoring.coreos.com/v1 ServiceMonitor":
				o := &monitoringv1.ServiceMonitor{}
				strictYAML(t, file, doc, o)
				objs.serviceMonitors, meta = append(objs.serviceMonitors, o), &o.ObjectMeta
			case "monitoring.coreos.com/v1 PrometheusRule":
				o := &monitoringv1.PrometheusRule{}
				strictYAML(t, file, doc, o)
				objs.rules, meta = append(objs.rules, o), &o.ObjectMeta
			default:
				t.Fatalf("%s: unexpected object %s %s:\n%s", file, tm.APIVersion, tm.Kind, doc)
			}
			key := tm.Kind + "/" + meta.Namespace + "/" + meta.Name
			if seen[key] {
				t.Errorf("%s: two objects %s", file, key)
			}
			seen[key] = true
			checkMeta(t, tm.Kind, meta)
		}
	}
	return objs
}

func strictYAML(t *testing.T, file string, doc []byte, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(doc, into); err != nil {
		t.Fatalf("%s: %T: %v\n%s", file, into, err, doc)
	}
}

// checkMeta checks names and labels as the API server would.
func checkMeta(t *testing.T, kind string, m *metav1.ObjectMeta) {
	t.Helper()
	for _, msg := range validation.IsDNS1123Subdomain(m.Name) {
		t.Errorf("%s %q: %s", kind, m.Name, msg)
	}
	if kind == "Service" {
		for _, msg := range validation.IsDNS1035Label(m.Name) {
			t.Errorf("%s %q: %s", kind, m.Name, msg)
		}
	}
	for k, v := range m.Labels {
		for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
			t.Errorf("%s %s: label %s=%s: %s", kind, m.Name, k, v, msg)
		}
	}
	if m.Labels["app.kubernetes.io/instance"] != release {
		t.Errorf("%s %s: labels %v lack app.kubernetes.io/instance=%s", kind, m.Name, m.Labels, release)
	}
}

func (o *objects) deployments(component string) []*appsv1.Deployment {
	var out []*appsv1.Deployment
	for _, d := range o.deploys {
		if d.Spec.Template.Labels["app.kubernetes.io/component"] == component {
			out = append(out, d)
		}
	}
	return out
}

func (o *objects) hpaFor(deployment string) *autoscalingv2.HorizontalPodAutoscaler {
	for _, h := range o.hpas {
		if h.Spec.ScaleTargetRef.Name == deployment {
			return h
		}
	}
	return nil
}

func (o *objects) pdbFor(d *appsv1.Deployment) *policyv1.PodDisruptionBudget {
	for _, p := range o.pdbs {
		if p.Spec.Selector != nil && labels.SelectorFromSet(p.Spec.Selector.MatchLabels).Matches(labels.Set(d.Spec.Template.Labels)) {
			return p
		}
	}
	return nil
}

func (o *objects) serviceFor(d *appsv1.Deployment) *corev1.Service {
	for _, s := range o.services {
		if len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
			return s
		}
	}
	return nil
}

func container(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	if len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", d.Name, len(d.Spec.Template.Spec.Containers))
	}
	return &d.Spec.Template.Spec.Containers[0]
}

// sinkArg returns the value of a writer's --sink flag, which must be given once.
func sinkArg(t *testing.T, d *appsv1.Deployment) string {
	t.Helper()
	args := container(t, d).Args
	var sinks []string
	for i, a := range args {
		if a == "--sink" && i+1 < len(args) {
			sinks = append(sinks, args[i+1])
		}
	}
	if len(sinks) != 1 {
		t.Fatalf("%s: args %q, want one --sink NAME", d.Name, args)
	}
	return sinks[0]
}

func hasEnv(c *corev1.Container, name string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
}

func selector(t *testing.T, s *metav1.LabelSelector) labels.Selector {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() {
		t.Fatal("an empty selector selects everything")
	}
	return sel
}

// writerSettings is what the chart documents for a sink's writer: the
// defaults under `writer`, each key the sink sets replacing the default's,
// maps one level down merged key by key.
func writerSettings(vals chartutil.Values, sink int) map[string]any {
	out := map[string]any{}
	for k, v := range asMap(vals["writer"]) {
		if m, ok := v.(map[string]any); ok {
			v = maps.Clone(m)
		}
		out[k] = v
	}
	own := asMap(asMap(asList(asMap(vals["config"])["sinks"])[sink])["writer"])
	for k, v := range own {
		d, dok := out[k].(map[string]any)
		m, ok := v.(map[string]any)
		if dok && ok {
			maps.Copy(d, m)
			continue
		}
		out[k] = v
	}
	return out
}

// varsOf returns the ${VAR}s a part of the configuration refers to, as
// Sluice's own interpolation finds them.
func varsOf(t *testing.T, v any) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			_, err := config.Expand(v, func(name string) (string, bool) {
				found[name] = true
				return "", true
			})
			if err != nil {
				t.Errorf("%q: %v", v, err)
			}
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(v)
	return found
}

func union(a, b map[string]bool) map[string]bool {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}

func sortedKeys(m map[string]bool) []string {
	keys := slices.Collect(maps.Keys(m))
	sort.Strings(keys)
	return keys
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	if m == nil {
		if vals, ok := v.(chartutil.Values); ok {
			return vals
		}
	}
	return m
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func toInt(v any) int {
	switch n := v.(type) {
	case int:
		return n
	case int64:
		return int(n)
	case float64:
		return int(n)
	case json.Number:
		i, _ := n.Int64()
		return int(i)
	}
	return -1
}
