package pgvalue

import (
	"encoding/json"
	"testing"
)

func TestAppend(t *testing.T) {
	cases := []struct {
		oid       uint32
		text, out string
	}{
		{oidBool, "t", `true`},
		{oidBool, "f", `false`},
		{oidInt2, "-32768", `-32768`},
		{oidInt8, "9223372036854775807", `9223372036854775807`},
		{oidOID, "16384", `16384`},
		{oidFloat8, "1.5", `1.5`},
		{oidFloat8, "1e+100", `1e+100`},
		{oidFloat8, "-0", `-0`},
		{oidFloat4, "NaN", `"NaN"`},
		{oidFloat8, "Infinity", `"Infinity"`},
		{oidFloat8, "-Infinity", `"-Infinity"`},
		{oidInt4, "007", `"007"`}, // not Postgres output: kept as text, still valid JSON
		{1700, "199.99", `"199.99"`},
		{1700, "1.50", `"1.50"`},
		{1700, "NaN", `"NaN"`},
		{790, "$1,234.56", `"$1,234.56"`},
		{25, "it's \"quoted\"\n", `"it's \"quoted\"\n"`},
		{2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
		{oidJSONB, `{"a": [1, 2.5, null]}`, `{"a": [1, 2.5, null]}`},
		{oidJSON, `"just a string"`, `"just a string"`},
		{oidJSON, `{broken`, `"{broken"`},
		{oidTimestamptz, "2026-11-25 20:00:00.123456+00", `"2026-11-25T20:00:00.123456Z"`},
		{oidTimestamptz, "2026-11-25 20:00:00.1+00", `"2026-11-25T20:00:00.100000Z"`},
		{oidTimestamptz, "2026-11-25 20:00:00+00", `"2026-11-25T20:00:00.000000Z"`},
		{oidTimestamptz, "2026-11-25 21:30:00.5+01:30", `"2026-11-25T20:00:00.500000Z"`},
		{oidTimestamptz, "infinity", `"infinity"`},
		{oidTimestamptz, "0044-03-15 12:00:00+00 BC", `"0044-03-15 12:00:00+00 BC"`},
		{oidTimestamp, "2026-11-25 20:00:00.123", `"2026-11-25T20:00:00.123000"`},
		{oidTimestamp, "-infinity", `"-infinity"`},
		{1082, "2026-11-25", `"2026-11-25"`},
		{1083, "20:00:00.5", `"20:00:00.5"`},
		{oidInterval, "P1Y2M3DT4H5M6.5S", `{"months":14,"days":3,"microseconds":14706500000}`},
		{oidInterval, "PT0S", `{"months":0,"days":0,"microseconds":0}`},
		{oidInterval, "P-1Y-2M3DT-4H-5M-6.000001S", `{"months":-14,"days":3,"microseconds":-14706000001}`},
		{oidInterval, "1 day", `"1 day"`},
		{17, `\x0102ff`, `"\\x0102ff"`},
		{1007, "{1,2,NULL,4}", `[1,2,null,4]`},
		{1007, "{{1,2},{3,4}}", `[[1,2],[3,4]]`},
		{1007, "[0:1]={7,8}", `[7,8]`},
		{1007, "{}", `[]`},
		{1009, `{"a b","c\"d\\e",NULL,"NULL",plain}`, `["a b","c\"d\\e",null,"NULL","plain"]`},
		{1185, `{"2026-11-25 20:00:00+00",infinity}`, `["2026-11-25T20:00:00.000000Z","infinity"]`},
		{3807, `{"{\"a\": 1}","[]"}`, `[{"a": 1},[]]`},
		{1000, "{t,f}", `[true,false]`},
		{1007, "{1,2", `"{1,2"`},
		{1007, "{1,{2}}x", `"{1,{2}}x"`},
		{99999, "anything", `"anything"`},
		{1020, `{(1,1),(0,0);(3,3),(2,2)}`, `["(1,1),(0,0)","(3,3),(2,2)"]`}, // box[] separates by ';'
		{1020, `{(1,1),(0,0),(3,3),(2,2)}`, `["(1,1),(0,0),(3,3),(2,2)"]`},
		{1017, `{"(1,2)",NULL}`, `["(1,2)",null]`},
		{1001, `{"\\x00ff",NULL}`, `["\\x00ff",null]`},
		{1022, `{1.5,NaN,-Infinity,1e-07}`, `[1.5,"NaN","-Infinity",1e-07]`},
		{1231, `{1.50,NaN,Infinity}`, `["1.50","NaN","Infinity"]`},
		{1187, `{P1D,PT-0.000001S}`, `[{"months":0,"days":1,"microseconds":0},{"months":0,"days":0,"microseconds":-1}]`},
		{1007, `[0:1][1:2]={{1,2},{3,4}}`, `[[1,2],[3,4]]`},
		{1007, `{{{{{{1}}}}}}`, `[[[[[[1]]]]]]`},
		{1007, `{{{{{{{1}}}}}}}`, `"{{{{{{{1}}}}}}}"`}, // deeper than Postgres allows
		{1009, `{a\b}`, `"{a\\b}"`},                    // array_out quotes backslashes
		{1009, `{"",""}`, `["",""]`},
		{1009, `{"é ü","\\"}`, `["é ü","\\"]`},
		{22, "1 2", `"1 2"`}, // int2vector is not an array literal
		{4451, `{[1,3),[5,7)}`, `"{[1,3),[5,7)}"`},
		{6150, `{"{[1,3)}","{}"}`, `["{[1,3)}","{}"]`},
	}
	for _, c := range cases {
		got := string(Append(nil, c.oid, []byte(c.text)))
		if got != c.out {
			t.Errorf("Append(%d, %q) = %s, want %s", c.oid, c.text, got, c.out)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("Append(%d, %q) = %s: invalid JSON", c.oid, c.text, got)
		}
	}
}

func FuzzAppend(f *testing.F) {
	oids := []uint32{oidBool, oidInt4, oidFloat8, oidJSONB, oidTimestamptz, oidTimestamp, oidInterval, 1700, 25, 1007, 1009, 1185, 3807, 1187, 1020, 6150}
	for i, s := range []string{"t", "42", "NaN", `{"a":1}`, "2026-11-25 20:00:00.1+00", "2026-11-25 20:00:00", "P1Y2DT3.5S", "1.5", "x", "{1,NULL}", `{"a\"b",c}`, `{"2026-11-25 20:00:00+00"}`, `{"{}"}`, `{P1D}`, `{(1,1),(0,0);(2,2),(1,1)}`, `[2:3]={"{[1,2)}",NULL}`} {
		f.Add(oids[i], s)
	}
	f.Fuzz(func(t *testing.T, oid uint32, text string) {
		out := Append(nil, oid, []byte(text))
		if !json.Valid(out) {
			t.Fatalf("Append(%d, %q) = %s: invalid JSON", oid, text, out)
		}
	})
}
