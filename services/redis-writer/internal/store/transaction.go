package store

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

// A transaction writes the changes of partitions whose fences this writer
// holds without the script, which costs Redis several times what the
// writes do (every value passes through Lua, and every call from it costs
// about what a command does). It WATCHes the fences, reads each key's
// head and version record, decides in Go what the script would, and sends
// the writes in MULTI/EXEC, which Redis refuses if a fence changed in
// between: a writer that lost a partition writes nothing of it.
//
// Reading and writing apart is safe because nothing else writes those keys
// meanwhile: a key is written from its own partition only (command.Shared
// marks those that are not, which the script writes), and a partition is
// written by the holder of its fence, in order, one batch at a time. A key
// that expires or is evicted in between is written as the script would
// have written it then.
//
// Anything out of the ordinary (a fence not this writer's, a failed read,
// a record of an unknown form, a refused or aborted EXEC) leaves the
// changes concerned to the script, which reports it as it always has.

// fenceOf is one partition's fence key and this writer's token.
type fenceOf struct{ key, token string }

// transactable picks the changes a transaction may write; nil when none.
func (s *Store) transactable(cmds []command.Command) (rc *redis.Client, tx []int, fences map[int]fenceOf) {
	rc, ok := s.client.(*redis.Client)
	if !ok || s.cluster {
		return nil, nil, nil
	}
	for i := range cmds {
		c := &cmds[i]
		if c.Partition < 0 || c.Shared {
			continue
		}
		f, seen := fences[c.Partition]
		if !seen {
			f.key, f.token = s.fence(c.Partition)
			if fences == nil {
				fences = map[int]fenceOf{}
			}
			fences[c.Partition] = f
		}
		if f.token != "" {
			tx = append(tx, i)
		}
	}
	return rc, tx, fences
}

// keyState is what a transaction knows of a key: read from Redis, then
// as its own writes leave it.
type keyState struct {
	value    []byte // the value, or its head until read whole; nil: absent
	rec      string // its version record
	hasRec   bool
	declined bool // left to the script
	insert   bool // its first change inserted its row
}

// read is one key's reads: its value or head, and its record; or whether
// either exists.
type read struct {
	value, rec *redis.StringCmd
	exists     *redis.IntCmd
}

// read takes in a key's reads, and reports whether its value, when this
// was its head, must be read whole: the head was cut before its version.
// A failed read leaves the key to the script.
func (k *keyState) read(r *read) (cutShort bool) {
	v, err := r.value.Bytes()
	rec, rerr := r.rec.Result()
	switch {
	case err != nil && err != redis.Nil || rerr != nil && rerr != redis.Nil:
		k.declined = true
		return false
	case rerr == nil:
		k.rec, k.hasRec = rec, true
		if _, _, known := recordVersion(rec); !known {
			k.declined = true
		}
	}
	k.value = v
	_, h := messageVersion(v)
	return h == cut && len(v) >= head
}

// current is the key's version as the script finds it, and whether it
// came from the record (which a message value then makes redundant).
func (k *keyState) current() (cur string, fromRecord bool) {
	if len(k.value) > 0 {
		if v, h := messageVersion(k.value); h == versioned {
			return v, false
		}
	}
	if k.hasRec {
		v, _, _ := recordVersion(k.rec)
		return v, true
	}
	return "", false
}

