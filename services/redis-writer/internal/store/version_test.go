package store

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

// msg is a SET of Sequin's message JSON for a change at (lsn, idx), whose
// changes are the given JSON.
func msg(key string, lsn uint64, idx uint32, changes string) command.Command {
	ev := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_UPDATE, Schema: "public", Table: "t", PkValues: []string{key},
		Record: []byte(`{"id":1}`), Changes: []byte(changes), CommitLsn: lsn, CommitIdx: idx, IdempotencyKey: change.IdempotencyKey(lsn, idx)}
	return command.Command{Key: key, Value: change.AppendMessage(nil, ev, change.NewConsumer("s", nil), change.NewDatabase("", nil)), Message: true, Version: v(lsn, idx), Partition: partition(), Insert: inserts}
}

func applyAll(t *testing.T, s *Store, cmds ...command.Command) int {
	t.Helper()
	errs, stale := s.Apply(context.Background(), cmds)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return stale
}

// A message value carries its version: no version record is written, and
// an older change is still refused, whatever the changes JSON before the
// version holds (braces and quotes in strings, escapes, keys that look
// like the metadata's, more than Redis returns in one GETRANGE).
func TestMessageValuesCarryTheirVersion(t *testing.T) {
	eachWay(func(t *testing.T) {
		ctx := context.Background()
		s := open(t, testenv.NewRedis(t))
		rc := s.Client()
		for _, changes := range []string{"", "{}", `{"note":"a } b { \" c \\"}`, `{"j":{"metadata":{"commit_idx":99999,"commit_lsn":99999}}}`,
			`{"long":"` + strings.Repeat("x", 1000) + `"}`, `{"esc":"\\\\","q":"\"}"}`} {
			key := fmt.Sprintf("k%d", len(changes))
			if stale := applyAll(t, s, msg(key, 100, 1, changes)); stale != 0 {
				t.Fatalf("%s: first write stale", changes)
			}
			if n := rc.Exists(ctx, VersionKey(key)).Val(); n != 0 {
				t.Fatalf("%s: a version record was written for a message value", changes)
			}
			older, newer := msg(key, 100, 0, changes), msg(key, 100, 2, changes)
			if stale := applyAll(t, s, older); stale != 1 {
				t.Fatalf("changes %s: an older change was written over the key", changes)
			}
			if stale := applyAll(t, s, newer); stale != 0 || rc.Get(ctx, key).Val() != string(newer.Value) {
				t.Fatalf("changes %s: a newer change was not written", changes)
			}
		}

		// A delete leaves a tombstone that refuses older SETs; a newer SET
		// replaces it and removes the tombstone.
		applyAll(t, s, del("k0", 200, 0))
		if stale := applyAll(t, s, msg("k0", 150, 0, "")); stale != 1 || rc.Exists(ctx, "k0").Val() != 0 {
			t.Fatal("an older SET brought a deleted key back")
		}
		applyAll(t, s, msg("k0", 201, 0, ""))
		if rc.Exists(ctx, "k0").Val() != 1 || rc.Exists(ctx, VersionKey("k0")).Val() != 0 {
			t.Fatal("after a newer SET: the key is missing or its tombstone stayed")
		}

		// A transform's value keeps a record; a message value written over it
		// removes the record, and still refuses what is older.
		applyAll(t, s, set("k2", "opaque", 300, 0))
		if rc.Get(ctx, VersionKey("k2")).Val() != v(300, 0) {
			t.Fatal("no version record for an opaque value")
		}
		if stale := applyAll(t, s, msg("k2", 299, 0, "")); stale != 1 {
			t.Fatal("an older message value was written over a newer opaque one")
		}
		applyAll(t, s, msg("k2", 301, 0, ""))
		if rc.Exists(ctx, VersionKey("k2")).Val() != 0 {
			t.Fatal("the record stayed once the value carries its version")
		}

		// A record written by an earlier release (24 hex digits) still counts.
		rc.Set(ctx, VersionKey("legacy"), fmt.Sprintf("%016x%08x", 500, 3), 0)
		rc.Set(ctx, "legacy", `{"record":{}}`, 0)
		if stale := applyAll(t, s, msg("legacy", 500, 2, "")); stale != 1 {
			t.Fatal("an older change was written over a key with a legacy record")
		}
		if stale := applyAll(t, s, msg("legacy", 500, 4, "")); stale != 0 {
			t.Fatal("a newer change was refused over a legacy record")
		}
	})(t)
}

