package status

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/backlog"
	"github.com/sluicehq/sluice/pkg/config"
)

func TestListedAgesOutEndedJobs(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	job := func(id string, s jobs.State, ended time.Duration) jobs.Job {
		return jobs.Job{ID: id, State: s, Created: now.Add(-ended - time.Hour), Updated: now.Add(-ended)}
	}
	list := []jobs.Job{
		job("old-running", jobs.Running, 72*time.Hour), // active: listed however old
		job("old-done", jobs.Done, 25*time.Hour),
		job("old-failed", jobs.Failed, 30*time.Hour),
		job("recent-cancelled", jobs.Cancelled, 23*time.Hour),
		job("recent-done", jobs.Done, time.Minute),
		job("pending", jobs.Pending, 0),
	}
	var got []string
	for _, j := range listed(list, now) {
		got = append(got, j.ID)
	}
	if want := "old-running recent-cancelled recent-done pending"; strings.Join(got, " ") != want {
		t.Fatalf("listed %v, want %s", got, want)
	}

	// Of many recent ended jobs, the last few.
	list = nil
	for i := range 8 {
		list = append(list, job(string(rune('a'+i)), jobs.Done, time.Duration(8-i)*time.Minute))
	}
	got = nil
	for _, j := range listed(list, now) {
		got = append(got, j.ID)
	}
	if want := "d e f g h"; strings.Join(got, " ") != want {
		t.Fatalf("listed %v, want %s", got, want)
	}

	// A job that never recorded its update ages by its creation.
	old := jobs.Job{ID: "x", State: jobs.Done, Created: now.Add(-48 * time.Hour)}
	if l := listed([]jobs.Job{old}, now); len(l) != 0 {
		t.Fatalf("listed %v", l)
	}
}

func testReport() Report {
	at := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	return Report{
		At:       at,
		Postgres: Postgres{Host: "db.example:5432", Database: "app", Slot: &Slot{Name: "sluice", Exists: true, Active: true, WalsenderPID: 42, ConfirmedFlushLSN: "0/16B3748", RetainedWALBytes: 2048}},
		NATS:     NATS{URL: "nats://127.0.0.1:4222"},
		Stream:   &Stream{Name: "SLUICE", Exists: true, Messages: 120, Bytes: 3 << 20, FirstSeq: 1, LastSeq: 120, LastTime: at.Add(-time.Second)},
		Sinks: []Sink{{
			Sink: backlog.Sink{Name: "cache", DeadLetters: 2, Writers: []string{"w1", "w2"}, Consuming: map[string][]int{"w1": {0, 2}}, Partitions: []backlog.Partition{
				{Partition: 0, Consumer: true, Pending: 5, Oldest: at.Add(-4 * time.Second), Delivered: 100, AckFloor: 90},
				{Partition: 1, Consumer: true},
				{Partition: 2, Consumer: false},
			}},
			PendingMessages: 5, OldestUnapplied: at.Add(-4 * time.Second),
			Assignment:  map[string][]int{"w1": {0, 2}, "w2": {1}},
			RedisResets: 1, LastRedisReset: at.Add(-time.Hour),
		}},
		Backfills: []Backfill{
			{ID: "b1", Sink: "cache", Table: "public.accounts", State: jobs.Running, RowsRead: 500, RowsEstimated: 1000, RowsPerSecond: 100, ETASeconds: 5},
			{ID: "b2", Sink: "cache", Table: "public.users", State: jobs.Failed, RowsRead: 0, RowsEstimated: 10, Error: "boom"},
		},
	}
}

