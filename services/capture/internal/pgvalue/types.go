package pgvalue

import (
	"context"
	"fmt"
	"slices"
)

// TypeInfo is what the catalog (pg_type) says about a type.
type TypeInfo struct {
	OID uint32
	// Type is typtype: 'b' base, 'c' composite, 'd' domain, 'e' enum,
	// 'm' multirange, 'p' pseudo, 'r' range.
	Type byte
	// Array is true for array types (typcategory 'A' read by array_in),
	// false for look-alikes such as int2vector.
	Array    bool
	Elem     uint32 // typelem, of an array
	BaseType uint32 // typbasetype, of a domain
	Delim    byte   // typdelim
}

// Catalog reads types from the catalog of the captured database.
type Catalog interface {
	// Types returns what the catalog has of the given types and, as far as
	// it can, of the types they are made of (element and base types). A
	// type the catalog lacks is left out.
	Types(ctx context.Context, oids []uint32) ([]TypeInfo, error)
}

// maxNesting bounds domain and array chains: real ones are short, and a
// cycle can only come from a broken catalog.
const maxNesting = 32

// Types resolves type OIDs to Types: built-in types from a static table,
// the others (enums, domains, arrays of them, extension types) through the
// catalog, each once. A domain renders as its base type. Types is not safe
// for concurrent use.
type Types struct {
	catalog Catalog
	static  map[uint32]*Type // built in
	known   map[uint32]*Type // from the catalog
}

// NewTypes returns a resolver that asks c about types that are not built in.
func NewTypes(c Catalog) *Types {
	return &Types{catalog: c, static: builtins, known: map[uint32]*Type{}}
}

// Resolve returns the Type of each OID, asking the catalog in one go about
// those neither built in nor resolved before. A type the catalog does not
// have (dropped since) renders as Text.
func (ts *Types) Resolve(ctx context.Context, oids []uint32) ([]*Type, error) {
	var missing []uint32
	for _, oid := range oids {
		if ts.lookup(oid) == nil && !slices.Contains(missing, oid) {
			missing = append(missing, oid)
		}
	}
	if len(missing) > 0 {
		infos := map[uint32]TypeInfo{}
		for range maxNesting {
			rows, err := ts.catalog.Types(ctx, missing)
			if err != nil {
				return nil, fmt.Errorf("look up types %v: %w", missing, err)
			}
			for _, r := range rows {
				infos[r.OID] = r
			}
			// Ask again about parts the catalog did not give in the same answer.
			missing = missing[:0]
			for _, r := range rows {
				if dep := r.part(); dep != 0 && ts.lookup(dep) == nil && !slices.Contains(missing, dep) {
					if _, ok := infos[dep]; !ok {
						missing = append(missing, dep)
					}
				}
			}
			if len(missing) == 0 {
				break
			}
		}
		for _, oid := range oids {
			ts.build(oid, infos, 0)
		}
	}
	out := make([]*Type, len(oids))
	for i, oid := range oids {
		if out[i] = ts.lookup(oid); out[i] == nil {
			out[i] = Text
		}
	}
	return out, nil
}

// part is the type that t's values are rendered by: the base type of a
// domain, the element type of an array.
func (t TypeInfo) part() uint32 {
	switch {
	case t.Type == 'd':
		return t.BaseType
	case t.Array:
		return t.Elem
	}
	return 0
}

func (ts *Types) lookup(oid uint32) *Type {
	if t, ok := ts.static[oid]; ok {
		return t
	}
	return ts.known[oid]
}

func (ts *Types) build(oid uint32, infos map[uint32]TypeInfo, depth int) *Type {
	if t := ts.lookup(oid); t != nil {
		return t
	}
	info, ok := infos[oid]
	if !ok || depth > maxNesting {
		return Text // not cached: a later relation may find it
	}
	var t *Type
	switch {
	case info.Type == 'd' && info.BaseType != 0:
		t = ts.build(info.BaseType, infos, depth+1)
	case info.Array && info.Elem != 0:
		t = &Type{kind: kindArray, elem: ts.build(info.Elem, infos, depth+1), delim: info.Delim}
	case info.Delim != ',' && info.Delim != 0:
		t = &Type{kind: kindString, delim: info.Delim}
	default:
		t = Text
	}
	ts.known[oid] = t
	return t
}
