package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

// apply writes cmds (no truncates), putting each one's error into errs,
// and returns how many were older than their key. A fence that Redis
// lost (evicted, or flushed) is set again while this writer's lease
// holds, and its writes are tried once more.
func (s *Store) apply(ctx context.Context, cmds []command.Command, errs []error) (stale int) {
	stale = s.applyOnce(ctx, cmds, errs)
	var again []int
	for i, err := range errs {
		if errors.Is(err, ErrFenceGone) {
			again = append(again, i)
		}
	}
	if len(again) == 0 || s.Reacquire(ctx) != nil {
		return stale
	}
	return stale + subset(cmds, again, errs, func(cmds []command.Command, errs []error) int {
		return s.applyOnce(ctx, cmds, errs)
	})
}

// subset runs write on cmds[idx], and puts their errors into errs.
func subset(cmds []command.Command, idx []int, errs []error, write func([]command.Command, []error) (stale int)) (stale int) {
	if len(idx) == 0 {
		return 0
	}
	sub, subErrs := make([]command.Command, len(idx)), make([]error, len(idx))
	for j, i := range idx {
		sub[j] = cmds[i]
	}
	stale = write(sub, subErrs)
	for j, i := range idx {
		errs[i] = subErrs[j]
	}
	return stale
}

// applyOnce writes cmds in a transaction where it can (transaction.go),
// and the rest through the script.
func (s *Store) applyOnce(ctx context.Context, cmds []command.Command, errs []error) (stale int) {
	rc, tx, fences := s.transactable(cmds)
	if len(tx) == 0 {
		return s.script(ctx, cmds, errs)
	}
	stale, declined := s.transact(ctx, rc, cmds, tx, fences, errs)
	byScript := make([]bool, len(cmds))
	for i := range byScript {
		byScript[i] = true
	}
	for _, i := range tx {
		byScript[i] = false
	}
	for _, i := range declined {
		byScript[i] = true
	}
	var rest []int
	for i, b := range byScript {
		if b {
			rest = append(rest, i)
		}
	}
	return stale + subset(cmds, rest, errs, func(cmds []command.Command, errs []error) int {
		return s.script(ctx, cmds, errs)
	})
}

// script writes cmds through the script.
func (s *Store) script(ctx context.Context, cmds []command.Command, errs []error) (stale int) {
	if len(cmds) == 0 {
		return 0
	}
	calls := s.calls(cmds)
	results, waited := s.run(ctx, cmds, calls)
	var retry []int
	for g, r := range results {
		if err := r.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			retry = append(retry, g) // Redis restarted or flushed its scripts
		}
	}
	if len(retry) > 0 {
		if err := applyScript.Load(ctx, s.client).Err(); err == nil {
			again := make([]call, len(retry))
			for j, g := range retry {
				again[j] = calls[g]
			}
			rs, w := s.run(ctx, cmds, again)
			for j, r := range rs {
				results[retry[j]] = r
			}
			if w != nil {
				waited = w
			}
		}
	}
	for g, r := range results {
		replies, err := r.Slice()
		if err == nil && waited != nil {
			err = waited
		}
		for j, i := range calls[g].cmds {
			c := &cmds[i]
			if err == nil && j >= len(replies) {
				err = fmt.Errorf("script returned %d replies for %d changes", len(replies), len(calls[g].cmds))
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
				if errors.Is(errs[i], ErrFenceGone) && !s.lost(c.Partition) {
					// Not this writer's partition (any more): the write is
					// refused, not waited for.
					errs[i] = &Error{Command: verb(c), Key: c.Key, Err: fmt.Errorf("%w (its fence is gone)", ErrFenced)}
				}
			default:
				errs[i] = &Error{Command: verb(c), Key: c.Key, Err: fmt.Errorf("script returned %T for a change", v)}
			}
		}
	}
	return stale
}

// stepError is the error the script reported for c: "<step> <reply>", or
// 'u' (unknown version) or "f <owner>" (fenced).
func stepError(c *command.Command, s string) error {
	step, reply, _ := strings.Cut(s, " ")
	e := &Error{Command: verb(c), Key: c.Key, Err: replyError(reply)}
	switch step {
	case "u":
		e.Err = ErrUnknownVersion
	case "f":
		e.Err = fmt.Errorf("%w (%s)", ErrFenced, reply)
		if reply == "(none)" {
			e.Err = ErrFenceGone
		}
	case "r":
		e.Command = "GETRANGE"
	case "v":
		e.Command, e.Key = "GET", VersionKey(c.Key)
	case "w":
		e.Command, e.Key = "SET", VersionKey(c.Key)
	case "x":
		e.Command, e.Key = "DEL", VersionKey(c.Key)
	}
	return e
}

// perCall bounds the changes one script call writes: enough to spread the
// call's cost, few enough that one call does not hold Redis for long.
const perCall = 64

// call is one script call: commands of one partition (one fence) and, in
// a cluster, of one hash slot.
type call struct {
	cmds  []int
	fence string // the fence key, or none
	token string
}

// calls splits cmds into script calls; a key's changes keep their order.
func (s *Store) calls(cmds []command.Command) []call {
	var calls []call
	type group struct{ partition, slot int }
	open := map[group]int{} // → its call still taking commands
	for i, c := range cmds {
		g := group{partition: c.Partition}
		if s.cluster {
			g.slot = Slot(c.Key)
		}
		n, ok := open[g]
		if !ok || len(calls[n].cmds) == perCall {
			n = len(calls)
			cl := call{}
			if c.Partition >= 0 {
				cl.fence, cl.token = s.fence(c.Partition)
			}
			calls = append(calls, cl)
			open[g] = n
		}
		calls[n].cmds = append(calls[n].cmds, i)
	}
	return calls
}

