-- POSTs one lease request (its JSON in TOLLGATE_BENCH_LEASE) to the broker on every request,
-- counts answers by status and prints the totals and wrk's summary as one JSON line (prefixed
-- "BENCH ") for bench/tollgate_bench/wrk.py. The gateway token comes with -H.

wrk.method = "POST"
wrk.body = os.getenv("TOLLGATE_BENCH_LEASE")
wrk.headers["content-type"] = "application/json"

local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  ok, limited, other = 0, 0, 0
end

response = function(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 429 then
    limited = limited + 1
  else
    other = other + 1
  end
end

done = function(summary, latency, requests)
  local s200, s429, sother = 0, 0, 0
  for _, thread in ipairs(threads) do
    s200 = s200 + thread:get("ok")
    s429 = s429 + thread:get("limited")
    sother = sother + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"non_2xx_3xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"status_200":%d,"status_429":%d,"status_other":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, s200, s429, sother))
end
