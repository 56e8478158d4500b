package decoder_test

import (
	"fmt"
	"strings"
	"testing"
)

// row is one inserted row of a type family's table: the SQL values after
// the id, and the record expected for it.
type row struct {
	values, record string
}

// checkFamily creates a table with an int key and the given columns, then
// inserts the rows and compares the records the real replication stream
// yields, column for column. The records start with the id.
func checkFamily(t *testing.T, setup, table, columns string, rows []row) {
	t.Helper()
	t.Parallel()
	r := startReplica(t, setup+fmt.Sprintf(";CREATE TABLE %s (id int PRIMARY KEY, %s)", table, columns), "public."+table)
	var inserts strings.Builder
	want := make([]string, len(rows))
	for i, row := range rows {
		fmt.Fprintf(&inserts, "INSERT INTO %s VALUES (%d, %s);\n", table, i+1, row.values)
		want[i] = fmt.Sprintf(`{"id":%d,%s}`, i+1, row.record)
	}
	r.pg.Exec(t, inserts.String())
	r.expectRecords(want...)
}

func TestNumbers(t *testing.T) {
	checkFamily(t, "", "numbers", `i2 int2, i4 int4, i8 int8, n numeric, n2 numeric(10,2), f4 float4, f8 float8,
		m money, o oid, ia int4[], i8a int8[], na numeric[], fa float8[]`, []row{
		{`-32768, 2147483647, -9223372036854775808, 12345678901234567890.000000000001, 1.5, 1.1, 0.1,
			1234.56, 4294967295, '{1,NULL,3}', '{{1,2},{3,4}}', '{1.5,NaN,-Infinity}', '{1.5,NaN,Infinity,-0}'`,
			`"i2":-32768,"i4":2147483647,"i8":-9223372036854775808,"n":"12345678901234567890.000000000001","n2":"1.50","f4":1.1,"f8":0.1,` +
				`"m":"$1,234.56","o":4294967295,"ia":[1,null,3],"i8a":[[1,2],[3,4]],"na":["1.5","NaN","-Infinity"],"fa":[1.5,"NaN","Infinity",-0]`},
		{`0, 0, 0, 'NaN', -0.005, 'NaN', '-Infinity', -1, 0, '[0:1]={7,8}', '{}', '{}', '{1e300,-1.5e-07,5e-324}'`,
			`"i2":0,"i4":0,"i8":0,"n":"NaN","n2":"-0.01","f4":"NaN","f8":"-Infinity",` +
				`"m":"-$1.00","o":0,"ia":[7,8],"i8a":[],"na":[],"fa":[1e+300,-1.5e-07,5e-324]`},
		{`1, 1, 1, 'Infinity', 0, '3.4028235e+38', 'Infinity', 0, 1, '{{{1}},{{2}}}', '{NULL}', '{-Infinity,0.000}', '{}'`,
			`"i2":1,"i4":1,"i8":1,"n":"Infinity","n2":"0.00","f4":3.4028235e+38,"f8":"Infinity",` +
				`"m":"$0.00","o":1,"ia":[[[1]],[[2]]],"i8a":[null],"na":["-Infinity","0.000"],"fa":[]`},
		{`NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`,
			`"i2":null,"i4":null,"i8":null,"n":null,"n2":null,"f4":null,"f8":null,"m":null,"o":null,"ia":null,"i8a":null,"na":null,"fa":null`},
	})
}

func TestText(t *testing.T) {
	checkFamily(t, "", "texts", `t text, v varchar(10), c char(5), ch "char", nm name, ta text[], va varchar[], ca char(3)[]`, []row{
		{`'it''s "quoted" \ back', 'short', 'ab', 'x', 'pg_name',
			ARRAY['a b', 'c"d', 'e\f', '', 'NULL', NULL, 'plain', '{braces}', 'com,ma', 'ünï 😀', 'null'], '{{a,b},{c,d}}', '{x,yy}'`,
			`"t":"it's \"quoted\" \\ back","v":"short","c":"ab   ","ch":"x","nm":"pg_name",` +
				`"ta":["a b","c\"d","e\\f","","NULL",null,"plain","{braces}","com,ma","ünï 😀","null"],"va":[["a","b"],["c","d"]],"ca":["x  ","yy "]`},
		{`E'line\nbreak\ttab\x01', '', '', '"', 'ÿ', '{}', ARRAY[E'\t', ' ', E'\\', '"'], ARRAY[NULL]::char(3)[]`,
			`"t":"line\nbreak\ttab\u0001","v":"","c":"     ","ch":"\"","nm":"ÿ",` +
				`"ta":[],"va":["\t"," ","\\","\""],"ca":[null]`},
		{`NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`,
			`"t":null,"v":null,"c":null,"ch":null,"nm":null,"ta":null,"va":null,"ca":null`},
	})
}

