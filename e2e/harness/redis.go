package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

// StaleKeys returns what is wrong with the accounts keys present in rc:
// a key whose row is gone, or whose value differs from its row.
func StaleKeys(e *Env, rc *redis.Client, bare bool) string {
	ctx := context.Background()
	want, err := testenv.PostgresRows(ctx, e.Conn, Accounts)
	if err != nil {
		return err.Error()
	}
	var bad []string
	checked := 0
	iter := rc.Scan(ctx, 0, "sequin:accounts:*", 1000).Iterator()
	for iter.Next(ctx) {
		checked++
		key := iter.Val()
		raw, err := rc.Get(ctx, key).Result()
		if err == redis.Nil {
			continue // evicted meanwhile
		}
		if err != nil {
			return err.Error()
		}
		var rec map[string]any
		if bare {
			err = json.NewDecoder(strings.NewReader(raw)).Decode(&rec)
		} else {
			var m struct{ Record map[string]any }
			dec := json.NewDecoder(strings.NewReader(raw))
			dec.UseNumber()
			err = dec.Decode(&m)
			rec = m.Record
		}
		if err != nil {
			return fmt.Sprintf("%s: %v", key, err)
		}
		row, ok := want[key]
		switch {
		case !ok:
			bad = append(bad, "deleted row present: "+key)
		case fmt.Sprint(row["n"]) != fmt.Sprint(rec["n"]) || row["note"] != rec["note"]:
			bad = append(bad, fmt.Sprintf("%s holds n=%v, its row n=%v", key, rec["n"], row["n"]))
		}
	}
	if len(bad) > 5 {
		bad = append(bad[:5], fmt.Sprintf("… %d more", len(bad)-5))
	}
	if checked == 0 && len(want) > 0 {
		return "no accounts key to check"
	}
	return strings.Join(bad, "; ")
}

// WaitDrained waits until every partition consumer of sinks has nothing
// pending (of every sink when none is named).
func WaitDrained(t *testing.T, e *Env, sinks ...string) {
	t.Helper()
	ctx := context.Background()
	js := e.NATS.JetStream(t)
	st, err := js.Stream(ctx, "SLUICE")
	if err != nil {
		t.Fatal(err)
	}
	Eventually(t, 2*time.Minute, func() string {
		for c := range st.ListConsumers(ctx).Info() {
			if len(sinks) > 0 && !slices.ContainsFunc(sinks, func(s string) bool { return ofSink(c.Name, s) }) {
				continue
			}
			if c.NumPending+uint64(c.NumAckPending) > 0 {
				return fmt.Sprintf("%s: %d pending, %d unacknowledged", c.Name, c.NumPending, c.NumAckPending)
			}
		}
		return ""
	})
}

// ofSink says whether a consumer is one of a sink's partition consumers.
func ofSink(consumer, sink string) bool {
	i := strings.LastIndexByte(consumer, '-')
	p, err := strconv.Atoi(consumer[i+1:])
	return err == nil && consumer == topology.ConsumerName(sink, p)
}

// InfoInt reads a number from the text of Redis INFO.
func InfoInt(info, field string) int64 {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// OnlyMissing says how Redis differs from Postgres's table, unless the one
// difference is that key missing.
func OnlyMissing(e *Env, rc *redis.Client, table testenv.Table, key string) string {
	diffs, err := testenv.TableDiff(context.Background(), e.Conn, rc, table)
	switch {
	case err != nil:
		return err.Error()
	case len(diffs) == 0:
		return "redis holds " + key + ", which should be missing"
	case len(diffs) != 1 || diffs[0] != "missing in redis: "+key:
		return strings.Join(diffs[:min(len(diffs), 5)], "; ")
	}
	return ""
}
