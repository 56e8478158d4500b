package rediswriter

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// BenchmarkWriter measures the writer alone: b.N change events wait in the
// stream, and the clock runs from the writer's start until Redis has applied
// them all. In the same run, redis-benchmark measures pipelined SETs of
// values of the same size on the same server: the ceiling of this stage.
// Reported: changes/s, redis-benchmark's SET/s, and their ratio.
//
// "remote" reaches Redis through a proxy 0.5 ms each way, as a Redis on
// another host is: a writer that waited for each round trip would show it.
func BenchmarkWriter(b *testing.B) {
	b.Run("local", func(b *testing.B) { benchmarkWriter(b, 0) })
	b.Run("remote", func(b *testing.B) { benchmarkWriter(b, 500*time.Microsecond) })
}

func benchmarkWriter(b *testing.B, oneWay time.Duration) {
	ctx := context.Background()
	srv := testenv.NewNATS(b)
	rd := testenv.NewRedis(b)
	port := rd.Port
	if oneWay > 0 {
		port = testenv.Distant(b, rd.Addr, oneWay)
	}
	cfg := &config.Config{
		Postgres: config.Postgres{URL: "postgres://localhost/unused", Tables: []string{"public.users"}},
		NATS:     config.NATS{URL: srv.URL()},
		Sinks:    []config.Sink{{Name: "bench", Destination: config.Destination{Type: "redis_string", Host: "127.0.0.1", Port: port}}},
		Log:      config.Log{Level: "error"},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	topo := topology.New(cfg.NATS)
	stream, err := topo.Ensure(ctx, js, cfg.Sinks[0])
	if err != nil {
		b.Fatal(err)
	}
	valueSize := publish(b, js, topo, b.N)

	w, err := New(cfg, "bench", zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ResetTimer()
	began := time.Now()
	go func() { done <- w.Run(wctx) }()
	for !drained(ctx, b, stream, topo, "bench") {
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(began)
	b.StopTimer()
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	rate := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rate, "changes/s")
	if b.N >= 10000 && oneWay == 0 {
		ceiling := redisBenchmarkSET(b, rd.Port, b.N, valueSize)
		b.ReportMetric(ceiling, "redis-benchmark-SET/s")
		b.ReportMetric(rate/ceiling, "ratio")
	}
}

// publish puts n insert events of ~200-byte rows into the stream, in
// batches per partition as capture sends them, and returns the size of the
// value the writer will SET.
func publish(b *testing.B, js jetstream.JetStream, topo topology.Topology, n int) int {
	b.Helper()
	batches := make([][]byte, topo.Partitions)
	counts := make([]int, topo.Partitions)
	send := func(p int) {
		if _, err := js.PublishAsync(topo.Subject(p), batches[p]); err != nil {
			b.Fatal(err)
		}
		batches[p], counts[p] = nil, 0
	}
	var last []byte
	for i := range n {
		id := strconv.Itoa(i)
		ev := &sluicev1.ChangeEvent{
			IdempotencyKey: change.IdempotencyKey(uint64(1000+i), 0), Action: sluicev1.Action_ACTION_INSERT,
			Database: "app", Schema: "public", Table: "users", PkColumns: []string{"id"}, PkValues: []string{id},
			Record: []byte(`{"id":` + id + `,"name":"user ` + id + `","email":"user` + id + `@example.com","active":true,"balance":"123.45",` +
				`"profile":{"lang":"en","plan":"pro","tags":["a","b"]},"updated_at":"2026-11-25T20:00:00.123456Z"}`),
			CommitLsn: uint64(1000 + i), CommitTimestampUs: time.Now().UnixMicro(),
		}
		p := topo.Partition("public", "users", ev.PkValues)
		var err error
		if batches[p], err = change.AppendEvent(batches[p], ev); err != nil {
			b.Fatal(err)
		}
		if counts[p]++; counts[p] == 64 {
			send(p)
		}
		if i == n-1 {
			last = change.AppendMessage(nil, ev, change.NewConsumer("bench", nil), change.NewDatabase("", nil))
		}
	}
	for p := range batches {
		if counts[p] > 0 {
			send(p)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publish did not complete")
	}
	return len(last)
}

// drained reports whether every partition consumer of sink has nothing
// left to deliver or to acknowledge.
func drained(ctx context.Context, b *testing.B, stream jetstream.Stream, topo topology.Topology, sink string) bool {
	for p := range topo.Partitions {
		c, err := stream.Consumer(ctx, topology.ConsumerName(sink, p))
		if err != nil {
			b.Fatal(err)
		}
		info := c.CachedInfo()
		if fresh, err := c.Info(ctx); err == nil {
			info = fresh
		}
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return false
		}
	}
	return true
}

// redisBenchmarkSET runs redis-benchmark's pipelined SET of n values of
// size bytes and returns its requests per second.
func redisBenchmarkSET(b *testing.B, port, n, size int) float64 {
	b.Helper()
	out, err := exec.Command("redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-t", "set",
		"-n", strconv.Itoa(n), "-P", "500", "-d", strconv.Itoa(size), "-r", "1000000", "-q", "--csv").Output()
	if err != nil {
		b.Fatalf("redis-benchmark: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, ",")
		if len(f) > 1 && strings.Trim(f[0], `"`) == "SET" {
			rps, err := strconv.ParseFloat(strings.Trim(f[1], `"`), 64)
			if err == nil {
				return rps
			}
		}
	}
	b.Fatalf("redis-benchmark printed no SET rate: %s", out)
	return 0
}
