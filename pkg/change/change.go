// Package change is the change model shared by capture and the writers: the
// order of events, their idempotency keys, and the message JSON that a Sequin
// user expects to find in a sink.
package change

import (
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"strconv"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// Action returns the lower-case action name of the message JSON.
func Action(a sluicev1.Action) string {
	switch a {
	case sluicev1.Action_ACTION_INSERT:
		return "insert"
	case sluicev1.Action_ACTION_UPDATE:
		return "update"
	case sluicev1.Action_ACTION_DELETE:
		return "delete"
	case sluicev1.Action_ACTION_READ:
		return "read"
	case sluicev1.Action_ACTION_TRUNCATE:
		return "truncate"
	}
	return "unknown"
}

// IdempotencyKey is Sequin's: base64 of "<commit_lsn>:<commit_idx>".
func IdempotencyKey(lsn uint64, idx uint32) string {
	var b [32]byte
	s := strconv.AppendUint(b[:0], lsn, 10)
	s = append(s, ':')
	s = strconv.AppendUint(s, uint64(idx), 10)
	return base64.StdEncoding.EncodeToString(s)
}

// VersionLen is the length of a version string.
const VersionLen = 30

// AppendVersion appends the event's position as 30 decimal digits (20 of
// commit LSN, 10 of commit index). Versions of one database compare as
// strings in the order the changes were committed; Redis reads a message
// value's version from its commit_lsn and commit_idx in the same form.
func AppendVersion(dst []byte, lsn uint64, idx uint32) []byte {
	var b [20]byte
	n := strconv.AppendUint(b[:0], lsn, 10)
	for range 20 - len(n) {
		dst = append(dst, '0')
	}
	dst = append(dst, n...)
	n = strconv.AppendUint(b[:0], uint64(idx), 10)
	for range 10 - len(n) {
		dst = append(dst, '0')
	}
	return append(dst, n...)
}

// Consumer names the sink in the message metadata.
type Consumer struct {
	ID          string
	Name        string
	Annotations []byte // a JSON object
}

// Namespaces of the UUIDv5 ids of sinks and databases.
var (
	sinkNamespace     = [16]byte{0x6b, 0x1d, 0x3e, 0x52, 0x8f, 0x0c, 0x4a, 0x3b, 0x9a, 0x61, 0x2f, 0xd4, 0x7e, 0x90, 0x15, 0xc8}
	databaseNamespace = [16]byte{0x2c, 0x87, 0x51, 0x0e, 0x6d, 0x3a, 0x4f, 0x91, 0xb2, 0x48, 0x0a, 0x5e, 0xc3, 0x17, 0x9d, 0x64}
)

// NewConsumer returns the consumer of a sink. Its id is a UUID derived from
// the name (version 5), so it is stable across restarts and writers.
// annotations is a JSON object, "{}" when nil.
func NewConsumer(sink string, annotations []byte) Consumer {
	return Consumer{ID: uuid5(sinkNamespace, sink), Name: sink, Annotations: object(annotations)}
}

// Database describes the captured database in the message metadata, as
// configured: its name (database_name, database.name; empty: the
// database's own name) and annotations. The rest comes with each event.
type Database struct {
	Name        string
	Annotations []byte // a JSON object
	id, idOf    string // the id of name idOf
	// originJSON is a message's metadata naming the consumer and the
	// database, as last rendered, for originOf (see origin).
	originJSON []byte
	originOf   originKey
}

// originKey is what a message's origin depends on.
type originKey struct {
	consumerID, consumerName, consumerAnnotations string
	name, annotations, database, host             string
}

// NewDatabase returns the metadata of a database called name (empty: as
// each event says) with annotations, a JSON object ("{}" when nil).
func NewDatabase(name string, annotations []byte) *Database {
	return &Database{Name: name, Annotations: object(annotations)}
}

// NameAndID returns the database's name for an event of the database
// called actual, and its id: a UUID derived from the name, stable. It is
// not safe for concurrent use, nor is AppendMessage with d.
func (d *Database) NameAndID(actual string) (name, id string) {
	name = d.Name
	if name == "" {
		name = actual
	}
	if d.idOf != name || d.id == "" {
		d.id, d.idOf = uuid5(databaseNamespace, name), name
	}
	return name, d.id
}

func object(b []byte) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}

// uuid5 is the version 5 UUID of name in namespace.
func uuid5(namespace [16]byte, name string) string {
	h := sha1.New()
	h.Write(namespace[:])
	h.Write([]byte(name))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}
