-- ARGV: id, message, dispatcher ('' for none). Appends an event that carries the job's current
-- status. Returns 1, or 0 when there is no such job.
local status = redis.call('HGET', KEY.job .. ARGV[1], 'status')
if not status then return 0 end
local dispatcher = nil
if ARGV[3] ~= '' then dispatcher = ARGV[3] end
add_event(ARGV[1], now_seconds(), status, ARGV[2], dispatcher)
return 1
