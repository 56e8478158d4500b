package deploy

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

// secrets are the Secrets of a namespace: name → key → value.
type secrets map[string]map[string]string

// natsURL is config.nats.url in the values; each pod's configuration is
// pointed at the test's server instead.
const natsURL = "nats://nats:4222"

// TestChartNATSAuth: for each way Sluice authenticates to NATS, the
// Secrets named in nats.auth and nats.tls reach capture and every writer
// as the kubelet would give them (env vars, files of a volume), the
// ConfigMap holds references to them and no secret, and every pod's
// service, loading the configuration with only what its pod has, gets
// the settings a NATS server lets in, and is let in.
func TestChartNATSAuth(t *testing.T) {
	c := loadChart(t)
	file := func(t *testing.T, path string) string { return string(readFile(t, path)) }
	cases := []struct {
		name, method string
		// values returns the chart's nats values and the Secrets they
		// name, from settings the server accepts.
		values func(t *testing.T, good config.NATS) (map[string]any, secrets)
	}{
		{"username and password", testenv.NATSUserPassword, func(t *testing.T, g config.NATS) (map[string]any, secrets) {
			return map[string]any{"auth": map[string]any{
					"username": g.Username,
					"password": ref("sluice-nats", "password"),
				}},
				secrets{"sluice-nats": {"password": g.Password}}
		}},
		{"username and password from a basic-auth Secret", testenv.NATSUserPassword, func(t *testing.T, g config.NATS) (map[string]any, secrets) {
			return map[string]any{"auth": map[string]any{
					"username": ref("sluice-nats-user", "username"),
					"password": ref("sluice-nats-user", "password"),
				}},
				secrets{"sluice-nats-user": {"username": g.Username, "password": g.Password}}
		}},
		{"token", testenv.NATSToken, func(t *testing.T, g config.NATS) (map[string]any, secrets) {
			return map[string]any{"auth": map[string]any{"token": ref("sluice-nats", "token")}},
				secrets{"sluice-nats": {"token": g.Token}}
		}},
		{"nkey", testenv.NATSNKey, func(t *testing.T, g config.NATS) (map[string]any, secrets) {
			return map[string]any{"auth": map[string]any{"nkey": ref("sluice-nats", "seed")}},
				secrets{"sluice-nats": {"seed": file(t, g.NKeyFile)}}
		}},
		{"creds", testenv.NATSCreds, func(t *testing.T, g config.NATS) (map[string]any, secrets) {
			return map[string]any{"auth": map[string]any{"creds": ref("sluice-nats", "sluice.creds")}},
				secrets{"sluice-nats": {"sluice.creds": file(t, g.CredsFile)}}
		}},
		{"tls from a cert-manager Secret", testenv.NATSTLS, func(t *testing.T, g config.NATS) (map[string]any, secrets) {
			return map[string]any{"tls": map[string]any{"enabled": true, "secretName": "sluice-nats-tls"}},
				secrets{"sluice-nats-tls": {"ca.crt": file(t, g.TLSCAFile), "tls.crt": file(t, g.TLSCertFile), "tls.key": file(t, g.TLSKeyFile)}}
		}},
		{"tls with the CA of another Secret and keys of their own", testenv.NATSTLS, func(t *testing.T, g config.NATS) (map[string]any, secrets) {
			return map[string]any{"tls": map[string]any{
					"enabled": true, "secretName": "sluice-client", "caSecretName": "nats-ca",
					"ca": "bundle.pem", "cert": "client.pem", "key": "client-key.pem",
				}},
				secrets{
					"sluice-client": {"client.pem": file(t, g.TLSCertFile), "client-key.pem": file(t, g.TLSKeyFile)},
					"nats-ca":       {"bundle.pem": file(t, g.TLSCAFile)},
				}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := testenv.NewSecureNATS(t, tc.method)
			natsValues, natsSecrets := tc.values(t, srv.Good)
			for pod, cfg := range checkNATSRelease(t, c, natsValues, natsSecrets, srv.Good, srv.URL()) {
				nc, _, err := topology.Dial(cfg.NATS, pod, zap.NewNop())
				if err != nil {
					t.Errorf("%s: the server refuses the pod's NATS settings: %v", pod, err)
					continue
				}
				nc.Close()
			}
			// The server is no pushover: settings of the same kind but
			// other credentials are refused.
			if nc, _, err := topology.Dial(srv.Bad, "stranger", zap.NewNop()); err == nil {
				nc.Close()
				t.Fatal("the server lets in other credentials: the test proves nothing")
			}
		})
	}
}

