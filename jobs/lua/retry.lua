-- ARGV: id. Puts a failed, dead or cancelled job back at the end of its priority's queue with
-- its attempts and interruptions reset. Returns the status the job had, or 'missing'; other
-- jobs do not change.
local id = ARGV[1]
local job = KEY.job .. id
local status = redis.call('HGET', job, 'status')
if not status then return 'missing' end
if status ~= 'failed' and status ~= 'dead' and status ~= 'cancelled' then return status end
local now = now_seconds()
redis.call('HSET', job, 'attempts', 0, 'interruptions', 0, 'cancel_requested', '0',
  'finished_at', '', 'order', redis.call('INCR', KEY.order))
enqueue(id)
set_status(id, status, 'queued', now)
add_event(id, now, 'queued', 'retried from ' .. status)
return status
