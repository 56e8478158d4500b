package command

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/topology"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

func sink(expire *int64) *config.Sink {
	return &config.Sink{Name: "cache", TombstoneTTL: time.Hour, Destination: config.Destination{KeyPrefix: "sequin", ExpireMS: expire}}
}

// partitions spreads the rows of the tests' changes.
var partitions = topology.Topology{Partitions: 16}

func render(t *testing.T, s *config.Sink, ev *sluicev1.ChangeEvent) []Command {
	t.Helper()
	r, err := NewRenderer(s, config.Postgres{}, partitions.Partition)
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := r.Append(nil, ev)
	if err != nil {
		t.Fatal(err)
	}
	return cmds
}

func TestAppend(t *testing.T) {
	ins := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_INSERT, Schema: "public", Table: "orders", PkValues: []string{"acme", "7"},
		Record: []byte(`{"id":7}`), CommitLsn: 0x10, CommitIdx: 2}
	cmds := render(t, sink(nil), ins)
	if len(cmds) != 1 || cmds[0].Del || cmds[0].Key != "sequin:orders:acme:7" || cmds[0].Version != "000000000000000000160000000002" ||
		cmds[0].ExpireMS != 0 || cmds[0].VersionExpireMS != 0 || !cmds[0].Insert {
		t.Fatalf("insert: %+v", cmds)
	}
	var msg map[string]any
	if err := json.Unmarshal(cmds[0].Value, &msg); err != nil || msg["action"] != "insert" || !cmds[0].Message || cmds[0].Partition != -1 {
		t.Fatalf("value %s: %v (%+v)", cmds[0].Value, err, cmds[0])
	}

	read := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_READ, Schema: "public", Table: "orders", PkValues: []string{"acme", "7"}, Record: []byte(`{"id":7}`)}
	if cmds = render(t, sink(nil), read); len(cmds) != 1 || !cmds[0].Insert || cmds[0].Del {
		t.Fatalf("backfill read: %+v; want a write of a likely absent key", cmds)
	}

	expire := int64(5000)
	cmds = render(t, sink(&expire), ins)
	if cmds[0].ExpireMS != 5000 || cmds[0].VersionExpireMS != 3600000 {
		t.Fatalf("expiring insert: %+v", cmds[0])
	}
	zero := int64(0)
	if cmds = render(t, sink(&zero), ins); cmds[0].ExpireMS != 0 {
		t.Fatalf("expire_ms 0: %+v", cmds[0])
	}

	del := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_DELETE, Table: "orders", PkValues: []string{"acme", "7"}, CommitLsn: 0x11}
	cmds = render(t, sink(&expire), del)
	if len(cmds) != 1 || !cmds[0].Del || cmds[0].Key != "sequin:orders:acme:7" || cmds[0].Value != nil || cmds[0].VersionExpireMS != 3600000 {
		t.Fatalf("delete: %+v", cmds)
	}

	moved := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_UPDATE, Table: "orders", PkValues: []string{"acme", "8"}, OldPkValues: []string{"acme", "7"}, CommitLsn: 0x12}
	cmds = render(t, sink(nil), moved)
	if len(cmds) != 2 || !cmds[0].Del || cmds[0].Key != "sequin:orders:acme:7" || cmds[1].Del || cmds[1].Key != "sequin:orders:acme:8" || cmds[0].Version != cmds[1].Version {
		t.Fatalf("key change: %+v", cmds)
	}
	// The old key's other changes are in the old key's partition, whose
	// transactions its delete must break.
	if !cmds[0].Shared || cmds[1].Shared {
		t.Fatalf("key change: shared %v, %v; want the old key's only", cmds[0].Shared, cmds[1].Shared)
	}
	if home := partitions.Partition("", "orders", []string{"acme", "7"}); cmds[0].Home != home {
		t.Fatalf("the old key's home is partition %d, want %d", cmds[0].Home, home)
	}
}

func TestExpressions(t *testing.T) {
	expire := int64(5000)
	s := sink(&expire)
	s.Filter = `record.active == true`
	s.Transform = `{"name": record.name, "id": record.id}`
	s.Routing = `action == "read" ? {"key": "r:" + string(record.id), "action": "del"} : "users:" + string(record.id)`
	ev := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_UPDATE, Schema: "public", Table: "users", PkColumns: []string{"id"}, PkValues: []string{"7"},
		OldPkValues: []string{"6"}, Record: []byte(`{"id":7,"name":"Ann","active":true}`), Changes: []byte(`{}`), CommitLsn: 9}
	cmds := render(t, s, ev)
	if len(cmds) != 2 || !cmds[0].Del || cmds[0].Key != "users:6" || cmds[1].Key != "users:7" || string(cmds[1].Value) != `{"id":7,"name":"Ann"}` ||
		cmds[1].ExpireMS != 5000 || cmds[1].Message || cmds[1].Insert || !cmds[0].Shared || !cmds[1].Shared || cmds[0].Home != -1 || cmds[1].Home != -1 {
		t.Fatalf("routed update: %+v", cmds)
	}
	ev.OldPkValues = nil
	ev.Action = sluicev1.Action_ACTION_READ
	if cmds = render(t, s, ev); len(cmds) != 1 || !cmds[0].Del || cmds[0].Key != "r:7" || cmds[0].ExpireMS != 0 {
		t.Fatalf("routing to del: %+v", cmds)
	}
	ev.Record = []byte(`{"id":7,"name":"Ann","active":false}`)
	if cmds = render(t, s, ev); len(cmds) != 0 {
		t.Fatalf("filtered out, yet: %+v", cmds)
	}

	s.Filter, s.Transform, s.Routing = "", `record.name`, `{"key": "k:" + string(record.id), "expire_ms": 100}`
	ev.Action, ev.Record = sluicev1.Action_ACTION_INSERT, []byte(`{"id":1,"name":"Bo"}`)
	if cmds = render(t, s, ev); string(cmds[0].Value) != "Bo" || cmds[0].Key != "k:1" || cmds[0].ExpireMS != 100 || cmds[0].VersionExpireMS != 3600000 {
		t.Fatalf("string transform, routed expiry: %+v", cmds)
	}
	s.Routing = `record.missing.field`
	r, _ := NewRenderer(s, config.Postgres{}, nil)
	if _, err := r.Append(nil, ev); err == nil {
		t.Fatal("a failing routing expression gave no error")
	}
}

