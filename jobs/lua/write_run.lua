-- ARGV: id, dispatcher, claim, then one group of four per write (see write_artifacts in
-- common.lua). Every write a run makes (metrics, images, logs, checkpoints, trials, events)
-- comes through here, behind the run's fencing token (lease_problem): all of the batch lands,
-- or none of it when the lease is gone. Returns 'ok', or 'lost' / 'missing'.
local id = ARGV[1]
local problem = lease_problem(id, ARGV[2], ARGV[3])
if problem then return problem end
return write_artifacts(id, ARGV[2], 4) or 'ok'
