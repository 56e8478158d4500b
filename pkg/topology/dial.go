package topology

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"
)

// Dial connects to NATS for a service. The connection reconnects forever:
// a NATS restart pauses the services, it does not stop them.
func Dial(servers, name string, log *zap.Logger, opts ...jetstream.JetStreamOpt) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(servers,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
		nats.Timeout(5*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from nats; reconnecting", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("reconnected to nats", zap.String("url", c.ConnectedUrlRedacted())) }),
		nats.ClosedHandler(func(c *nats.Conn) { conns.Delete(c) }),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats at %s: %w", Redact(servers), err)
	}
	if err := checkVersion(nc.ConnectedServerVersion()); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("nats at %s: %w", Redact(servers), err)
	}
	conns.Store(nc, struct{}{})
	js, err := jetstream.New(nc, opts...)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// MinServerVersion is the oldest NATS server Sluice runs against: the
// writers' pinned partition consumers and the membership bucket's expiry
// markers came in 2.11.
const MinServerVersion = "2.11.0"

// checkVersion refuses a server older than MinServerVersion, at connect,
// rather than when some feature is first used.
func checkVersion(v string) error {
	if !atLeast(v, MinServerVersion) {
		return fmt.Errorf("the server runs NATS %s; Sluice needs %s or newer", v, MinServerVersion)
	}
	return nil
}

// atLeast compares dotted versions ("2.11.4", "2.12.0-RC.1") numerically,
// part by part; a pre-release counts as its release.
func atLeast(v, min string) bool {
	vs, ms := strings.Split(v, "."), strings.Split(min, ".")
	for i, m := range ms {
		want, _ := strconv.Atoi(m)
		if i >= len(vs) {
			return want == 0
		}
		digits := strings.IndexFunc(vs[i], func(r rune) bool { return r < '0' || r > '9' })
		if digits < 0 {
			digits = len(vs[i])
		}
		got, err := strconv.Atoi(vs[i][:digits])
		if err != nil {
			return false
		}
		if got != want {
			return got > want
		}
	}
	return true
}

// Redact replaces the passwords and tokens in a comma-separated list of
// NATS URLs, for messages.
func Redact(servers string) string {
	list := strings.Split(servers, ",")
	for i, s := range list {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.User == nil {
			continue
		}
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = url.User("xxxxx") // a token
		}
		list[i] = u.String()
	}
	return strings.Join(list, ",")
}

// conns are the process's open NATS connections.
var conns sync.Map

var _ = promauto.NewGaugeFunc(prometheus.GaugeOpts{
	Name: "sluice_nats_up",
	Help: "1 while every NATS connection of the process is connected; 0 while one is reconnecting.",
}, func() float64 {
	up := 1.0
	conns.Range(func(k, _ any) bool {
		if !k.(*nats.Conn).IsConnected() {
			up = 0
		}
		return up == 1
	})
	return up
})

// Connected is a readiness check: nil while nc is connected to a server.
func Connected(nc *nats.Conn) error {
	if !nc.IsConnected() {
		return fmt.Errorf("not connected to nats (%s)", strings.ToLower(nc.Status().String()))
	}
	return nil
}
