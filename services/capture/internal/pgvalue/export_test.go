package pgvalue

// CatalogOnly returns a resolver that knows no more than which built-in
// types render other than as strings, so that everything else comes from
// the catalog: what the built-in table must agree with.
func CatalogOnly(c Catalog) *Types {
	ts := NewTypes(c)
	ts.static = map[uint32]*Type{}
	for oid := range builtinKinds {
		ts.static[oid] = builtins[oid]
	}
	return ts
}

// SameRendering reports whether a and b render every value alike.
func SameRendering(a, b *Type) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.kind == b.kind && a.delim == b.delim && SameRendering(a.elem, b.elem)
}
