package backfill

import (
	"strings"
	"testing"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/backlog"
)

func TestApplying(t *testing.T) {
	s := backlog.Sink{Name: "cache", Partitions: []backlog.Partition{{Consumer: true, Pending: 3}, {Consumer: true, Pending: 4}}}
	if got, want := applying(s), "sink cache: 7 messages pending, no writer is running"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	s.Writers = []string{"a", "b"}
	if got, want := applying(s), "sink cache: 7 messages pending, 2 writers"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestExceptions(t *testing.T) {
	if msg := exceptions("cache", 0, 0); msg != "" {
		t.Errorf("nothing parked or dead-lettered: %q", msg)
	}
	for _, c := range []struct {
		parked, letters uint64
		want            []string
	}{
		{2, 0, []string{"2 changes of sink cache wait for another attempt", "some rows may be missing"}},
		{0, 3, []string{"3 went to its dead letters meanwhile (sluice dlq list --sink cache)"}},
		{1, 1, []string{"wait for another attempt and 1 went to its dead letters"}},
	} {
		msg := exceptions("cache", c.parked, c.letters)
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("exceptions(%d, %d) = %q, lacks %q", c.parked, c.letters, msg, w)
			}
		}
	}
}

func TestProgress(t *testing.T) {
	for _, c := range []struct {
		j    jobs.Job
		want string
	}{
		{jobs.Job{ID: "x", State: jobs.Pending}, "backfill x: waiting for capture to start it"},
		{jobs.Job{State: jobs.Running, Done: 50, Total: 100, Rate: 10}, "[===============               ]  50%  50 of ~100 rows  10 rows/s  ETA 5s"},
		// The estimate was low: done is whole all the same.
		{jobs.Job{State: jobs.Done, Done: 120, Total: 100}, "[==============================] 100%  120 of ~100 rows  0 rows/s  ETA ?"},
	} {
		if got := progress(c.j); got != c.want {
			t.Errorf("got  %q\nwant %q", got, c.want)
		}
	}
}
