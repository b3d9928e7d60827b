-- ARGV: id, dispatcher, claim, status to end in ('succeeded' or 'cancelled'), result JSON ('' leaves
-- the result as it is), event message. A run that finished while a cancel was pending ends
-- cancelled, keeping its result: the user was told "cancel requested", and the job ends as
-- asked (README, "Cancel"). Returns the status it ended in, or 'lost' / 'missing'.
local id, dispatcher = ARGV[1], ARGV[2]
local problem = lease_problem(id, dispatcher, ARGV[3])
if problem then return problem end
local job = KEY.job .. id
if ARGV[5] ~= '' then
  redis.call('HSET', job, 'result', ARGV[5])
end
local to, message = ARGV[4], ARGV[6]
if to == 'succeeded' and redis.call('HGET', job, 'cancel_requested') == '1' then
  to, message = 'cancelled', 'cancelled: the run finished before it could be stopped; its result is kept'
end
finish(id, now_seconds(), to, message, dispatcher)
return to
