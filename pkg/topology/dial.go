package topology

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
)

// Dial connects to the NATS servers of n (nats.url, with its credentials
// and TLS settings) for a service. The connection reconnects forever: a
// NATS restart pauses the services, it does not stop them. Neither its
// errors nor its logs show a password or token.
func Dial(n config.NATS, name string, log *zap.Logger, opts ...jetstream.JetStreamOpt) (*nats.Conn, jetstream.JetStream, error) {
	for i, s := range n.Servers() {
		if _, err := url.Parse(s); err != nil {
			// The parser's message quotes the URL, and a password in it the
			// scrubber cannot find.
			return nil, nil, fmt.Errorf("nats.url: server %d cannot be parsed as a URL (percent-encode reserved characters of a password in it)", i+1)
		}
	}
	scrub := scrubber(n)
	where := Redact(n.URL)
	var async repeats
	options := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		// Refused credentials too are waited out (a server restarted with
		// new ones before the service got them), not given up after the
		// second refusal: a closed connection never comes back.
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.Timeout(5 * time.Second),
		// A server that hangs (or a connection dropped without a word)
		// answers no ping: after two, the client moves to another server
		// of the cluster, within 10-15 s instead of the default 4 minutes.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from nats; reconnecting", zap.String("error", scrub(err.Error())))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("reconnected to nats", zap.String("url", c.ConnectedUrlRedacted())) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			// Asynchronous errors: a permission refused, a slow consumer,
			// the credentials refused at each reconnection attempt.
			msg := scrub(err.Error())
			if n, ok := async.next(msg); ok {
				log.Warn("nats", zap.String("error", msg), zap.Int("repeated", n))
			}
		}),
		nats.ClosedHandler(func(c *nats.Conn) { conns.Delete(c) }),
	}
	options = append(options, authOptions(n)...)
	if n.InProcess != nil {
		options = append(options, nats.InProcessServer(n.InProcess))
	}
	nc, err := nats.Connect(strings.Join(n.Servers(), ","), options...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats at %s: %s", where, scrub(explain(err)))
	}
	if err := checkVersion(nc.ConnectedServerVersion()); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("nats at %s: %w", where, err)
	}
	conns.Store(nc, struct{}{})
	js, err := jetstream.New(nc, opts...)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %s", scrub(err.Error()))
	}
	return nc, js, nil
}

// repeats lets an error through once per warnEvery while it repeats.
type repeats struct {
	mu         sync.Mutex
	last       string
	at         time.Time
	suppressed int
}

// next says whether to log msg, and how many times it was held back since
// it was last logged.
func (r *repeats) next(msg string) (held int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if msg == r.last && time.Since(r.at) < warnEvery {
		r.suppressed++
		return 0, false
	}
	if msg == r.last {
		held = r.suppressed
	}
	r.last, r.at, r.suppressed = msg, time.Now(), 0
	return held, true
}

// authOptions are the client options of n's credentials and TLS settings.
func authOptions(n config.NATS) []nats.Option {
	var o []nats.Option
	switch {
	case n.Username != "":
		o = append(o, nats.UserInfo(n.Username, n.Password))
	case n.Token != "":
		o = append(o, nats.Token(n.Token))
	case n.NKeyFile != "":
		// Read at connect: a missing or bad file fails there, named.
		o = append(o, nkeyOption(n.NKeyFile))
	case n.CredsFile != "":
		o = append(o, nats.UserCredentials(n.CredsFile))
	}
	if n.TLS {
		o = append(o, nats.Secure())
	}
	if n.TLSCAFile != "" {
		o = append(o, nats.RootCAs(n.TLSCAFile))
	}
	if n.TLSCertFile != "" {
		o = append(o, nats.ClientCert(n.TLSCertFile, n.TLSKeyFile))
	}
	return o
}

// nkeyOption is nats.NkeyOptionFromSeed, whose error names the file.
func nkeyOption(file string) nats.Option {
	return func(o *nats.Options) error {
		opt, err := nats.NkeyOptionFromSeed(file)
		if err != nil {
			return fmt.Errorf("nats.nkey_file %s: %w", file, err)
		}
		return opt(o)
	}
}

// explain adds what an operator should look at to the errors of a server
// that refused the client.
func explain(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, nats.ErrAuthorization), strings.Contains(strings.ToLower(msg), "authorization violation"),
		strings.Contains(strings.ToLower(msg), "authentication"):
		return msg + " (the server refused the credentials: check nats.username/password, token, nkey_file or creds_file, and the user info in nats.url)"
	case strings.Contains(msg, "certificate"), strings.Contains(msg, "tls:"), strings.Contains(msg, "tls error"), strings.Contains(msg, "x509"):
		// With TLS 1.3 a refused client certificate may show only as the
		// server closing the connection after the handshake ("tls error").
		return msg + " (check nats.tls_ca_file, tls_cert_file and tls_key_file)"
	}
	return msg
}

// scrubber returns a function that replaces n's passwords and tokens in a
// message: the client's errors may quote a URL.
func scrubber(n config.NATS) func(string) string {
	secrets := n.Secrets()
	// Longest first, so that a secret holding another is replaced whole.
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	return func(msg string) string {
		for _, s := range secrets {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
		return msg
	}
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
// NATS URLs, for messages. A URL it cannot parse is left out whole: its
// user info cannot be told from the rest.
func Redact(servers string) string {
	list := strings.Split(servers, ",")
	for i, s := range list {
		s = strings.TrimSpace(s)
		u, err := url.Parse(s)
		if !strings.Contains(s, "://") {
			u, err = url.Parse("nats://" + s)
		}
		if err != nil {
			list[i] = "(a URL that cannot be parsed)"
			continue
		}
		if u.User == nil {
			list[i] = s
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
