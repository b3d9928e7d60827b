-- ARGV: id, dispatcher, claim, lease (s). Returns 'ok', or 'lost' / 'missing'.
local id, dispatcher = ARGV[1], ARGV[2]
local problem = lease_problem(id, dispatcher, ARGV[3])
if problem then return problem end
local deadline = now_seconds() + tonumber(ARGV[4])
redis.call('HSET', KEY.job .. id, 'lease_deadline', stamp(deadline))
redis.call('ZADD', KEY.running, deadline, id)
return 'ok'
