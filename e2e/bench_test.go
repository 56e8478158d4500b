package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// BenchmarkCapture measures capture alone, from the WAL to JetStream's
// acknowledgements, on a backlog of b.N changes (inserts, updates, deletes
// in transactions of 1 to 1,000 rows) committed while it was stopped, and
// in the same run pg_recvlogical decoding the same WAL with the same
// plugin and publication into /dev/null: the ceiling of this stage.
// Reported: changes/s of both, their ratio, and capture's peak RSS.
func BenchmarkCapture(b *testing.B) {
	e := harness.NewEnv(b)
	e.Exec(`CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, price numeric(10,2), attrs jsonb, updated_at timestamptz DEFAULT now())`)
	cfg := e.DefaultConfig([]string{"items"})
	prepare(b, e, cfg)
	e.Exec(`SELECT pg_create_logical_replication_slot('recv', 'pgoutput')`)
	changes := backlog(b, e, b.N)
	end := e.WALLSN()

	b.ResetTimer()
	recvRate := recvlogical(b, e, end, changes)

	began := time.Now()
	capture, addr := startCapture(b, cfg)
	waitStream(b, addr, changes)
	rate := float64(changes) / time.Since(began).Seconds()
	b.StopTimer()
	reportCatchUp(b, capture.Pid(), "capture-CPU-µs/change", changes, rate, recvRate)
	capture.Signal(syscall.SIGTERM)
	capture.WaitExit(30 * time.Second)
}

// BenchmarkCaptureBigTransaction streams one transaction of b.N rows and
// reports capture's peak RSS: it must not grow with the transaction.
func BenchmarkCaptureBigTransaction(b *testing.B) {
	e := harness.NewEnv(b)
	e.Exec(`CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text)`)
	cfg := e.DefaultConfig([]string{"items"})
	prepare(b, e, cfg)
	e.Exec(`INSERT INTO items SELECT g, g % 100, md5(g::text) FROM generate_series(1, $1) g`, b.N)
	b.ResetTimer()
	began := time.Now()
	capture, addr := startCapture(b, cfg)
	waitStream(b, addr, b.N)
	b.ReportMetric(float64(b.N)/time.Since(began).Seconds(), "changes/s")
	b.StopTimer()
	b.ReportMetric(float64(harness.PeakRSS(b, capture.Pid()))/(1<<20), "peak-RSS-MiB")
	capture.Signal(syscall.SIGTERM)
	capture.WaitExit(30 * time.Second)
}

// recvlogical has pg_recvlogical decode the WAL up to end from the slot
// "recv" into /dev/null, with capture's plugin and publication, and
// returns its rate over the backlog's changes: the ceiling of decoding.
func recvlogical(b *testing.B, e *harness.Env, end string, changes int) float64 {
	b.Helper()
	began := time.Now()
	recv := exec.Command("pg_recvlogical", "-d", e.PG.URL, "--slot", "recv", "--start", "--no-loop",
		"-o", "proto_version=1", "-o", "publication_names=sluice", "--endpos", end, "-f", os.DevNull)
	if out, err := recv.CombinedOutput(); err != nil {
		b.Fatalf("pg_recvlogical: %v: %s", err, out)
	}
	return float64(changes) / time.Since(began).Seconds()
}

// reportCatchUp reports a catch-up of changes at rate against
// pg_recvlogical's, and the peak RSS and the CPU per change (as cpuUnit) of
// the process pid, which is still running.
func reportCatchUp(b *testing.B, pid int, cpuUnit string, changes int, rate, recvRate float64) {
	b.Helper()
	b.ReportMetric(rate, "changes/s")
	b.ReportMetric(recvRate, "pg_recvlogical-changes/s")
	b.ReportMetric(rate/recvRate, "ratio")
	b.ReportMetric(float64(harness.PeakRSS(b, pid))/(1<<20), "peak-RSS-MiB")
	// CPU per change is steadier than time on a busy machine.
	b.ReportMetric(harness.CPUSeconds(b, pid)*1e6/float64(changes), cpuUnit)
}

