-- Writes one change to a key unless the key already reflects a change at or
-- after it, and records the change's version.
-- KEYS[1]: the key; KEYS[2]: its version record.
-- ARGV[1]: version (24 hex digits); ARGV[2]: 's' (SET) or 'd' (DEL);
-- ARGV[3]: value; ARGV[4]: PX of the key, 0 for none; ARGV[5]: PX of the record, 0 for none.
-- Returns 1 when written, 0 when older than the key's version.
local function split(v)
  -- two 48-bit halves: exact as Lua numbers, whatever the locale's collation
  return tonumber(string.sub(v, 1, 12), 16), tonumber(string.sub(v, 13, 24), 16)
end
local cur = redis.call('GET', KEYS[2])
if cur then
  local ch, cl = split(cur)
  local nh, nl = split(ARGV[1])
  if ch and cl and (ch > nh or (ch == nh and cl >= nl)) then
    return 0
  end
end
if ARGV[2] == 'd' then
  redis.call('DEL', KEYS[1])
elseif ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
if ARGV[5] ~= '0' then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5])
else
  redis.call('SET', KEYS[2], ARGV[1])
end
return 1
