package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

func open(t *testing.T, r *testenv.Redis) *Store {
	t.Helper()
	s, err := Open(context.Background(), config.Destination{Host: "127.0.0.1", Port: r.Port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func v(lsn uint64, idx uint32) string { return string(change.AppendVersion(nil, lsn, idx)) }

func set(key, value string, lsn uint64, idx uint32) command.Command {
	return command.Command{Key: key, Value: []byte(value), Version: v(lsn, idx)}
}

func del(key string, lsn uint64, idx uint32) command.Command {
	return command.Command{Del: true, Key: key, Version: v(lsn, idx), VersionExpireMS: 60000}
}

func TestApplyKeepsNewest(t *testing.T) {
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
}

func TestApplyExpiry(t *testing.T) {
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
}

func TestApplyReportsEachFailure(t *testing.T) {
	ctx := context.Background()
	r := testenv.NewRedis(t)
	s := open(t, r)
	rc := s.Client()
	// The version record of "bad" is not a string: its command fails with
	// WRONGTYPE, the others of the same pipeline succeed.
	rc.HSet(ctx, VersionKey("bad"), "f", "v")
	errs, _ := s.Apply(ctx, []command.Command{set("a", "1", 1, 0), set("bad", "2", 1, 1), set("c", "3", 1, 2)})
	if errs[0] != nil || errs[2] != nil || errs[1] == nil || !strings.Contains(errs[1].Error(), "WRONGTYPE") || !strings.Contains(errs[1].Error(), "SET bad") {
		t.Fatalf("errs = %v", errs)
	}
	if rc.Get(ctx, "a").Val() != "1" || rc.Get(ctx, "c").Val() != "3" {
		t.Fatal("good commands of a failing pipeline were not applied")
	}

	// Scripts flushed (as after a restart): reloaded, and applied.
	rc.ScriptFlush(ctx)
	if errs, _ := s.Apply(ctx, []command.Command{set("a", "2", 2, 0)}); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if rc.Get(ctx, "a").Val() != "2" {
		t.Fatal("not applied after NOSCRIPT")
	}

	// Server gone: every command fails.
	r.Stop()
	errs, _ = s.Apply(ctx, []command.Command{set("a", "3", 3, 0), set("b", "3", 3, 1)})
	if errs[0] == nil || errs[1] == nil {
		t.Fatalf("errs with redis down = %v", errs)
	}
}

func TestVersionKeySharesSlot(t *testing.T) {
	for _, key := range []string{"sequin:users:1", "{user1}:profile", "a{b}c", "plain"} {
		vk := VersionKey(key)
		if redisSlot(vk) != redisSlot(key) {
			t.Errorf("VersionKey(%q) = %q is in another slot", key, vk)
		}
	}
}

// redisSlot is Redis Cluster's key slot.
func redisSlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return crc16(key) % 16384
}

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
