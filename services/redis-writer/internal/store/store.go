// Package store applies a sink's writes to its Redis in pipelined batches.
//
// Writes are versioned: a Lua script (apply.lua) writes a key only when the
// change is newer than the one the key reflects, in one atomic step, so the
// value a key ends with is that of its last committed change whatever the
// order writes arrive in. The version of a key whose value is Sequin's
// message JSON is in the value itself (commit_lsn and commit_idx, at its
// start): it cannot be lost, or evicted, apart from the key. A deleted key
// keeps a tombstone, and an opaque (transformed) value a version record,
// "sluice:v:{<key>}", for the sink's tombstone TTL and as long as the value.
//
// On a standalone Redis, each partition also has a fence: the token of the
// writer that owns it, which the script checks, so that a writer that lost
// a partition (paused past its failover, say) cannot write late. There the
// changes of the partitions a writer holds are written in transactions
// instead (transaction.go): the same decisions, made by the writer between
// a WATCH of the fences and an EXEC, at a third of the script's cost to
// Redis; the script writes what a transaction leaves.
//
// Unversioned stores write plain SET and DEL commands instead, for a Redis
// that forbids scripts.
//
// Every command's reply is checked; a Redis error is a failure of that
// command, never a silent success.
package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

//go:embed apply.lua
var applyLua string

var applyScript = redis.NewScript(applyLua)

// truncatePage bounds one page of a truncate's scan and its deletes.
const truncatePage = 30 * time.Second

// Store is one Redis destination.
type Store struct {
	client      redis.UniversalClient
	addr        string
	cluster     bool
	unversioned bool
	wait        int // replicas that must confirm a batch
	waitTimeout time.Duration
	evicts      atomic.Bool // the server may evict keys (maxmemory-policy)
	progressed  atomic.Int64

	mu         sync.Mutex
	fences     map[int]string // partition → this writer's token; nil: no fencing
	partitions int            // of the stream (see EnableFences)
	gone       map[int]bool   // partitions whose fence Redis lost
	prefix     string         // of the fence keys
	writer     string
	leased     func() bool

	beforeExec func() // for tests: runs between a transaction's reads and its EXEC
}

// Open connects to the destination and checks that it answers.
func Open(ctx context.Context, d config.Destination) (*Store, error) {
	addrs := d.Addresses
	if len(addrs) == 0 {
		addrs = []string{net.JoinHostPort(d.Host, strconv.Itoa(d.Port))}
	}
	addr := strings.Join(addrs, ",")
	opts := &redis.UniversalOptions{
		Addrs:         addrs,
		IsClusterMode: d.Cluster,
		Username:      d.Username,
		Password:      d.Password,
		DB:            d.Database,
		DialTimeout:   5 * time.Second,
		ReadTimeout:   10*time.Second + d.WaitTimeout,
		WriteTimeout:  10 * time.Second,
		// Failed commands are retried by the writer, with backoff; a retry
		// here would hide the failure and hold the batch.
		MaxRetries: -1,
	}
	if d.TLS {
		tc, err := tlsConfig(d)
		if err != nil {
			return nil, err
		}
		opts.TLSConfig = tc
		if err := handshake(ctx, addrs[0], tc); err != nil {
			return nil, fmt.Errorf("connect to redis at %s with TLS (destination.tls): %w", addr, err)
		}
	}
	s := &Store{client: redis.NewUniversalClient(opts), addr: addr, cluster: d.Cluster, unversioned: d.Unversioned,
		wait: d.WaitReplicas, waitTimeout: d.WaitTimeout}
	if err := s.client.Ping(ctx).Err(); err != nil {
		s.client.Close()
		return nil, fmt.Errorf("connect to redis at %s: %w", addr, err)
	}
	if !s.unversioned {
		if err := applyScript.Load(ctx, s.client).Err(); err != nil {
			s.client.Close()
			return nil, fmt.Errorf("load script into redis at %s (set destination.unversioned if scripts are forbidden): %w", addr, err)
		}
	}
	return s, nil
}

