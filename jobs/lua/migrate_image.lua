-- ARGV: id, trial ('' for the job itself), field, SHA1 of the PNG the field held when it was
-- read, the JSON index entry of that PNG now in storage. Swaps the entry in only while the
-- field still holds those bytes, so that a field changed or deleted since is left as it is.
-- Returns 1 when swapped, else 0.
local key = artifact_key(KEY.images, ARGV[1], ARGV[2])
local current = redis.call('HGET', key, ARGV[3])
if not current or redis.sha1hex(current) ~= ARGV[4] then return 0 end
redis.call('HSET', key, ARGV[3], ARGV[5])
return 1
