package faults

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/broker"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// secrets are what no output may show: every password and token of the
// configs, in every spelling (each is made of random parts, and no part
// may show, so that neither an encoded nor a partly redacted copy
// passes), and the long lines of the key and credentials files.
type secrets []string

// special returns a new password with the characters that need escaping
// in a URL, and a '%' that no URL decoder accepts.
func (s *secrets) special() string {
	parts := make([]string, 5)
	for i := range parts {
		b := make([]byte, 6)
		rand.Read(b)
		parts[i] = hex.EncodeToString(b)
	}
	*s = append(*s, parts...)
	return parts[0] + ":" + parts[1] + "/" + parts[2] + "@" + parts[3] + "%zz" + parts[4]
}

// server adds the secrets of a NATS server's good and bad settings.
func (s *secrets) server(t *testing.T, srv *testenv.SecureNATS) {
	for _, n := range []struct{ password, token string }{{srv.Good.Password, srv.Good.Token}, {srv.Bad.Password, srv.Bad.Token}} {
		for _, v := range []string{n.password, n.token} {
			if v != "" {
				*s = append(*s, v)
			}
		}
	}
	for _, f := range []string{srv.Good.NKeyFile, srv.Bad.NKeyFile, srv.Good.CredsFile, srv.Bad.CredsFile, srv.Good.TLSKeyFile, srv.Bad.TLSKeyFile} {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// A seed, a JWT, the base64 lines of a private key.
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); len(line) >= 40 && !strings.ContainsAny(line[:1], "-*") && !strings.Contains(line, " ") {
				*s = append(*s, line)
			}
		}
	}
}

// check fails the test for each secret that out shows.
func (s secrets) check(t *testing.T, what, out string) {
	t.Helper()
	for _, v := range s {
		if strings.Contains(out, v) {
			t.Errorf("%s shows the secret %q:\n%s", what, v, out)
		}
	}
}

// The commands, with their flags but --config.
var secretCommands = []struct {
	name string
	args []string
}{
	{"sluice-capture", nil},
	{"sluice-redis-writer", []string{"--sink", "cache"}},
	{"sluice", []string{"status"}},
	{"sluice", []string{"status", "--output", "json"}},
	{"sluice", []string{"dlq", "list", "--sink", "cache"}},
	{"sluice", []string{"dlq", "replay", "--sink", "cache"}},
	{"sluice", []string{"dlq", "drop", "--sink", "cache", "--all"}},
	{"sluice", []string{"backfill", "--sink", "cache", "--table", "accounts", "--detach"}},
	{"sluice", []string{"backfill", "--sink", "cache", "--table", "accounts", "--where", "id > 1", "--detach"}},
	{"sluice", []string{"resync"}},
	{"sluice", []string{"config", "check"}},
}

