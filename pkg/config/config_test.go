package config

import (
	"strings"
	"testing"
	"time"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

const full = `
postgres:
  url: postgres://app@db:5432/app?sslmode=require
  tables: [public.users, orders]
nats:
  url: nats://nats:4222
sinks:
  - name: cache-eu
    tables: [public.users]
    actions: [insert, update, delete]
    destination:
      type: redis_string
      host: redis-eu
      port: ${REDIS_PORT}
      username: app
      password: ${REDIS_EU_PASSWORD}
      tls: true
      database: 2
      expire_ms: 3600000
  - name: cache-us
    destination: {type: redis_string, host: "${REDIS_US_HOST:-redis-us}", port: 6379}
`

func TestParseFull(t *testing.T) {
	cfg, err := Parse([]byte(full), Everything, env(map[string]string{"REDIS_PORT": "6380", "REDIS_EU_PASSWORD": "null"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Postgres.Tables; strings.Join(got, ",") != "public.users,public.orders" {
		t.Errorf("tables = %v", got)
	}
	if cfg.Postgres.Slot != "sluice" || cfg.Postgres.Publication != "sluice" || cfg.NATS.Stream != "SLUICE" || cfg.NATS.Partitions != 16 {
		t.Errorf("defaults not applied: %+v %+v", cfg.Postgres, cfg.NATS)
	}
	eu := cfg.Sinks[0].Destination
	if eu.Port != 6380 || eu.Password != "null" || !eu.TLS || eu.Database != 2 || eu.ExpireMS == nil || *eu.ExpireMS != 3600000 || eu.KeyPrefix != "sequin" {
		t.Errorf("cache-eu destination = %+v", eu)
	}
	us, err := cfg.Sink("cache-us")
	if err != nil {
		t.Fatal(err)
	}
	if us.Destination.Host != "redis-us" || us.Destination.ExpireMS != nil {
		t.Errorf("cache-us destination = %+v", us.Destination)
	}
	if strings.Join(us.Tables, ",") != "public.users,public.orders" || len(us.Actions) != 4 {
		t.Errorf("cache-us defaults: tables %v actions %v", us.Tables, us.Actions)
	}
	if us.BatchSize != DefaultBatchSize || us.TombstoneTTL != time.Hour {
		t.Errorf("cache-us batch %d tombstone %v", us.BatchSize, us.TombstoneTTL)
	}
	if _, err := cfg.Sink("nope"); err == nil || !strings.Contains(err.Error(), "cache-eu, cache-us") {
		t.Errorf("Sink(nope) = %v", err)
	}
}

// Tables of the same name in different schemas are fine in separate sinks,
// or in one whose routing tells them apart.
// Annotations, as Sequin's: a map, for the database and for each sink.
func TestAnnotations(t *testing.T) {
	doc := `postgres: {url: 'postgres://db/app', tables: [users], name: prod, annotations: {team: core, tier: 1}}
sinks: [{name: s, annotations: {owner: {name: ann}}, destination: {type: redis_string, host: h, port: 1}}]`
	cfg, err := Parse([]byte(doc), Everything, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Postgres.Name != "prod" || cfg.Postgres.Annotations["team"] != "core" || cfg.Sinks[0].Annotations["owner"].(map[string]any)["name"] != "ann" {
		t.Fatalf("postgres %+v, sink %+v", cfg.Postgres, cfg.Sinks[0].Annotations)
	}
}

func TestSameTableNames(t *testing.T) {
	doc := `postgres: {url: 'postgres://db/app', tables: [a.users, b.users]}
sinks:
  - {name: a, tables: [a.users], destination: {type: redis_string, host: h, port: 1}}
  - {name: b, tables: [b.users], destination: {type: redis_string, host: h, port: 1, key_prefix: b}}
  - {name: routed, routing: 'metadata.table_schema + ":" + string(record.id)', destination: {type: redis_string, host: h, port: 1}}
`
	if _, err := Parse([]byte(doc), Everything, env(nil)); err != nil {
		t.Fatal(err)
	}
}

func TestParseErrors(t *testing.T) {
	base := func(sink string) string {
		return "postgres: {url: 'postgres://db/app', tables: [users]}\nsinks:\n  - {name: a, destination: {type: redis_string, host: h, port: 1}}\n" + sink
	}
	cases := []struct {
		name, yaml, want string
	}{
		{"port", base("  - {name: b, destination: {type: redis_string, host: h, port: 70000}}"), "sinks[1].destination.port: must be 1-65535"},
		{"missing port", base("  - {name: b, destination: {type: redis_string, host: h}}"), "sinks[1].destination.port: must be 1-65535"},
		{"host", base("  - {name: b, destination: {type: redis_string, port: 1}}"), "sinks[1].destination.host: is required"},
		{"type", base("  - {name: b, destination: {type: kafka, host: h, port: 1}}"), `sinks[1].destination.type: "kafka" is not supported`},
		{"dup sink", base("  - {name: a, destination: {type: redis_string, host: h, port: 1}}"), `sinks[1].name: "a" is used by sinks[0] too`},
		{"bad sink name", base("  - {name: 'a b', destination: {type: redis_string, host: h, port: 1}}"), "sinks[1].name: must be"},
		{"negative db", base("  - {name: b, destination: {type: redis_string, host: h, port: 1, database: -1}}"), "sinks[1].destination.database: must be 0 or more"},
		{"negative expire", base("  - {name: b, destination: {type: redis_string, host: h, port: 1, expire_ms: -5}}"), "sinks[1].destination.expire_ms: must be 0 or more"},
		{"sink table", base("  - {name: b, tables: [orders], destination: {type: redis_string, host: h, port: 1}}"), "sinks[1].tables[0]: public.orders is not in postgres.tables"},
		{"action", base("  - {name: b, actions: [upsert], destination: {type: redis_string, host: h, port: 1}}"), `sinks[1].actions[0]: "upsert" is not one of`},
		{"unknown field", base("  - {name: b, destination: {type: redis_string, hots: h, port: 1}}"), "sinks[1].destination.hots: unknown field (line 4)"},
		{"wrong type", base("  - {name: b, destination: {type: redis_string, host: h, port: abc}}"), "line 4: cannot unmarshal"},
		{"no url", "postgres: {tables: [a]}\nsinks: [{name: a, destination: {type: redis_string, host: h, port: 1}}]", "postgres.url: is required"},
		{"no tables", "postgres: {url: 'postgres://db/app'}\nsinks: [{name: a, destination: {type: redis_string, host: h, port: 1}}]", "postgres.tables: must list at least one table"},
		{"no sinks", "postgres: {url: 'postgres://db/app', tables: [a]}", "sinks: must list at least one sink"},
		{"slot", "postgres: {url: 'postgres://db/app', tables: [a], slot: My-Slot}\nsinks: [{name: a, destination: {type: redis_string, host: h, port: 1}}]", "postgres.slot: must be"},
		{"partitions", "postgres: {url: 'postgres://db/app', tables: [a]}\nnats: {partitions: 5000}\nsinks: [{name: a, destination: {type: redis_string, host: h, port: 1}}]", "nats.partitions: must be 1-1024"},
		{"unset var", "postgres: {url: '${PGURL}', tables: [a]}\nsinks: [{name: a, destination: {type: redis_string, host: h, port: 1}}]", "line 1: environment variable PGURL is not set"},
		{"empty", "", "the file is empty"},
		{"filter", base("  - {name: b, filter: 'recrd.active', destination: {type: redis_string, host: h, port: 1}}"), `sinks[1].filter: unknown name recrd (at column 1) in "recrd.active"`},
		{"routing", base("  - {name: b, routing: '\"k:\" +', destination: {type: redis_string, host: h, port: 1}}"), "sinks[1].routing: unexpected token EOF"},
		{"addresses", base("  - {name: b, destination: {type: redis_string, addresses: [a, 'b:1']}}"), `sinks[1].destination.addresses[0]: "a" is not host:port`},
		{"ca without tls", base("  - {name: b, destination: {type: redis_string, host: h, port: 1, tls_ca_file: /x}}"), "sinks[1].destination.tls: must be true when"},
		{"ca missing", base("  - {name: b, destination: {type: redis_string, host: h, port: 1, tls: true, tls_ca_file: /nonexistent.pem}}"), "sinks[1].destination.tls_ca_file: stat /nonexistent.pem"},
		{"cluster db", base("  - {name: b, destination: {type: redis_string, host: h, port: 1, cluster: true, database: 2}}"), "sinks[1].destination.database: must be 0 for a Redis Cluster"},
		{"on_truncate", base("  - {name: b, on_truncate: drop, destination: {type: redis_string, host: h, port: 1}}"), `sinks[1].on_truncate: "drop" is not ignore or delete`},
		{"truncate routed", base("  - {name: b, on_truncate: delete, routing: 'record.id', destination: {type: redis_string, host: h, port: 1}}"), "sinks[1].on_truncate: delete finds a table's keys by the default key format"},
		{"max deliver", base("  - {name: b, max_deliver: -1, destination: {type: redis_string, host: h, port: 1}}"), "sinks[1].max_deliver: must be at least 1"},
		{"backoff", base("  - {name: b, backoff: 5ms, destination: {type: redis_string, host: h, port: 1}}"), "sinks[1].backoff: must be at least 10ms"},
		{"max backoff", base("  - {name: b, backoff: 2s, max_backoff: 1s, destination: {type: redis_string, host: h, port: 1}}"), "sinks[1].max_backoff: must be at least backoff"},
		{"same table name", `postgres: {url: 'postgres://db/app', tables: [a.users, b.users]}
sinks: [{name: s, destination: {type: redis_string, host: h, port: 1}}]`, "sinks[0].tables: a.users and b.users would both write the keys sequin:users:<pk>"},
		{"syntax", "postgres: [", "yaml:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml), Everything, env(nil))
			if err == nil {
				t.Fatalf("no error, want %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q\nwant it to contain %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	lookup := env(map[string]string{"A": "x", "EMPTY": ""})
	cases := []struct{ in, want, err string }{
		{"plain", "plain", ""},
		{"${A}", "x", ""},
		{"pre-${A}-post", "pre-x-post", ""},
		{"${B:-def}", "def", ""},
		{"${EMPTY:-def}", "def", ""},
		{"${EMPTY}", "", ""},
		{"${A:-def}", "x", ""},
		{"$${A}", "${A}", ""},
		{"${A}${A}", "xx", ""},
		{"${B}", "", "environment variable B is not set"},
		{"${A", "", "unclosed"},
		{"${1A}", "", "invalid variable name"},
		{"${:-x}", "", "invalid variable name"},
	}
	for _, c := range cases {
		got, err := Expand(c.in, lookup)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Expand(%q) error = %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Expand(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

// An environment value is data, never YAML: it cannot add fields.
func TestInterpolationCannotInjectStructure(t *testing.T) {
	doc := "postgres: {url: 'postgres://db/app', tables: [a]}\nsinks:\n- name: a\n  destination:\n    type: redis_string\n    host: h\n    port: 1\n    password: ${P}\n"
	cfg, err := Parse([]byte(doc), Everything, env(map[string]string{"P": "a: b\nport: 2 # c"}))
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Sinks[0].Destination; d.Password != "a: b\nport: 2 # c" || d.Port != 1 {
		t.Errorf("destination = %+v", d)
	}
}

func FuzzExpand(f *testing.F) {
	for _, s := range []string{"${A}", "$${A}", "${A:-b}", "x${", "${}", "$$$${A}"} {
		f.Add(s)
	}
	lookup := env(map[string]string{"A": "value"})
	f.Fuzz(func(t *testing.T, s string) {
		out, err := Expand(s, lookup)
		if err == nil && !strings.Contains(s, "${") && out != s {
			t.Fatalf("Expand(%q) = %q changed a string without references", s, out)
		}
	})
}

// The example shipped in deploy/ stays valid.
func TestDeployExample(t *testing.T) {
	t.Setenv("REDIS_EU_PASSWORD", "secret")
	cfg, err := Load("../../deploy/sluice.example.yaml", Everything)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Sinks) != 2 || cfg.Sinks[0].Destination.Password != "secret" || cfg.NATS.URL != "nats://nats:4222" {
		t.Fatalf("example = %+v", cfg)
	}
}

// Each service resolves and validates only the part of the file it reads:
// capture needs no Redis secret, a writer neither Postgres's nor the other
// sinks'.
func TestScopes(t *testing.T) {
	doc := `postgres: {url: "postgres://app:${PG_PASSWORD}@db/app", tables: [users]}
nats: {url: "nats://${NATS_TOKEN}@nats:4222"}
sinks:
  - name: eu
    destination:
      type: redis_string
      host: redis-eu
      port: ${EU_PORT}
      password: ${EU_PASSWORD}
  - name: us
    destination: {type: redis_string, host: redis-us, port: 6379, password: "${US_PASSWORD}"}
`
	cases := []struct {
		scope Scope
		env   map[string]string
		err   string
	}{
		{Capture, map[string]string{"PG_PASSWORD": "p", "NATS_TOKEN": "t"}, ""},
		{Capture, map[string]string{"NATS_TOKEN": "t", "EU_PASSWORD": "e"}, "PG_PASSWORD"},
		{Writer("eu"), map[string]string{"NATS_TOKEN": "t", "EU_PORT": "6380", "EU_PASSWORD": "e"}, ""},
		{Writer("eu"), map[string]string{"NATS_TOKEN": "t", "EU_PORT": "6380"}, "EU_PASSWORD"},
		{Writer("eu"), map[string]string{"NATS_TOKEN": "t", "EU_PORT": "0", "EU_PASSWORD": "e"}, "sinks[0].destination.port"},
		{Writer("us"), map[string]string{"NATS_TOKEN": "t", "US_PASSWORD": "u"}, ""},
		{Writer("asia"), map[string]string{"NATS_TOKEN": "t"}, `no sink named "asia"`},
		{Everything, map[string]string{"PG_PASSWORD": "p", "NATS_TOKEN": "t", "EU_PORT": "1", "EU_PASSWORD": "e"}, "US_PASSWORD"},
	}
	for _, c := range cases {
		cfg, err := Parse([]byte(doc), c.scope, env(c.env))
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s with %v: %v, want %q", c.scope, c.env, err, c.err)
			continue
		}
		if err != nil {
			continue
		}
		for _, s := range cfg.Sinks {
			if used := c.scope.destination(s.Name); used != (s.Destination.Host != "") {
				t.Errorf("%s: sink %s has destination %+v", c.scope, s.Name, s.Destination)
			}
		}
		if cfg.Postgres.URL != "" != c.scope.postgresURL() {
			t.Errorf("%s: postgres.url = %q", c.scope, cfg.Postgres.URL)
		}
	}
}

// An unquoted ${VAR} inside {…} is a YAML syntax error; the message says
// how to write it.
func TestUnquotedVariableHint(t *testing.T) {
	doc := "postgres: {url: ${DATABASE_URL}, tables: [users]}\n"
	_, err := Parse([]byte(doc), Everything, env(map[string]string{"DATABASE_URL": "postgres://db"}))
	if err == nil || !strings.Contains(err.Error(), `must be quoted: password: "${VAR}"`) {
		t.Fatalf("error = %v", err)
	}
}