func TestDateTime(t *testing.T) {
	checkFamily(t, "", "times", `d date, t time, tz timetz, ts timestamp, tstz timestamptz, iv interval, ts0 timestamp(0),
		da date[], tsa timestamp[], tstza timestamptz[], iva interval[], ta time[]`, []row{
		{`'2026-11-25', '20:00:00.5', '12:00:00.123456+05:30', '2026-11-25 20:00:00.123456', '2026-11-25 21:00:00.5+01',
			'1 year 2 mons 3 days 04:05:06.5', '2026-11-25 20:00:00.7', '{2026-01-01,NULL}',
			ARRAY['2026-01-01 00:00:00'::timestamp, 'infinity'], ARRAY['2026-06-01 12:00+02'::timestamptz, '-infinity', '10000-01-01 00:00+00'],
			ARRAY['-1 year -2 mons +3 days -04:05:06.000001'::interval, '1 mon -1 days', '0'], ARRAY['24:00:00'::time, '00:00:00.000001']`,
			`"d":"2026-11-25","t":"20:00:00.5","tz":"12:00:00.123456+05:30","ts":"2026-11-25T20:00:00.123456","tstz":"2026-11-25T20:00:00.500000Z",` +
				`"iv":{"months":14,"days":3,"microseconds":14706500000},"ts0":"2026-11-25T20:00:01.000000","da":["2026-01-01",null],` +
				`"tsa":["2026-01-01T00:00:00.000000","infinity"],"tstza":["2026-06-01T10:00:00.000000Z","-infinity","10000-01-01T00:00:00.000000Z"],` +
				`"iva":[{"months":-14,"days":3,"microseconds":-14706000001},{"months":1,"days":-1,"microseconds":0},{"months":0,"days":0,"microseconds":0}],` +
				`"ta":["24:00:00","00:00:00.000001"]`},
		{`'infinity', '00:00', '00:00:00-12', 'infinity', '-infinity', '-178000000 years', '0044-03-15 12:00:00 BC', '{-infinity}', '{}', NULL,
			ARRAY['0.000001 seconds'::interval, '2 days 01:00', '1000000 hours'], NULL`,
			`"d":"infinity","t":"00:00:00","tz":"00:00:00-12","ts":"infinity","tstz":"-infinity",` +
				`"iv":{"months":-2136000000,"days":0,"microseconds":0},"ts0":"0044-03-15 12:00:00 BC","da":["-infinity"],"tsa":[],"tstza":null,` +
				`"iva":[{"months":0,"days":0,"microseconds":1},{"months":0,"days":2,"microseconds":3600000000},{"months":0,"days":0,"microseconds":3600000000000000}],"ta":null`},
		{`NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`,
			`"d":null,"t":null,"tz":null,"ts":null,"tstz":null,"iv":null,"ts0":null,"da":null,"tsa":null,"tstza":null,"iva":null,"ta":null`},
	})
}

func TestJSON(t *testing.T) {
	checkFamily(t, "", "documents", `j json, jb jsonb, ja json[], jba jsonb[]`, []row{
		{`'{"b": 1,  "a": [1, 2.50, null], "u": "ü\u00e9"}', '{"b": 1,  "a": [1, 2.50, null], "u": "ü\u00e9"}',
			ARRAY['{"x":1}', '"s"', 'null']::json[], ARRAY['{"b":2,"a":1}', NULL, 'null', '[]', '3.0']::jsonb[]`,
			`"j":{"b": 1,  "a": [1, 2.50, null], "u": "ü\u00e9"},"jb":{"a": [1, 2.50, null], "b": 1, "u": "üé"},` +
				`"ja":[{"x":1},"s",null],"jba":[{"a": 1, "b": 2},null,null,[],3.0]`},
		{`'"just a string"', '12345678901234567890123', '{}', '{}'`,
			`"j":"just a string","jb":12345678901234567890123,"ja":[],"jba":[]`},
		{`'[]', '{"nested": {"deep": [true, false, "\"q\""]}}', '{{"1","2"},{"3","4"}}', NULL`,
			`"j":[],"jb":{"nested": {"deep": [true, false, "\"q\""]}},"ja":[[1,2],[3,4]],"jba":null`},
		{`NULL, NULL, NULL, NULL`, `"j":null,"jb":null,"ja":null,"jba":null`},
	})
}

