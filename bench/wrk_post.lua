-- wrk script: POST the JSON body in $WRK_BODY, count answers that are not vpiska's success
-- envelope (vpiska answers errors with HTTP 200 too), and print one JSON summary line.
-- With $WRK_BODIES (one JSON body per line), each request takes the next body instead, each
-- connection from a place of its own in the list. With WRK_GET=1 it sends GETs instead and
-- counts the answers that are not 200 (a media download is raw bytes, not an envelope).
local get = os.getenv("WRK_GET") == "1"
if not get then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = os.getenv("WRK_BODY")
end

local bodies = {}
for line in string.gmatch(os.getenv("WRK_BODIES") or "", "[^\n]+") do
  table.insert(bodies, line)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  failed = 0
  next_body = math.random(math.max(#bodies, 1))
end

if #bodies > 0 then
  function request()
    next_body = next_body % #bodies + 1
    return wrk.format(nil, nil, nil, bodies[next_body])
  end
end

function response(status, headers, body)
  if status ~= 200 or (not get and not string.find(body, '"isSuccess":true', 1, true)) then
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local failed = 0
  for _, thread in ipairs(threads) do
    failed = failed + thread:get("failed")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"failed":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, failed, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
