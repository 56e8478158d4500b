package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

// calls is how many times Redis ran cmd (INFO commandstats).
func calls(t *testing.T, rc redis.UniversalClient, cmd string) int {
	t.Helper()
	info, err := rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// The changes of a partition this writer holds the fence of are written
// in a transaction, without the script, and end as the script leaves them
// (eachWay runs every versioned test both ways); a key other partitions
// may write is left to the script.
func TestTransactionsWriteWithoutTheScript(t *testing.T) {
	ctx := context.Background()
	fenced = true
	defer func() { fenced = false }()
	s := open(t, testenv.NewRedis(t))
	rc := s.Client()
	expiring := msg("e", 5, 0, "")
	expiring.ExpireMS, expiring.VersionExpireMS = 60000, 120000
	errs, stale := s.Apply(ctx, []command.Command{
		msg("a", 10, 0, ""), msg("a", 10, 1, `{"n":1}`), msg("a", 9, 0, ""), // the same key thrice: the newest stays
		set("o", "opaque", 10, 2), del("d", 10, 3), msg("d", 10, 2, ""), expiring,
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	a := msg("a", 10, 1, `{"n":1}`)
	switch {
	case stale != 2:
		t.Fatalf("stale = %d, want 2 (a at 9/0, d at 10/2)", stale)
	case rc.Get(ctx, "a").Val() != string(a.Value) || rc.Exists(ctx, VersionKey("a")).Val() != 0:
		t.Fatal("a is not its newest message, or has a record")
	case rc.Get(ctx, "o").Val() != "opaque" || rc.Get(ctx, VersionKey("o")).Val() != v(10, 2):
		t.Fatal("an opaque value without its record")
	case rc.Exists(ctx, "d").Val() != 0 || rc.Get(ctx, VersionKey("d")).Val() != v(10, 3):
		t.Fatal("an older SET brought a deleted key back, or no tombstone")
	case rc.PTTL(ctx, "e").Val() <= 0 || rc.PTTL(ctx, VersionKey("e")).Val() <= rc.PTTL(ctx, "e").Val():
		t.Fatal("an expiring message's record does not outlive it")
	}
	if n, x := calls(t, rc, "evalsha"), calls(t, rc, "exec"); n != 0 || x != 1 {
		t.Fatalf("%d script calls and %d EXECs, want none and 1", n, x)
	}

	// A message written over the opaque value removes its record.
	applyAll(t, s, msg("o", 11, 0, ""))
	if rc.Exists(ctx, VersionKey("o")).Val() != 0 {
		t.Fatal("a message value kept the record of the opaque value before it")
	}

	shared := msg("x", 12, 0, "")
	shared.Shared = true
	applyAll(t, s, shared, msg("y", 12, 1, ""))
	if n := calls(t, rc, "evalsha"); n != 1 || rc.Exists(ctx, "x", "y").Val() != 2 {
		t.Fatalf("%d script calls for a shared key, want 1", n)
	}
}

// A value that carries its version needs no version record, as the
// script knows: a transaction updating or deleting such keys reads their
// heads only. A key whose head holds no version (deleted: a tombstone)
// has its record read in a second round, and an older change of it is
// still refused.
func TestTransactionReadsNoRecordOfAMessage(t *testing.T) {
	ctx := context.Background()
	fenced = true
	defer func() { fenced = false }()
	s := open(t, testenv.NewRedis(t))
	rc := s.Client()
	applyAll(t, s, msg("a", 1, 0, ""), msg("b", 1, 1, ""), msg("c", 1, 2, ""))
	applyAll(t, s, del("c", 2, 0))
	if err := rc.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if stale := applyAll(t, s, msg("a", 3, 0, ""), del("b", 3, 1)); stale != 0 {
		t.Fatalf("stale = %d, want 0", stale)
	}
	if m, e, g := calls(t, rc, "mget"), calls(t, rc, "exists"), calls(t, rc, "getrange"); m != 0 || e != 0 || g != 2 {
		t.Fatalf("%d MGET, %d EXISTS and %d GETRANGE for two keys holding messages, want 0, 0 and 2", m, e, g)
	}
	a := msg("a", 3, 0, "")
	if rc.Get(ctx, "a").Val() != string(a.Value) || rc.Exists(ctx, "b").Val() != 0 || rc.Get(ctx, VersionKey("b")).Val() != v(3, 1) {
		t.Fatal("a is not its newest message, or b is not deleted with its tombstone")
	}
	// c's tombstone is read: its older update stays refused, a newer one
	// writes it again.
	if stale := applyAll(t, s, msg("c", 1, 5, "")); stale != 1 || rc.Exists(ctx, "c").Val() != 0 {
		t.Fatalf("stale = %d: an older update brought a deleted key back", stale)
	}
	if stale := applyAll(t, s, msg("c", 4, 0, "")); stale != 0 || rc.Exists(ctx, "c").Val() != 1 {
		t.Fatalf("stale = %d: a newer update of a deleted key was not written", stale)
	}
}

// A partition taken over by another writer between a transaction's reads
// and its EXEC: Redis refuses the EXEC, nothing is written, and the former
// owner is told it is fenced out.
func TestTransactionRefusedOnceTheFenceMoved(t *testing.T) {
	ctx := context.Background()
	fenced = true
	defer func() { fenced = false }()
	r := testenv.NewRedis(t)
	b := open(t, r)
	b.EnableFences("test", "b", 16, func() bool { return true })
	a := open(t, r) // the owner
	applyAll(t, a, msg("k", 1, 0, ""))
	a.beforeExec = func() {
		if err := b.Acquire(ctx, 0); err != nil {
			t.Error(err)
		}
	}
	errs, _ := a.Apply(ctx, []command.Command{msg("k", 2, 0, ""), msg("j", 2, 1, "")})
	for _, err := range errs {
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("the former owner's writes: %v", errs)
		}
	}
	rc := r.Client()
	defer rc.Close()
	if rc.Exists(ctx, "j").Val() != 0 || !strings.Contains(rc.Get(ctx, "k").Val(), `"commit_lsn":1,`) {
		t.Fatal("a writer fenced out wrote")
	}
}

// readLua runs the script's own message() and record() on a value and a
// record: its functions, without the part that writes.
var readLua = redis.NewScript(applyLua[:strings.Index(applyLua, "\nlocal out = {}")] + `
local function show(v)
  if v == false then return 'cut' elseif v == nil then return 'none' end
  return v
end
return {show(message(ARGV[1])), show(record(ARGV[2]))}
`)

// Transactions read a value's version, and a record's, as the script
// does.
func FuzzMessageVersion(f *testing.F) {
	r := testenv.NewRedis(f)
	rc := r.Client()
	f.Cleanup(func() { rc.Close() })
	for _, changes := range []string{"", "{}", `{"note":"a } b { \" c \\"}`, `{"j":{"metadata":{"commit_idx":9,"commit_lsn":9}}}`,
		`{"long":"` + strings.Repeat("x", 300) + `"}`, `{"esc":"\\\\","q":"\"}"}`} {
		value := msg("k", 1<<63+5, 1<<32-1, changes).Value
		f.Add(string(value), v(7, 1))
		f.Add(string(value[:min(len(value), head)]), "0000000000000001000000a0")
		f.Add(string(value[:len(value)/2]), "00000000000000010000000")
	}
	f.Add(`{"action":"x","changes":{"a":1}X"metadata":{"commit_idx":1,"commit_lsn":2,`, "zz")
	f.Add(`{"action":"","changes":null,"metadata":{"commit_idx":1,"commit_lsn":2,`, "")
	f.Add(`{"action":"insert","changes":null,"metadata":{"commit_idx":12345678901,"commit_lsn":2,`, "ffffffffffffffffffffffff")
	f.Fuzz(func(t *testing.T, value, record string) {
		got, err := readLua.Run(context.Background(), rc, nil, value, record).StringSlice()
		if err != nil {
			t.Fatal(err)
		}
		ver, h := messageVersion([]byte(value))
		want := map[headState]string{noVersion: "none", versioned: ver, cut: "cut"}[h]
		if got[0] != want {
			t.Errorf("message %q: the script reads %q, a transaction %q", value, got[0], want)
		}
		rv, ok, known := recordVersion(record)
		if !ok {
			rv = "none"
		}
		if known && got[1] != rv {
			t.Errorf("record %q: the script reads %q, a transaction %q", record, got[1], rv)
		}
	})
}

// A primary-key change deletes its row's old key from the new key's
// partition, by the script, while the old key's own partition may be
// writing it in a transaction (another lane, another writer): the script
// touches the fence of the key's own partition, and the transaction, its
// reads now stale, is left to the script. Without that, an insert read
// before the delete's tombstone was written brought the deleted key back.
func TestSharedDeleteBreaksATransactionOfItsKey(t *testing.T) {
	ctx := context.Background()
	fenced = true
	defer func() { fenced = false }()
	r := testenv.NewRedis(t)
	// s holds partition 0, the key's own; other writes the new key's.
	s := open(t, r)
	other := writer(t, r, "o") // holds none of them
	rc := r.Client()
	defer rc.Close()
	inserted := msg("k", 1, 0, "")
	inserted.Insert = true
	s.beforeExec = func() {
		s.beforeExec = nil
		moved := command.Command{Del: true, Key: "k", Version: v(2, 0), VersionExpireMS: 60000, Partition: -1, Shared: true, Home: 0}
		if errs, _ := other.Apply(ctx, []command.Command{moved}); errs[0] != nil {
			t.Error(errs[0])
		}
	}
	errs, stale := s.Apply(ctx, []command.Command{inserted})
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	if rc.Exists(ctx, "k").Val() != 0 || rc.Get(ctx, VersionKey("k")).Val() != v(2, 0) || stale != 1 {
		t.Fatalf("stale = %d, k exists: %d: the insert, older than the delete, was written after it", stale, rc.Exists(ctx, "k").Val())
	}
}

// A TRUNCATE's copy in one partition deletes the table's keys of every
// partition, which may be writing them meanwhile: its deletes go through
// the script and break every partition's transactions. Neither a newer
// write nor an older one read before the truncate ends wrong.
func TestTruncateAgainstTransactionsOfItsKeys(t *testing.T) {
	ctx := context.Background()
	fenced = true
	defer func() { fenced = false }()
	r := testenv.NewRedis(t)
	// s holds partition 0, the keys' own; other, partition 1, whose copy
	// of the truncate this is.
	s := open(t, r)
	other := writer(t, r, "o")
	if err := other.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	rc := r.Client()
	defer rc.Close()
	truncate := func(prefix string) {
		if errs, _ := other.Apply(ctx, []command.Command{{Truncate: true, Key: prefix, Version: v(2, 0), VersionExpireMS: 60000, Partition: 1, Home: -1}}); errs[0] != nil {
			t.Error(errs[0])
		}
	}

	// A newer insert written between the truncate's reads and its deletes.
	applyAll(t, s, msg("j1", 1, 0, ""))
	newer := msg("j1", 2, 1, "")
	written := false
	other.beforeExec = func() {
		other.beforeExec, written = nil, true
		applyAll(t, s, newer)
	}
	truncate("j")
	if !written {
		applyAll(t, s, newer)
	}
	if rc.Get(ctx, "j1").Val() != string(newer.Value) {
		t.Fatal("the truncate deleted a key written after it")
	}

	// An older update read before the truncate, written after it.
	applyAll(t, s, msg("k1", 1, 0, ""))
	s.beforeExec = func() {
		s.beforeExec = nil
		truncate("k")
	}
	if stale := applyAll(t, s, msg("k1", 1, 5, "")); stale != 1 || rc.Exists(ctx, "k1").Val() != 0 {
		t.Fatalf("stale = %d: an update older than the truncate brought its key back", stale)
	}
}

// writer opens the store of another writer of the sink, named name, which
// holds no partition yet.
func writer(t *testing.T, r *testenv.Redis, name string) *Store {
	t.Helper()
	s, err := Open(context.Background(), config.Destination{Host: "127.0.0.1", Port: r.Port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.EnableFences("test", name, 16, func() bool { return true })
	return s
}
