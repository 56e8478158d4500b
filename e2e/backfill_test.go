package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	jobs "github.com/sluicehq/sluice/pkg/backfill"
)

// A backfill of 200,000 rows while a workload updates, deletes and inserts
// random rows of the table: Redis ends equal to Postgres, and no key ever
// goes back to an older value.
func TestBackfill(t *testing.T) {
	e := harness.NewEnv(t)
	harness.Fill(e, 200000)
	cfg := e.Config([]string{"accounts"}, true)
	e.RunPipeline(cfg, "cache")
	obs := harness.Observe(t, e.Redis, "sequin:accounts:*")

	stopLoad := harness.Background(t, e.PG.URL, 200000, 7)

	bf := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts")
	code := bf.WaitExit(3 * time.Minute)
	changes := stopLoad()
	if code != 0 {
		t.Fatalf("sluice backfill exited %d:\n%s", code, bf.Output())
	}
	out := bf.Output()
	if !strings.Contains(out, "done: ") || !strings.Contains(out, "rows/s") {
		t.Errorf("backfill output:\n%s", out)
	}
	e.WaitMatch(2*time.Minute, harness.Accounts)
	obs.Stop()
	t.Logf("%d concurrent changes; the observer read %d values of %d keys", changes, obs.Sets, len(obs.Floor))
	if obs.Sets == 0 {
		t.Fatal("the observer read no value: it checked nothing")
	}
	if len(obs.Regressions) > 0 {
		t.Fatalf("%d regressions, first: %s", len(obs.Regressions), obs.Regressions[0])
	}

	// Nothing is left to cancel.
	c := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts", "--cancel")
	if code := c.WaitExit(30 * time.Second); code == 0 || !strings.Contains(c.Output(), "no active backfill of public.accounts into sink cache") {
		t.Errorf("--cancel with nothing active: %d %s", code, c.Output())
	}
}

// Capture killed in the middle of a backfill: after its restart the
// backfill goes on from its saved cursor and completes, no row missing.
func TestBackfillSurvivesCaptureKill(t *testing.T) {
	e := harness.NewEnv(t)
	harness.Fill(e, 150000)
	cfg := e.Config([]string{"accounts"}, true)
	capture := e.RunPipeline(cfg, "cache")

	bf := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts", "--detach")
	if code := bf.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("sluice backfill exited %d: %s", code, bf.Output())
	}
	store := harness.OpenJobs(t, e)
	job := func() jobs.Job {
		list, err := store.List(context.Background())
		if err != nil || len(list) != 1 {
			t.Fatalf("backfills: %v %v", list, err)
		}
		return list[0]
	}
	harness.Eventually(t, time.Minute, func() string {
		if j := job(); j.Done < 30000 || j.State != jobs.Running {
			return "backfill not under way: " + string(j.State)
		}
		return ""
	})
	capture.Signal(syscall.SIGKILL)
	capture.WaitExit(10 * time.Second)
	before := job().Done
	e.Exec(`UPDATE accounts SET n = n + 100 WHERE id % 1000 = 0`) // changes while capture is down
	harness.Start(t, "sluice-capture", "--config", cfg)
	harness.Eventually(t, 2*time.Minute, func() string {
		if j := job(); j.State != jobs.Done {
			return "backfill " + string(j.State)
		}
		return ""
	})
	t.Logf("killed after %d rows; done with %d", before, job().Done)
	if before >= 150000 {
		t.Fatal("the backfill had finished before the kill")
	}
	e.WaitMatch(time.Minute, harness.Accounts)

	st := harness.Start(t, "sluice", "status", "--config", cfg)
	st.WaitExit(30 * time.Second)
	if !strings.Contains(st.Output(), "public.accounts → cache: done") {
		t.Errorf("status does not show the backfill:\n%s", st.Output())
	}
}

// initial_backfill fills a new sink with the rows its tables already hold,
// once.
func TestInitialBackfill(t *testing.T) {
	e := harness.NewEnv(t)
	harness.Fill(e, 5000)
	doc := strings.Replace(e.ConfigText([]string{"accounts"}, true), "  - name: cache\n", "  - name: cache\n    initial_backfill: true\n", 1)
	cfg := e.WriteConfig(doc)
	capture := e.RunPipeline(cfg, "cache")
	e.WaitMatch(time.Minute, harness.Accounts)

	// A restart does not backfill again.
	capture.Signal(syscall.SIGTERM)
	capture.WaitExit(30 * time.Second)
	harness.Start(t, "sluice-capture", "--config", cfg)
	time.Sleep(2 * time.Second)
	if list, _ := harness.OpenJobs(t, e).List(context.Background()); len(list) != 1 {
		t.Fatalf("%d backfills after a restart", len(list))
	}
}

