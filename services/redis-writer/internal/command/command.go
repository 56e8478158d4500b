// Package command turns change events into the Redis commands of a Redis
// String sink: SET of the message JSON for insert, update and read, DEL for
// delete, under the key "<prefix>:<table>:<pk>".
package command

import (
	"strings"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// Command is one versioned write of one key.
type Command struct {
	Del   bool
	Key   string
	Value []byte
	// Version orders the writes of a key (change.AppendVersion); a write
	// older than what the key holds is skipped.
	Version string
	// ExpireMS is the key's PX; 0: no expiry.
	ExpireMS int64
	// VersionExpireMS is the PX of the key's version record; 0: none.
	VersionExpireMS int64
}

// Renderer builds the commands of one sink.
type Renderer struct {
	prefix      string
	consumer    change.Consumer
	expireMS    int64
	tombstoneMS int64
}

// NewRenderer returns the renderer of a sink.
func NewRenderer(s *config.Sink) *Renderer {
	r := &Renderer{
		prefix:      s.Destination.KeyPrefix,
		consumer:    change.NewConsumer(s.Name),
		tombstoneMS: s.TombstoneTTL.Milliseconds(),
	}
	if s.Destination.ExpireMS != nil {
		r.expireMS = *s.Destination.ExpireMS // 0 means no expiry: Redis refuses PX 0
	}
	return r
}

// Append appends the commands of ev: one, or for an UPDATE that changed the
// primary key, a DEL of the old key and a SET of the new one.
func (r *Renderer) Append(cmds []Command, ev *sluicev1.ChangeEvent) []Command {
	version := string(change.AppendVersion(make([]byte, 0, change.VersionLen), ev.CommitLsn, ev.CommitIdx))
	if len(ev.OldPkValues) > 0 {
		cmds = append(cmds, Command{Del: true, Key: r.Key(ev.Table, ev.OldPkValues), Version: version, VersionExpireMS: r.tombstoneMS})
	}
	key := r.Key(ev.Table, ev.PkValues)
	if ev.Action == sluicev1.Action_ACTION_DELETE {
		return append(cmds, Command{Del: true, Key: key, Version: version, VersionExpireMS: r.tombstoneMS})
	}
	c := Command{Key: key, Value: change.AppendMessage(nil, ev, r.consumer), Version: version, ExpireMS: r.expireMS}
	if r.expireMS > 0 {
		// The version outlives the value, so a late older change cannot
		// bring an expired key back with stale data.
		c.VersionExpireMS = max(r.expireMS, r.tombstoneMS)
	}
	return append(cmds, c)
}

// Key is the default key: "<prefix>:<table>:<pk1>:<pk2>…".
func (r *Renderer) Key(table string, pk []string) string {
	var b strings.Builder
	b.Grow(len(r.prefix) + len(table) + 2 + 8*len(pk))
	b.WriteString(r.prefix)
	b.WriteByte(':')
	b.WriteString(table)
	for _, v := range pk {
		b.WriteByte(':')
		b.WriteString(v)
	}
	return b.String()
}
