-- ARGV: dispatcher id, JSON status, TTL in whole seconds. Replaces that dispatcher's status and
-- moves its expiry in the index; drops dead dispatchers from the index even when no one reads.
local now = now_seconds()
redis.call('SET', KEY.dispatcher .. ARGV[1], ARGV[2], 'EX', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEY.dispatchers, '-inf', now)
redis.call('ZADD', KEY.dispatchers, now + tonumber(ARGV[3]), ARGV[1])
