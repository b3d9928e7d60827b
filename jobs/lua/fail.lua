-- ARGV: id, dispatcher, claim, error, traceback, retryable ('1' or '0'), backoff base and cap (s).
-- Returns the job's new status, or 'lost' / 'missing'.
local id, dispatcher, error = ARGV[1], ARGV[2], ARGV[4]
local problem = lease_problem(id, dispatcher, ARGV[3])
if problem then return problem end
local job = KEY.job .. id
redis.call('HSET', job, 'last_error', error, 'last_traceback', ARGV[5])
local attempt = redis.call('HGET', job, 'attempts')
-- The record keeps the whole error; the event line keeps its start.
local message = string.format('attempt %s failed: %s', attempt, string.sub(error, 1, 500))
local backoff = {base = tonumber(ARGV[7]), cap = tonumber(ARGV[8])}
return end_failed_attempt(id, now_seconds(), ARGV[6] == '1', backoff, message, dispatcher)