// prepare runs capture once, so that the publication, the slot, the
// stream and the consumers exist, then stops it.
func prepare(b *testing.B, e *harness.Env, cfg string) {
	b.Helper()
	capture := harness.Start(b, "sluice-capture", "--config", cfg)
	e.WaitStreaming(capture)
	capture.Signal(syscall.SIGTERM)
	if code := capture.WaitExit(30 * time.Second); code != 0 {
		b.Fatalf("capture exited %d", code)
	}
}

// backlog commits at least n changes: 60% inserts, 30% updates, 10%
// deletes, in transactions of 1 to 1,000 rows of about 200 bytes with a
// jsonb column. It returns the exact count.
func backlog(b *testing.B, e *harness.Env, n int) int {
	b.Helper()
	changes, next, nextDel := 0, 1, 1
	for tx := 0; changes < n; tx++ {
		size := 1 + (tx*7919)%1000 // spread over 1..1000
		ins, upd, del := max(1, size*6/10), size*3/10, size/10
		var got int
		err := e.Conn.QueryRow(context.Background(), `WITH ins AS (
			INSERT INTO items (id, qty, price, attrs)
			SELECT g, g % 50, g * 0.25, jsonb_build_object('color', 'red', 'size', g % 7, 'tags', jsonb_build_array('a', 'b'), 'note', md5(g::text))
			FROM generate_series($1::int, $1::int + $2::int - 1) g RETURNING 1),
		upd AS (UPDATE items SET qty = qty + 1, updated_at = now() WHERE id >= $1::int - $3::int AND id < $1::int RETURNING 1),
		del AS (DELETE FROM items WHERE id >= $4::int AND id < $4::int + $5::int RETURNING 1)
		SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd) + (SELECT count(*) FROM del)`,
			next, ins, upd, nextDel, del).Scan(&got)
		if err != nil {
			b.Fatal(err)
		}
		changes += got
		next += ins
		nextDel += del
	}
	return changes
}

// startCapture runs capture with its metrics on a free port.
func startCapture(b *testing.B, cfg string) (*harness.Proc, string) {
	b.Helper()
	s := harness.StartServing(b, "sluice-capture", "--config", cfg)
	return s.Proc, s.Addr
}

// waitStream waits until capture has n events in the stream, as its
// metrics count them: a stream message holds several.
func waitStream(b *testing.B, addr string, n int) {
	b.Helper()
	waitMetric(b, addr, "sluice_capture_events_published_total", n)
}

