// Package config is the one YAML file that configures every Sluice service.
//
// Load reads the file, replaces ${VAR} and ${VAR:-default} in scalar values
// from the environment, applies defaults and validates. Validation errors name
// the field they are about, e.g. "sinks[1].destination.port: must be 1-65535".
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/pkg/expression"
)

// Config is the whole file, or the part of it that one service reads (see
// Scope).
type Config struct {
	Postgres Postgres `yaml:"postgres"`
	NATS     NATS     `yaml:"nats"`
	Sinks    []Sink   `yaml:"sinks"`
	Log      Log      `yaml:"log"`
	HTTP     HTTP     `yaml:"http"`

	scope Scope
}

// HTTP is the address of /metrics, /healthz and /readyz.
type HTTP struct {
	// Listen is host:port; empty disables the endpoints. The commands'
	// --http flag overrides it, for several services on one host.
	Listen string `yaml:"listen"`
	// PProf also serves Go's profiles on /debug/pprof/.
	PProf bool `yaml:"pprof"`
}

// Postgres is the source database.
type Postgres struct {
	// URL is a libpq connection URL or keyword/value string.
	URL string `yaml:"url"`
	// Slot is the logical replication slot, created when missing.
	Slot string `yaml:"slot"`
	// Publication is created when missing, for Tables, and follows them.
	Publication string `yaml:"publication"`
	// Tables to capture, as schema.table (schema defaults to public).
	Tables []string `yaml:"tables"`
	// Name names the database in the message metadata (database_name,
	// database.name), as Sequin's database name does; empty: the
	// database's own name.
	Name string `yaml:"name"`
	// Annotations are the message metadata's database.annotations.
	Annotations map[string]any `yaml:"annotations"`
	// StatusInterval is how often capture reports its confirmed position.
	StatusInterval time.Duration `yaml:"status_interval"`
	// HeartbeatInterval is how often capture writes a logical message into
	// the WAL, so that the slot's position advances while the captured
	// tables are idle and the rest of the database is not.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// OnSlotLoss is what capture does when the slot is gone or invalidated,
	// or the database is not the one the stream's changes came from:
	// "stop" (wait for `sluice resync`) or "resync" (do it at once).
	OnSlotLoss string `yaml:"on_slot_loss"`
	// Failover is how soon a standby capture takes over from one that died
	// or hangs: the lease of the streaming one lives this long unrenewed.
	Failover time.Duration `yaml:"failover"`
	// Timeout is how long capture waits for Postgres to answer a catalog
	// query, a connection attempt, or to show any sign of life on the
	// replication connection, before it takes the connection for lost
	// (a server hung, a connection dropped without a word) and starts
	// over.
	Timeout time.Duration `yaml:"timeout"`
}

// InProcessServer is a NATS server in this process.
type InProcessServer interface {
	InProcessConn() (net.Conn, error)
}

// NATS is the JetStream that carries changes from capture to the writers.
type NATS struct {
	// URL of the NATS server, or several servers' URLs separated by
	// commas (of one cluster). Empty: `sluice dev` embeds a server.
	URL string `yaml:"url"`
	// InProcess, set by `sluice dev` and never by the file, is the
	// embedded server: its clients connect to it without a socket.
	InProcess InProcessServer `yaml:"-" json:"-"`
	// At most one way to authenticate: Username and Password, Token, an
	// NKey seed (NKeyFile), or a credentials file (CredsFile: a user JWT
	// and its seed). User info in URL is another such way.
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
	Token     string `yaml:"token"`
	NKeyFile  string `yaml:"nkey_file"`
	CredsFile string `yaml:"creds_file"`
	// TLS requires TLS; TLSCAFile verifies the servers with these PEM
	// certificates instead of the system's roots; TLSCertFile and
	// TLSKeyFile are the client certificate for servers that verify
	// clients.
	TLS         bool   `yaml:"tls"`
	TLSCAFile   string `yaml:"tls_ca_file"`
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// Stream is the JetStream stream name; subjects are "<stream>.changes.<partition>".
	Stream string `yaml:"stream"`
	// Partitions is the number of partitions changes are hashed into by
	// table and primary key. Changing it reshuffles keys between partitions.
	Partitions int `yaml:"partitions"`
	// Replicas of the stream and consumers (1 for a single server).
	Replicas int `yaml:"replicas"`
	// MaxAge bounds how long the stream keeps a change for a lagging sink.
	MaxAge time.Duration `yaml:"max_age"`
	// MaxBytes bounds the stream's size; -1 is unlimited.
	MaxBytes int64 `yaml:"max_bytes"`
	// DataDir is where an embedded server keeps JetStream data. Empty: a new
	// temporary directory each run.
	DataDir string `yaml:"data_dir"`
}