// TestChartNATSAuthWithTLS: credentials and TLS files together, from two
// Secrets, as the README shows them, reach every pod in one volume and
// load. (No server here takes both: each part is let in above.)
func TestChartNATSAuthWithTLS(t *testing.T) {
	c := loadChart(t)
	creds := testenv.NewSecureNATS(t, testenv.NATSCreds).Good
	tls := testenv.NewSecureNATS(t, testenv.NATSTLS).Good
	want := tls
	want.CredsFile = creds.CredsFile
	checkNATSRelease(t, c,
		map[string]any{
			"auth": map[string]any{"creds": ref("sluice-nats", "sluice.creds")},
			"tls":  map[string]any{"enabled": true, "secretName": "sluice-nats-client"},
		},
		secrets{
			"sluice-nats":        {"sluice.creds": string(readFile(t, creds.CredsFile))},
			"sluice-nats-client": {"ca.crt": string(readFile(t, tls.TLSCAFile)), "tls.crt": string(readFile(t, tls.TLSCertFile)), "tls.key": string(readFile(t, tls.TLSKeyFile))},
		},
		want, "tls://127.0.0.1:4222")
}

// checkNATSRelease renders the chart with the nats values and checks each
// pod against natsSecrets (see TestChartNATSAuth); it returns the
// configuration each pod's service loads, by Deployment, pointed at url,
// whose NATS settings are want's.
func checkNATSRelease(t *testing.T, c *chart.Chart, natsValues map[string]any, natsSecrets secrets, want config.NATS, url string) map[string]*config.Config {
	t.Helper()
	vals := natsAuthValues(t, natsValues)
	lintValues(t, vals)
	coalesced, err := chartutil.CoalesceValues(c, vals)
	if err != nil {
		t.Fatal(err)
	}
	r := mustRender(t, c, vals)
	objs := decodeAll(t, r)
	// Those of the example, and those of NATS.
	secs := secrets{"sluice-postgres": {"password": testenv.Secret()}, "redis": {"redis-password": testenv.Secret()}}
	maps.Copy(secs, natsSecrets)
	checkNoSecrets(t, r, secs)
	cfgText, raw := checkConfigMapNATS(t, objs)

	if n := len(objs.deployments("capture")); n != 1 {
		t.Errorf("%d capture Deployments, want 1", n)
	}
	if n := len(objs.deployments("writer")); n != 2 {
		t.Errorf("%d writer Deployments, want 2 (one per sink)", n)
	}
	out := map[string]*config.Config{}
	for _, d := range objs.deploys {
		checkPod(t, d, toInt(coalesced["httpPort"]), cfgText)
		pod := kubelet(t, d, secs)
		for name := range natsSecrets {
			if !pod.refs[name] {
				t.Errorf("%s: the pod does not refer to Secret %s", d.Name, name)
			}
		}
		checkNATSReferences(t, d, raw, pod)

		scope := config.Capture
		if d.Spec.Template.Labels["app.kubernetes.io/component"] == "writer" {
			scope = config.Writer(sinkArg(t, d))
		}
		text := pod.reroot(cfgText)
		if !strings.Contains(text, natsURL) {
			t.Fatalf("the configuration lacks nats.url %s:\n%s", natsURL, cfgText)
		}
		text = strings.Replace(text, natsURL, url, 1)
		cfg, err := config.Parse([]byte(text), scope, pod.lookup)
		if err != nil {
			t.Errorf("%s: the configuration does not load for %s with what the pod has: %v\n%s", d.Name, scope, err, cfgText)
			continue
		}
		checkNATSFields(t, d.Name, cfg.NATS, want)
		out[d.Name] = cfg
	}
	return out
}

func ref(secret, key string) map[string]any {
	return map[string]any{"secretName": secret, "key": key}
}

// natsAuthValues are the minimal example with a second sink (every
// writer must get the credentials) and the given chart nats values.
func natsAuthValues(t *testing.T, natsValues map[string]any) map[string]any {
	t.Helper()
	v := readValues(t, filepath.Join(chartDir, "ci/minimal-values.yaml"))
	cfg := asMap(v["config"])
	cfg["nats"] = map[string]any{"url": natsURL}
	first := asMap(asList(cfg["sinks"])[0])
	second := maps.Clone(first)
	second["name"] = "cache-us"
	cfg["sinks"] = append(asList(cfg["sinks"]), second)
	v["nats"] = natsValues
	return v
}

func lintValues(t *testing.T, vals map[string]any) {
	t.Helper()
	for _, m := range lint.AllWithKubeVersion(chartDir, vals, namespace, &kubeVersion).Messages {
		if m.Severity >= support.WarningSev {
			t.Error(m)
		}
	}
}

