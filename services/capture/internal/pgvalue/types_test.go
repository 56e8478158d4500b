package pgvalue

import (
	"context"
	"slices"
	"testing"
)

// catalogRows answers from fixed pg_type rows, and only about the OIDs
// asked, so that Resolve's follow-up questions are exercised too.
type catalogRows struct {
	rows  map[uint32]TypeInfo
	asked [][]uint32
}

func (c *catalogRows) Types(_ context.Context, oids []uint32) ([]TypeInfo, error) {
	c.asked = append(c.asked, slices.Clone(oids))
	var out []TypeInfo
	for _, oid := range oids {
		if r, ok := c.rows[oid]; ok {
			out = append(out, r)
		}
	}
	return out, nil
}

func TestTypes(t *testing.T) {
	const (
		mood = 16400 + iota
		moods
		posint
		posints
		posintDomain // a domain over a domain
		boxish       // a domain over box
		boxishes
		intlist   // a domain over int4[]
		intlists  // an array of it
		loop      // a broken catalog: a domain over itself
		gone      // an array of a type the catalog lacks
		composite // a row type
	)
	cat := &catalogRows{rows: map[uint32]TypeInfo{
		mood:         {OID: mood, Type: 'e', Delim: ','},
		moods:        {OID: moods, Type: 'b', Array: true, Elem: mood, Delim: ','},
		posint:       {OID: posint, Type: 'd', BaseType: oidInt4, Delim: ','},
		posints:      {OID: posints, Type: 'b', Array: true, Elem: posintDomain, Delim: ','},
		posintDomain: {OID: posintDomain, Type: 'd', BaseType: posint, Delim: ','},
		boxish:       {OID: boxish, Type: 'd', BaseType: oidBox, Delim: ';'},
		boxishes:     {OID: boxishes, Type: 'b', Array: true, Elem: boxish, Delim: ','},
		intlist:      {OID: intlist, Type: 'd', BaseType: 1007, Delim: ','},
		intlists:     {OID: intlists, Type: 'b', Array: true, Elem: intlist, Delim: ','},
		loop:         {OID: loop, Type: 'd', BaseType: loop, Delim: ','},
		gone:         {OID: gone, Type: 'b', Array: true, Elem: 99999, Delim: ','},
		composite:    {OID: composite, Type: 'c', Delim: ','},
	}}
	ts := NewTypes(cat)
	cases := []struct {
		oid       uint32
		text, out string
	}{
		{oidInt4, "7", `7`},
		{mood, "happy", `"happy"`},
		{moods, `{happy,NULL,"so so"}`, `["happy",null,"so so"]`},
		{posint, "42", `42`},
		{posintDomain, "42", `42`},
		{posints, `{{1,2},{NULL,4}}`, `[[1,2],[null,4]]`},
		{boxishes, `{(1,1),(0,0);(3,3),(2,2)}`, `["(1,1),(0,0)","(3,3),(2,2)"]`},
		{intlist, `{1,2}`, `[1,2]`},
		{intlists, `{"{1,2}",NULL,"{}"}`, `[[1,2],null,[]]`},
		{loop, "x", `"x"`},
		{gone, `{a,b}`, `["a","b"]`},
		{composite, `(1,"a b")`, `"(1,\"a b\")"`},
		{77777, "unknown", `"unknown"`},
	}
	oids := make([]uint32, len(cases))
	for i, c := range cases {
		oids[i] = c.oid
	}
	types, err := ts.Resolve(context.Background(), oids)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		if got := string(types[i].Append(nil, []byte(c.text))); got != c.out {
			t.Errorf("type %d: %q renders as %s, want %s", c.oid, c.text, got, c.out)
		}
	}
	if cat.asked[0][0] == oidInt4 || len(cat.asked) < 2 {
		t.Errorf("catalog asked %v: built-in types are not looked up; parts are asked about after", cat.asked)
	}
	// Resolved once: asking again costs no lookup, except for the types
	// the catalog lacks.
	n := len(cat.asked)
	if _, err := ts.Resolve(context.Background(), []uint32{mood, moods, posints, intlists}); err != nil || len(cat.asked) != n {
		t.Errorf("second resolve asked the catalog again: %v %v", cat.asked[n:], err)
	}
}

func TestBuiltins(t *testing.T) {
	for oid, elem := range builtinArrays {
		a, _ := Builtin(oid)
		if e, ok := Builtin(elem); !ok || a.elem != e || a.kind != kindArray {
			t.Errorf("array type %d: element %d not built in", oid, elem)
		}
	}
	for _, oid := range builtinScalars {
		if _, dup := builtinArrays[oid]; dup || oid >= firstUserOID {
			t.Errorf("scalar type %d: also an array, or not built in", oid)
		}
	}
}