func TestTruncate(t *testing.T) {
	ev := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_TRUNCATE, Schema: "public", Table: "users", CommitLsn: 0x20, CommitIdx: 3}
	s := sink(nil)
	s.OnTruncate = "ignore"
	if cmds := render(t, s, ev); len(cmds) != 0 {
		t.Fatalf("ignored truncate: %+v", cmds)
	}
	s.OnTruncate = "delete"
	s.Filter = "record.active" // does not apply: a truncate has no record
	cmds := render(t, s, ev)
	if len(cmds) != 1 || !cmds[0].Truncate || cmds[0].Key != "sequin:users:" || cmds[0].Version != "000000000000000000320000000003" || cmds[0].VersionExpireMS != 3600000 {
		t.Fatalf("truncate: %+v", cmds)
	}
}

// A row leaves the cache when an update makes it stop matching the filter,
// and when it is deleted, whatever its key-only record says; unless the
// sink's actions leave deletes out. An insert that does not match was
// never there: nothing to do.
func TestFilterLeavesNoStaleRow(t *testing.T) {
	s := sink(nil)
	s.Filter = `record.active == true`
	s.Actions = config.Actions
	ev := func(a sluicev1.Action, record string) *sluicev1.ChangeEvent {
		return &sluicev1.ChangeEvent{Action: a, Schema: "public", Table: "users", PkColumns: []string{"id"}, PkValues: []string{"7"}, Record: []byte(record), CommitLsn: 9}
	}
	if cmds := render(t, s, ev(sluicev1.Action_ACTION_UPDATE, `{"id":7,"active":true}`)); len(cmds) != 1 || cmds[0].Del {
		t.Fatalf("matching update: %+v", cmds)
	}
	if cmds := render(t, s, ev(sluicev1.Action_ACTION_UPDATE, `{"id":7,"active":false}`)); len(cmds) != 1 || !cmds[0].Del || cmds[0].Key != "sequin:users:7" {
		t.Fatalf("update that stops matching: %+v", cmds)
	}
	if cmds := render(t, s, ev(sluicev1.Action_ACTION_DELETE, `{"id":7,"active":null}`)); len(cmds) != 1 || !cmds[0].Del {
		t.Fatalf("delete with a key-only record: %+v", cmds)
	}
	if cmds := render(t, s, ev(sluicev1.Action_ACTION_INSERT, `{"id":7,"active":false}`)); len(cmds) != 0 {
		t.Fatalf("insert that does not match: %+v", cmds)
	}
	s.Routing = `"u:" + string(record.id)`
	if cmds := render(t, s, ev(sluicev1.Action_ACTION_UPDATE, `{"id":7,"active":false}`)); len(cmds) != 1 || !cmds[0].Del || cmds[0].Key != "u:7" {
		t.Fatalf("routed update that stops matching: %+v", cmds)
	}
	s.Actions = []string{"insert", "update"}
	if cmds := render(t, s, ev(sluicev1.Action_ACTION_UPDATE, `{"id":7,"active":false}`)); len(cmds) != 0 {
		t.Fatalf("without deletes, an update that stops matching: %+v", cmds)
	}
}

// An update that changes the key, where routing gives the old and the new
// row the same key: the key holds the new row, with no DEL of it at the
// same version (which would make the SET look stale).
func TestKeyChangeToTheSameRoutedKey(t *testing.T) {
	s := sink(nil)
	s.Routing = `"users:" + record.email`
	ev := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_UPDATE, Table: "users", PkColumns: []string{"id"}, PkValues: []string{"8"},
		OldPkValues: []string{"7"}, Record: []byte(`{"id":8,"email":"a@x"}`), Changes: []byte(`{}`), CommitLsn: 9}
	if cmds := render(t, s, ev); len(cmds) != 1 || cmds[0].Del || cmds[0].Key != "users:a@x" {
		t.Fatalf("cmds: %+v", cmds)
	}
}
