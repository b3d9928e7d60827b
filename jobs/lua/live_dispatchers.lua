-- No ARGV. Returns dispatcher id, JSON status, dispatcher id, ... for every dispatcher whose status
-- has not expired, the latest to expire first; drops the expired ones from the index.
redis.call('ZREMRANGEBYSCORE', KEY.dispatchers, '-inf', now_seconds())
local reply = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEY.dispatchers, 0, -1)) do
  -- A status deleted by hand leaves its index entry until the entry's expiry passes.
  local status = redis.call('GET', KEY.dispatcher .. id)
  if status then
    table.insert(reply, id)
    table.insert(reply, status)
  end
end
return reply
