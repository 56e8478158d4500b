package command

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/config"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

func sink(expire *int64) *config.Sink {
	return &config.Sink{Name: "cache", TombstoneTTL: time.Hour, Destination: config.Destination{KeyPrefix: "sequin", ExpireMS: expire}}
}

func TestAppend(t *testing.T) {
	ins := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_INSERT, Schema: "public", Table: "orders", PkValues: []string{"acme", "7"},
		Record: []byte(`{"id":7}`), CommitLsn: 0x10, CommitIdx: 2}
	cmds := NewRenderer(sink(nil)).Append(nil, ins)
	if len(cmds) != 1 || cmds[0].Del || cmds[0].Key != "sequin:orders:acme:7" || cmds[0].Version != "000000000000001000000002" ||
		cmds[0].ExpireMS != 0 || cmds[0].VersionExpireMS != 0 {
		t.Fatalf("insert: %+v", cmds)
	}
	var msg map[string]any
	if err := json.Unmarshal(cmds[0].Value, &msg); err != nil || msg["action"] != "insert" {
		t.Fatalf("value %s: %v", cmds[0].Value, err)
	}

	expire := int64(5000)
	cmds = NewRenderer(sink(&expire)).Append(nil, ins)
	if cmds[0].ExpireMS != 5000 || cmds[0].VersionExpireMS != 3600000 {
		t.Fatalf("expiring insert: %+v", cmds[0])
	}
	zero := int64(0)
	if cmds = NewRenderer(sink(&zero)).Append(nil, ins); cmds[0].ExpireMS != 0 {
		t.Fatalf("expire_ms 0: %+v", cmds[0])
	}

	del := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_DELETE, Table: "orders", PkValues: []string{"acme", "7"}, CommitLsn: 0x11}
	cmds = NewRenderer(sink(&expire)).Append(nil, del)
	if len(cmds) != 1 || !cmds[0].Del || cmds[0].Key != "sequin:orders:acme:7" || cmds[0].Value != nil || cmds[0].VersionExpireMS != 3600000 {
		t.Fatalf("delete: %+v", cmds)
	}

	moved := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_UPDATE, Table: "orders", PkValues: []string{"acme", "8"}, OldPkValues: []string{"acme", "7"}, CommitLsn: 0x12}
	cmds = NewRenderer(sink(nil)).Append(nil, moved)
	if len(cmds) != 2 || !cmds[0].Del || cmds[0].Key != "sequin:orders:acme:7" || cmds[1].Del || cmds[1].Key != "sequin:orders:acme:8" || cmds[0].Version != cmds[1].Version {
		t.Fatalf("key change: %+v", cmds)
	}
}
