package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

// open opens the store of r; in the transaction mode of eachWay it holds
// the fence of partition 0, whose changes the helpers make.
func open(t *testing.T, r *testenv.Redis) *Store {
	t.Helper()
	s, err := Open(context.Background(), config.Destination{Host: "127.0.0.1", Port: r.Port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	hold(t, s)
	return s
}

// hold makes s hold the fence of partition 0 in the transaction mode of
// eachWay.
func hold(t *testing.T, s *Store) {
	t.Helper()
	if fenced {
		s.EnableFences("test", "w", 16, func() bool { return true })
		if err := s.Acquire(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
	}
}

func v(lsn uint64, idx uint32) string { return string(change.AppendVersion(nil, lsn, idx)) }

var (
	// inserts marks the writes that set and msg make as inserts', which
	// the script reads with EXISTS first (see eachWay).
	inserts bool
	// fenced makes open hold the fence of partition 0, and the helpers
	// make changes of it, which transactions write (see eachWay).
	fenced bool
)

// partition is the partition of the changes the helpers make.
func partition() int {
	if fenced {
		return 0
	}
	return -1
}

// eachWay runs a test of versioned writes four ways: through the script
// and in transactions, each with the writes read as updates (the key's
// head and its record) and as inserts (EXISTS first, then the same reads
// unless both are absent).
func eachWay(test func(t *testing.T)) func(t *testing.T) {
	return func(t *testing.T) {
		for _, tx := range []bool{false, true} {
			for _, ins := range []bool{false, true} {
				name := map[bool]string{false: "script", true: "transaction"}[tx] + "-" + map[bool]string{false: "update", true: "insert"}[ins]
				t.Run(name, func(t *testing.T) {
					inserts, fenced = ins, tx
					defer func() { inserts, fenced = false, false }()
					test(t)
				})
			}
		}
	}
}

// eachPath runs a test through the script and in transactions: for the
// tests of what the server says, which reads do not change.
func eachPath(test func(t *testing.T)) func(t *testing.T) {
	return func(t *testing.T) {
		for _, tx := range []bool{false, true} {
			t.Run(map[bool]string{false: "script", true: "transaction"}[tx], func(t *testing.T) {
				fenced = tx
				defer func() { fenced = false }()
				test(t)
			})
		}
	}
}

// set is a SET of an opaque value (a transform's, say): its version is
// kept in a record.
func set(key, value string, lsn uint64, idx uint32) command.Command {
	return command.Command{Key: key, Value: []byte(value), Version: v(lsn, idx), Partition: partition(), Insert: inserts}
}

func del(key string, lsn uint64, idx uint32) command.Command {
	return command.Command{Del: true, Key: key, Version: v(lsn, idx), VersionExpireMS: 60000, Partition: partition()}
}

func TestApplyKeepsNewest(t *testing.T) {
	eachWay(func(t *testing.T) {
		ctx := context.Background()
		r := testenv.NewRedis(t)
		s := open(t, r)
		rc := s.Client()

		// In order, then older writes arriving late: the newest stays.
		errs, stale := s.Apply(ctx, []command.Command{
			set("k", "v1", 0x100, 0), set("k", "v2", 0x100, 1), set("k", "v3", 0x200, 0),
			set("k", "old", 0x100, 5), set("k", "v3-again", 0x200, 0),
		})
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := rc.Get(ctx, "k").Val(); got != "v3" || stale != 2 {
			t.Fatalf("k = %q, stale = %d", got, stale)
		}
		// A LSN that differs only in its upper half orders correctly too.
		s.Apply(ctx, []command.Command{set("k", "far", 1<<40, 0), set("k", "near", 0xffffffff, 9)})
		if got := rc.Get(ctx, "k").Val(); got != "far" {
			t.Fatalf("k = %q", got)
		}

		// DEL leaves a tombstone: an older SET cannot resurrect the key.
		s.Apply(ctx, []command.Command{del("k", 1<<41, 0), set("k", "zombie", 1<<40, 1)})
		if n := rc.Exists(ctx, "k").Val(); n != 0 {
			t.Fatal("stale SET resurrected a deleted key")
		}
		if ttl := rc.PTTL(ctx, VersionKey("k")).Val(); ttl <= 0 || ttl > time.Minute {
			t.Fatalf("tombstone ttl = %v", ttl)
		}
		// A newer SET recreates it.
		s.Apply(ctx, []command.Command{set("k", "back", 1<<41, 1)})
		if got := rc.Get(ctx, "k").Val(); got != "back" {
			t.Fatalf("k = %q", got)
		}
		if ttl := rc.PTTL(ctx, VersionKey("k")).Val(); ttl != -1 {
			t.Fatalf("version of a live key without expiry has ttl %v", ttl)
		}
	})(t)
}

func TestApplyExpiry(t *testing.T) {
	eachWay(func(t *testing.T) {
		ctx := context.Background()
		s := open(t, testenv.NewRedis(t))
		c := set("e", "v", 1, 0)
		c.ExpireMS, c.VersionExpireMS = 5000, 60000
		if errs, _ := s.Apply(ctx, []command.Command{c}); errs[0] != nil {
			t.Fatal(errs[0])
		}
		if ttl := s.Client().PTTL(ctx, "e").Val(); ttl <= 0 || ttl > 5*time.Second {
			t.Fatalf("key ttl = %v", ttl)
		}
		if ttl := s.Client().PTTL(ctx, VersionKey("e")).Val(); ttl <= 5*time.Second {
			t.Fatalf("version ttl = %v", ttl)
		}
	})(t)
}

func TestApplyReportsEachFailure(t *testing.T) {
	eachWay(func(t *testing.T) {
		ctx := context.Background()
		r := testenv.NewRedis(t)
		s := open(t, r)
		rc := s.Client()
		// The version record of "bad" is not a string: its command fails with
		// WRONGTYPE, the others of the same pipeline succeed. The error names
		// the command that failed, and is the change's own.
		rc.HSet(ctx, VersionKey("bad"), "f", "v")
		errs, _ := s.Apply(ctx, []command.Command{set("a", "1", 1, 0), set("bad", "2", 1, 1), set("c", "3", 1, 2)})
		if errs[0] != nil || errs[2] != nil || errs[1] == nil || !strings.HasPrefix(errs[1].Error(), "GET sluice:v:{bad}: WRONGTYPE ") || Unavailable(errs[1]) {
			t.Fatalf("errs = %v", errs)
		}
		if rc.Get(ctx, "a").Val() != "1" || rc.Get(ctx, "c").Val() != "3" {
			t.Fatal("good commands of a failing pipeline were not applied")
		}
		// A key that is not a string is someone else's: it is not written over.
		rc.HSet(ctx, "theirs", "f", "v")
		errs, _ = s.Apply(ctx, []command.Command{msg("theirs", 1, 0, "")})
		if errs[0] == nil || !strings.HasPrefix(errs[0].Error(), "GETRANGE theirs: WRONGTYPE ") || rc.Type(ctx, "theirs").Val() != "hash" {
			t.Fatalf("a key holding a hash: %v", errs)
		}

		// Scripts flushed (as after a restart): reloaded, and applied.
		rc.ScriptFlush(ctx)
		if errs, _ := s.Apply(ctx, []command.Command{set("a", "2", 2, 0)}); errs[0] != nil {
			t.Fatal(errs[0])
		}
		if rc.Get(ctx, "a").Val() != "2" {
			t.Fatal("not applied after NOSCRIPT")
		}

		// Server gone: every command fails, and that is the server's condition.
		r.Stop()
		errs, _ = s.Apply(ctx, []command.Command{set("a", "3", 3, 0), set("b", "3", 3, 1)})
		if errs[0] == nil || errs[1] == nil || !Unavailable(errs[0]) || !Unavailable(errs[1]) {
			t.Fatalf("errs with redis down = %v", errs)
		}
	})(t)
}

// Out of memory, Redis refuses a script's SETs until the script has
// written something (a DEL, which it allows), then lets the script finish.
// In a pipeline of many calls mixing both, every reply is matched to its
// own command: what each one reports is what happened to its key (a reply
// read out of step would report another command's outcome). The refusals
// are the server's condition.
func TestRepliesInStepUnderOOM(t *testing.T) {
	eachPath(testRepliesInStepUnderOOM)(t)
}

func testRepliesInStepUnderOOM(t *testing.T) {
	ctx := context.Background()
	r := testenv.NewRedis(t)
	s := open(t, r)
	rc := s.Client()
	if err := rc.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	failed, applied := 0, 0
	for round := range 3 {
		var cmds []command.Command
		for i := range 1000 {
			key := fmt.Sprintf("k%d:%d", round, i)
			if i%7 == 3 {
				cmds = append(cmds, del(key, 2, uint32(i)))
			} else {
				cmds = append(cmds, set(key, "v"+key, 2, uint32(i)))
			}
		}
		errs, _ := s.Apply(ctx, cmds)
		for i, err := range errs {
			c := cmds[i]
			written := rc.Get(ctx, VersionKey(c.Key)).Val() == c.Version
			if !c.Del {
				written = written && rc.Get(ctx, c.Key).Val() == string(c.Value)
			}
			switch {
			case err == nil && !written:
				t.Fatalf("round %d: %s %s reported applied, but Redis does not hold it", round, verb(&c), c.Key)
			case err != nil && written:
				t.Fatalf("round %d: %s %s reported %v, but Redis holds it", round, verb(&c), c.Key, err)
			case err != nil && (!strings.Contains(err.Error(), "OOM") || !Unavailable(err)):
				t.Fatalf("round %d: %s %s: %v, want OOM, the server's condition", round, verb(&c), c.Key, err)
			case err != nil:
				failed++
			default:
				applied++
			}
		}
	}
	if failed == 0 || applied == 0 {
		t.Fatalf("%d failed, %d applied: the test did not mix both", failed, applied)
	}
}

// A user whose permissions were revoked gets NOPERM for every key: the
// server's condition, not the changes'.
func TestNoPermIsUnavailable(t *testing.T) {
	eachPath(testNoPermIsUnavailable)(t)
}

func testNoPermIsUnavailable(t *testing.T) {
	ctx := context.Background()
	r := testenv.NewRedis(t, "--user", "app", "on", ">pw", "~*", "&*", "+@all")
	s, err := Open(ctx, config.Destination{Host: "127.0.0.1", Port: r.Port, Username: "app", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hold(t, s)
	admin := r.Client()
	defer admin.Close()
	if err := admin.Do(ctx, "ACL", "SETUSER", "app", "resetkeys").Err(); err != nil {
		t.Fatal(err)
	}
	errs, _ := s.Apply(ctx, []command.Command{set("a", "1", 1, 0), del("b", 1, 1)})
	for _, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "NOPERM") || !Unavailable(err) {
			t.Fatalf("errs = %v", errs)
		}
	}
}

// A password changed while the writer runs: its next connection is
// refused (WRONGPASS at AUTH, before any command of the batch ran), and
// every change fails with that, waited out, versioned or not, none taken
// for written.
func TestPasswordRefusedAtReconnect(t *testing.T) {
	eachPath(testPasswordRefusedAtReconnect)(t)
}

func testPasswordRefusedAtReconnect(t *testing.T) {
	ctx := context.Background()
	r := testenv.NewRedis(t, "--user", "app", "on", ">pw", "~*", "&*", "+@all")
	admin := r.Client()
	defer admin.Close()
	for _, unversioned := range []bool{false, true} {
		if err := admin.Do(ctx, "ACL", "SETUSER", "app", "resetpass", ">pw").Err(); err != nil {
			t.Fatal(err)
		}
		s, err := Open(ctx, config.Destination{Host: "127.0.0.1", Port: r.Port, Username: "app", Password: "pw", Unversioned: unversioned})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		hold(t, s)
		if err := admin.Do(ctx, "ACL", "SETUSER", "app", "resetpass", ">other").Err(); err != nil {
			t.Fatal(err)
		}
		if err := admin.Do(ctx, "CLIENT", "KILL", "USER", "app").Err(); err != nil {
			t.Fatal(err)
		}
		errs, _ := s.Apply(ctx, []command.Command{set("a", "1", 1, 0), del("b", 1, 1)})
		for _, err := range errs {
			if err == nil || !strings.Contains(err.Error(), "WRONGPASS") || !Unavailable(err) {
				t.Errorf("unversioned %v: errs = %v", unversioned, errs)
			}
		}
		if n := admin.Exists(ctx, "a").Val(); n != 0 {
			t.Errorf("unversioned %v: a was written", unversioned)
		}
	}
}

func TestVersionKeySharesSlot(t *testing.T) {
	for _, key := range []string{"sequin:users:1", "{user1}:profile", "a{b}c", "plain", "a{}b", "a}b{c", "{}", "x{y", "}{"} {
		vk := VersionKey(key)
		if Slot(vk) != Slot(key) || !strings.HasPrefix(vk, VersionPrefix) || !strings.HasSuffix(vk, key) && !strings.HasSuffix(vk, key+"}") {
			t.Errorf("VersionKey(%q) = %q: slot %d, key's %d", key, vk, Slot(vk), Slot(key))
		}
	}
	// No two keys share a record.
	seen := map[string]string{}
	for _, key := range []string{"k", "{k}", "=k", "={k}", "{k}}", "{}k", "k{", "{0}k{", "a{b}", "{a}{b}", "{x}a}b"} {
		vk := VersionKey(key)
		if other, ok := seen[vk]; ok {
			t.Errorf("%q and %q share the record %q", key, other, vk)
		}
		seen[vk] = key
	}
	// The known slot of a known key (CLUSTER KEYSLOT foo = 12182).
	if Slot("foo") != 12182 || Slot("{foo}bar") != 12182 {
		t.Errorf("Slot(foo) = %d", Slot("foo"))
	}
}

// The destination's username, password and database are used.
func TestOpenWithACLUserAndDatabase(t *testing.T) {
	ctx := context.Background()
	r := testenv.NewRedis(t, "--user", "app", "on", ">s3cret", "~*", "&*", "+@all")
	d := config.Destination{Host: "127.0.0.1", Port: r.Port, Username: "app", Password: "s3cret", Database: 3}
	s, err := Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if errs, _ := s.Apply(ctx, []command.Command{set("k", "v", 1, 0)}); errs[0] != nil {
		t.Fatal(errs[0])
	}
	rc := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "app", Password: "s3cret", DB: 3})
	defer rc.Close()
	if got := rc.Get(ctx, "k").Val(); got != "v" {
		t.Fatalf("db 3 holds %q", got)
	}
	d.Password = "wrong"
	if _, err := Open(ctx, d); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("wrong password: %v", err)
	}
}