// handshake tries a TLS handshake with addr, so that a server that does
// not speak TLS is reported as such at once: the client would wait for
// its reply until timeouts and retries ran out, and say only that.
func handshake(ctx context.Context, addr string, tc *tls.Config) error {
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(hctx, "tcp", addr)
	if err != nil {
		return nil // not about TLS: the client reports it
	}
	c := tls.Client(raw, tc)
	defer c.Close()
	if err := c.HandshakeContext(hctx); err != nil {
		if hctx.Err() != nil {
			err = errors.New("no TLS handshake within 5s")
		}
		return fmt.Errorf("%w; does the server serve TLS on this port?", err)
	}
	return nil
}

// tlsConfig verifies the server's certificate against the system's roots
// or tls_ca_file, unless told to skip verification.
func tlsConfig(d config.Destination) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: d.TLSInsecureSkipVerify}
	if !d.Cluster {
		tc.ServerName = d.Host // a cluster's nodes are verified by the address dialled
	}
	if d.TLSCAFile != "" {
		pem, err := os.ReadFile(d.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls_ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls_ca_file %s: no PEM certificate in it", d.TLSCAFile)
		}
	}
	return tc, nil
}

// Addr is the destination's address.
func (s *Store) Addr() string { return s.addr }

// Ping checks that the server answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis at %s: %w", s.addr, err)
	}
	return nil
}

// Close closes the connections.
func (s *Store) Close() error { return s.client.Close() }

// Client is the Redis client, for status and tests.
func (s *Store) Client() redis.UniversalClient { return s.client }

// Apply writes cmds, in order, pipelined, and returns each command's error
// (nil when the write was applied or was older than the key's version; an
// *Error otherwise, see Unavailable) and how many writes were skipped as
// older.
func (s *Store) Apply(ctx context.Context, cmds []command.Command) (errs []error, stale int) {
	errs = make([]error, len(cmds))
	if s.unversioned {
		s.plain(ctx, cmds, errs)
		return errs, 0
	}
	from := 0
	for i, c := range cmds {
		if c.Truncate {
			stale += s.apply(ctx, cmds[from:i], errs[from:i])
			errs[i] = s.truncate(ctx, c)
			from = i + 1
		}
	}
	stale += s.apply(ctx, cmds[from:], errs[from:])
	return errs, stale
}