// While Redis may evict keys, a retried change is written only over a
// known version: an absent key with no tombstone might have been evicted
// after a newer change.
func TestRetriedNeedsAKnownVersion(t *testing.T) {
	eachWay(func(t *testing.T) {
		ctx := context.Background()
		r := testenv.NewRedis(t)
		s := open(t, r)
		retried := func(c command.Command) command.Command { c.Retried = true; return c }
		if p, err := s.Policy(ctx); err != nil || p != "noeviction" {
			t.Fatalf("policy %q, %v", p, err)
		}
		applyAll(t, s, retried(msg("a", 10, 0, ""))) // nothing evicts: absent means never written
		if err := s.Client().ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
			t.Fatal(err)
		}
		if p, _ := s.Policy(ctx); p != "allkeys-lru" {
			t.Fatalf("policy %q", p)
		}
		errs, _ := s.Apply(ctx, []command.Command{retried(msg("b", 10, 0, "")), retried(msg("a", 11, 0, "")), retried(del("c", 11, 0))})
		if errs[0] == nil || !strings.Contains(errs[0].Error(), "unknown") || Unavailable(errs[0]) || errs[1] != nil || errs[2] != nil {
			t.Fatalf("errs = %v", errs)
		}
		if s.Client().Exists(ctx, "b").Val() != 0 {
			t.Fatal("a retried change was written over an unknown version")
		}
	})(t)
}

// Fences: once another writer took a partition, the former owner's writes
// of it are refused, however late; a fence Redis lost is set again by its
// owner.
func TestFences(t *testing.T) {
	eachWay(func(t *testing.T) {
		ctx := context.Background()
		r := testenv.NewRedis(t)
		a, b := open(t, r), open(t, r)
		a.EnableFences("cache", "a", 16, func() bool { return true })
		b.EnableFences("cache", "b", 16, func() bool { return true })
		in := func(c command.Command, p int) command.Command { c.Partition = p; return c }
		if err := a.Acquire(ctx, 3); err != nil {
			t.Fatal(err)
		}
		applyAll(t, a, in(msg("k", 1, 0, ""), 3))
		if err := b.Acquire(ctx, 3); err != nil {
			t.Fatal(err)
		}
		errs, _ := a.Apply(ctx, []command.Command{in(msg("k", 2, 0, ""), 3), in(msg("j", 2, 1, ""), 3)})
		for _, err := range errs {
			if err == nil || !strings.Contains(err.Error(), "another writer owns the partition") || Unavailable(err) {
				t.Fatalf("the former owner's writes: %v", errs)
			}
		}
		applyAll(t, b, in(msg("k", 3, 0, ""), 3))
		// A released partition is not written either.
		b.Release(3)
		if errs, _ := b.Apply(ctx, []command.Command{in(msg("k", 4, 0, ""), 3)}); errs[0] == nil {
			t.Fatal("a released partition was written")
		}
		// Redis flushed (or evicted the fence): the owner sets it again, while
		// its lease holds, and writes.
		if err := b.Acquire(ctx, 3); err != nil {
			t.Fatal(err)
		}
		r.Client().FlushAll(ctx)
		applyAll(t, b, in(msg("k", 5, 0, ""), 3))
		// Not without a lease.
		c := open(t, r)
		c.EnableFences("cache", "c", 16, func() bool { return false })
		if err := c.Acquire(ctx, 4); err != nil {
			t.Fatal(err)
		}
		r.Client().FlushAll(ctx)
		errs, _ = c.Apply(ctx, []command.Command{in(msg("k", 6, 0, ""), 4)})
		if errs[0] == nil || !Unavailable(errs[0]) {
			t.Fatalf("with the fence gone and no lease: %v", errs)
		}
	})(t)
}

