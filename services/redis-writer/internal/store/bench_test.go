package store

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

// The cost of versioned writes against a plain pipelined SET of the same
// keys and values, 500 commands a round trip: in transactions, as a
// writer holding its partitions' fences writes them, and through the
// script ("script-"), as in a Redis Cluster. Each case reports, besides
// the time, the CPU Redis's main thread spent per change (INFO cpu):
// what the version check costs Redis, which shares the machine.
func BenchmarkApply(b *testing.B) {
	ctx := context.Background()
	// SLUICE_BENCH_REDIS_PORT names a redis-server of one's own on
	// 127.0.0.1 (under valgrind's callgrind, say, which counts its
	// instructions whatever else the machine does); flushed first.
	port, _ := strconv.Atoi(os.Getenv("SLUICE_BENCH_REDIS_PORT"))
	if port == 0 {
		port = testenv.NewRedis(b).Port
	}
	s, err := Open(ctx, config.Destination{Host: "127.0.0.1", Port: port})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.client.FlushAll(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	s.EnableFences("bench", "w", 16, func() bool { return true })
	for p := range 16 {
		if err := s.Acquire(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
	const batch = 500
	// Sequin's message JSON, as the writer renders it: the version is in
	// the value.
	message := func(key, lsn int) []byte {
		return fmt.Appendf(nil, `{"action":"update","changes":null,"metadata":{"commit_idx":0,"commit_lsn":%d,"commit_timestamp":"2026-12-03T14:00:00.000000Z","consumer":{"id":"c","name":"c"},"database_name":"postgres","idempotency_key":"a2V5","record_pks":["%d"],"table_name":"t","table_schema":"public","transaction_annotations":null},"record":{"id":%d,"status":"%s"}}`,
			lsn, key, key, strings.Repeat("x", 300))
	}
	// Changes as a catch-up writes them: an insert makes a new key, an
	// update or a delete takes one written before.
	type kind int
	const (
		insert kind = iota
		update
		remove
	)
	var made, lsn int // keys made so far, the last version
	versioned := func(partitions int, next func(i int) kind) func(b *testing.B) {
		return func(b *testing.B) {
			cmds := make([]command.Command, batch)
			cpu := redisCPU(ctx, b, s.client)
			for i := 0; i < b.N; i += batch {
				for j := range cmds {
					lsn++
					k := next(i + j)
					id := made
					if k == insert || made == 0 {
						made++
					} else {
						id = (i + j) * 7919 % made
					}
					p := -1 // no fence: the script
					if partitions > 0 {
						p = id % partitions
					}
					c := command.Command{Key: "k:" + strconv.Itoa(id), Version: v(uint64(lsn), 0), Partition: p, Insert: k == insert}
					if k == remove {
						c.Del = true
					} else {
						c.Value, c.Message = message(id, lsn), true
					}
					cmds[j] = c
				}
				if errs, _ := s.Apply(ctx, cmds); errs[0] != nil {
					b.Fatal(errs[0])
				}
			}
			cpu.report(ctx, b)
		}
	}
	// The benchmark's workload: 60% inserts, 30% updates, 10% deletes.
	mixed := func(i int) kind { return [10]kind{0, 1, 0, 0, 1, 0, 2, 0, 1, 0}[i%10] }
	for _, way := range []struct {
		prefix     string
		partitions int
	}{{"", 16}, {"script-", 0}} {
		b.Run(way.prefix+"insert", versioned(way.partitions, func(int) kind { return insert }))
		b.Run(way.prefix+"update", versioned(way.partitions, func(int) kind { return update }))
		b.Run(way.prefix+"mixed", versioned(way.partitions, mixed))
	}
	// New keys, as inserts make them: storing a new value is much of
	// what a write costs Redis.
	sets := 0
	b.Run("plain-set", func(b *testing.B) {
		value := message(0, 1)
		cpu := redisCPU(ctx, b, s.client)
		for i := 0; i < b.N; i += batch {
			pipe := s.client.Pipeline()
			for range batch {
				sets++
				pipe.Set(ctx, "p:"+strconv.Itoa(sets), value, 0)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(ctx, b)
	})
}

// cpuMark is Redis's main-thread CPU seconds when a benchmark began.
type cpuMark struct {
	client  redis.UniversalClient
	seconds float64
}

func redisCPU(ctx context.Context, b *testing.B, c redis.UniversalClient) cpuMark {
	b.Helper()
	m := cpuMark{client: c}
	m.seconds = m.read(ctx, b)
	b.ResetTimer()
	return m
}

// report adds redis-µs/change: Redis's CPU since the mark, per change.
func (m cpuMark) report(ctx context.Context, b *testing.B) {
	b.StopTimer()
	b.ReportMetric((m.read(ctx, b)-m.seconds)*1e6/float64(b.N), "redis-µs/change")
}

func (m cpuMark) read(ctx context.Context, b *testing.B) float64 {
	info, err := m.client.Info(ctx, "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\r\n") {
		name, value, _ := strings.Cut(line, ":")
		if name == "used_cpu_sys_main_thread" || name == "used_cpu_user_main_thread" {
			f, err := strconv.ParseFloat(value, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return total
}