// TestNoCommandShowsSecrets: no command prints a password, token, NKey
// seed, credentials or private key, wherever the config holds them (NATS
// user info in one or several URLs, percent-encoded or not; the NATS
// fields and files; Postgres's URL in either form; Redis's password), when
// NATS cannot be reached, when it refuses the credentials, when Postgres
// and Redis refuse theirs, and when a URL cannot be parsed; and each says
// what failed. Then capture and a writer run while Redis, Postgres and
// NATS in turn refuse them or go away: their logs, /metrics, /readyz and
// /healthz show no secret either, and both are back on NATS once it takes
// their password again.
func TestNoCommandShowsSecrets(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	ctx := context.Background()
	var s secrets
	pgPassword, redisPassword, natsPassword, natsToken := s.special(), s.special(), s.special(), s.special()
	pgURL, err := e.PG.PasswordRole(ctx, "sluice", pgPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.RC.Do(ctx, "ACL", "SETUSER", "sluice", "on", ">"+redisPassword, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	servers := map[string]*testenv.SecureNATS{}
	for _, m := range testenv.NATSAuthMethods {
		servers[m] = testenv.NewSecureNATS(t, m)
		s.server(t, servers[m])
	}
	hostOf := func(m string) string { _, host, _ := strings.Cut(servers[m].URL(), "://"); return host }
	down, down2 := freeAddr(t), freeAddr(t)
	userinfo := func(u *url.Userinfo, host string) string {
		return (&url.URL{Scheme: "nats", User: u, Host: host}).String()
	}

	config := func(pg, natsYAML, redis string) string {
		return e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], failover: 1s}
nats:
%s
  partitions: 2
sinks:
  - name: cache
    destination: {type: redis_string, host: 127.0.0.1, port: %d, username: sluice, password: %q}
log: {level: debug, format: json}
`, pg, natsYAML, e.Redis.Port, redis))
	}
	// natsSettings are the ways to give NATS credentials, for servers
	// at host(method), with the credentials files good or bad.
	natsSettings := func(host func(method string) string, password, token string, good bool) map[string]string {
		sn := func(m string) struct{ nkey, creds, cert, key string } {
			c := servers[m].Bad
			if good {
				c = servers[m].Good
			}
			return struct{ nkey, creds, cert, key string }{c.NKeyFile, c.CredsFile, c.TLSCertFile, c.TLSKeyFile}
		}
		return map[string]string{
			"user info in urls": fmt.Sprintf("  url: %q", userinfo(url.UserPassword("sluice", password), host(testenv.NATSUserPassword))+
				", "+userinfo(url.User(token), host(testenv.NATSToken))),
			"username and password": fmt.Sprintf("  url: nats://%s\n  username: sluice\n  password: %q", host(testenv.NATSUserPassword), password),
			"token":                 fmt.Sprintf("  url: nats://%s\n  token: %q", host(testenv.NATSToken), token),
			"nkey_file":             fmt.Sprintf("  url: nats://%s\n  nkey_file: %s", host(testenv.NATSNKey), sn(testenv.NATSNKey).nkey),
			"creds_file":            fmt.Sprintf("  url: nats://%s\n  creds_file: %s", host(testenv.NATSCreds), sn(testenv.NATSCreds).creds),
			"tls client certificate": fmt.Sprintf("  url: tls://%s\n  tls: true\n  tls_ca_file: %s\n  tls_cert_file: %s\n  tls_key_file: %s",
				host(testenv.NATSTLS), servers[testenv.NATSTLS].Good.TLSCAFile, sn(testenv.NATSTLS).cert, sn(testenv.NATSTLS).key),
		}
	}

	// A situation: the config of each way to give NATS credentials, and
	// what each command must say (and whether it must fail).
	type expect struct {
		fails bool
		says  string
	}
	type situation struct {
		name    string
		configs map[string]string
		expect  func(auth, command string, args []string) expect
	}
	refused := func(auth string) string {
		if auth == "tls client certificate" {
			return "check nats.tls_ca_file, tls_cert_file and tls_key_file"
		}
		return "the server refused the credentials"
	}
	isCommand := func(command string, args []string, name string, first ...string) bool {
		if command != name {
			return false
		}
		for i, a := range first {
			if i >= len(args) || args[i] != a {
				return false
			}
		}
		return true
	}
	natsFails := func(says func(auth string) string) func(string, string, []string) expect {
		return func(auth, command string, args []string) expect {
			if isCommand(command, args, "sluice", "config") {
				return expect{false, "valid for every service"}
			}
			return expect{true, says(auth)}
		}
	}
	wrong, _ := url.Parse(pgURL)
	wrong.User = url.UserPassword("sluice", s.special())
	wrongPG, wrongRedis := wrong.String(), s.special()
	rawPG := fmt.Sprintf("postgres://sluice:%s@127.0.0.1:%d/postgres?sslmode=disable", pgPassword, e.PG.Port)
	keywordPG := fmt.Sprintf("host=127.0.0.1 port=%d1x user=sluice password='%s' dbname=postgres", e.PG.Port, pgPassword)
	downNATS := fmt.Sprintf("  url: nats://%s\n  token: %q", down, natsToken)

	situations := []situation{
		{"nats unreachable", map[string]string{}, natsFails(func(string) string { return "no servers available for connection" })},
		{"nats refuses", map[string]string{}, natsFails(refused)},
		{"postgres and redis refuse", map[string]string{}, func(auth, command string, args []string) expect {
			switch {
			case command == "sluice-capture", isCommand(command, args, "sluice", "status"),
				isCommand(command, args, "sluice", "backfill") && strings.Contains(strings.Join(args, " "), "--where"):
				return expect{true, "password authentication failed"}
			case command == "sluice-redis-writer":
				return expect{true, "WRONGPASS"}
			case isCommand(command, args, "sluice", "resync"):
				return expect{false, "resync asked for"}
			}
			return expect{false, ""}
		}},
		{"urls cannot be parsed", map[string]string{
			"nats url":          config(pgURL, fmt.Sprintf("  url: %q", "nats://sluice:"+natsPassword+"@"+down), redisPassword),
			"postgres url":      config(rawPG, downNATS, redisPassword),
			"postgres keywords": config(keywordPG, downNATS, redisPassword),
		}, func(auth, command string, args []string) expect {
			switch {
			case auth == "nats url":
				return expect{true, "nats.url: cannot be parsed"}
			case command == "sluice-redis-writer": // reads no postgres.url
				return expect{true, "no servers available for connection"}
			}
			return expect{true, "postgres.url: cannot be parsed"}
		}},
	}
	for auth, n := range natsSettings(func(string) string { return down }, natsPassword, natsToken, true) {
		if auth == "user info in urls" {
			n = fmt.Sprintf("  url: %q", userinfo(url.UserPassword("sluice", natsPassword), down)+", "+userinfo(url.User(natsToken), down2))
		}
		situations[0].configs[auth] = config(pgURL, n, redisPassword)
	}
	for auth, n := range natsSettings(hostOf, natsPassword, natsToken, false) {
		situations[1].configs[auth] = config(pgURL, n, redisPassword)
	}
	goodPassword, goodToken := servers[testenv.NATSUserPassword].Good.Password, servers[testenv.NATSToken].Good.Token
	for auth, n := range natsSettings(hostOf, goodPassword, goodToken, true) {
		if auth == "user info in urls" { // one server, and one that is down
			n = fmt.Sprintf("  url: %q", userinfo(url.UserPassword("sluice", goodPassword), hostOf(testenv.NATSUserPassword))+
				", "+userinfo(url.UserPassword("sluice", goodPassword), down))
		}
		situations[2].configs[auth] = config(wrongPG, n, wrongRedis)
	}

	for _, sit := range situations {
		t.Run(sit.name, func(t *testing.T) {
			for auth, cfg := range sit.configs {
				for _, c := range secretCommands {
					want := sit.expect(auth, c.name, c.args)
					t.Run(auth+"/"+strings.Join(append([]string{c.name}, c.args...), " "), func(t *testing.T) {
						t.Parallel()
						p := harness.Start(t, c.name, append(c.args, "--config", cfg)...)
						// A command that would wait (resync, for capture) is
						// stopped once it said what it waits for.
						harness.Eventually(t, time.Minute, func() string {
							if p.Exited() || want.says != "" && !want.fails && strings.Contains(p.Output(), want.says) {
								return ""
							}
							return "still running"
						})
						code := p.Stop(syscall.SIGKILL, time.Second)
						out := p.Output()
						s.check(t, "the output", out)
						if want.fails && (code == 0 || !strings.Contains(out, want.says)) {
							t.Errorf("exit status %d, want a failure that says %q:\n%s", code, want.says, out)
						}
						if !want.fails && (!strings.Contains(out, want.says) || want.says == "" && code != 0) {
							t.Errorf("exit status %d, want it to work and say %q:\n%s", code, want.says, out)
						}
					})
				}
			}
		})
	}

	t.Run("running services", func(t *testing.T) { runningServices(t, e, &s, pgURL, redisPassword, natsPassword, down) })
}

// runningServices runs capture and a writer while Redis, then Postgres,
// refuse their passwords, then NATS goes away, comes back refusing its,
// and at last takes it again: neither their logs nor their endpoints show
// a secret, each says what failed, and both are back on NATS at the end.
func runningServices(t *testing.T, e *harness.Env, s *secrets, pgURL, redisPassword, natsPassword, down string) {
	ctx := context.Background()
	natsAddr := freeAddr(t)
	port, _ := strconv.Atoi(natsAddr[strings.LastIndexByte(natsAddr, ':')+1:])
	users := func(password string) broker.Options {
		return broker.Options{Port: port, Auth: broker.Auth{Users: map[string]string{"sluice": password}}}
	}
	srv, err := broker.Start(users(natsPassword))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if srv != nil {
			srv.Shutdown()
		}
	})
	user := url.UserPassword("sluice", natsPassword)
	natsURL := (&url.URL{Scheme: "nats", User: user, Host: natsAddr}).String() + "," + (&url.URL{Scheme: "nats", User: user, Host: down}).String()
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms, failover: 1s}
nats: {url: %q, partitions: 2}
sinks:
  - name: cache
    ack_wait: 1s
    failover: 3s
    destination: {type: redis_string, host: 127.0.0.1, port: %d, username: sluice, password: %q}
log: {level: debug, format: json}
`, pgURL, natsURL, e.Redis.Port, redisPassword))
	capture := harness.StartServing(t, "sluice-capture", "--config", cfg)
	writer := harness.StartServing(t, "sluice-redis-writer", "--sink", "cache", "--config", cfg)
	services := []*harness.Served{capture, writer}

	// check looks at everything the services show, and waits until each
	// of them, as long as it runs, says what (case aside) in its log.
	check := func(phase, what string, of ...*harness.Served) {
		t.Helper()
		harness.Eventually(t, time.Minute, func() string {
			for _, p := range of {
				if !strings.Contains(strings.ToLower(p.Output()), strings.ToLower(what)) {
					return fmt.Sprintf("%s: %s has not logged %q", phase, p.Name, what)
				}
			}
			return ""
		})
		for _, p := range services {
			for _, path := range []string{"/metrics", "/readyz", "/healthz"} {
				s.check(t, phase+": "+p.Name+" "+path, p.Get(path))
			}
			s.check(t, phase+": the log of "+p.Name, p.Output())
		}
	}
	ready := func(p *harness.Served, code int, says string) func() string {
		return func() string {
			if got := p.Get("/readyz"); !strings.HasPrefix(got, strconv.Itoa(code)+" ") || !strings.Contains(got, says) {
				return p.Name + " /readyz: " + got
			}
			return ""
		}
	}
	for _, p := range services {
		harness.Eventually(t, 30*time.Second, ready(p, http.StatusOK, ""))
	}
	e.Exec(`INSERT INTO accounts (id) VALUES (1)`)
	harness.Eventually(t, 30*time.Second, func() string {
		if n, _ := e.RC.Exists(ctx, "sequin:accounts:1").Result(); n != 1 {
			return "row 1 not in redis"
		}
		return ""
	})
	check("working", "leading", capture)

	// Redis refuses the writer's password: a change waits for it.
	if err := e.RC.Do(ctx, "ACL", "SETUSER", "sluice", "resetpass", ">"+s.special()).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.RC.Do(ctx, "CLIENT", "KILL", "USER", "sluice").Err(); err != nil {
		t.Fatal(err)
	}
	e.Exec(`INSERT INTO accounts (id) VALUES (2)`)
	harness.Eventually(t, 30*time.Second, ready(writer, http.StatusServiceUnavailable, ""))
	check("redis refuses", "WRONGPASS", writer)

	// Postgres refuses capture's: its connections end, and it reconnects.
	var alter string
	if err := e.Conn.QueryRow(ctx, `SELECT format('ALTER ROLE sluice PASSWORD %L', $1::text)`, s.special()).Scan(&alter); err != nil {
		t.Fatal(err)
	}
	e.Exec(alter)
	e.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'sluice'`)
	harness.Eventually(t, 30*time.Second, ready(capture, http.StatusServiceUnavailable, ""))
	check("postgres refuses", "password authentication failed", capture)

	// NATS goes away, comes back refusing the password, and then
	// accepting it again: the services wait the refusals out.
	srv.Shutdown()
	srv = nil
	check("nats down", "disconnected from nats", capture, writer)
	if srv, err = broker.Start(users(s.special())); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, time.Minute, func() string {
		for _, name := range []string{"sluice-capture", "sluice-redis-writer cache"} {
			// The client gives up after two refusals, unless told not to.
			if n, err := srv.Refusals(name); err != nil || n < 3 {
				return fmt.Sprintf("the server refused %s %d times (%v)", name, n, err)
			}
		}
		return ""
	})
	harness.Eventually(t, 30*time.Second, ready(capture, http.StatusServiceUnavailable, "not connected to nats"))
	check("nats refuses", "authorization violation", capture, writer)
	srv.Shutdown()
	if srv, err = broker.Start(users(natsPassword)); err != nil {
		t.Fatal(err)
	}
	check("nats accepts", "reconnected to nats", capture, writer)
}

// freeAddr is 127.0.0.1 with a port nothing listens on.
func freeAddr(t *testing.T) string {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}