// Sink is one Redis target with its own consumer group.
type Sink struct {
	Name string `yaml:"name"`
	// Tables this sink receives; empty means every captured table.
	Tables []string `yaml:"tables"`
	// Actions this sink applies: insert, update, delete, read. Empty means all.
	Actions []string `yaml:"actions"`
	// Annotations are the message metadata's consumer.annotations.
	Annotations map[string]any `yaml:"annotations"`
	// Filter, Transform and Routing are expressions (see package expression).
	Filter    string `yaml:"filter"`
	Transform string `yaml:"transform"`
	Routing   string `yaml:"routing"`
	// Writers is how many writers the sink should have running; capture
	// exports it beside the live count, for alerts. 0: not checked.
	Writers int `yaml:"writers"`
	// MaxDeliver is how many times a change that fails on its own is tried
	// before it goes to the dead-letter stream.
	MaxDeliver int `yaml:"max_deliver"`
	// Backoff is the wait before a failed change's second attempt; each
	// later one waits twice as long, up to MaxBackoff.
	Backoff    time.Duration `yaml:"backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// OnTruncate is what a TRUNCATE of a table does to its keys: "ignore"
	// (as Sequin) or "delete".
	OnTruncate string `yaml:"on_truncate"`
	// InitialBackfill copies the current rows of the sink's tables into it
	// when capture first sees the sink.
	InitialBackfill bool `yaml:"initial_backfill"`
	// BatchSize is the most commands the writer pipelines in one round trip.
	BatchSize int `yaml:"batch_size"`
	// AckWait is how long a writer may hold a message without telling
	// JetStream it still works on it, before JetStream hands it to another
	// writer (after a crash, say). At most half of Failover; by default half.
	AckWait time.Duration `yaml:"ack_wait"`
	// Failover is how soon a writer that stopped (crashed, paused, cut off)
	// is replaced: its partitions go to the sink's other writers.
	Failover time.Duration `yaml:"failover"`
	// TombstoneTTL is how long a deleted key's version is remembered, so that
	// an older change delivered late cannot bring the key back.
	TombstoneTTL time.Duration `yaml:"tombstone_ttl"`
	// OnReset is what the sink's writers do when they find that Redis lost
	// its data (flushed, restarted empty, failed over): "backfill" its
	// tables into it, or "ignore" (only report it).
	OnReset     string      `yaml:"on_reset"`
	Destination Destination `yaml:"destination"`
}

// Destination is a Redis String sink, with the parameters of Sequin's.
type Destination struct {
	Type     string `yaml:"type"`
	Host     string `yaml:"host"`
	Port     int    `yaml:"port"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	TLS      bool   `yaml:"tls"`
	// TLSCAFile verifies the server with these PEM certificates instead of
	// the system's roots.
	TLSCAFile string `yaml:"tls_ca_file"`
	// TLSInsecureSkipVerify accepts any server certificate. For tests only.
	TLSInsecureSkipVerify bool `yaml:"tls_insecure_skip_verify"`
	// Cluster talks to a Redis Cluster through host:port (or Addresses).
	Cluster bool `yaml:"cluster"`
	// Addresses are several host:port seeds of a Redis Cluster; they imply
	// Cluster and replace Host and Port.
	Addresses []string `yaml:"addresses"`
	Database  int      `yaml:"database"`
	// ExpireMS sets PX on every SET; nil means keys do not expire.
	ExpireMS *int64 `yaml:"expire_ms"`
	// KeyPrefix is the first part of the default key "<prefix>:<table>:<pk>".
	KeyPrefix string `yaml:"key_prefix"`
	// Unversioned writes plain SET and DEL commands, without scripts, for a
	// Redis that forbids them; per-key order then rests on delivery order
	// alone (see the README).
	Unversioned bool `yaml:"unversioned"`
	// WaitReplicas makes a writer acknowledge a batch only once that many
	// replicas confirmed it (Redis WAIT), within WaitTimeout.
	WaitReplicas int           `yaml:"wait_replicas"`
	WaitTimeout  time.Duration `yaml:"wait_timeout"`
}