// `sluice backfill --cancel` stops an active backfill before its next
// chunk, keeping its progress.
func TestBackfillCancel(t *testing.T) {
	e := harness.NewEnv(t)
	harness.Fill(e, 300000)
	cfg := e.Config([]string{"accounts"}, true)
	e.RunPipeline(cfg, "cache")
	follower := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts")
	store := harness.OpenJobs(t, e)
	harness.Eventually(t, time.Minute, func() string {
		if list, _ := store.List(context.Background()); len(list) == 0 || list[0].Done == 0 {
			return "not under way"
		}
		return ""
	})
	c := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts", "--cancel")
	if code := c.WaitExit(30 * time.Second); code != 0 || !strings.Contains(c.Output(), "cancelled backfill") {
		t.Fatalf("--cancel: %d %s", code, c.Output())
	}
	// The follower reports the cancellation and fails.
	if code := follower.WaitExit(time.Minute); code == 0 || !strings.Contains(follower.Output(), "was cancelled after") {
		t.Fatalf("follower: %d %s", code, follower.Output())
	}
	time.Sleep(time.Second) // a chunk in flight when cancelled still lands
	list, err := store.List(context.Background())
	if err != nil || len(list) != 1 {
		t.Fatalf("backfills: %v %v", list, err)
	}
	if list[0].State != jobs.Cancelled || list[0].Done == 0 || list[0].Done >= 300000 {
		t.Fatalf("job after cancel: %+v", list[0])
	}
	done := list[0].Done
	time.Sleep(2 * time.Second)
	if list, err = store.List(context.Background()); err != nil || list[0].Done != done {
		t.Fatalf("a cancelled backfill went on: %d, then %d rows", done, list[0].Done)
	}
}

// --where is a condition, not a statement: what would run anything else is
// refused by `sluice backfill`, and by capture for a job written straight
// into the bucket; the table is untouched either way.
func TestBackfillWhereInjection(t *testing.T) {
	e := harness.NewEnv(t)
	harness.Fill(e, 100)
	cfg := e.Config([]string{"accounts"}, true)
	e.RunPipeline(cfg, "cache")
	for where, want := range map[string]string{
		`x); DELETE FROM accounts; --`:                                     "must be one condition",
		`(SELECT pg_terminate_backend(pid) FROM pg_stat_activity) IS NULL`: "pg_terminate_backend is volatile",
	} {
		p := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "accounts", "--where", where)
		if code := p.WaitExit(30 * time.Second); code == 0 || !strings.Contains(p.Output(), want) {
			t.Errorf("--where %q: exit %d: %s", where, code, p.Output())
		}
	}
	store := harness.OpenJobs(t, e)
	j, err := store.Create(context.Background(), "cache", "public.accounts", `true) OR (SELECT count(*) FROM pg_stat_activity WHERE pg_cancel_backend(pid)) > 0 OR (true`)
	if err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, func() string {
		got, _, err := store.Get(context.Background(), j.ID)
		if err != nil || got.State != jobs.Failed || !strings.Contains(got.Error, "must be one condition") {
			return fmt.Sprintf("job: %+v %v", got, err)
		}
		return ""
	})
	// A job changed in the bucket to run a bad condition, whether capture
	// has taken it up already or not, is refused too.
	ctx := context.Background()
	j, err = store.Create(ctx, "cache", "public.accounts", "")
	if err != nil {
		t.Fatal(err)
	}
	for {
		got, rev, err := store.Get(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		got.State, got.Where = jobs.Running, `id > 0) OR (SELECT count(*) FROM pg_stat_activity WHERE pg_cancel_backend(pid)) > 0 OR (true`
		if _, err = store.Update(ctx, got, rev); !errors.Is(err, jobs.ErrChanged) {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	harness.Eventually(t, 30*time.Second, func() string {
		got, _, err := store.Get(ctx, j.ID)
		if err != nil || got.State != jobs.Failed || !strings.Contains(got.Error, "must be one condition") {
			return fmt.Sprintf("changed job: %+v %v", got, err)
		}
		return ""
	})
	var n int
	if err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM accounts`).Scan(&n); err != nil || n != 100 {
		t.Fatalf("accounts holds %d rows (%v)", n, err)
	}
}