// Unversioned: plain SET and DEL, with expiry.
func TestUnversioned(t *testing.T) {
	ctx := context.Background()
	r := testenv.NewRedis(t)
	s, err := Open(ctx, config.Destination{Host: "127.0.0.1", Port: r.Port, Unversioned: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := set("e", "v", 1, 0)
	c.ExpireMS = 5000
	applyAll(t, s, set("a", "1", 2, 0), set("a", "older, yet last", 1, 0), c, set("d", "x", 1, 0), del("d", 2, 0))
	rc := s.Client()
	if rc.Get(ctx, "a").Val() != "older, yet last" || rc.Exists(ctx, "d").Val() != 0 || rc.PTTL(ctx, "e").Val() <= 0 {
		t.Fatal("plain writes not applied in order")
	}
	if keys := rc.Keys(ctx, VersionPrefix+"*").Val(); len(keys) != 0 {
		t.Fatalf("version records: %v", keys)
	}
}

// wait_replicas: a batch counts as written only once the replicas
// confirmed it; without a replica, it is the server's condition.
func TestWaitReplicas(t *testing.T) {
	eachPath(testWaitReplicas)(t)
}

func testWaitReplicas(t *testing.T) {
	ctx := context.Background()
	primary := testenv.NewRedis(t)
	d := config.Destination{Host: "127.0.0.1", Port: primary.Port, WaitReplicas: 1, WaitTimeout: 200e6}
	s, err := Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hold(t, s)
	errs, _ := s.Apply(ctx, []command.Command{msg("k", 1, 0, "")})
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "0 of 1 replicas") || !Unavailable(errs[0]) {
		t.Fatalf("without a replica: %v", errs)
	}
	replica := testenv.NewRedis(t, "--replicaof", "127.0.0.1", fmt.Sprint(primary.Port))
	rc := replica.Client()
	defer rc.Close()
	for range 100 {
		if errs, _ = s.Apply(ctx, []command.Command{msg("k", 2, 0, "")}); errs[0] == nil {
			break
		}
	}
	if errs[0] != nil || !strings.Contains(rc.Get(ctx, "k").Val(), `"commit_lsn":2,`) {
		t.Fatalf("with a replica: %v", errs)
	}
}

// A message value that expires keeps a version record that outlives it:
// once the key expired, an older change is still refused.
func TestExpiringMessageKeepsItsVersion(t *testing.T) {
	eachWay(func(t *testing.T) {
		ctx := context.Background()
		s := open(t, testenv.NewRedis(t))
		rc := s.Client()
		c := msg("e", 100, 1, "")
		c.ExpireMS, c.VersionExpireMS = 50, 3_600_000
		applyAll(t, s, c)
		if rc.Get(ctx, VersionKey("e")).Val() != v(100, 1) {
			t.Fatal("an expiring message value has no version record")
		}
		for deadline := time.Now().Add(5 * time.Second); rc.Exists(ctx, "e").Val() != 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the key did not expire")
			}
		}
		if stale := applyAll(t, s, msg("e", 100, 0, "")); stale != 1 || rc.Exists(ctx, "e").Val() != 0 {
			t.Fatal("an older change brought an expired key back")
		}
	})(t)
}

// A value whose metadata head is cut by the first read is read whole,
// wherever the cut falls in the commit index and LSN, at their widest.
func TestLongMessageHeadIsReadWhole(t *testing.T) {
	eachWay(func(t *testing.T) {
		s := open(t, testenv.NewRedis(t))
		const lsn, idx = 1<<63 + 12345, 1<<32 - 1
		for pad := 120; pad < 230; pad++ {
			key := fmt.Sprintf("h%d", pad)
			applyAll(t, s, msg(key, lsn, idx, `{"pad":"`+strings.Repeat("x", pad)+`"}`))
			if stale := applyAll(t, s, msg(key, lsn, idx-1, "")); stale != 1 {
				t.Fatalf("pad %d: an older change was written over a value whose head was cut", pad)
			}
		}
	})(t)
}