// Log configures the services' logs.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is json, console, or auto (console on a terminal).
	Format string `yaml:"format"`
}

// Defaults.
const (
	DefaultSlot           = "sluice"
	DefaultPublication    = "sluice"
	DefaultStream         = "SLUICE"
	DefaultPartitions     = 16
	DefaultMaxAge         = 7 * 24 * time.Hour
	DefaultBatchSize      = 500
	DefaultTombstoneTTL   = time.Hour
	DefaultMaxDeliver     = 10
	DefaultBackoff        = time.Second
	DefaultMaxBackoff     = time.Minute
	DefaultFailover       = 10 * time.Second
	DefaultKeyPrefix      = "sequin"
	DefaultStatusInterval = time.Second
	DefaultHeartbeat      = 10 * time.Second
	// DefaultPostgresTimeout is long enough for a busy server's catalog
	// queries, short enough that a hung one is noticed in well under a
	// minute.
	DefaultPostgresTimeout = 30 * time.Second
	DestinationRedis       = "redis_string"
)

// Actions a sink can select.
var Actions = []string{"insert", "update", "delete", "read"}

// Load reads, interpolates, defaults and validates the part of the file at
// path that scope reads.
func Load(path string, scope Scope) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, scope, os.LookupEnv)
}

// Parse is Load without the file: lookup resolves ${VAR} references.
func Parse(data []byte, scope Scope, lookup func(string) (string, bool)) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(data, err)
	}
	if len(root.Content) == 0 {
		return nil, errors.New("the file is empty")
	}
	if err := scope.prune(root.Content[0]); err != nil {
		return nil, err
	}
	if err := interpolate(&root, lookup); err != nil {
		return nil, err
	}
	if err := checkFields(root.Content[0], reflect.TypeFor[Config](), ""); err != nil {
		return nil, err
	}
	cfg := Config{scope: scope}
	if err := root.Decode(&cfg); err != nil {
		return nil, yamlError(data, err)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// yamlError shortens the parser's errors, and explains the one an
// unquoted ${VAR} inside a flow mapping causes: YAML reads its braces as
// another mapping.
func yamlError(data []byte, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return errors.New(strings.Join(te.Errors, "; "))
	}
	if unquotedVar.Match(data) {
		return fmt.Errorf("%w (a ${VAR} inside {…} must be quoted: password: \"${VAR}\")", err)
	}
	return err
}

// unquotedVar finds a flow mapping with an unquoted ${…} value.
var unquotedVar = regexp.MustCompile(`\{[^}\n]*:\s*\$\{`)

// SetDefaults fills every field left out.
func (c *Config) SetDefaults() {
	if c.Postgres.Slot == "" {
		c.Postgres.Slot = DefaultSlot
	}
	if c.Postgres.Publication == "" {
		c.Postgres.Publication = DefaultPublication
	}
	if c.Postgres.StatusInterval == 0 {
		c.Postgres.StatusInterval = DefaultStatusInterval
	}
	if c.Postgres.Failover == 0 {
		c.Postgres.Failover = 5 * time.Second
	}
	if c.Postgres.OnSlotLoss == "" {
		c.Postgres.OnSlotLoss = "stop"
	}
	if c.Postgres.HeartbeatInterval == 0 {
		c.Postgres.HeartbeatInterval = DefaultHeartbeat
	}
	if c.Postgres.Timeout == 0 {
		c.Postgres.Timeout = DefaultPostgresTimeout
	}
	for i, t := range c.Postgres.Tables {
		c.Postgres.Tables[i] = QualifyTable(t)
	}
	if c.NATS.Stream == "" {
		c.NATS.Stream = DefaultStream
	}
	if c.NATS.Partitions == 0 {
		c.NATS.Partitions = DefaultPartitions
	}
	if c.NATS.Replicas == 0 {
		c.NATS.Replicas = 1
	}
	if c.NATS.MaxAge == 0 {
		c.NATS.MaxAge = DefaultMaxAge
	}
	if c.NATS.MaxBytes == 0 {
		c.NATS.MaxBytes = -1
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "auto"
	}
	for i := range c.Sinks {
		s := &c.Sinks[i]
		if len(s.Tables) == 0 {
			s.Tables = slices.Clone(c.Postgres.Tables)
		}
		for j, t := range s.Tables {
			s.Tables[j] = QualifyTable(t)
		}
		if len(s.Actions) == 0 {
			s.Actions = slices.Clone(Actions)
		}
		if s.BatchSize == 0 {
			s.BatchSize = DefaultBatchSize
		}
		if s.TombstoneTTL == 0 {
			s.TombstoneTTL = DefaultTombstoneTTL
		}

		if s.MaxDeliver == 0 {
			s.MaxDeliver = DefaultMaxDeliver
		}
		if s.Backoff == 0 {
			s.Backoff = DefaultBackoff
		}
		if s.MaxBackoff == 0 {
			s.MaxBackoff = max(DefaultMaxBackoff, s.Backoff)
		}
		if s.Failover == 0 {
			s.Failover = DefaultFailover
		}
		if s.AckWait == 0 {
			s.AckWait = max(time.Second, s.Failover/2)
		}
		if s.OnTruncate == "" {
			s.OnTruncate = "ignore"
		}
		if s.OnReset == "" {
			s.OnReset = "backfill"
		}
		if s.Destination.WaitReplicas > 0 && s.Destination.WaitTimeout == 0 {
			s.Destination.WaitTimeout = time.Second
		}
		if len(s.Destination.Addresses) > 0 {
			s.Destination.Cluster = true
		}
		if s.Destination.KeyPrefix == "" {
			s.Destination.KeyPrefix = DefaultKeyPrefix
		}
	}
}

