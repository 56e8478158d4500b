// Package store applies versioned writes to a Redis database in pipelined
// batches.
//
// Every key written has a version record, "sluice:v:{<key>}", holding the
// position (commit LSN and index) of the change the key reflects. A Lua
// script writes a key only when the change is newer than that record, in
// one atomic step. So the value a key ends with is the one of its last
// committed change whatever the order writes arrive in: JetStream
// redeliveries, several writers, and a paused writer that wakes up after its
// successor all become harmless. After a DEL the record stays for the
// sink's tombstone TTL, so that an older change cannot bring the key back.
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
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

//go:embed apply.lua
var applyLua string

var applyScript = redis.NewScript(applyLua)

// VersionPrefix starts the name of every version record.
const VersionPrefix = "sluice:v:"

// Store is one Redis destination.
type Store struct {
	client redis.UniversalClient
	addr   string
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
		ReadTimeout:   10 * time.Second,
		WriteTimeout:  10 * time.Second,
		// Failed commands are retried by redelivery, with backoff; a retry
		// here would hide the failure and hold the batch.
		MaxRetries: -1,
	}
	if d.TLS {
		tc, err := tlsConfig(d)
		if err != nil {
			return nil, err
		}
		opts.TLSConfig = tc
	}
	s := &Store{client: redis.NewUniversalClient(opts), addr: addr}
	if err := s.client.Ping(ctx).Err(); err != nil {
		s.client.Close()
		return nil, fmt.Errorf("connect to redis at %s: %w", addr, err)
	}
	if err := applyScript.Load(ctx, s.client).Err(); err != nil {
		s.client.Close()
		return nil, fmt.Errorf("load script into redis at %s: %w", addr, err)
	}
	return s, nil
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

// VersionKey is the version record of key. It is in key's hash slot, so
// that the script touches one slot in a Redis Cluster: a key without braces
// becomes the record's hash tag ("{key}"), a key with a hash tag lends it
// ("=key"), and any other key gets a tag that hashes to its slot
// ("{tag}key", the key holding a brace). The three forms cannot be taken
// for one another, so no two keys share a record.
func VersionKey(key string) string {
	if !strings.ContainsAny(key, "{}") {
		return VersionPrefix + "{" + key + "}"
	}
	if _, ok := hashTag(key); ok {
		return VersionPrefix + "=" + key
	}
	return VersionPrefix + "{" + slotTag(Slot(key)) + "}" + key
}

// hashTag is the part of key between its first '{' and the next '}', when
// not empty: what Redis Cluster hashes instead of the whole key.
func hashTag(key string) (string, bool) {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return "", false
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return "", false
	}
	return key[i+1 : i+1+j], true
}

// Slot is the Redis Cluster hash slot of key.
func Slot(key string) int {
	if tag, ok := hashTag(key); ok {
		key = tag
	}
	return int(crc16(key) % 16384)
}

// crc16 is CRC-16/XMODEM, the checksum of Redis Cluster's key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

var (
	slotTagsOnce sync.Once
	slotTags     []string
)

// slotTag returns a short string that hashes to slot.
func slotTag(slot int) string {
	slotTagsOnce.Do(func() {
		slotTags = make([]string, 16384)
		for i, left := 0, len(slotTags); left > 0; i++ {
			s := strconv.FormatInt(int64(i), 36)
			if k := crc16(s) % 16384; slotTags[k] == "" {
				slotTags[k] = s
				left--
			}
		}
	})
	return slotTags[slot]
}

