package pgvalue

// Built-in type OIDs (pg_type.dat) that tests and the tables below name.
const (
	oidBool        = 16
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidOID         = 26
	oidJSON        = 114
	oidBox         = 603
	oidFloat4      = 700
	oidFloat8      = 701
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidInterval    = 1186
	oidJSONB       = 3802
)

// firstUserOID is FirstGenbkiObjectId: types below it are built in, with
// the same OID in every cluster and version that has them. Types at or
// above it (information_schema's domains, extensions, user types) differ
// between clusters and are looked up in the catalog.
const firstUserOID = 10000

// builtinKinds are the built-in types that do not render as strings.
var builtinKinds = map[uint32]kind{
	oidBool: kindBool, oidInt2: kindInt, oidInt4: kindInt, oidInt8: kindInt, oidOID: kindInt,
	oidFloat4: kindFloat, oidFloat8: kindFloat, oidJSON: kindJSON, oidJSONB: kindJSON,
	oidTimestamp: kindTimestamp, oidTimestamptz: kindTimestamptz, oidInterval: kindInterval,
}

// builtinScalars are the other built-in non-array types of PostgreSQL 14 to
// 17, which render as strings: text types, bytea, numeric, money, date and
// time, network, bit strings, uuid, xml, text search, geometric types,
// ranges, multiranges, reg* names, int2vector and oidvector (whose text is
// space-separated, not an array literal), catalog row types, pseudo-types.
var builtinScalars = []uint32{
	17, 18, 19, 22, 24, 25, 27, 28, 29, 30, 32, 71, 75, 81, 83, 142, 194, 269, 325,
	600, 601, 602, oidBox, 604, 628, 650, 705, 718, 774, 790, 829, 869, 1033, 1042, 1043,
	1082, 1083, 1248, 1266, 1560, 1562, 1700, 1790, 2202, 2203, 2204, 2205, 2206, 2249,
	2275, 2276, 2277, 2278, 2279, 2280, 2281, 2283, 2287, 2776, 2842, 2843, 2950, 2970, 3115,
	3220, 3310, 3361, 3402, 3500, 3614, 3615, 3642, 3734, 3769, 3831, 3838, 3904, 3906,
	3908, 3910, 3912, 3926, 4066, 4072, 4089, 4096, 4191, 4451, 4532, 4533, 4534, 4535,
	4536, 4537, 4538, 4600, 4601, 5017, 5038, 5069, 5077, 5078, 5079, 5080, 6101,
}

// builtinArrays maps the built-in array types to their element types.
var builtinArrays = map[uint32]uint32{
	143: 142, 199: 114, 210: 71, 270: 75, 271: 5069, 272: 81, 273: 83, 629: 628, 651: 650,
	719: 718, 775: 774, 791: 790, 1000: 16, 1001: 17, 1002: 18, 1003: 19, 1005: 21, 1006: 22,
	1007: 23, 1008: 24, 1009: 25, 1010: 27, 1011: 28, 1012: 29, 1013: 30, 1014: 1042,
	1015: 1043, 1016: 20, 1017: 600, 1018: 601, 1019: 602, 1020: 603, 1021: 700, 1022: 701,
	1027: 604, 1028: 26, 1034: 1033, 1040: 829, 1041: 869, 1115: 1114, 1182: 1082,
	1183: 1083, 1185: 1184, 1187: 1186, 1231: 1700, 1263: 2275, 1270: 1266, 1561: 1560,
	1563: 1562, 2201: 1790, 2207: 2202, 2208: 2203, 2209: 2204, 2210: 2205, 2211: 2206,
	2949: 2970, 2951: 2950, 3221: 3220, 3643: 3614, 3644: 3642, 3645: 3615,
	3735: 3734, 3770: 3769, 3807: 3802, 3905: 3904, 3907: 3906, 3909: 3908, 3911: 3910,
	3913: 3912, 3927: 3926, 4073: 4072, 4090: 4089, 4097: 4096, 4192: 4191, 5039: 5038,
	6150: 4451, 6151: 4532, 6152: 4533, 6153: 4534, 6155: 4535, 6157: 4536,
}

var builtins = func() map[uint32]*Type {
	m := make(map[uint32]*Type, len(builtinKinds)+len(builtinScalars)+len(builtinArrays))
	for oid, k := range builtinKinds {
		m[oid] = &Type{kind: k, delim: ','}
	}
	for _, oid := range builtinScalars {
		m[oid] = Text
	}
	m[oidBox] = &Type{kind: kindString, delim: ';'} // "(1,1),(0,0)" holds commas
	for oid, elem := range builtinArrays {
		m[oid] = &Type{kind: kindArray, elem: m[elem], delim: m[elem].delim}
	}
	return m
}()

// Builtin returns the Type of a built-in type, and false for any other OID.
func Builtin(oid uint32) (*Type, bool) {
	t, ok := builtins[oid]
	return t, ok
}
