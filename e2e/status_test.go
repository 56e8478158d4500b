package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/e2e/harness"
	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

// statusReport is what the tests read of `sluice status --output json`.
type statusReport struct {
	Postgres struct {
		Host  string `json:"host"`
		Error string `json:"error"`
		Slot  *struct {
			Active bool `json:"active"`
		} `json:"slot"`
	} `json:"postgres"`
	NATS struct {
		Error string `json:"error"`
	} `json:"nats"`
	Stream *struct {
		Messages uint64 `json:"messages"`
		LastSeq  uint64 `json:"last_seq"`
	} `json:"stream"`
	Sinks []struct {
		Name            string           `json:"name"`
		PendingMessages uint64           `json:"pending_messages"`
		DeadLetters     uint64           `json:"dead_letters"`
		Writers         []string         `json:"writers"`
		Assignment      map[string][]int `json:"assignment"`
		Partitions      []struct {
			Partition int       `json:"partition"`
			Consumer  bool      `json:"consumer"`
			Pending   uint64    `json:"pending_messages"`
			Oldest    time.Time `json:"oldest_unapplied"`
		} `json:"partitions"`
	} `json:"sinks"`
	Backfills []struct {
		ID       string     `json:"id"`
		State    jobs.State `json:"state"`
		RowsRead int64      `json:"rows_read"`
	} `json:"backfills"`
}

// runStatus runs `sluice status --config cfg` with args and returns its
// exit status and output.
func runStatus(t *testing.T, cfg string, args ...string) (int, string) {
	t.Helper()
	p := harness.Start(t, "sluice", append([]string{"status", "--config", cfg}, args...)...)
	code := p.WaitExit(30 * time.Second)
	return code, p.Output()
}

// statusJSON runs `sluice status --output json` and decodes the report
// from its output, which the log and the error line may surround.
func statusJSON(t *testing.T, cfg string) (int, statusReport, string) {
	t.Helper()
	code, out := runStatus(t, cfg, "--output", "json")
	i := strings.Index(out, "{\n  \"at\"")
	var r statusReport
	if i < 0 {
		t.Fatalf("no JSON report in the output of sluice status (exit %d):\n%s", code, out)
	}
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&r); err != nil {
		t.Fatalf("sluice status --output json: %v\n%s", err, out)
	}
	return code, r, out
}

// subjectCounts reads how many messages each partition's subject holds.
func subjectCounts(t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, "SLUICE")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter("SLUICE.changes.*"))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects
}

// `sluice backfill` says done only once the sink applied the rows: with
// no writer running it waits, and `sluice status` shows the rows pending
// in the stream, partition by partition; as soon as it says done, Redis
// holds every row.
func TestBackfillDoneWhenApplied(t *testing.T) {
	e := harness.NewEnv(t)
	harness.Fill(e, 20000)
	cfg := e.Config([]string{"accounts"}, true)
	capture := harness.Start(t, "sluice-capture", "--config", cfg)
	e.WaitStreaming(capture)

	bf := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts")
	harness.Eventually(t, time.Minute, func() string {
		if bf.Exited() {
			t.Fatalf("sluice backfill exited without a writer:\n%s", bf.Output())
		}
		if !strings.Contains(bf.Output(), "rows in the stream (up to sequence ") {
			return "the rows are not in the stream yet"
		}
		return ""
	})
	if out := bf.Output(); strings.Contains(out, "done:") || !strings.Contains(out, "waiting for sink cache to apply them") {
		t.Fatalf("with no writer running, sluice backfill says:\n%s", out)
	}

	// Status counts what waits in the stream: with no writer, every
	// message of a partition is pending. Nothing else publishes meanwhile;
	// the counts before and after status agreeing shows it.
	js := e.NATS.JetStream(t)
	var r statusReport
	harness.Eventually(t, 30*time.Second, func() string {
		before := subjectCounts(t, js)
		code, rep, out := statusJSON(t, cfg)
		if code != 0 {
			t.Fatalf("sluice status exited %d:\n%s", code, out)
		}
		if after := subjectCounts(t, js); fmt.Sprint(after) != fmt.Sprint(before) {
			return "the stream changed meanwhile"
		}
		r = rep
		if len(r.Sinks) != 1 || r.Sinks[0].Name != "cache" || len(r.Sinks[0].Partitions) != 4 {
			t.Fatalf("sinks: %+v", r.Sinks)
		}
		s := r.Sinks[0]
		var sum uint64
		for _, p := range s.Partitions {
			want := before[fmt.Sprintf("SLUICE.changes.%d", p.Partition)]
			if !p.Consumer || p.Pending != want || (want > 0) == p.Oldest.IsZero() {
				t.Fatalf("partition %d: %+v, and its subject holds %d messages", p.Partition, p, want)
			}
			sum += p.Pending
		}
		if sum == 0 || s.PendingMessages != sum || len(s.Writers) != 0 || s.DeadLetters != 0 {
			t.Fatalf("sink: %+v", s)
		}
		return ""
	})
	if r.Stream == nil || r.Stream.Messages < r.Sinks[0].PendingMessages || r.Postgres.Slot == nil || !r.Postgres.Slot.Active {
		t.Fatalf("stream or slot: %+v %+v", r.Stream, r.Postgres)
	}
	if len(r.Backfills) != 1 || r.Backfills[0].State != jobs.Done || r.Backfills[0].RowsRead != 20000 {
		t.Fatalf("backfills: %+v", r.Backfills)
	}
	if out := bf.Output(); strings.Contains(out, "done:") {
		t.Fatalf("sluice backfill says done with no writer running:\n%s", out)
	}

	// The moment it says done, Redis holds every row.
	harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	harness.Eventually(t, time.Minute, func() string {
		if !strings.Contains(bf.Output(), "done: 20000 rows") {
			if bf.Exited() {
				t.Fatalf("sluice backfill exited:\n%s", bf.Output())
			}
			return "not done"
		}
		return ""
	})
	diffs, err := testenv.TableDiff(context.Background(), e.Conn, e.RC, harness.Accounts)
	if err != nil || len(diffs) > 0 {
		t.Fatalf("sluice backfill said done, and Redis differs from Postgres (%v): %d rows, first %v\n%s", err, len(diffs), diffs[:min(3, len(diffs))], bf.Output())
	}
	if code := bf.WaitExit(10 * time.Second); code != 0 {
		t.Fatalf("sluice backfill exited %d:\n%s", code, bf.Output())
	}

	// Drained: nothing pending, the writer owns every partition.
	harness.Eventually(t, 30*time.Second, func() string {
		_, r, out := statusJSON(t, cfg)
		if len(r.Sinks) != 1 || len(r.Sinks[0].Writers) != 1 {
			return "writers: " + out
		}
		s := r.Sinks[0]
		if s.PendingMessages != 0 || fmt.Sprint(s.Assignment[s.Writers[0]]) != "[0 1 2 3]" {
			return "sink not drained: " + out
		}
		return ""
	})
}