// TLS: the server's certificate is verified against tls_ca_file; without
// it (the system's roots) the connection is refused, unless verification
// is explicitly skipped.
func TestOpenTLS(t *testing.T) {
	ctx := context.Background()
	r := testenv.NewRedisTLS(t, t.TempDir())
	d := config.Destination{Host: "127.0.0.1", Port: r.Port, TLS: true, TLSCAFile: r.TLS.CA}
	s, err := Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if errs, _ := s.Apply(ctx, []command.Command{set("k", "v", 1, 0)}); errs[0] != nil {
		t.Fatal(errs[0])
	}
	d.TLSCAFile = ""
	if _, err := Open(ctx, d); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unverifiable certificate accepted: %v", err)
	}
	d.TLSInsecureSkipVerify = true
	s2, err := Open(ctx, d)
	if err != nil {
		t.Fatalf("with verification skipped: %v", err)
	}
	s2.Close()
	d.TLS, d.TLSInsecureSkipVerify = false, false
	if _, err := Open(ctx, d); err == nil {
		t.Fatal("plain connection to a TLS-only server succeeded")
	}
	// TLS to a plaintext server says TLS, at once.
	plain := testenv.NewRedis(t)
	began := time.Now()
	_, err = Open(ctx, config.Destination{Host: "127.0.0.1", Port: plain.Port, TLS: true})
	if err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("TLS to a plaintext server: %v", err)
	}
	t.Logf("TLS to a plaintext server failed after %s: %v", time.Since(began).Round(time.Millisecond), err)
}