// waitMetric waits until the series (its name and labels as /metrics
// prints them) reaches n. It asks 20 times a second, uncompressed: the
// measured process serves each page, so asking costs it CPU.
func waitMetric(b *testing.B, addr, series string, n int) {
	b.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Accept-Encoding", "identity")
	deadline := time.Now().Add(20 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, line := range strings.Split(string(body), "\n") {
				if v, ok := strings.CutPrefix(line, series+" "); ok {
					if f, _ := strconv.ParseFloat(v, 64); int(f) >= n {
						return
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("%s did not reach %d", series, n)
}

// BenchmarkBackfill copies a table of b.N rows into Redis with a backfill,
// the clock running from the request until the sink has applied every row,
// and in the same run has Postgres COPY the same rows to /dev/null: the
// ceiling of reading them. Reported: rows/s of both and their ratio, and
// the CPU each part spent per row (this process's is the embedded NATS
// server's, mostly).
func BenchmarkBackfill(b *testing.B) {
	e := harness.NewEnv(b)
	harness.Fill(e, b.N)
	cfg := e.DefaultConfig([]string{"accounts"})
	capture := harness.Start(b, "sluice-capture", "--config", cfg)
	e.WaitStreaming(capture)
	w := harness.StartServing(b, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	writer := w.Addr
	cpu := func() [4]float64 {
		return [4]float64{harness.CPUSeconds(b, capture.Pid()), harness.CPUSeconds(b, w.Pid()),
			e.RedisCPUSeconds(b), harness.CPUSeconds(b, os.Getpid())}
	}
	cpu0 := cpu()

	b.ResetTimer()
	began := time.Now()
	if _, err := e.Conn.Exec(context.Background(), `COPY (SELECT * FROM accounts) TO '/dev/null'`); err != nil {
		b.Fatal(err)
	}
	copyRate := float64(b.N) / time.Since(began).Seconds()

	began = time.Now()
	bf := harness.Start(b, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts")
	if code := bf.WaitExit(10 * time.Minute); code != 0 {
		b.Fatalf("backfill exited %d: %s", code, bf.Output())
	}
	waitMetric(b, writer, `sluice_writer_changes_total{outcome="applied",sink="cache"}`, b.N)
	rate := float64(b.N) / time.Since(began).Seconds()
	b.StopTimer()
	b.ReportMetric(rate, "rows/s")
	b.ReportMetric(copyRate, "COPY-rows/s")
	b.ReportMetric(rate/copyRate, "ratio")
	cpu1 := cpu()
	for i, part := range []string{"capture", "writer", "redis", "nats"} {
		b.ReportMetric((cpu1[i]-cpu0[i])*1e6/float64(b.N), part+"-µs/row")
	}
}

// BenchmarkDev measures `sluice dev`, the whole pipeline in one process
// with its embedded NATS server, catching up a backlog made of one insert
// of b.N rows, one update of a fifth of them and one delete of a
// twentieth, committed while it was stopped; the clock runs from the
// process's start until the sink applied every change. In the same run,
// pg_recvlogical decodes the same WAL into /dev/null: the ceiling.
// Reported: changes/s of both, their ratio, the process's peak RSS and
// CPU per change.
func BenchmarkDev(b *testing.B) {
	e := harness.NewEnv(b)
	e.Exec(`CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, price numeric(10,2), attrs jsonb, updated_at timestamptz DEFAULT now())`)
	// The defaults, as a newcomer runs it: no nats.url, so the server is
	// embedded, keeping its streams in data_dir between runs.
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [items]}
nats: {data_dir: %q}
sinks:
  - name: cache
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
log: {level: warn}
`, e.PG.URL, b.TempDir(), e.Redis.Port))
	dev := harness.Start(b, "sluice", "dev", "--config", cfg)
	e.WaitStreaming(dev)
	dev.Signal(syscall.SIGTERM)
	if code := dev.WaitExit(30 * time.Second); code != 0 {
		b.Fatalf("sluice dev exited %d: %s", code, dev.Tail(3000))
	}
	e.Exec(`SELECT pg_create_logical_replication_slot('recv', 'pgoutput')`)
	e.Exec(`INSERT INTO items (id, qty, price, attrs)
		SELECT g, g % 50, g * 0.25, jsonb_build_object('color', 'red', 'size', g % 7, 'tags', jsonb_build_array('a', 'b'), 'note', md5(g::text))
		FROM generate_series(1, $1::int) g`, b.N)
	e.Exec(`UPDATE items SET qty = qty + 1, updated_at = now() WHERE id % 5 = 0`)
	e.Exec(`DELETE FROM items WHERE id % 20 = 1`)
	changes := b.N + b.N/5 + (b.N+19)/20
	end := e.WALLSN()

	b.ResetTimer()
	recvRate := recvlogical(b, e, end, changes)

	began := time.Now()
	served := harness.StartServing(b, "sluice", "dev", "--config", cfg)
	waitMetric(b, served.Addr, `sluice_writer_changes_total{outcome="applied",sink="cache"}`, changes)
	rate := float64(changes) / time.Since(began).Seconds()
	b.StopTimer()
	reportCatchUp(b, served.Pid(), "CPU-µs/change", changes, rate, recvRate)
	e.WaitMatch(time.Minute, testenv.Table{Schema: "public", Name: "items", PK: []string{"id"}, KeyPrefix: "sequin"})
	served.Signal(syscall.SIGTERM)
	served.WaitExit(30 * time.Second)
}
