package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// Observer watches Redis keyspace notifications and checks that no key ever
// goes back to an older change: each value read after a SET must be at
// least as new as anything read of the key before, its value or, after a
// DEL, its version record (the DEL's version, or a newer SET's). Reads lag
// the notifications, so they may see later states; they can never see an
// earlier one if the key never regressed.
type Observer struct {
	mu          sync.Mutex
	Floor       map[string][2]uint64 // key → newest (commit_lsn, commit_idx) read
	Sets        int                  // values read
	Regressions []string
	Stop        func()
}

// Observe starts watching the keys that match pattern, until the test ends
// or Stop is called.
func Observe(t *testing.T, r *testenv.Redis, pattern string) *Observer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rc := r.Client()
	if err := rc.ConfigSet(ctx, "notify-keyspace-events", "K$g").Err(); err != nil {
		t.Fatal(err)
	}
	sub := rc.PSubscribe(ctx, "__keyspace@0__:"+pattern)
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	o := &Observer{Floor: map[string][2]uint64{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for msg := range sub.Channel() {
			key := strings.TrimPrefix(msg.Channel, "__keyspace@0__:")
			switch msg.Payload {
			case "del":
				v, err := rc.Get(ctx, "sluice:v:{"+key+"}").Result() // the tombstone
				if err != nil || len(v) != 30 {
					continue
				}
				lsn, _ := strconv.ParseUint(v[:20], 10, 64)
				idx, _ := strconv.ParseUint(v[20:], 10, 64)
				o.check(key, [2]uint64{lsn, idx}, false)
			case "set":
				raw, err := rc.Get(ctx, key).Result()
				if err != nil {
					continue // deleted meanwhile, or shutting down
				}
				var v struct {
					Metadata struct {
						LSN uint64 `json:"commit_lsn"`
						Idx uint64 `json:"commit_idx"`
					}
				}
				if json.Unmarshal([]byte(raw), &v) != nil {
					continue
				}
				o.check(key, [2]uint64{v.Metadata.LSN, v.Metadata.Idx}, true)
			}
		}
	}()
	o.Stop = func() { sub.Close(); cancel(); wg.Wait(); rc.Close() }
	t.Cleanup(o.Stop)
	return o
}

func (o *Observer) check(key string, v [2]uint64, value bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if value {
		o.Sets++
	}
	floor := o.Floor[key]
	if v[0] < floor[0] || v[0] == floor[0] && v[1] < floor[1] {
		if value {
			o.Regressions = append(o.Regressions, fmt.Sprintf("%s went back from %v to %v", key, floor, v))
		}
		return
	}
	o.Floor[key] = v
}
