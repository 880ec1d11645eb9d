-- wrk script of bench/signin.py: wrong logins from many client addresses through one trusted
-- proxy. Each request takes the next victim's phone of $WRK_PHONES (space-separated) and the
-- next address of $WRK_ADDRESSES as its X-Forwarded-For (the server trusts 127.0.0.1), so
-- the attempts spread evenly over the addresses; answers are counted by their error code and
-- one JSON summary line is printed.
local phones, addresses = {}, {}
for phone in string.gmatch(os.getenv("WRK_PHONES"), "%S+") do
  table.insert(phones, phone)
end
for address in string.gmatch(os.getenv("WRK_ADDRESSES"), "%S+") do
  table.insert(addresses, address)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  refused, invalid, other = 0, 0, 0
  n = 0
end

function request()
  n = n + 1
  local body = '{"phone":"' .. phones[n % #phones + 1] .. '","password":"wrong1"}'
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Forwarded-For"] = addresses[n % #addresses + 1],
  }, body)
end

function response(status, headers, body)
  if status == 200 and string.find(body, '"TooManyRequests"', 1, true) then
    refused = refused + 1
  elseif status == 200 and string.find(body, '"InvalidPassword"', 1, true) then
    invalid = invalid + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local totals = {refused = 0, invalid = 0, other = 0}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"refused":%d,"invalid":%d,"other":%d,' ..
    '"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, totals.refused, totals.invalid, totals.other,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
