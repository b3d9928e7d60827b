-- Ids of running jobs whose lease deadline has passed on the server's clock.
return redis.call('ZRANGEBYSCORE', KEY.running, '-inf', now_seconds())
