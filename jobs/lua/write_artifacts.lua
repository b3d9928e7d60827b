-- ARGV: id, then one group of four per write (see write_artifacts in common.lua): what tools,
-- imports and fixtures write outside any run. Returns 'ok', or 'missing' when there is no such
-- job, so that nothing is left behind for a job that is gone or was deleted.
local id = ARGV[1]
if redis.call('EXISTS', KEY.job .. id) == 0 then return 'missing' end
return write_artifacts(id, '', 2) or 'ok'
