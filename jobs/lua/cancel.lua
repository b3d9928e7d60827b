-- ARGV: id. A queued job is cancelled at once; a running one gets a durable cancel_requested
-- flag that the dispatcher acts on. Returns the status the job had, or 'missing'.
local id = ARGV[1]
local job = KEY.job .. id
local fields = redis.call('HMGET', job, 'status', 'cancel_requested')
local status = fields[1]
if not status then return 'missing' end
if status == 'queued' then
  redis.call('HSET', job, 'cancel_requested', '1')
  withdraw(id, now_seconds(), 'cancelled', 'cancelled while queued')
elseif status == 'running' and fields[2] ~= '1' then
  redis.call('HSET', job, 'cancel_requested', '1')
  add_event(id, now_seconds(), 'running', 'cancel requested')
end
return status
