package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nuid"
)

// EnableFences makes the store fence the writes of the partitions this
// writer owns (see Acquire), on a standalone Redis; a cluster spreads keys
// over nodes, where one fence cannot guard them, and relies on the
// writer's lease alone. sink names the fence keys; writer is this writer.
//
// partitions is the stream's: the fences a truncate's deletes touch.
//
// leased reports whether the writer's lease holds: only then does the
// store set again a fence that Redis lost, since a writer that was paused
// past its lease may have been replaced.
func (s *Store) EnableFences(sink, writer string, partitions int, leased func() bool) {
	if s.cluster || s.unversioned {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fences, s.gone, s.prefix, s.writer, s.leased = map[int]string{}, map[int]bool{}, "sluice:fence:"+sink+":", writer, leased
	s.partitions = partitions
}

// Acquire makes this writer the owner of partition p from now on: it sets
// the partition's fence to a new token of its own, so that a former owner,
// however late it wakes, can write no change of p.
func (s *Store) Acquire(ctx context.Context, p int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fences == nil {
		return nil
	}
	token := s.writer + ":" + nuid.Next()
	if err := s.client.Set(ctx, s.prefix+strconv.Itoa(p), token, 0).Err(); err != nil {
		return fmt.Errorf("fence partition %d: %w", p, err)
	}
	s.fences[p] = token
	delete(s.gone, p)
	return nil
}

// Release gives partition p up: this writer's writes of it are refused
// from now on.
func (s *Store) Release(p int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.fences, p)
	delete(s.gone, p)
}

// Reacquire sets again the fences that Redis lost (evicted, flushed,
// restarted empty) of the partitions this writer still owns, while its
// lease holds.
func (s *Store) Reacquire(ctx context.Context) error {
	s.mu.Lock()
	if s.leased != nil && !s.leased() {
		s.mu.Unlock()
		return errors.New("lease ran out")
	}
	var gone []int
	for p := range s.gone {
		gone = append(gone, p)
	}
	s.mu.Unlock()
	for _, p := range gone {
		if err := s.Acquire(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// fence returns the fence key of partition p and this writer's token; an
// empty key when there are no fences, an empty token when p is not this
// writer's (which the script refuses).
func (s *Store) fence(p int) (key, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fences == nil {
		return "", ""
	}
	return s.prefix + strconv.Itoa(p), s.fences[p]
}

// lost notes that the fence of partition p is gone from Redis, and
// reports whether p is this writer's, to set again.
func (s *Store) lost(p int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.fences[p]; ok {
		s.gone[p] = true
		return true
	}
	return false
}
