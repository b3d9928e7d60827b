-- ARGV: id, worker, claim, reason, counted ('1' for an interruption such as a lost relay, '0'
-- for a dispatcher that stops cleanly), the interruption cap. Hands the job back without using
-- an attempt (hand_back in common.lua). Returns the new status, or 'lost' / 'missing'.
local id, worker = ARGV[1], ARGV[2]
local problem = lease_problem(id, worker, ARGV[3])
if problem then return problem end
return hand_back(id, now_seconds(), ARGV[4], worker, ARGV[5] == '1', tonumber(ARGV[6]))
