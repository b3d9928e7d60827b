-- ARGV: id, priority. Re-sorts a queued job (its submit order still breaks ties) and sets the
-- priority that a running job's later requeues use. Returns the status the job had, or
-- 'missing'; only queued and running jobs change.
local id = ARGV[1]
local job = KEY.job .. id
local status = redis.call('HGET', job, 'status')
if not status then return 'missing' end
if status ~= 'queued' and status ~= 'running' then return status end
redis.call('HSET', job, 'priority', ARGV[2])
if redis.call('ZSCORE', KEY.queue, id) then
  enqueue(id)
end
return status