func TestText(t *testing.T) {
	var b bytes.Buffer
	writeText(&b, testReport())
	want := `postgres  slot sluice: streaming (walsender pid 42), confirmed 0/16B3748, retains 2.0 KiB of WAL
stream    SLUICE: 120 messages held (3.0 MiB; a message holds one or more changes), sequence 120, last at 2025-06-01T11:59:59Z
sink      cache: 5 messages pending (partition 0: 5, 2: no consumer), oldest unapplied 4s ago, 2 dead letters
  writers w1  assigned 0,2  consuming 0,2
          w2  assigned 1  consuming ?
  redis lost its data 1 times, last at 2025-06-01T11:00:00Z
backfill  b1 public.accounts → cache: running, 500 of ~1000 rows, 100 rows/s, ETA 5s
backfill  b2 public.users → cache: failed, 0 of ~10 rows: boom
`
	if b.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

// With Postgres unreachable, the NATS side shows all the same, and the
// Postgres line says why, with its address but no credentials.
func TestTextPostgresDown(t *testing.T) {
	r := testReport()
	r.Postgres = Postgres{Host: "db.example:5432", Database: "app", Error: "dial error: connection refused"}
	var b bytes.Buffer
	writeText(&b, r)
	out := b.String()
	if !strings.HasPrefix(out, "postgres  could not be reached at db.example:5432/app: dial error: connection refused\n") {
		t.Fatalf("got:\n%s", out)
	}
	if !strings.Contains(out, "sink      cache: 5 messages pending") {
		t.Fatalf("no sink section:\n%s", out)
	}
}

func TestTextNATSDown(t *testing.T) {
	r := Report{Postgres: Postgres{Slot: &Slot{Name: "sluice"}}, NATS: NATS{Error: "connect to nats at nats://u:xxxxx@h:4222: refused"}}
	var b bytes.Buffer
	writeText(&b, r)
	want := "postgres  slot sluice does not exist yet (capture creates it)\nnats      could not be read: connect to nats at nats://u:xxxxx@h:4222: refused\n"
	if b.String() != want {
		t.Fatalf("got:\n%s", b.String())
	}
}

func TestJSON(t *testing.T) {
	r := testReport()
	r.Postgres = Postgres{Host: "db.example:5432", Database: "app", Error: "refused"}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Postgres map[string]any `json:"postgres"`
		Stream   map[string]any `json:"stream"`
		Sinks    []struct {
			Name            string           `json:"name"`
			PendingMessages uint64           `json:"pending_messages"`
			DeadLetters     uint64           `json:"dead_letters"`
			Writers         []string         `json:"writers"`
			Assignment      map[string][]int `json:"assignment"`
			Partitions      []struct {
				Partition int    `json:"partition"`
				Pending   uint64 `json:"pending_messages"`
				AckFloor  uint64 `json:"ack_floor_seq"`
			} `json:"partitions"`
		} `json:"sinks"`
		Backfills []map[string]any `json:"backfills"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Postgres["error"] != "refused" || got.Postgres["host"] != "db.example:5432" {
		t.Errorf("postgres: %v", got.Postgres)
	}
	if got.Stream["messages"] != 120.0 || got.Stream["last_seq"] != 120.0 {
		t.Errorf("stream: %v", got.Stream)
	}
	if len(got.Sinks) != 1 {
		t.Fatalf("sinks: %s", b)
	}
	s := got.Sinks[0]
	if s.Name != "cache" || s.PendingMessages != 5 || s.DeadLetters != 2 || len(s.Writers) != 2 || len(s.Partitions) != 3 ||
		s.Partitions[0].Pending != 5 || s.Partitions[0].AckFloor != 90 || len(s.Assignment["w1"]) != 2 {
		t.Errorf("sink: %+v", s)
	}
	if len(got.Backfills) != 2 || got.Backfills[0]["rows_read"] != 500.0 || got.Backfills[1]["error"] != "boom" {
		t.Errorf("backfills: %v", got.Backfills)
	}
	if _, ok := got.Backfills[0]["cursor"]; ok {
		t.Errorf("a backfill shows its cursor: %v", got.Backfills[0])
	}
}

func TestReadPostgresHidesThePassword(t *testing.T) {
	// Nothing listens on port 1: the connection fails at once.
	for _, url := range []string{
		"postgres://sluice:s3cr3t-pw@127.0.0.1:1/app?sslmode=disable&connect_timeout=2",
		"host=127.0.0.1 port=1 user=sluice password=s3cr3t-pw dbname=app sslmode=disable connect_timeout=2",
	} {
		r := readPostgres(t.Context(), configPostgres(url))
		if r.Error == "" || r.Host != "127.0.0.1:1" || r.Database != "app" {
			t.Errorf("%+v", r)
		}
		b, _ := json.Marshal(r)
		if strings.Contains(string(b), "s3cr3t") {
			t.Errorf("the password shows: %s", b)
		}
	}
	r := readPostgres(t.Context(), configPostgres("postgres://sluice:s3cr3t-pw@127.0.0.1:notaport/app"))
	if r.Error == "" || strings.Contains(r.Error, "s3cr3t") {
		t.Errorf("%+v", r)
	}
}

func TestCheckOutput(t *testing.T) {
	for _, o := range []string{Text, JSON} {
		if err := CheckOutput(o); err != nil {
			t.Error(err)
		}
	}
	if err := CheckOutput("yaml"); err == nil {
		t.Error("yaml accepted")
	}
}

func configPostgres(url string) config.Postgres { return config.Postgres{URL: url, Slot: "sluice"} }

func TestOneLine(t *testing.T) {
	msg := "failed to connect to `user=u database=app`:\n\t127.0.0.1:1 (127.0.0.1): refused\n\t127.0.0.1:1 (127.0.0.1): refused"
	if got, want := oneLine(msg), "failed to connect to `user=u database=app`: 127.0.0.1:1 (127.0.0.1): refused"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