// checkNoSecrets: no secret value is anywhere in the release, ConfigMaps
// included: the chart only names the Secrets.
func checkNoSecrets(t *testing.T, r *rendered, secs secrets) {
	t.Helper()
	for file, text := range r.files {
		for name, keys := range secs {
			for key, value := range keys {
				if key == "username" {
					continue // no secret (and here the release's name too)
				}
				if v := strings.TrimSpace(value); v != "" && strings.Contains(text, v) {
					t.Errorf("%s holds the value of Secret %s key %s", file, name, key)
				}
			}
		}
	}
}

// checkConfigMapNATS returns the configuration file of the ConfigMap and
// its nats part.
func checkConfigMapNATS(t *testing.T, objs *objects) (string, map[string]any) {
	t.Helper()
	cm := objs.configMaps[release+"-config"]
	if cm == nil {
		t.Fatalf("no ConfigMap %s-config", release)
	}
	text := cm.Data["sluice.yaml"]
	var raw map[string]any
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatal(err)
	}
	return text, asMap(raw["nats"])
}

var varRef = regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$`)

// checkNATSReferences checks the nats part of the ConfigMap against the
// pod: a password, token or user from a Secret is a ${VAR} of an env var
// the pod gets from a Secret, a file is on one of its Secret volumes.
func checkNATSReferences(t *testing.T, d *appsv1.Deployment, nats map[string]any, pod *podView) {
	t.Helper()
	for _, f := range []string{"password", "token"} {
		v, ok := nats[f].(string)
		if !ok {
			continue
		}
		m := varRef.FindStringSubmatch(v)
		if m == nil {
			t.Errorf("nats.%s in the ConfigMap is %q, not a ${VAR} reference", f, v)
			continue
		}
		if !pod.fromSecret[m[1]] {
			t.Errorf("%s: nats.%s is ${%s}, which the pod does not get from a Secret", d.Name, f, m[1])
		}
	}
	if m := varRef.FindStringSubmatch(asString(nats["username"])); m != nil && !pod.fromSecret[m[1]] {
		t.Errorf("%s: nats.username is ${%s}, which the pod does not get from a Secret", d.Name, m[1])
	}
	for _, f := range []string{"nkey_file", "creds_file", "tls_ca_file", "tls_cert_file", "tls_key_file"} {
		p, ok := nats[f].(string)
		if !ok {
			continue
		}
		if !slices.ContainsFunc(pod.mounts, func(m string) bool { return strings.HasPrefix(p, m+"/") }) {
			t.Errorf("%s: nats.%s %s is on none of the pod's Secret volumes %v", d.Name, f, p, pod.mounts)
		}
	}
}

func asString(v any) string {
	s, _ := v.(string)
	return s
}

// checkNATSFields: the NATS settings a pod's service loaded are the ones
// the server accepts: the same user, password and token, files of the
// same content, TLS as required.
func checkNATSFields(t *testing.T, pod string, got, want config.NATS) {
	t.Helper()
	if got.Auth() != want.Auth() {
		t.Errorf("%s: authenticates by %s, want %s", pod, got.Auth(), want.Auth())
	}
	if got.Username != want.Username || got.Password != want.Password || got.Token != want.Token {
		// Never print them.
		t.Errorf("%s: nats.username, password or token differ from the Secret's", pod)
	}
	if got.TLS != want.TLS {
		t.Errorf("%s: nats.tls = %v, want %v", pod, got.TLS, want.TLS)
	}
	for _, f := range []struct{ name, got, want string }{
		{"nkey_file", got.NKeyFile, want.NKeyFile},
		{"creds_file", got.CredsFile, want.CredsFile},
		{"tls_ca_file", got.TLSCAFile, want.TLSCAFile},
		{"tls_cert_file", got.TLSCertFile, want.TLSCertFile},
		{"tls_key_file", got.TLSKeyFile, want.TLSKeyFile},
	} {
		if (f.got == "") != (f.want == "") {
			t.Errorf("%s: nats.%s = %q, want it set: %v", pod, f.name, f.got, f.want != "")
			continue
		}
		if f.got == "" {
			continue
		}
		g, err := os.ReadFile(f.got)
		w, _ := os.ReadFile(f.want)
		if err != nil || string(g) != string(w) {
			t.Errorf("%s: nats.%s does not hold the Secret's file (%v)", pod, f.name, err)
		}
	}
}

// podView is what a pod's container sees of the Secrets, as the kubelet
// gives them: env vars, and the files of Secret and projected volumes,
// written here under root at their mount paths.
type podView struct {
	root       string
	env        map[string]string
	fromSecret map[string]bool // env vars from a Secret
	mounts     []string        // mount paths of Secret volumes
	refs       map[string]bool // Secrets the pod refers to
}

func (p *podView) lookup(name string) (string, bool) {
	v, ok := p.env[name]
	return v, ok
}

// reroot moves the paths of the pod's Secret volumes in a text under root.
func (p *podView) reroot(text string) string {
	for _, m := range p.mounts {
		text = strings.ReplaceAll(text, m+"/", filepath.Join(p.root, m)+"/")
	}
	return text
}

// kubelet builds what d's container sees of secs. A key a pod needs and a
// Secret lacks fails here, as it would keep the pod from starting; so does
// a file the service's user could not read, or one mounted writable or
// readable by others.
func kubelet(t *testing.T, d *appsv1.Deployment, secs secrets) *podView {
	t.Helper()
	spec := d.Spec.Template.Spec
	c := container(t, d)
	p := &podView{root: t.TempDir(), env: map[string]string{}, fromSecret: map[string]bool{}, refs: map[string]bool{}}
	get := func(name, key string) (string, bool) {
		p.refs[name] = true
		v, ok := secs[name][key]
		if !ok {
			t.Errorf("%s: refers to key %s of Secret %s, which has none: the pod would not start", d.Name, key, name)
		}
		return v, ok
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			r := e.ValueFrom.SecretKeyRef
			if v, ok := get(r.Name, r.Key); ok {
				p.env[e.Name], p.fromSecret[e.Name] = v, true
			}
		case e.ValueFrom == nil:
			p.env[e.Name] = e.Value
		}
	}

	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	uid, gid := psc.RunAsUser, psc.RunAsGroup
	if sc := c.SecurityContext; sc != nil {
		uid, gid = cmpOr(sc.RunAsUser, uid), cmpOr(sc.RunAsGroup, gid)
	}
	groups := slices.Clone(psc.SupplementalGroups)
	if gid != nil {
		groups = append(groups, *gid)
	}
	if psc.FSGroup != nil {
		groups = append(groups, *psc.FSGroup)
	}

	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			t.Errorf("%s: mount %s has no volume", d.Name, m.Name)
			continue
		}
		vol := spec.Volumes[i]
		type source struct {
			secret string
			items  []corev1.KeyToPath
		}
		var sources []source
		var defaultMode *int32
		switch {
		case vol.Secret != nil:
			sources = []source{{vol.Secret.SecretName, vol.Secret.Items}}
			defaultMode = vol.Secret.DefaultMode
		case vol.Projected != nil:
			for _, s := range vol.Projected.Sources {
				if s.Secret != nil {
					sources = append(sources, source{s.Secret.Name, s.Secret.Items})
				}
			}
			defaultMode = vol.Projected.DefaultMode
		}
		if len(sources) == 0 {
			continue
		}
		if !m.ReadOnly || m.SubPath != "" {
			t.Errorf("%s: Secret volume %s mounted writable or by subPath (which misses the Secret's updates)", d.Name, m.Name)
		}
		p.mounts = append(p.mounts, m.MountPath)
		for _, s := range sources {
			items := s.items
			if len(items) == 0 {
				for _, k := range slices.Sorted(maps.Keys(secs[s.secret])) {
					items = append(items, corev1.KeyToPath{Key: k, Path: k})
				}
			}
			for _, it := range items {
				v, ok := get(s.secret, it.Key)
				if !ok {
					continue
				}
				mode := int32(0o644) // the API's default
				if defaultMode != nil {
					mode = *defaultMode
				}
				if it.Mode != nil {
					mode = *it.Mode
				}
				if mode&^0o400 != 0 {
					t.Errorf("%s: %s/%s has mode %#o, want 0400: readable by the owner alone", d.Name, m.MountPath, it.Path, mode)
				}
				// The kubelet writes the files as root and, with an fsGroup,
				// gives that group read access.
				if psc.FSGroup != nil {
					mode |= 0o440
				}
				readable := uid != nil && *uid == 0 || mode&0o004 != 0 ||
					mode&0o040 != 0 && psc.FSGroup != nil && slices.Contains(groups, *psc.FSGroup)
				if uid == nil {
					t.Errorf("%s: no runAsUser: who reads %s/%s is unknown", d.Name, m.MountPath, it.Path)
				} else if !readable {
					fsGroup := "none"
					if psc.FSGroup != nil {
						fsGroup = fmt.Sprint(*psc.FSGroup)
					}
					t.Errorf("%s: %s/%s (mode %#o, root's, fsGroup %s) cannot be read by the service's user %d, groups %v",
						d.Name, m.MountPath, it.Path, mode, fsGroup, *uid, groups)
				}
				path := filepath.Join(p.root, m.MountPath, it.Path)
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(v), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return p
}

func cmpOr[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}
