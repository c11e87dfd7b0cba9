-- GCRA (generic cell rate algorithm), virtual-scheduling form, as a
-- reservation: every caller of one provider app shares KEYS[1], which holds
-- the theoretical arrival time (TAT) of the next call, in microseconds on
-- Redis's own clock (so the callers' clocks never matter).
--
-- ARGV[1]  emission interval T in µs (1 / rate)
-- ARGV[2]  burst tolerance tau in µs (T × (burst - 1); 0 = evenly spaced)
-- ARGV[3]  pause in µs: > 0 pushes the schedule to now + pause (the provider
--          answered "rate limited") and reserves nothing
--
-- A call conforms at max(now, TAT - tau); reserving it moves TAT on by T.
-- Returns the µs the caller waits before its call (0 = go now); for a
-- pause, how long the schedule is held.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local pause = tonumber(ARGV[3])

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end

local wait
if pause > 0 then
  if now + pause > tat then
    tat = now + pause
  end
  wait = tat - now
else
  local at = tat - tau
  if at < now then
    at = now
  end
  wait = at - now
  tat = tat + interval
end

-- '%d' keeps all 16 digits (tostring would print 1.7e+15); the key expires
-- a second after the schedule runs idle.
redis.call('SET', KEYS[1], string.format('%d', tat),
  'PX', math.floor((tat - now) / 1000) + 1000)
return wait