// Status lists the active backfills and those that ended lately, and
// still shows the NATS side when Postgres cannot be reached, saying so,
// without its password.
func TestStatusAgesOutAndSurvivesPostgresDown(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	e.RunPipeline(cfg, "cache")
	e.Exec(`INSERT INTO accounts (id, note) SELECT g, 'x' FROM generate_series(1, 50) g`)
	e.WaitMatch(30*time.Second, harness.Accounts)

	// A backfill that ended two days ago, and one that just did.
	ctx := context.Background()
	js := e.NATS.JetStream(t)
	kv, err := js.KeyValue(ctx, jobs.BucketName(topology.Topology{Stream: "SLUICE"}))
	if err != nil {
		t.Fatal(err)
	}
	ended := time.Now().UTC().Add(-48 * time.Hour)
	old := jobs.Job{ID: "oldbackfill", Sink: "cache", Table: "public.accounts", State: jobs.Done, Done: 7, Total: 7, Created: ended.Add(-time.Minute), Updated: ended}
	b, _ := json.Marshal(old)
	if _, err := kv.Put(ctx, "job."+old.ID, b); err != nil {
		t.Fatal(err)
	}
	bf := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts")
	if code := bf.WaitExit(time.Minute); code != 0 || !strings.Contains(bf.Output(), "done: 50 rows") {
		t.Fatalf("sluice backfill exited %d:\n%s", code, bf.Output())
	}
	if list, err := harness.OpenJobs(t, e).List(ctx); err != nil || len(list) != 2 {
		t.Fatalf("jobs: %v %v", list, err)
	}
	code, r, out := statusJSON(t, cfg)
	if code != 0 || len(r.Backfills) != 1 || r.Backfills[0].ID == old.ID || r.Backfills[0].State != jobs.Done {
		t.Fatalf("sluice status (exit %d) lists the backfills %+v:\n%s", code, r.Backfills, out)
	}
	code, out = runStatus(t, cfg)
	if code != 0 || strings.Contains(out, old.ID) || !strings.Contains(out, "public.accounts → cache: done, 50 of") {
		t.Fatalf("sluice status (exit %d):\n%s", code, out)
	}

	// Postgres unreachable: nothing listens on the port.
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	const password = "pw-never-shown"
	down := e.WriteConfig(strings.Replace(e.ConfigText([]string{"accounts"}, true), e.PG.URL,
		fmt.Sprintf("postgres://sluice:%s@127.0.0.1:%d/appdb?sslmode=disable", password, port), 1))
	code, out = runStatus(t, down)
	where := fmt.Sprintf("postgres  could not be reached at 127.0.0.1:%d/appdb: ", port)
	if code == 0 || !strings.Contains(out, where) || !strings.Contains(out, "sink      cache: 0 messages pending, 0 dead letters") ||
		!strings.Contains(out, "assigned 0,1,2,3") || !strings.Contains(out, "stream    SLUICE: ") || strings.Contains(out, password) {
		t.Fatalf("sluice status with postgres down (exit %d):\n%s", code, out)
	}
	if strings.Index(out, "sink      cache") > strings.Index(out, "sluice status: postgres could not be reached") {
		t.Fatalf("the error precedes the status:\n%s", out)
	}
	code, r, out = statusJSON(t, down)
	if code == 0 || r.Postgres.Error == "" || r.Postgres.Host != fmt.Sprintf("127.0.0.1:%d", port) || r.NATS.Error != "" ||
		len(r.Sinks) != 1 || len(r.Sinks[0].Partitions) != 4 || len(r.Sinks[0].Writers) != 1 || strings.Contains(out, password) {
		t.Fatalf("sluice status --output json with postgres down (exit %d): %+v\n%s", code, r, out)
	}
}