// run sends one script call per call, pipelined, then WAIT when the sink
// asks for replicas; waited is nil, or why the replicas did not confirm.
func (s *Store) run(ctx context.Context, cmds []command.Command, calls []call) (results []*redis.Cmd, waited error) {
	results = make([]*redis.Cmd, len(calls))
	pipe := s.client.Pipeline()
	for g, cl := range calls {
		touch := s.touches(cmds, cl.cmds)
		keys := make([]string, 0, 1+len(touch)+2*len(cl.cmds))
		args := make([]any, 0, 3+3*len(cl.cmds))
		if cl.fence != "" {
			keys = append(keys, cl.fence)
			args = append(args, 1, cl.token)
		} else {
			args = append(args, 0)
		}
		keys = append(keys, touch...)
		args = append(args, len(touch))
		evicts := s.evicts.Load()
		for _, i := range cl.cmds {
			c := &cmds[i]
			keys = append(keys, c.Key, VersionKey(c.Key))
			value := c.Value
			if c.Del {
				value = nil
			}
			args = append(args, c.Version, operation(c, evicts), value)
		}
		results[g] = applyScript.EvalSha(ctx, pipe, keys, args...)
	}
	wait := s.addWait(ctx, pipe)
	sent, err := pipe.Exec(ctx)
	if unanswered(err, sent) {
		for _, r := range results {
			if r.Err() == nil {
				r.SetErr(err)
			}
		}
	}
	return results, s.waited(wait)
}

// touches are the fence keys of the partitions whose transactions the
// script's writes of cmds[idx] must break: the Home of a Shared key, which
// its own partition may be writing meanwhile from reads that the script's
// write makes stale (see transaction.go). Breaking one costs it a fall
// back to the script; not breaking it could bring a deleted key back.
func (s *Store) touches(cmds []command.Command, idx []int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fences == nil {
		return nil // no fences, no transactions
	}
	var keys []string
	for _, i := range idx {
		c := &cmds[i]
		switch {
		case !c.Shared || c.Home == -1:
		case c.Home == command.AllPartitions:
			keys = keys[:0]
			for p := range s.partitions {
				keys = append(keys, s.prefix+strconv.Itoa(p))
			}
			return keys
		default:
			if k := s.prefix + strconv.Itoa(c.Home); !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// operation is c's operation argument to the script (see apply.lua).
func operation(c *command.Command, evicts bool) string {
	op := "s"
	switch {
	case c.Del:
		op = "d"
	case c.Message && c.Insert:
		op = "mn"
	case c.Message:
		op = "m"
	case c.Insert:
		op = "sn"
	}
	known := c.Retried && evicts
	if c.ExpireMS == 0 && c.VersionExpireMS == 0 && !known {
		return op
	}
	if len(op) == 1 {
		op += "-"
	}
	op += ":" + strconv.FormatInt(c.ExpireMS, 10) + ":" + strconv.FormatInt(c.VersionExpireMS, 10) + ":"
	if known {
		op += "k"
	}
	return op
}

// addWait ends a pipeline (or a transaction's connection) with WAIT when
// the sink asks for replicas.
func (s *Store) addWait(ctx context.Context, pipe interface {
	Do(context.Context, ...any) *redis.Cmd
}) *redis.Cmd {
	if s.wait == 0 {
		return nil
	}
	return pipe.Do(ctx, "WAIT", s.wait, s.waitTimeout.Milliseconds())
}

// waited is nil, or why the replicas did not confirm a pipeline's writes:
// then they are not acknowledged, and are written again.
func (s *Store) waited(wait *redis.Cmd) error {
	if wait == nil {
		return nil
	}
	n, err := wait.Int64()
	switch {
	case err != nil:
		return fmt.Errorf("WAIT: %w", err)
	case n < int64(s.wait):
		return fmt.Errorf("WAIT: %d of %d replicas confirmed the writes within %s", n, s.wait, s.waitTimeout)
	}
	return nil
}

// plain writes cmds as plain SET and DEL commands, pipelined, for an
// unversioned store.
func (s *Store) plain(ctx context.Context, cmds []command.Command, errs []error) {
	pipe := s.client.Pipeline()
	results := make([]redis.Cmder, len(cmds))
	for i, c := range cmds {
		switch {
		case c.Truncate:
			errs[i] = &Error{Command: "TRUNCATE", Key: c.Key, Err: fmt.Errorf("an unversioned sink cannot delete a truncated table's keys")}
		case c.Del:
			results[i] = pipe.Del(ctx, c.Key)
		default:
			px := int64(0)
			if c.ExpireMS > 0 {
				px = c.ExpireMS
			}
			results[i] = pipe.Do(ctx, setArgs(c.Key, c.Value, px)...)
		}
	}
	wait := s.addWait(ctx, pipe)
	sent, err := pipe.Exec(ctx)
	failed := unanswered(err, sent)
	waited := s.waited(wait)
	for i, r := range results {
		if r == nil {
			continue
		}
		e := r.Err()
		if e == nil && failed {
			e = err
		}
		if e == nil {
			e = waited
		}
		if e != nil {
			errs[i] = &Error{Command: verb(&cmds[i]), Key: cmds[i].Key, Err: e}
		}
	}
}

func setArgs(key string, value []byte, px int64) []any {
	if px > 0 {
		return []any{"SET", key, value, "PX", strconv.FormatInt(px, 10)}
	}
	return []any{"SET", key, value}
}