// truncate deletes, as of c's version, every key starting with c.Key:
// keys written by later changes are newer and stay. It scans each master
// of a cluster. The keys are any partition's, which may be writing them
// meanwhile: the script deletes them, and breaks every partition's
// transactions (see touches).
//
// A table's keys can take longer to scan than a batch may: each page of
// the scan has its own deadline instead of ctx's, and marks progress (see
// Progressed), so that a long truncate is neither cut short and started
// over forever nor taken for a stuck writer.
func (s *Store) truncate(ctx context.Context, c command.Command) error {
	base := context.WithoutCancel(ctx)
	pattern := escapeGlob(c.Key) + "*"
	scan := func(_ context.Context, rc *redis.Client) error {
		var cursor uint64
		for {
			pctx, cancel := context.WithTimeout(base, truncatePage)
			keys, next, err := rc.Scan(pctx, cursor, pattern, 500).Result()
			if err == nil && len(keys) > 0 {
				dels := make([]command.Command, len(keys))
				for i, k := range keys {
					dels[i] = command.Command{Del: true, Key: k, Version: c.Version, VersionExpireMS: c.VersionExpireMS, Partition: c.Partition,
						Shared: true, Home: command.AllPartitions}
				}
				errs := make([]error, len(dels))
				s.apply(pctx, dels, errs)
				err = errors.Join(errs...)
			}
			cancel()
			if err != nil {
				return err
			}
			s.progressed.Store(time.Now().UnixNano())
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	var err error
	switch rc := s.client.(type) {
	case *redis.ClusterClient:
		err = rc.ForEachMaster(base, scan)
	case *redis.Client:
		err = scan(base, rc)
	default:
		err = fmt.Errorf("unexpected client %T", rc)
	}
	if err != nil {
		return fmt.Errorf("truncate %s*: %w", c.Key, err)
	}
	return nil
}

// Progressed is when a long operation (a truncate) last made progress;
// zero when none ran.
func (s *Store) Progressed() time.Time {
	if n := s.progressed.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// escapeGlob escapes the SCAN pattern characters of s.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Error is the failure of one change's command, or of the round trip that
// carried it.
type Error struct {
	Command string // GET, SET or DEL
	Key     string
	Err     error // Redis's reply, or what failed the connection
}

func (e *Error) Error() string { return e.Command + " " + e.Key + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// replyError is an error Redis replied to a command inside the script.
type replyError string

func (e replyError) Error() string { return string(e) }

var (
	// ErrFenced is a write refused because another writer owns the
	// change's partition now.
	ErrFenced = errors.New("another writer owns the partition now")
	// ErrFenceGone is a write refused because the partition's fence is
	// gone (Redis lost its data): the owner sets it again, then retries.
	ErrFenceGone = errors.New("the partition's fence is gone from Redis")
	// ErrUnknownVersion is a retried change not written because its key's
	// version is unknown (evicted, or expired) while Redis may evict keys:
	// it might be older than what the key held.
	ErrUnknownVersion = errors.New("the key's version is unknown (evicted or expired), so a retried change cannot tell whether it is older; " +
		"`sluice dlq replay` writes the row as Postgres holds it now")
)

// unavailable are the replies that say the server, or the user's
// permissions, cannot take writes now, whatever the key.
var unavailable = []string{"LOADING", "READONLY", "OOM", "NOPERM", "NOAUTH", "WRONGPASS", "MASTERDOWN", "CLUSTERDOWN",
	"TRYAGAIN", "BUSY", "MISCONF", "NOREPLICAS", "NOSCRIPT", "ERR max number of clients reached"}

// Unavailable reports whether err is a condition of the server or of the
// credentials, which fails every key alike (unreachable, loading, read-only,
// out of memory, a user no longer allowed to write, …), rather than a
// failure of the change itself (WRONGTYPE on its key, a value Redis
// refuses). The first is waited out; the second is the change's own.
func Unavailable(err error) bool {
	switch {
	case err == nil || errors.Is(err, ErrFenced) || errors.Is(err, ErrUnknownVersion):
		return false
	case errors.Is(err, ErrFenceGone):
		return true
	}
	var re redis.Error
	var rep replyError
	var msg string
	switch {
	case errors.As(err, &rep):
		msg = string(rep)
	case errors.As(err, &re):
		msg = re.Error()
	default:
		return true // no reply at all: the connection, a timeout
	}
	for _, p := range unavailable {
		if strings.HasPrefix(msg, p) && (len(msg) == len(p) || msg[len(p)] == ' ') {
			return true
		}
	}
	return false
}

// unanswered reports whether err, of a pipeline's Exec, failed the
// pipeline as a whole, so that no command of it has a reply of its own:
// the connection failed, or the server refused it before any command ran
// (the AUTH of a reconnection: WRONGPASS is a reply, which the client
// leaves off the commands, as if they had succeeded).
func unanswered(err error, cmds []redis.Cmder) bool {
	var re redis.Error
	if err == nil || !errors.As(err, &re) {
		return err != nil
	}
	for _, c := range cmds {
		if c.Err() != nil {
			return false
		}
	}
	return true
}

func verb(c *command.Command) string {
	if c.Del {
		return "DEL"
	}
	return "SET"
}

// LogTo sends the Redis client's own messages (failed dials, pool events)
// to log at debug level, instead of to stderr: the store reports failures
// itself, as errors.
func LogTo(log *zap.Logger) { redis.SetLogger(clientLogger{log.Sugar()}) }

type clientLogger struct{ log *zap.SugaredLogger }

func (l clientLogger) Printf(_ context.Context, format string, v ...any) { l.log.Debugf(format, v...) }
