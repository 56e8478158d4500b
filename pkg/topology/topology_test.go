package topology

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
)

func TestPartitionIsStable(t *testing.T) {
	top := Topology{Stream: "SLUICE", Partitions: 16}
	// Fixed values: a change here would move keys between partitions across
	// an upgrade, which breaks per-key order.
	cases := []struct {
		schema, table string
		pk            []string
		want          int
	}{
		{"public", "users", []string{"42"}, 10},
		{"public", "orders", []string{"acme", "7"}, 4},
		{"app", "users", []string{"42"}, 6},
	}
	for _, c := range cases {
		if got := top.Partition(c.schema, c.table, c.pk); got != c.want {
			t.Errorf("Partition(%s.%s %v) = %d", c.schema, c.table, c.pk, got)
		}
	}
	// Key boundaries matter: ("a","bc") and ("ab","c") are different rows.
	if top.Partition("public", "t", []string{"a", "bc"}) == top.Partition("public", "t", []string{"ab", "c"}) &&
		top.Partition("public", "t", []string{"x", "yz"}) == top.Partition("public", "t", []string{"xy", "z"}) {
		t.Error("composite key boundaries are not hashed")
	}
	if got := top.Subject(3); got != "SLUICE.changes.3" {
		t.Errorf("Subject(3) = %q", got)
	}
}

func TestPartitionSpread(t *testing.T) {
	top := Topology{Stream: "S", Partitions: 16}
	counts := make([]int, 16)
	for i := 0; i < 16000; i++ {
		counts[top.Partition("public", "users", []string{strconv.Itoa(i)})]++
	}
	for p, n := range counts {
		if n < 700 || n > 1300 {
			t.Errorf("partition %d got %d of 16000 keys", p, n)
		}
	}
}

func TestAssign(t *testing.T) {
	top := Topology{Partitions: 16}
	members := []string{"a", "b", "c"}
	counts := map[int]int{}
	seen := map[int]bool{}
	for _, m := range members {
		ps := top.Assign(members, m)
		counts[len(ps)]++
		for _, p := range ps {
			if seen[p] {
				t.Fatalf("partition %d assigned twice", p)
			}
			seen[p] = true
		}
	}
	if len(seen) != 16 || counts[6] != 1 || counts[5] != 2 {
		t.Fatalf("assignment of 16 partitions to 3: %v %v", counts, seen)
	}
	if top.Assign(members, "x") != nil {
		t.Fatal("a non-member got partitions")
	}
}

func BenchmarkPartition(b *testing.B) {
	top := Topology{Partitions: 16}
	pk := []string{"acme", "12345"}
	b.ReportAllocs()
	for b.Loop() {
		top.Partition("public", "orders", pk)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"nats://nats:4222":                       "nats://nats:4222",
		"nats://app:s3cret@a:4222,nats://b:4222": "nats://app:xxxxx@a:4222,nats://b:4222",
		"nats://t0ken@a:4222, tls://u:p@b:4222":  "nats://xxxxx@a:4222,tls://u:xxxxx@b:4222",
	} {
		if got := Redact(in); got != want || strings.Contains(got, "s3cret") || strings.Contains(got, "t0ken") {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// The stream records its partition count; another count is refused with
// what to do, and a stream of an earlier release is adopted.
func TestEnsureKeepsPartitions(t *testing.T) {
	ctx := context.Background()
	js := testenv.NewNATS(t).JetStream(t)
	topo := Topology{Stream: "S", Partitions: 4, Replicas: 1}
	sink := config.Sink{Name: "cache", AckWait: time.Second, Failover: 3 * time.Second}
	for range 2 {
		if _, err := topo.Ensure(ctx, js, sink); err != nil {
			t.Fatal(err)
		}
	}
	more := topo
	more.Partitions = 8
	if _, err := more.Ensure(ctx, js, sink); err == nil || !strings.Contains(err.Error(), "spreads changes over 4 partitions, and nats.partitions is 8") {
		t.Fatalf("8 partitions over a stream of 4: %v", err)
	}
	old := Topology{Stream: "OLD", Partitions: 2, Replicas: 1}
	cfg := old.StreamConfig()
	cfg.Metadata = nil
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	st, err := old.Ensure(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.Config.Metadata[partitionsKey] != "2" {
		t.Fatalf("an earlier release's stream: %v, %v", info.Config.Metadata, err)
	}
}

func TestServerVersion(t *testing.T) {
	for v, ok := range map[string]bool{"2.11.0": true, "2.11.4": true, "2.12.0-RC.1": true, "3.0": true,
		"2.10.22": false, "2.9.25": false, "2": false, "": false, "x.y": false} {
		if got := checkVersion(v) == nil; got != ok {
			t.Errorf("version %q accepted %v, want %v", v, got, ok)
		}
	}
	if err := checkVersion("2.9.25"); err == nil || !strings.Contains(err.Error(), "NATS 2.9.25; Sluice needs 2.11.0 or newer") {
		t.Errorf("message: %v", err)
	}
}
