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
// meanwhile unwatched: a key is written from its own partition only, by the
// holder of its fence, in order, one batch at a time; command.Shared marks
// the writes that come from elsewhere (a row's old key, deleted from the
// partition of its new one; a truncated table's keys), which the script
// makes, and which set the fences of the keys' own partitions to their own
// values (see touches), failing the EXEC of a transaction that read such a
// key before. A key that expires
// or is evicted in between is written as the script would have at the
// time of the reads: nothing newer was written since.
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
	// Its value likely carries its version: its record is read only if
	// its head turns out not to (as the script reads it).
	message bool

	// What the batch's writes leave: the key, and its record, set (with
	// their PX) or deleted.
	set, del, setRec, delRec bool
	px, vpx                  int64
}

// take takes in a key's value, or head, and its record, and reports
// whether the key, when this was its head, must be read again, whole and
// with its record: the head was cut before its version, or it is of a
// message key, whose record is not read first, and has no version. A
// failed read leaves the key to the script.
func (k *keyState) take(value *redis.StringCmd, rec string, hasRec bool) (again bool) {
	v, err := value.Bytes()
	if err != nil && err != redis.Nil {
		k.declined = true
		return false
	}
	if hasRec {
		k.rec, k.hasRec = rec, true
		if _, _, known := recordVersion(rec); !known {
			k.declined = true
		}
	}
	k.value = v
	_, h := messageVersion(v)
	return h == cut && len(v) >= head || k.message && h != versioned
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
	// A sink writes message values, or opaque ones, to all its keys: a
	// delete's key most likely holds what the sink's other writes hold.
	messages := false
	for _, i := range tx {
		messages = messages || cmds[i].Message
	}
	for _, i := range tx {
		c := &cmds[i]
		if _, ok := tokens[c.Partition]; !ok {
			tokens[c.Partition] = nil
			watch = append(watch, fences[c.Partition].key)
		}
		if _, ok := states[c.Key]; !ok {
			states[c.Key] = &keyState{insert: c.Insert, message: c.Message || c.Del && messages}
			keys = append(keys, c.Key)
		}
	}
	watched := pipe.Do(ctx, watch...)
	for p := range tokens {
		tokens[p] = pipe.Get(ctx, fences[p].key)
	}
	// Reads cost Redis about what writes do, so they are few: an insert
	// most likely finds neither its key nor its record, which one EXISTS
	// of them all says; the other keys' heads are read, and the records
	// of those whose values are opaque by one MGET, whose nil is an absent
	// record or one that is not a string, which one EXISTS tells apart.
	// A message value's record is read only when its head has no version.
	var inserted, others, opaque, vkeys []string
	for _, k := range keys {
		switch st := states[k]; {
		case st.insert:
			inserted = append(inserted, k, VersionKey(k))
		case st.message:
			others = append(others, k)
		default:
			others = append(others, k)
			opaque = append(opaque, k)
			vkeys = append(vkeys, VersionKey(k))
		}
	}
	var insertsFound, recsFound *redis.IntCmd
	var recs *redis.SliceCmd
	heads := make([]*redis.StringCmd, len(others))
	if len(inserted) > 0 {
		insertsFound = pipe.Exists(ctx, inserted...)
	}
	for j, k := range others {
		heads[j] = pipe.GetRange(ctx, k, 0, head-1)
	}
	if len(vkeys) > 0 {
		recs, recsFound = pipe.MGet(ctx, vkeys...), pipe.Exists(ctx, vkeys...)
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
	var again []string // keys read again, whole
	if insertsFound != nil {
		if n, err := insertsFound.Result(); err != nil || n > 0 {
			for j := 0; j < len(inserted); j += 2 {
				again = append(again, inserted[j])
			}
		}
	}
	if len(vkeys) > 0 {
		vals, err := recs.Result()
		n, nerr := recsFound.Result()
		strs := 0
		for _, v := range vals {
			if v != nil {
				strs++
			}
		}
		for j, k := range opaque {
			st := states[k]
			if err != nil || nerr != nil || int(n) != strs || len(vals) != len(opaque) {
				st.declined = true // a record that is not a string: the script says which
				continue
			}
			rec, _ := vals[j].(string)
			st.rec, st.hasRec = rec, vals[j] != nil
		}
	}
	for j, k := range others {
		if st := states[k]; !st.declined && st.take(heads[j], st.rec, st.hasRec) {
			again = append(again, k)
		}
	}
	// Round 2, rarely: the whole value, and the record, of those.
	if len(again) > 0 {
		pipe := conn.Pipeline()
		gets := make([][2]*redis.StringCmd, len(again))
		for j, k := range again {
			gets[j] = [2]*redis.StringCmd{pipe.Get(ctx, k), pipe.Get(ctx, VersionKey(k))}
		}
		sent, err := pipe.Exec(ctx)
		if unanswered(err, sent) {
			fail(err)
			return 0, nil
		}
		for j, k := range again {
			rec, err := gets[j][1].Result()
			if err != nil && err != redis.Nil {
				states[k].declined = true
				continue
			}
			states[k].take(gets[j][0], rec, err == nil) // whole now
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
			st.value, st.set, st.del = nil, false, true
		} else {
			st.value, st.set, st.del, st.px = c.Value, true, false, c.ExpireMS
		}
		switch {
		case c.Message && !c.Del && c.ExpireMS == 0:
			// The value carries its version: a record is no longer
			// needed. One that expires keeps its record (below), so that
			// an older change cannot bring the key back once it expired.
			if rec {
				st.hasRec, st.setRec, st.delRec = false, false, true
			}
		default:
			st.rec, st.hasRec, st.setRec, st.delRec, st.vpx = c.Version, true, true, false, c.VersionExpireMS
		}
		written = append(written, i)
	}
	// Inside MULTI/EXEC only what the writes leave is seen: each key's last
	// write is enough, and those without expiry go in one MSET, the
	// deletes in one DEL, which cost Redis far less than a command each.
	mset, del := []any{"MSET"}, []any{"DEL"}
	var writes [][]any
	for _, k := range keys {
		st := states[k]
		switch {
		case st.del:
			del = append(del, k)
		case st.set && st.px > 0:
			writes = append(writes, setArgs(k, st.value, st.px))
		case st.set:
			mset = append(mset, k, st.value)
		}
		switch {
		case st.delRec:
			del = append(del, VersionKey(k))
		case st.setRec && st.vpx > 0:
			writes = append(writes, setArgs(VersionKey(k), []byte(st.rec), st.vpx))
		case st.setRec:
			mset = append(mset, VersionKey(k), st.rec)
		}
	}
	if len(mset) > 1 {
		writes = append(writes, mset)
	}
	if len(del) > 1 {
		writes = append(writes, del)
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
