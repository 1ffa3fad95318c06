//! The Lua scripts of the retry schedule.
//!
//! Both read the clock with `TIME` inside Redis rather than taking it from
//! the caller: replicas on different hosts then agree on when a retry is
//! due, whatever their clocks say. (Redis 5+ replicates script effects, so a
//! script may call `TIME` before writing.)
//!
//! `redis::Script` sends `EVALSHA` and falls back to loading the script on
//! `NOSCRIPT`, which also covers a Redis restart that flushed the script
//! cache.

use deadpool_redis::redis::Script;

/// Adds one member to a retry schedule, due `delay_ms` from now.
///
/// `KEYS[1]`: the schedule (sorted set). `ARGV[1]`: delay in milliseconds;
/// `ARGV[2]`: the member. Returns the score.
const SCHEDULE: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = now_ms + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
return due
";

/// Moves up to `ARGV[1]` due members of a retry schedule to the worker's
/// retry stream, atomically: a member is read, appended and removed within
/// one script, so movers of several replicas running at once can never move
/// one member twice, and a member is never removed without being appended.
///
/// `KEYS[1]`: the schedule; `KEYS[2]`: the retry stream; `KEYS[3]`: the
/// dead-letter stream. `ARGV[1]`: the batch limit; `ARGV[2]`: the worker;
/// `ARGV[3]`: the replica running the mover. Returns `{taken, wait_ms}`:
/// how many members were taken, and how long until the earliest member left
/// is due by Redis's clock (0 if one is due already, -1 if none is left),
/// so that the mover can sleep until then instead of polling.
///
/// A member this script cannot read (nothing the fleet writes, but a sorted
/// set is writable by anyone) would otherwise stay due forever and, a batch
/// of them, block every retry behind it: it goes to the dead-letter stream
/// instead, verbatim, where an operator sees it.
///
/// The field names match `fields.rs` and `ScheduledRetry`. (The three keys
/// hash to different Cluster slots; running on Cluster would need hash tags
/// in the contract's names.)
const MOVE_DUE: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now_ms),
  'LIMIT', 0, tonumber(ARGV[1]))

local function readable(doc)
  if type(doc) ~= 'table' then return false end
  for _, name in ipairs({'event', 'source', 'first_failed_at', 'last_failed_at', 'last_error'}) do
    if type(doc[name]) ~= 'string' then return false end
  end
  if type(doc.attempts) ~= 'number' then return false end
  if doc.replays ~= nil and type(doc.replays) ~= 'number' then return false end
  if doc.encoding ~= nil then
    if doc.encoding ~= 'hex' then return false end
    if #doc.event % 2 ~= 0 or string.find(doc.event, '[^%x]') then return false end
  end
  return true
end

for _, member in ipairs(due) do
  local ok, doc = pcall(cjson.decode, member)
  if ok and readable(doc) then
    local body = doc.event
    if doc.encoding == 'hex' then
      body = string.gsub(body, '%x%x', function(pair)
        return string.char(tonumber(pair, 16))
      end)
    end
    redis.call('XADD', KEYS[2], '*',
      'event', body,
      'source', doc.source,
      'attempts', string.format('%d', doc.attempts),
      'first_failed_at', doc.first_failed_at,
      'last_failed_at', doc.last_failed_at,
      'last_error', doc.last_error,
      'replays', string.format('%d', doc.replays or 0))
  else
    redis.call('XADD', KEYS[3], '*',
      'event', member,
      'source', '',
      'worker', ARGV[2],
      'error_kind', 'unreadable_retry',
      'error', 'a member of the retry schedule ' .. KEYS[1] .. ' could not be decoded',
      'attempts', '0',
      'replica', ARGV[3],
      'replays', '0')
  end
  redis.call('ZREM', KEYS[1], member)
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next_due == 0 then
  return {#due, -1}
end
return {#due, math.max(0, tonumber(next_due[2]) - now_ms)}
";

/// The scripts, hashed once per broker.
#[derive(Clone, Debug)]
pub(super) struct Scripts {
    pub(super) schedule: Script,
    pub(super) move_due: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            schedule: Script::new(SCHEDULE),
            move_due: Script::new(MOVE_DUE),
        }
    }
}
