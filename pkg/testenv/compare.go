package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Table names a captured table and how its rows are keyed in Redis.
type Table struct {
	Schema, Name string
	PK           []string // primary-key columns, in column order
	KeyPrefix    string   // "sequin" unless configured otherwise
}

// Row is what Redis holds for one key, decoded.
type Row struct {
	Key    string
	Record map[string]any
	Raw    string
}

// RedisRows returns every row of t that Redis holds, by key.
func RedisRows(ctx context.Context, rc redis.UniversalClient, t Table) (map[string]Row, error) {
	rows := map[string]Row{}
	prefix := t.KeyPrefix + ":" + t.Name + ":"
	iter := rc.Scan(ctx, 0, escapeGlob(prefix)+"*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		raw, err := rc.Get(ctx, key).Result()
		if err == redis.Nil {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		var msg struct{ Record map[string]any }
		dec := json.NewDecoder(strings.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&msg); err != nil {
			return nil, fmt.Errorf("%s holds no message JSON: %v: %s", key, err, raw)
		}
		rows[key] = Row{Key: key, Record: msg.Record, Raw: raw}
	}
	return rows, iter.Err()
}

// PostgresRows returns every row of t as to_jsonb renders it, by the key
// Sluice gives it.
func PostgresRows(ctx context.Context, conn *pgx.Conn, t Table) (map[string]map[string]any, error) {
	casts := make([]string, len(t.PK))
	for i, c := range t.PK {
		casts[i] = pgx.Identifier{c}.Sanitize() + "::text"
	}
	q := fmt.Sprintf("SELECT ARRAY[%s], to_jsonb(t)::text FROM %s t", strings.Join(casts, ", "), pgx.Identifier{t.Schema, t.Name}.Sanitize())
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]any{}
	for rows.Next() {
		var pk []string
		var doc string
		if err := rows.Scan(&pk, &doc); err != nil {
			return nil, err
		}
		dec := json.NewDecoder(strings.NewReader(doc))
		dec.UseNumber()
		var rec map[string]any
		if err := dec.Decode(&rec); err != nil {
			return nil, err
		}
		out[t.KeyPrefix+":"+t.Name+":"+strings.Join(pk, ":")] = rec
	}
	return out, rows.Err()
}

// TableDiff compares a table in Postgres with its keys in Redis and returns
// one line per difference: a row missing from Redis, a key Postgres has no
// row for, or a column whose values differ. It returns none when they agree.
func TableDiff(ctx context.Context, conn *pgx.Conn, rc redis.UniversalClient, t Table) ([]string, error) {
	want, err := PostgresRows(ctx, conn, t)
	if err != nil {
		return nil, err
	}
	got, err := RedisRows(ctx, rc, t)
	if err != nil {
		return nil, err
	}
	var diffs []string
	for key, row := range want {
		r, ok := got[key]
		if !ok {
			diffs = append(diffs, "missing in redis: "+key)
			continue
		}
		for col, pv := range row {
			if rv, ok := r.Record[col]; !ok || !SameValue(pv, rv) {
				diffs = append(diffs, fmt.Sprintf("%s: %s is %v in postgres, %v in redis", key, col, pv, rv))
			}
		}
		for col := range r.Record {
			if _, ok := row[col]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s: redis has column %s that postgres lacks", key, col))
			}
		}
	}
	for key := range got {
		if _, ok := want[key]; !ok {
			diffs = append(diffs, "extra in redis: "+key)
		}
	}
	slices.Sort(diffs)
	return diffs, nil
}

// SameValue compares a to_jsonb value with Sluice's rendering of it:
// numerics are exact strings, timestamps are in UTC with six fractional
// digits, and everything else is equal as JSON.
func SameValue(pg, redis any) bool {
	if reflect.DeepEqual(pg, redis) {
		return true
	}
	switch p := pg.(type) {
	case json.Number:
		switch r := redis.(type) {
		case string: // numeric → exact string
			return r == p.String()
		case json.Number:
			pf, err1 := p.Float64()
			rf, err2 := r.Float64()
			return err1 == nil && err2 == nil && pf == rf
		}
	case string:
		if r, ok := redis.(string); ok {
			pt, ok1 := parseTime(p)
			rt, ok2 := parseTime(r)
			return ok1 && ok2 && pt.Equal(rt)
		}
	case []any:
		r, ok := redis.([]any)
		if !ok || len(r) != len(p) {
			return false
		}
		for i := range p {
			if !SameValue(p[i], r[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		r, ok := redis.(map[string]any)
		if !ok || len(r) != len(p) {
			return false
		}
		for k, v := range p {
			if !SameValue(v, r[k]) {
				return false
			}
		}
		return true
	}
	return false
}

func parseTime(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// escapeGlob escapes the SCAN pattern characters of s.
func escapeGlob(s string) string {
	var b bytes.Buffer
	for _, c := range []byte(s) {
		if bytes.IndexByte([]byte(`*?[]\`), c) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}
