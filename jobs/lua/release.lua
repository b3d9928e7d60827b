-- ARGV: id, dispatcher, claim, reason, counted ('1' for an interruption such as a lost relay, '0'
-- for a dispatcher that stops cleanly), the interruption cap. Hands the job back without using
-- an attempt (hand_back in common.lua). Returns the new status, or 'lost' / 'missing'.
local id, dispatcher = ARGV[1], ARGV[2]
local problem = lease_problem(id, dispatcher, ARGV[3])
if problem then return problem end
return hand_back(id, now_seconds(), ARGV[4], dispatcher, ARGV[5] == '1', tonumber(ARGV[6]))
