-- ARGV: id, lines the caller has seen (a count from log_length). Returns the lines appended
-- since, as many of them as the capped list still holds.
local appended = tonumber(redis.call('GET', KEY.log_count .. ARGV[1]) or 0)
local unseen = appended - tonumber(ARGV[2])
if unseen <= 0 then return {} end
return redis.call('LRANGE', KEY.logs .. ARGV[1], -unseen, -1)