// QualifyTable returns schema.table, adding the public schema when missing.
func QualifyTable(t string) string {
	if strings.Contains(t, ".") {
		return t
	}
	return "public." + t
}

// SplitTable splits a qualified table name into schema and table.
func SplitTable(t string) (schema, table string) {
	schema, table, _ = strings.Cut(QualifyTable(t), ".")
	return schema, table
}

var (
	sinkName   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	streamName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	// Slot and publication names are Postgres identifiers used unquoted.
	pgName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
)

// Validate reports every invalid field, each error naming its field.
func (c *Config) Validate() error {
	var errs fieldErrors
	p := c.Postgres
	if p.URL == "" && c.scope.postgresURL() {
		errs.add("postgres.url", "is required")
	}
	p.validateURL(&errs)
	if !pgName.MatchString(p.Slot) {
		errs.add("postgres.slot", "must be lower-case letters, digits and _, starting with a letter or _ (at most 63)")
	}
	if !pgName.MatchString(p.Publication) {
		errs.add("postgres.publication", "must be lower-case letters, digits and _, starting with a letter or _ (at most 63)")
	}
	if len(p.Tables) == 0 {
		errs.add("postgres.tables", "must list at least one table")
	}
	for i, t := range p.Tables {
		if msg := checkTable(t); msg != "" {
			errs.add(fmt.Sprintf("postgres.tables[%d]", i), msg)
		}
		if slices.Index(p.Tables, t) != i {
			errs.add(fmt.Sprintf("postgres.tables[%d]", i), fmt.Sprintf("%s is listed twice", t))
		}
	}
	if _, err := json.Marshal(p.Annotations); err != nil {
		errs.add("postgres.annotations", "must be a map that JSON can encode: "+err.Error())
	}
	if p.StatusInterval < 10*time.Millisecond {
		errs.add("postgres.status_interval", "must be at least 10ms")
	}
	if p.HeartbeatInterval < 100*time.Millisecond {
		errs.add("postgres.heartbeat_interval", "must be at least 100ms")
	}
	if p.Failover < time.Second {
		errs.add("postgres.failover", "must be at least 1s")
	}
	if p.Timeout < time.Second || p.Timeout < 2*p.StatusInterval {
		// The server answers a status update; two intervals of silence
		// are the least that says it stopped.
		errs.add("postgres.timeout", fmt.Sprintf("must be at least 1s and twice status_interval (%s)", p.StatusInterval))
	}
	if p.OnSlotLoss != "stop" && p.OnSlotLoss != "resync" {
		errs.add("postgres.on_slot_loss", fmt.Sprintf("%q is not stop or resync", p.OnSlotLoss))
	}
	n := c.NATS
	if !streamName.MatchString(n.Stream) {
		errs.add("nats.stream", "must be 1-64 letters, digits, _ or -")
	}
	if n.Partitions < 1 || n.Partitions > 1024 {
		errs.add("nats.partitions", "must be 1-1024")
	}
	if n.Replicas < 1 || n.Replicas > 5 {
		errs.add("nats.replicas", "must be 1-5")
	}
	if n.MaxAge < 0 {
		errs.add("nats.max_age", "must be positive")
	}
	if n.MaxBytes < -1 || n.MaxBytes == 0 {
		errs.add("nats.max_bytes", "must be positive, or -1 for unlimited")
	}
	n.validateConnection(&errs)
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		errs.add("log.level", "must be debug, info, warn or error")
	}
	if !slices.Contains([]string{"auto", "json", "console"}, c.Log.Format) {
		errs.add("log.format", "must be auto, json or console")
	}
	if len(c.Sinks) == 0 {
		errs.add("sinks", "must list at least one sink")
	}
	for i := range c.Sinks {
		c.validateSink(i, &errs)
	}
	return errs.err()
}

