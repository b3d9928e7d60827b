-- ARGV: id. Re-checks that the lease is still expired (a renewal may have raced the reaper),
-- then ends the attempt as a crash: straight back to the queue at its old place, or dead when
-- its attempts are used up. Returns the new status, or false when the lease is live again.
local id = ARGV[1]
local deadline = redis.call('ZSCORE', KEY.running, id)
local now = now_seconds()
if not deadline or tonumber(deadline) > now then return false end
local job = KEY.job .. id
local fields = redis.call('HMGET', job, 'owner', 'attempts')
local error = string.format('lease of worker %s expired during attempt %s', fields[1], fields[2])
redis.call('HSET', job, 'last_error', error)
return end_failed_attempt(id, now, true, {base = 0, cap = 0}, error, fields[1])
