package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Policy reads the server's maxmemory-policy and remembers whether it may
// evict keys: then a retried change is written only over a known version.
func (s *Store) Policy(ctx context.Context) (string, error) {
	info, err := s.client.Info(ctx, "memory").Result()
	if err != nil {
		return "", fmt.Errorf("read maxmemory-policy of redis at %s: %w", s.addr, err)
	}
	policy := infoField(info, "maxmemory_policy")
	s.evicts.Store(Evicts(policy))
	return policy, nil
}

// Evicts reports whether a maxmemory-policy may remove keys when memory is
// short: every policy but noeviction.
func Evicts(policy string) bool { return policy != "" && policy != "noeviction" }

// Replication returns the server's replication id, which changes when it
// restarts (without the id in its persistence) and when a replica takes
// over as primary, and its previous one, which a promoted replica keeps
// from its former primary. A cluster has none that covers its nodes: "".
func (s *Store) Replication(ctx context.Context) (id, previous string, err error) {
	if s.cluster {
		return "", "", nil
	}
	info, err := s.client.Info(ctx, "replication").Result()
	if err != nil {
		return "", "", fmt.Errorf("read replication id of redis at %s: %w", s.addr, err)
	}
	return infoField(info, "master_replid"), infoField(info, "master_replid2"), nil
}

// Durable reports whether the server loses no acknowledged write when it
// restarts: an append-only file synced at every write. When that cannot be
// read (CONFIG forbidden, say), it is taken as not durable.
func (s *Store) Durable(ctx context.Context) bool {
	info, err := s.client.Info(ctx, "persistence").Result()
	if err != nil || infoField(info, "aof_enabled") != "1" {
		return false
	}
	v, err := s.client.ConfigGet(ctx, "appendfsync").Result()
	return err == nil && v["appendfsync"] == "always"
}

func infoField(info, name string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// MarkerKey holds a sink's marker: written once into a Redis that holds
// the sink's data, it is gone when Redis loses its data.
func MarkerKey(sink string) string { return "sluice:marker:" + sink }

// Marker returns the sink's marker, or "" when Redis has none.
func (s *Store) Marker(ctx context.Context, sink string) (string, error) {
	v, err := s.client.Get(ctx, MarkerKey(sink)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the marker of sink %s: %w", sink, err)
	}
	return v, nil
}

// SetMarker writes the sink's marker unless another writer did meanwhile,
// and returns the marker Redis holds.
func (s *Store) SetMarker(ctx context.Context, sink, marker string) (string, error) {
	ok, err := s.client.SetNX(ctx, MarkerKey(sink), marker, 0).Result()
	if err != nil {
		return "", fmt.Errorf("write the marker of sink %s: %w", sink, err)
	}
	if ok {
		return marker, nil
	}
	return s.Marker(ctx, sink)
}
