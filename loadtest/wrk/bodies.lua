-- wrk script: POST prepared request bodies round-robin, print exact figures as one JSON line at the end.
--
-- usage: wrk -s loadtest/wrk/bodies.lua URL -- MANIFEST
-- MANIFEST lines: <body file>\t<Content-Type>[\t<Header-Name>: <value>]  (one request per line)
-- Without MANIFEST it sends plain GETs to URL (the HTTP layer's floor, e.g. /healthz).
-- The requests are formatted once per thread in init(), so the generator does no work per request beyond
-- picking the next prepared string (wrk's low overhead is why it measures the ceilings, not locust).

local requests = {}
local next_index = 1

function init(args)
  if args[1] == nil then return end
  local manifest = assert(io.open(args[1], "r"), "cannot open manifest " .. tostring(args[1]))
  for line in manifest:lines() do
    local path, ctype, extra = line:match("^([^\t]+)\t([^\t]+)\t?(.*)$")
    if path then
      local f = assert(io.open(path, "rb"), "cannot open body " .. path)
      local body = f:read("*a")
      f:close()
      local headers = { ["Content-Type"] = ctype }
      local name, value = extra:match("^([^:]+):%s*(.+)$")
      if name then headers[name] = value end
      requests[#requests + 1] = wrk.format("POST", nil, headers, body)
    end
  end
  manifest:close()
  assert(#requests > 0, "manifest lists no bodies")
  -- threads start at different bodies so they do not post the same sheet in lock-step
  next_index = (math.floor(os.clock() * 1e6) % #requests) + 1
end

function request()
  if #requests == 0 then return wrk.format("GET") end
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "max": %d, "p50": %d, ' ..
    '"p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
