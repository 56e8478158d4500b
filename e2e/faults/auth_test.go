package faults

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// natsYAML is the nats section of a config holding n's settings.
func natsYAML(n config.NATS) string {
	var b strings.Builder
	field := func(name, v string) {
		if v != "" {
			fmt.Fprintf(&b, "  %s: %q\n", name, v)
		}
	}
	field("url", n.URL)
	field("username", n.Username)
	field("password", n.Password)
	field("token", n.Token)
	field("nkey_file", n.NKeyFile)
	field("creds_file", n.CredsFile)
	if n.TLS {
		b.WriteString("  tls: true\n")
	}
	field("tls_ca_file", n.TLSCAFile)
	field("tls_cert_file", n.TLSCertFile)
	field("tls_key_file", n.TLSKeyFile)
	return b.String()
}

// Capture and a writer, as processes, through a NATS server that lets in
// only clients authenticated one way, for each way: a change reaches Redis.
func TestServicesAuthenticate(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	for i, method := range testenv.NATSAuthMethods {
		t.Run(method, func(t *testing.T) {
			srv := testenv.NewSecureNATS(t, method)
			// A slot of its own: each server holds a stream of its own.
			cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], slot: auth_%d, status_interval: 200ms}
nats:
%s  partitions: 2
sinks:
  - name: cache
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.PG.URL, i, natsYAML(srv.Good), e.Redis.Port))
			capture := harness.Start(t, "sluice-capture", "--config", cfg)
			writer := harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
			e.WaitStreamingFrom(capture, fmt.Sprintf("auth_%d", i))
			e.Exec(fmt.Sprintf(`INSERT INTO accounts (id, note) VALUES (%d, '%s')`, 1000+i, method))
			key := fmt.Sprintf("sequin:accounts:%d", 1000+i)
			harness.Eventually(t, 30*time.Second, func() string {
				if v, _ := e.RC.Get(context.Background(), key).Result(); !strings.Contains(v, method) {
					return fmt.Sprintf("%s is %q; writer: %s", key, v, writer.Tail(500))
				}
				return ""
			})
			for _, p := range []*harness.Proc{capture, writer} {
				p.Signal(syscall.SIGTERM)
				if code := p.WaitExit(30 * time.Second); code != 0 {
					t.Errorf("%s exited %d: %s", p.Name, code, p.Tail(2000))
				}
			}
			e.DropSlot(fmt.Sprintf("auth_%d", i))
		})
	}
}
