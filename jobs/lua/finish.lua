-- ARGV: id, worker, status to end in ('succeeded' or 'cancelled'), result JSON ('' leaves the
-- result as it is), event message. Returns 'ok', or 'lost' / 'missing'.
local id, worker = ARGV[1], ARGV[2]
local problem = lease_problem(id, worker)
if problem then return problem end
if ARGV[4] ~= '' then
  redis.call('HSET', KEY.job .. id, 'result', ARGV[4])
end
finish(id, now_seconds(), ARGV[3], ARGV[5], worker)
return 'ok'