// A Redis Cluster: keys spread over the masters, each command with its
// version record in one slot.
func TestCluster(t *testing.T) {
	ctx := context.Background()
	c := testenv.NewRedisCluster(t, 3)
	s, err := Open(ctx, config.Destination{Addresses: c.Addrs(), Cluster: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var cmds []command.Command
	for i := range 300 {
		cmds = append(cmds, set(fmt.Sprintf("sequin:users:%d", i), fmt.Sprint(i), 5, uint32(i)))
	}
	cmds = append(cmds, set("a{}b", "odd braces", 5, 1000), set("{tag}x", "tagged", 5, 1001), del("sequin:users:7", 6, 0))
	errs, _ := s.Apply(ctx, cmds)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	rc := c.Client()
	defer rc.Close()
	if got := rc.Get(ctx, "sequin:users:299").Val(); got != "299" {
		t.Fatalf("sequin:users:299 = %q", got)
	}
	if rc.Get(ctx, "a{}b").Val() != "odd braces" || rc.Exists(ctx, "sequin:users:7").Val() != 0 {
		t.Fatal("odd or deleted keys wrong")
	}
	// Every master holds some keys.
	for _, n := range c.Nodes {
		nc := n.Client()
		if size := nc.DBSize(ctx).Val(); size == 0 {
			t.Errorf("master %s holds no key", n.Addr)
		}
		nc.Close()
	}
	// Older writes are refused in a cluster too.
	s.Apply(ctx, []command.Command{set("sequin:users:1", "old", 4, 0)})
	if got := rc.Get(ctx, "sequin:users:1").Val(); got != "1" {
		t.Fatalf("stale write landed: %q", got)
	}
}

// A truncate deletes the table's keys older than it, and only those.
func TestTruncate(t *testing.T) {
	ctx := context.Background()
	s := open(t, testenv.NewRedis(t))
	var cmds []command.Command
	for i := range 1200 {
		cmds = append(cmds, set(fmt.Sprintf("sequin:users:%d", i), "v", 10, uint32(i)))
	}
	cmds = append(cmds, set("sequin:users_x:1", "other table", 10, 5000), set("sequin:users:newer", "after", 30, 0),
		command.Command{Truncate: true, Key: "sequin:users:", Version: v(20, 0), VersionExpireMS: 60000, Partition: -1},
		set("sequin:users:5", "stale, from before the truncate", 10, 9999), set("sequin:users:7", "new", 21, 0))
	errs, _ := s.Apply(ctx, cmds)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	rc := s.Client()
	keys, _ := rc.Keys(ctx, "sequin:*").Result()
	slices.Sort(keys)
	if strings.Join(keys, ",") != "sequin:users:7,sequin:users:newer,sequin:users_x:1" {
		t.Fatalf("keys after truncate: %v", keys)
	}
	if s.Progressed().IsZero() {
		t.Fatal("a truncate marked no progress")
	}
}
