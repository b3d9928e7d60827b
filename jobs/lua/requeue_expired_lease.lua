-- ARGV: id, the interruption cap. Re-checks that the lease is still expired (a renewal may have
-- raced the reaper), then hands the job back as an interruption: its dispatcher crashed or lost
-- Redis, which is no failure of the run, so no attempt is used (hand_back in common.lua).
-- Returns the new status, or false when the lease is live again.
local id = ARGV[1]
local deadline = redis.call('ZSCORE', KEY.running, id)
local now = now_seconds()
if not deadline or tonumber(deadline) > now then return false end
local fields = redis.call('HMGET', KEY.job .. id, 'owner', 'attempts')
local message = string.format('lease of dispatcher %s expired during attempt %s', fields[1], fields[2])
return hand_back(id, now, message, fields[1], true, tonumber(ARGV[2]))