func TestBinary(t *testing.T) {
	checkFamily(t, "", "binaries", `b bytea, bt bit(4), vb varbit, u uuid, ba bytea[], bta bit(4)[], vba varbit[], ua uuid[]`, []row{
		{`'\x00ff', B'1010', B'10101', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', ARRAY['\x01'::bytea, '', NULL], ARRAY[B'0000', B'1111'],
			ARRAY[B''::varbit, B'1'], ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, NULL]`,
			`"b":"\\x00ff","bt":"1010","vb":"10101","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","ba":["\\x01","\\x",null],` +
				`"bta":["0000","1111"],"vba":["","1"],"ua":["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",null]`},
		{`'', B'0000', B'', '00000000-0000-0000-0000-000000000000', '{}', NULL, NULL, '{}'`,
			`"b":"\\x","bt":"0000","vb":"","u":"00000000-0000-0000-0000-000000000000","ba":[],"bta":null,"vba":null,"ua":[]`},
		{`NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`,
			`"b":null,"bt":null,"vb":null,"u":null,"ba":null,"bta":null,"vba":null,"ua":null`},
	})
}

func TestNetwork(t *testing.T) {
	checkFamily(t, "", "networks", `i inet, c cidr, m macaddr, m8 macaddr8, ia inet[], ca cidr[], ma macaddr[]`, []row{
		{`'192.168.0.1', '10.0.0.0/8', '08-00-2B-01-02-03', '08:00:2b:01:02:03:04:05', ARRAY['::1'::inet, '192.168.0.1/24', NULL],
			ARRAY['2001:db8::/32'::cidr], ARRAY['08:00:2b:01:02:03'::macaddr]`,
			`"i":"192.168.0.1","c":"10.0.0.0/8","m":"08:00:2b:01:02:03","m8":"08:00:2b:01:02:03:04:05","ia":["::1","192.168.0.1/24",null],` +
				`"ca":["2001:db8::/32"],"ma":["08:00:2b:01:02:03"]`},
		{`'2001:db8::1/64', '192.168.1.0/24', NULL, NULL, '{}', NULL, NULL`,
			`"i":"2001:db8::1/64","c":"192.168.1.0/24","m":null,"m8":null,"ia":[],"ca":null,"ma":null`},
	})
}

func TestGeometric(t *testing.T) {
	checkFamily(t, "", "shapes", `p point, l line, s lseg, b box, pa path, po polygon, c circle, ba box[], pta point[], pga polygon[]`, []row{
		{`'(1,2)', '{1,-1,0}', '[(0,0),(1,1)]', '(1,1),(0,0)', '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(1,0))', '<(0,0),1.5>',
			ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)', NULL], ARRAY['(1,2)'::point, '(-1.5,2e+20)'], ARRAY['((0,0),(1,1),(1,0))'::polygon]`,
			`"p":"(1,2)","l":"{1,-1,0}","s":"[(0,0),(1,1)]","b":"(1,1),(0,0)","pa":"[(0,0),(1,1),(2,0)]","po":"((0,0),(1,1),(1,0))","c":"<(0,0),1.5>",` +
				`"ba":["(1,1),(0,0)","(3,3),(2,2)",null],"pta":["(1,2)","(-1.5,2e+20)"],"pga":["((0,0),(1,1),(1,0))"]`},
		{`NULL, NULL, NULL, NULL, '((0,0),(1,1))', NULL, NULL, '{}', '{}', NULL`,
			`"p":null,"l":null,"s":null,"b":null,"pa":"((0,0),(1,1))","po":null,"c":null,"ba":[],"pta":[],"pga":null`},
	})
}

func TestRanges(t *testing.T) {
	checkFamily(t, "", "ranges", `r4 int4range, r8 int8range, nr numrange, tsr tsrange, tstzr tstzrange, dr daterange,
		m4 int4multirange, dm datemultirange, r4a int4range[], m4a int4multirange[]`, []row{
		{`'[1,5)', '(,10]', '[1.5,2.5]', '["2026-01-01 00:00","2026-02-01 00:00")', '[2026-01-01 00:00+02,infinity)', '[2026-01-01,2026-02-01)',
			'{[1,3),[5,7)}', '{}', ARRAY['[1,2)'::int4range, 'empty', NULL], ARRAY['{[1,3)}'::int4multirange, '{}']`,
			`"r4":"[1,5)","r8":"(,11)","nr":"[1.5,2.5]","tsr":"[\"2026-01-01 00:00:00\",\"2026-02-01 00:00:00\")",` +
				`"tstzr":"[\"2025-12-31 22:00:00+00\",infinity)","dr":"[2026-01-01,2026-02-01)","m4":"{[1,3),[5,7)}","dm":"{}",` +
				`"r4a":["[1,2)","empty",null],"m4a":["{[1,3)}","{}"]`},
		{`'empty', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`,
			`"r4":"empty","r8":null,"nr":null,"tsr":null,"tstzr":null,"dr":null,"m4":null,"dm":null,"r4a":null,"m4a":null`},
	})
}

