package configcheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	doc := `postgres: {url: "postgres://app:${CHECK_PG_PASSWORD}@db/app", tables: [users]}
nats: {url: "nats://nats:4222"}
sinks:
  - name: cache
    destination: {type: redis_string, host: redis, port: 6379, password: "${CHECK_REDIS_PASSWORD}"}
`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CHECK_PG_PASSWORD", "p")
	for _, c := range []struct {
		service, sink, err string
	}{
		{"capture", "", ""},                         // the writer's secret is not the capture's
		{"writer", "cache", "CHECK_REDIS_PASSWORD"}, // unset
		{"all", "", "CHECK_REDIS_PASSWORD"},
		{"writer", "", "--service writer needs --sink"},
		{"capture", "cache", "--sink goes with --service"},
		{"loader", "", `"loader" is not capture`},
		{"writer", "other", `no sink named "other"`},
	} {
		var out strings.Builder
		scope, err := Scope(c.service, c.sink)
		if err == nil {
			err = Run(&out, path, scope)
		}
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("--service %s --sink %q: %v, want %q", c.service, c.sink, err, c.err)
		}
		if err == nil && !strings.Contains(out.String(), "valid for") {
			t.Errorf("--service %s: output %q", c.service, out.String())
		}
	}
}
