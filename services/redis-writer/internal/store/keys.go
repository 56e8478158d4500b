package store

import (
	"strconv"
	"strings"
	"sync"
)

// VersionPrefix starts the name of every version record.
const VersionPrefix = "sluice:v:"

// VersionKey is the version record of key. It is in key's hash slot, so
// that the script touches one slot in a Redis Cluster: a key without braces
// becomes the record's hash tag ("{key}"), a key with a hash tag lends it
// ("=key"), and any other key gets a tag that hashes to its slot
// ("{tag}key", the key holding a brace). The three forms cannot be taken
// for one another, so no two keys share a record.
func VersionKey(key string) string {
	if !strings.ContainsAny(key, "{}") {
		return VersionPrefix + "{" + key + "}"
	}
	if _, ok := hashTag(key); ok {
		return VersionPrefix + "=" + key
	}
	return VersionPrefix + "{" + slotTag(Slot(key)) + "}" + key
}

// hashTag is the part of key between its first '{' and the next '}', when
// not empty: what Redis Cluster hashes instead of the whole key.
func hashTag(key string) (string, bool) {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return "", false
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return "", false
	}
	return key[i+1 : i+1+j], true
}

// Slot is the Redis Cluster hash slot of key.
func Slot(key string) int {
	if tag, ok := hashTag(key); ok {
		key = tag
	}
	return int(crc16(key) % 16384)
}

// crc16 is CRC-16/XMODEM, the checksum of Redis Cluster's key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

var (
	slotTagsOnce sync.Once
	slotTags     []string
)

// slotTag returns a short string that hashes to slot.
func slotTag(slot int) string {
	slotTagsOnce.Do(func() {
		slotTags = make([]string, 16384)
		for i, left := 0, len(slotTags); left > 0; i++ {
			s := strconv.FormatInt(int64(i), 36)
			if k := crc16(s) % 16384; slotTags[k] == "" {
				slotTags[k] = s
				left--
			}
		}
	})
	return slotTags[slot]
}
