-- Writes a group of changes, each to one key unless the key already
-- reflects a change at or after it.
--
-- A version is 30 digits: the commit LSN in 20, the commit index in 10, so
-- that versions compare as strings. A key's version is found, in order:
--   1. in its value, when the value is Sequin's message JSON, which begins
--      {"action":"…","changes":…,"metadata":{"commit_idx":I,"commit_lsn":L,
--      so the version cannot be lost apart from the key;
--   2. in its version record, KEYS[2i]: the tombstone of a deleted key, the
--      version of an opaque (transformed) value, or a record written by an
--      earlier release (24 hex digits).
--
-- ARGV[1] is the number of fence keys, f, 0 or 1. With one, KEYS[1] holds
-- the token of the writer that owns the changes' partition and ARGV[2] is
-- this writer's: on a mismatch nothing is written and every change answers
-- "f <owner>", so a writer that lost its partition cannot write late.
--
-- ARGV[f+2] is the number of fences to touch, t, KEYS[f+1] to KEYS[f+t]:
-- those of the partitions that write some of these keys otherwise (a
-- row's old key, deleted from the partition of its new one). Setting each
-- to its own value makes the EXEC of a transaction that watches it fail:
-- its reads of these keys may be older than the writes here.
--
-- Change i (from 1) has the key KEYS[f+t+2i-1] and its record
-- KEYS[f+t+2i], and 3 arguments from ARGV[f+3+3(i-1)]: its version, its
-- operation and its value (fewer
-- arguments cost Redis less per change). The operation is a letter: 'm'
-- (SET a message value, which carries the version and needs no record
-- unless it expires), 's' (SET any other value: a record keeps its
-- version) or 'd' (DEL). An 'n' after it says that the change inserted
-- its row: the key and its record are likely both absent, which one
-- EXISTS finds before either is read. Then, only when one of them is not
-- the default, a '-' where no 'n' is and ':<key's PX>:<record's PX>:<k>'
-- (PX 0: no expiry; 'k' when it may be written only over a known
-- version: a retried change while Redis may evict keys).
--
-- Returns for each change 1 (written), 0 (older than the key: skipped),
-- 'u' (no known version, and 'k' asked for one: not written), or its own
-- failure as a string "<step> <error>", where step is r (reading the key),
-- v (reading its record), k (writing the key), w (writing the record) or x
-- (deleting the record). A string, not an error reply: some clients stop
-- reading an array at an error element they do not expect, and then read
-- its remaining elements as the replies of the next commands.
local function failed(r)
  return type(r) == 'table' and r.err
end

-- zeros[k] is k zeros: versions are padded with one concatenation.
local zeros = {}
for k = 0, 20 do
  zeros[k] = string.rep('0', k)
end

-- head is how much of a value is read first to find its version; its
-- last index is a string, which Redis takes without formatting a number.
local head, last = 256, '255'

-- version is the version of a commit LSN and index, in decimal; nil when
-- they are too long to be one.
local function version(lsn, idx)
  if #lsn > 20 or #idx > 10 then
    return nil
  end
  return zeros[20 - #lsn] .. lsn .. zeros[10 - #idx] .. idx
end

-- skip returns the position after the JSON object that starts at p in s,
-- or nil when s ends first.
local function skip(s, p)
  local depth, i = 0, p
  while true do
    i = string.find(s, '[{}"]', i)
    if not i then
      return nil
    end
    local c = string.byte(s, i)
    if c == 34 then -- '"'
      repeat
        i = string.find(s, '"', i + 1, true)
        if not i then
          return nil
        end
        local b = i - 1
        while string.byte(s, b) == 92 do -- '\'
          b = b - 1
        end
      until (i - 1 - b) % 2 == 0
    elseif c == 123 then -- '{'
      depth = depth + 1
    else
      depth = depth - 1
      if depth == 0 then
        return i + 1
      end
    end
    i = i + 1
  end
end

-- message returns the version a message value carries; nil when s is not
-- one; false when s, a head cut from the value, ends before it.
local function message(s)
  -- Most values hold no changes: one match then.
  local idx, lsn = string.match(s, '^{"action":"%a+","changes":null,"metadata":{"commit_idx":(%d+),"commit_lsn":(%d+),')
  if idx then
    return version(lsn, idx)
  end
  local p = string.match(s, '^{"action":"%a+","changes":()')
  if not p then
    return nil
  end
  local q
  if string.find(s, '^null,', p) then
    q = p + 5
  elseif string.find(s, '^{},', p) then
    q = p + 3
  elseif string.byte(s, p) == 123 then
    q = skip(s, p)
    if not q then
      return false
    end
    q = q + 1
  else
    return nil
  end
  idx, lsn = string.match(s, '^"metadata":{"commit_idx":(%d+),"commit_lsn":(%d+),', q)
  if not idx then
    -- A head cut anywhere in the metadata's first fields fails to match:
    -- read the whole value rather than guess how long they can be.
    if #s >= head then
      return false
    end
    return nil
  end
  return version(lsn, idx)
end

-- record reads a version record: this release's 30 digits, or an earlier
-- one's 24 hex digits.
local function record(r)
  if #r == 30 then
    return r
  end
  if #r == 24 then
    local lsn, idx = tonumber(string.sub(r, 1, 16), 16), tonumber(string.sub(r, 17, 24), 16)
    if lsn and idx then
      return string.format('%020.0f%010.0f', lsn, idx)
    end
  end
  return nil
end

local out = {}
local f = tonumber(ARGV[1])
local t = tonumber(ARGV[f + 2])
local n = (#KEYS - f - t) / 2
if f == 1 then
  local owner = redis.call('GET', KEYS[1])
  if owner ~= ARGV[2] then
    for i = 1, n do
      out[i] = 'f ' .. (owner or '(none)')
    end
    return out
  end
end
for i = 1, n do
  local key, vkey, a = KEYS[f + t + 2 * i - 1], KEYS[f + t + 2 * i], f + 2 + 3 * (i - 1)
  local ver, op, val = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local kind, px, vpx, known = string.byte(op, 1), '0', '0', ''
  if #op > 2 then
    px, vpx, known = string.match(op, ':(%d+):(%d+):(k?)$')
  end
  local step, cur, rec = 'r', nil, false
  local r, absent = nil, false
  if string.byte(op, 2) == 110 then -- 'n': neither the key nor its record, most likely
    r = redis.pcall('EXISTS', key, vkey)
    absent = r == 0
  end
  if not absent and not failed(r) then
    r = redis.pcall('GETRANGE', key, '0', last)
    if not failed(r) and r ~= '' then
      cur = message(r)
      if cur == false then
        r = redis.pcall('GET', key)
        cur = not failed(r) and r and message(r) or nil
      end
    end
    if not failed(r) and not cur then
      step = 'v'
      r = redis.pcall('GET', vkey)
      if not failed(r) and r then
        rec, cur = true, record(r)
      end
    end
  end
  if not failed(r) then
    if cur and cur >= ver then
      r = 0
    elseif not cur and known == 'k' and kind ~= 100 then
      r = 'u'
    else
      step = 'k'
      if kind == 100 then -- 'd'
        r = redis.pcall('DEL', key)
      elseif px ~= '0' then
        r = redis.pcall('SET', key, val, 'PX', px)
      else
        r = redis.pcall('SET', key, val)
      end
      if not failed(r) then
        if kind == 109 and px == '0' then -- 'm'
          -- The value carries its version: a record is no longer needed.
          -- A value that expires keeps one (vpx, longer than px), so that
          -- an older change cannot bring the key back once it expired.
          step = 'x'
          if rec then
            r = redis.pcall('DEL', vkey)
          end
        else
          step = 'w'
          if vpx ~= '0' then
            r = redis.pcall('SET', vkey, ver, 'PX', vpx)
          else
            r = redis.pcall('SET', vkey, ver)
          end
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
for j = f + 1, f + t do
  -- A fence that cannot be touched (Redis out of memory) fails none of the
  -- changes written above.
  local owner = redis.pcall('GET', KEYS[j])
  if owner and not failed(owner) then
    redis.pcall('SET', KEYS[j], owner)
  end
end
return out
