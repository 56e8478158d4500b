-- Writes a group of changes, each to one key unless the key already
-- reflects a change at or after it, and records each change's version.
-- Change i (from 1) has KEYS[2i-1], the key, and KEYS[2i], its version
-- record; ARGV[5i-4] its version (24 hex digits), ARGV[5i-3] 's' (SET) or
-- 'd' (DEL), ARGV[5i-2] the value, ARGV[5i-1] the key's PX and ARGV[5i] the
-- record's PX (0: none).
-- Returns for each change 1 (written), 0 (older than the key: skipped), or
-- the error of its own commands as a string: "<step> <error>", where step
-- is v (GET of the version record), k (the key's SET or DEL) or w (SET of
-- the version record). A string, not an error reply: some clients stop
-- reading an array at an error element they do not expect, and then read
-- its remaining elements as the replies of the next commands.
local function split(v)
  -- two 48-bit halves: exact as Lua numbers, whatever the locale's collation
  return tonumber(string.sub(v, 1, 12), 16), tonumber(string.sub(v, 13, 24), 16)
end
local function failed(r)
  return type(r) == 'table' and r.err
end
local out = {}
for i = 1, #KEYS / 2 do
  local key, vkey, a = KEYS[2 * i - 1], KEYS[2 * i], 5 * (i - 1)
  local ver, op, val, px, vpx = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local step = 'v'
  local r = redis.pcall('GET', vkey)
  if not failed(r) then
    local stale = false
    if r then
      local ch, cl = split(r)
      local nh, nl = split(ver)
      stale = ch and cl and (ch > nh or (ch == nh and cl >= nl))
    end
    if stale then
      r = 0
    else
      step = 'k'
      if op == 'd' then
        r = redis.pcall('DEL', key)
      elseif px ~= '0' then
        r = redis.pcall('SET', key, val, 'PX', px)
      else
        r = redis.pcall('SET', key, val)
      end
      if not failed(r) then
        step = 'w'
        if vpx ~= '0' then
          r = redis.pcall('SET', vkey, ver, 'PX', vpx)
        else
          r = redis.pcall('SET', vkey, ver)
        end
        if not failed(r) then
          r = 1
        end
      end
    end
  end
  if failed(r) then
    r = step .. ' ' .. r.err
  end
  out[i] = r
end
return out