// transact writes cmds[tx] in one transaction, putting each one's error
// into errs, and returns how many were older than their key and which it
// left to the script (in order).
func (s *Store) transact(ctx context.Context, rc *redis.Client, cmds []command.Command, tx []int, fences map[int]fenceOf, errs []error) (stale int, declined []int) {
	conn := rc.Conn()
	defer conn.Close()
	watching := false
	defer func() {
		if watching {
			// Stale watches would only abort a later transaction, which the
			// script then writes.
			conn.Do(context.WithoutCancel(ctx), "UNWATCH")
		}
	}()
	fail := func(err error) {
		for _, i := range tx {
			errs[i] = &Error{Command: verb(&cmds[i]), Key: cmds[i].Key, Err: err}
		}
	}

	// Round 1: watch the fences, read them, every key's head and record.
	watch := []any{"WATCH"}
	tokens := map[int]*redis.StringCmd{}
	states := map[string]*keyState{}
	var keys []string
	pipe := conn.Pipeline()
	for _, i := range tx {
		c := &cmds[i]
		if _, ok := tokens[c.Partition]; !ok {
			tokens[c.Partition] = nil
			watch = append(watch, fences[c.Partition].key)
		}
		if _, ok := states[c.Key]; !ok {
			states[c.Key] = &keyState{insert: c.Insert}
			keys = append(keys, c.Key)
		}
	}
	watched := pipe.Do(ctx, watch...)
	for p := range tokens {
		tokens[p] = pipe.Get(ctx, fences[p].key)
	}
	// A row's insert most likely finds neither its key nor its record:
	// one EXISTS says so, and the rest are read.
	reads := make([]read, len(keys))
	for j, k := range keys {
		if states[k].insert {
			reads[j].exists = pipe.Exists(ctx, k, VersionKey(k))
		} else {
			reads[j].value, reads[j].rec = pipe.GetRange(ctx, k, 0, head-1), pipe.Get(ctx, VersionKey(k))
		}
	}
	sent, err := pipe.Exec(ctx)
	if unanswered(err, sent) {
		fail(err)
		return 0, nil
	}
	if watched.Err() != nil {
		return 0, tx
	}
	watching = true
	var again []int // keys read again, whole
	for j, k := range keys {
		r := &reads[j]
		if r.exists != nil {
			if n, err := r.exists.Result(); err != nil || n > 0 {
				again = append(again, j)
			}
			continue
		}
		if states[k].read(r) {
			again = append(again, j) // its head was cut before its version
		}
	}
	// Round 2, rarely: the whole value, and the record, of those.
	if len(again) > 0 {
		pipe := conn.Pipeline()
		for _, j := range again {
			k := keys[j]
			reads[j] = read{value: pipe.Get(ctx, k), rec: pipe.Get(ctx, VersionKey(k))}
		}
		sent, err := pipe.Exec(ctx)
		if unanswered(err, sent) {
			fail(err)
			return 0, nil
		}
		for _, j := range again {
			states[keys[j]].read(&reads[j]) // whole now
		}
	}

	// Decide, in order, what the script would.
	owned := map[int]bool{}
	for p, t := range tokens {
		owned[p] = t.Val() == fences[p].token && t.Err() == nil
	}
	evicts := s.evicts.Load()
	results := make([]error, len(cmds))
	var written []int
	var writes [][]any
	for _, i := range tx {
		c := &cmds[i]
		st := states[c.Key]
		if st.declined || !owned[c.Partition] {
			declined = append(declined, i)
			continue
		}
		cur, rec := st.current()
		switch {
		case cur != "" && cur >= c.Version:
			stale++
			continue
		case cur == "" && c.Retried && evicts && !c.Del:
			results[i] = &Error{Command: verb(c), Key: c.Key, Err: ErrUnknownVersion}
			continue
		}
		if c.Del {
			writes = append(writes, []any{"DEL", c.Key})
			st.value = nil
		} else {
			writes = append(writes, setArgs(c.Key, c.Value, c.ExpireMS))
			st.value = c.Value
		}
		vkey := VersionKey(c.Key)
		switch {
		case c.Message && !c.Del && c.ExpireMS == 0:
			// The value carries its version: a record is no longer
			// needed. One that expires keeps its record (below), so that
			// an older change cannot bring the key back once it expired.
			if rec {
				writes = append(writes, []any{"DEL", vkey})
				st.hasRec = false
			}
		default:
			writes = append(writes, setArgs(vkey, []byte(c.Version), c.VersionExpireMS))
			st.rec, st.hasRec = c.Version, true
		}
		written = append(written, i)
	}

	// Write.
	if len(written) > 0 {
		if s.beforeExec != nil {
			s.beforeExec()
		}
		watching = false // EXEC ends the watch, whatever it answers
		sent, err := conn.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for _, w := range writes {
				p.Do(ctx, w...)
			}
			return nil
		})
		switch {
		case err == nil:
		case unanswered(err, sent) && !errors.Is(err, redis.TxFailedErr):
			for _, i := range written {
				results[i] = &Error{Command: verb(&cmds[i]), Key: cmds[i].Key, Err: err}
			}
		default:
			// Aborted (a fence changed), refused (out of memory, say) or
			// failed in part: the script writes them all and says why.
			return 0, tx
		}
	}
	if wait := s.addWait(ctx, conn); wait != nil {
		if err := s.waited(wait); err != nil {
			for _, i := range tx {
				results[i] = &Error{Command: verb(&cmds[i]), Key: cmds[i].Key, Err: err}
			}
		}
	}
	for _, i := range tx {
		errs[i] = results[i] // the script's replace the declined ones'
	}
	return stale, declined
}