func TestTextSearchXML(t *testing.T) {
	checkFamily(t, "", "documents_misc", `x xml, tv tsvector, tq tsquery, l pg_lsn, xa xml[], tva tsvector[]`, []row{
		{`'<a href="x">t &amp; u</a>', 'a fat cat:3', 'fat & (rat | cat)', '16/B374D848', ARRAY['<b/>'::xml, NULL], ARRAY['a b'::tsvector]`,
			`"x":"<a href=\"x\">t &amp; u</a>","tv":"'a' 'cat':3 'fat'","tq":"'fat' & ( 'rat' | 'cat' )","l":"16/B374D848",` +
				`"xa":["<b/>",null],"tva":["'a' 'b'"]`},
		{`NULL, NULL, NULL, NULL, NULL, NULL`, `"x":null,"tv":null,"tq":null,"l":null,"xa":null,"tva":null`},
	})
}

// User-defined types are resolved through the catalog: enums render as
// strings, domains as their base types, arrays of either as arrays;
// composites and types from extensions as their text.
func TestUserTypes(t *testing.T) {
	setup := `CREATE TYPE mood AS ENUM ('happy', 'so "so"', 'sad');
		CREATE DOMAIN posint AS int CHECK (VALUE > 0);
		CREATE DOMAIN small AS posint CHECK (VALUE < 100);
		CREATE DOMAIN label AS text;
		CREATE DOMAIN intlist AS int[];
		CREATE DOMAIN boxish AS box;
		CREATE DOMAIN stamp AS timestamptz;
		CREATE TYPE pair AS (n int, s text);
		CREATE TYPE floatrange AS RANGE (subtype = float8);
		CREATE EXTENSION citext; CREATE EXTENSION hstore; CREATE EXTENSION cube`
	checkFamily(t, setup, "user_types", `m mood, ma mood[], p posint, pa posint[], sm small, l label, la label[], il intlist, ila intlist[],
		bx boxish, bxa boxish[], st stamp, sta stamp[], pr pair, pra pair[], fr floatrange, ci citext, cia citext[], hs hstore, cu cube,
		cn information_schema.cardinal_number, yn information_schema.yes_or_no`, []row{
		{`'so "so"', ARRAY['happy', 'so "so"', NULL]::mood[], 42, ARRAY[1, NULL, 3], 99, 'text "label"', ARRAY['a', 'b c'], '{1,2}',
			'{"{1,2}","{}",NULL}', '(1,1),(0,0)', ARRAY['(1,1),(0,0)'::boxish, '(3,3),(2,2)'],
			'2026-11-25 21:00:00+01', ARRAY['2026-11-25 20:00:00+00'::stamp, 'infinity'], ROW(1, 'a b'), ARRAY[ROW(1, 'x')::pair, ROW(NULL, 'y "q"')::pair],
			'[1.5,2.5)', 'MiXeD', ARRAY['A', 'b'], 'a=>1, b=>NULL', '(1,2),(3,4)', 7, 'YES'`,
			`"m":"so \"so\"","ma":["happy","so \"so\"",null],"p":42,"pa":[1,null,3],"sm":99,"l":"text \"label\"","la":["a","b c"],"il":[1,2],` +
				`"ila":[[1,2],[],null],"bx":"(1,1),(0,0)","bxa":["(1,1),(0,0)","(3,3),(2,2)"],` +
				`"st":"2026-11-25T20:00:00.000000Z","sta":["2026-11-25T20:00:00.000000Z","infinity"],"pr":"(1,\"a b\")","pra":["(1,x)","(,\"y \"\"q\"\"\")"],` +
				`"fr":"[1.5,2.5)","ci":"MiXeD","cia":["A","b"],"hs":"\"a\"=>\"1\", \"b\"=>NULL","cu":"(1, 2),(3, 4)","cn":7,"yn":"YES"`},
		{`NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL`,
			`"m":null,"ma":null,"p":null,"pa":null,"sm":null,"l":null,"la":null,"il":null,"ila":null,"bx":null,"bxa":null,"st":null,"sta":null,` +
				`"pr":null,"pra":null,"fr":null,"ci":null,"cia":null,"hs":null,"cu":null,"cn":null,"yn":null`},
	})
}