// Apply writes cmds, in order, pipelined, and returns each command's error
// (nil when the write was applied or was older than the key's version; an
// *Error otherwise, see Unavailable) and how many writes were skipped as
// older.
func (s *Store) Apply(ctx context.Context, cmds []command.Command) (errs []error, stale int) {
	errs = make([]error, len(cmds))
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
// of a cluster.
func (s *Store) truncate(ctx context.Context, c command.Command) error {
	pattern := escapeGlob(c.Key) + "*"
	scan := func(ctx context.Context, rc *redis.Client) error {
		iter := rc.Scan(ctx, 0, pattern, 500).Iterator()
		var dels []command.Command
		flush := func() error {
			errs := make([]error, len(dels))
			s.apply(ctx, dels, errs)
			dels = dels[:0]
			return errors.Join(errs...)
		}
		for iter.Next(ctx) {
			dels = append(dels, command.Command{Del: true, Key: iter.Val(), Version: c.Version, VersionExpireMS: c.VersionExpireMS})
			if len(dels) == 500 {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := iter.Err(); err != nil {
			return err
		}
		return flush()
	}
	var err error
	switch rc := s.client.(type) {
	case *redis.ClusterClient:
		err = rc.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, rc)
	default:
		err = fmt.Errorf("unexpected client %T", rc)
	}
	if err != nil {
		return fmt.Errorf("truncate %s*: %w", c.Key, err)
	}
	return nil
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

// apply writes cmds (no truncates) in one pipeline, putting each one's
// error into errs, and returns how many were older than their key.
func (s *Store) apply(ctx context.Context, cmds []command.Command, errs []error) (stale int) {
	if len(cmds) == 0 {
		return 0
	}
	groups := s.group(cmds)
	results := s.run(ctx, cmds, groups)
	var retry []int
	for g, r := range results {
		if err := r.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			retry = append(retry, g) // Redis restarted or flushed its scripts
		}
	}
	if len(retry) > 0 {
		if err := applyScript.Load(ctx, s.client).Err(); err == nil {
			again := make([][]int, len(retry))
			for j, g := range retry {
				again[j] = groups[g]
			}
			for j, r := range s.run(ctx, cmds, again) {
				results[retry[j]] = r
			}
		}
	}
	for g, r := range results {
		replies, err := r.Slice()
		for j, i := range groups[g] {
			c := &cmds[i]
			if err == nil && j >= len(replies) {
				err = fmt.Errorf("script returned %d replies for %d changes", len(replies), len(groups[g]))
			}
			if err != nil {
				errs[i] = &Error{Command: verb(c), Key: c.Key, Err: err}
				continue
			}
			switch v := replies[j].(type) {
			case int64:
				if v == 0 {
					stale++
				}
			case string:
				errs[i] = stepError(c, v)
			default:
				errs[i] = &Error{Command: verb(c), Key: c.Key, Err: fmt.Errorf("script returned %T for a change", v)}
			}
		}
	}
	return stale
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

// stepError is the error the script reported for c: "<step> <reply>".
func stepError(c *command.Command, s string) error {
	step, reply, _ := strings.Cut(s, " ")
	e := &Error{Command: verb(c), Key: c.Key, Err: replyError(reply)}
	switch step {
	case "v":
		e.Command, e.Key = "GET", VersionKey(c.Key)
	case "w":
		e.Command, e.Key = "SET", VersionKey(c.Key)
	}
	return e
}

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
	if err == nil {
		return false
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

// perCall bounds the changes one script call writes: enough to spread the
// call's cost, few enough that one call does not hold Redis for long.
const perCall = 64

// group splits cmds into the script calls that write them: each call's keys
// in one hash slot of a cluster; a key's changes keep their order.
func (s *Store) group(cmds []command.Command) [][]int {
	var groups [][]int
	if _, cluster := s.client.(*redis.ClusterClient); !cluster {
		for i := 0; i < len(cmds); i += perCall {
			g := make([]int, 0, min(perCall, len(cmds)-i))
			for j := i; j < min(i+perCall, len(cmds)); j++ {
				g = append(g, j)
			}
			groups = append(groups, g)
		}
		return groups
	}
	open := map[int]int{} // slot → its group still taking commands
	for i, c := range cmds {
		slot := Slot(c.Key)
		g, ok := open[slot]
		if !ok || len(groups[g]) == perCall {
			g = len(groups)
			groups = append(groups, nil)
			open[slot] = g
		}
		groups[g] = append(groups[g], i)
	}
	return groups
}

// run sends one script call per group, pipelined.
func (s *Store) run(ctx context.Context, cmds []command.Command, groups [][]int) []*redis.Cmd {
	results := make([]*redis.Cmd, len(groups))
	pipe := s.client.Pipeline()
	for g, idx := range groups {
		keys := make([]string, 0, 2*len(idx))
		args := make([]any, 0, 5*len(idx))
		for _, i := range idx {
			c := cmds[i]
			op, value := "s", c.Value
			if c.Del {
				op, value = "d", nil
			}
			keys = append(keys, c.Key, VersionKey(c.Key))
			args = append(args, c.Version, op, value, c.ExpireMS, c.VersionExpireMS)
		}
		results[g] = applyScript.EvalSha(ctx, pipe, keys, args...)
	}
	_, err := pipe.Exec(ctx)
	if err != nil && !isReplyError(err) {
		// The connection failed: no call has a reply of its own.
		for _, r := range results {
			if r.Err() == nil {
				r.SetErr(err)
			}
		}
	}
	return results
}

func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
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