func (c *Config) validateSink(i int, errs *fieldErrors) {
	s, at := &c.Sinks[i], fmt.Sprintf("sinks[%d]", i)
	if !sinkName.MatchString(s.Name) {
		errs.add(at+".name", "must be 1-64 letters, digits, _ or -")
	} else if j := slices.IndexFunc(c.Sinks, func(o Sink) bool { return o.Name == s.Name }); j != i {
		errs.add(at+".name", fmt.Sprintf("%q is used by sinks[%d] too", s.Name, j))
	}
	for j, t := range s.Tables {
		if !slices.Contains(c.Postgres.Tables, t) {
			errs.add(fmt.Sprintf("%s.tables[%d]", at, j), fmt.Sprintf("%s is not in postgres.tables", t))
		}
	}
	if s.Routing == "" {
		// The default key names the table, not its schema.
		seen := map[string]string{}
		for _, t := range s.Tables {
			_, name := SplitTable(t)
			if other, ok := seen[name]; ok && other != t {
				errs.add(at+".tables", fmt.Sprintf("%s and %s would both write the keys %s:%s:<pk> (and on_truncate: delete would delete both); "+
					"capture them into separate sinks with different destination.key_prefix, or give this sink a routing expression that tells them apart",
					other, t, s.Destination.KeyPrefix, name))
			}
			seen[name] = t
		}
	}
	if _, err := json.Marshal(s.Annotations); err != nil {
		errs.add(at+".annotations", "must be a map that JSON can encode: "+err.Error())
	}
	for j, a := range s.Actions {
		if !slices.Contains(Actions, a) {
			errs.add(fmt.Sprintf("%s.actions[%d]", at, j), fmt.Sprintf("%q is not one of insert, update, delete, read", a))
		}
	}
	for _, e := range []struct {
		field, src string
		compile    func(string) error
	}{
		{"filter", s.Filter, func(src string) error { _, err := expression.CompileFilter(src); return err }},
		{"transform", s.Transform, func(src string) error { _, err := expression.CompileTransform(src); return err }},
		{"routing", s.Routing, func(src string) error { _, err := expression.CompileRouting(src); return err }},
	} {
		if e.src != "" {
			if err := e.compile(e.src); err != nil {
				errs.add(at+"."+e.field, fmt.Sprintf("%v in %q", err, e.src))
			}
		}
	}
	if s.MaxDeliver < 1 {
		errs.add(at+".max_deliver", "must be at least 1")
	}
	if s.Backoff < 10*time.Millisecond {
		errs.add(at+".backoff", "must be at least 10ms")
	}
	if s.MaxBackoff < s.Backoff {
		errs.add(at+".max_backoff", "must be at least backoff")
	}
	switch {
	case s.OnTruncate != "ignore" && s.OnTruncate != "delete":
		errs.add(at+".on_truncate", fmt.Sprintf("%q is not ignore or delete", s.OnTruncate))
	case s.OnTruncate == "delete" && s.Routing != "":
		errs.add(at+".on_truncate", "delete finds a table's keys by the default key format, which routing replaces; use ignore")
	}
	if s.OnReset != "backfill" && s.OnReset != "ignore" {
		errs.add(at+".on_reset", fmt.Sprintf("%q is not backfill or ignore", s.OnReset))
	}
	if s.OnTruncate == "delete" && s.Destination.Unversioned {
		errs.add(at+".on_truncate", "delete needs versioned writes, to keep the keys written after the TRUNCATE; use ignore, or drop destination.unversioned")
	}
	if s.BatchSize < 1 || s.BatchSize > 100000 {
		errs.add(at+".batch_size", "must be 1-100000")
	}
	if s.TombstoneTTL < time.Millisecond {
		errs.add(at+".tombstone_ttl", "must be at least 1ms")
	}
	if s.AckWait < time.Second {
		errs.add(at+".ack_wait", "must be at least 1s")
	}
	if s.AckWait > s.Failover/2 && s.Failover >= 3*time.Second {
		// A failed writer's messages must come back before its partitions
		// go to another writer, which then gets them first, in order.
		errs.add(at+".ack_wait", fmt.Sprintf("must be at most half of failover (%s)", s.Failover))
	}
	if s.Failover < 3*time.Second {
		errs.add(at+".failover", "must be at least 3s")
	}
	if s.Writers < 0 {
		errs.add(at+".writers", "must be 0 or more")
	}
	if !c.scope.destination(s.Name) {
		return
	}
	d := s.Destination
	at += ".destination"
	switch d.Type {
	case DestinationRedis:
	case "":
		errs.add(at+".type", "is required (redis_string)")
	default:
		errs.add(at+".type", fmt.Sprintf("%q is not supported (redis_string)", d.Type))
	}
	if len(d.Addresses) == 0 {
		if d.Host == "" {
			errs.add(at+".host", "is required")
		}
		if d.Port < 1 || d.Port > 65535 {
			errs.add(at+".port", "must be 1-65535")
		}
	}
	for j, a := range d.Addresses {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			errs.add(fmt.Sprintf("%s.addresses[%d]", at, j), fmt.Sprintf("%q is not host:port", a))
		}
	}
	if (d.TLSCAFile != "" || d.TLSInsecureSkipVerify) && !d.TLS {
		errs.add(at+".tls", "must be true when tls_ca_file or tls_insecure_skip_verify is set")
	}
	if d.TLSCAFile != "" {
		if _, err := os.Stat(d.TLSCAFile); err != nil {
			errs.add(at+".tls_ca_file", err.Error())
		}
	}
	if d.Cluster && d.Database != 0 {
		errs.add(at+".database", "must be 0 for a Redis Cluster")
	}
	if d.Database < 0 {
		errs.add(at+".database", "must be 0 or more")
	}
	if d.ExpireMS != nil && *d.ExpireMS < 0 {
		errs.add(at+".expire_ms", "must be 0 or more")
	}
	if d.WaitReplicas < 0 {
		errs.add(at+".wait_replicas", "must be 0 or more")
	}
	if d.WaitReplicas > 0 && d.Cluster {
		errs.add(at+".wait_replicas", "is not supported with a Redis Cluster")
	}
	if d.WaitTimeout < 0 {
		errs.add(at+".wait_timeout", "must be positive")
	}
	if d.KeyPrefix == "" || strings.ContainsAny(d.KeyPrefix, " \t\r\n") {
		errs.add(at+".key_prefix", "must be non-empty with no whitespace")
	}
}

func checkTable(t string) string {
	schema, table, ok := strings.Cut(t, ".")
	if !ok || schema == "" || table == "" || strings.Contains(table, ".") {
		return fmt.Sprintf("%q must be table or schema.table", t)
	}
	return ""
}

// Sink returns the sink called name.
func (c *Config) Sink(name string) (*Sink, error) {
	for i := range c.Sinks {
		if c.Sinks[i].Name == name {
			return &c.Sinks[i], nil
		}
	}
	names := make([]string, len(c.Sinks))
	for i, s := range c.Sinks {
		names[i] = s.Name
	}
	return nil, fmt.Errorf("no sink named %q (sinks: %s)", name, strings.Join(names, ", "))
}

// FieldError is a validation error about one field.
type FieldError struct {
	Field, Msg string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

type fieldErrors []error

func (e *fieldErrors) add(field, msg string) { *e = append(*e, &FieldError{field, msg}) }

// err joins the errors on one line, so a service's exit message stays one line.
func (e fieldErrors) err() error {
	if len(e) == 0 {
		return nil
	}
	return joined(e)
}

type joined []error

func (j joined) Error() string {
	parts := make([]string, len(j))
	for i, e := range j {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

func (j joined) Unwrap() []error { return j }
