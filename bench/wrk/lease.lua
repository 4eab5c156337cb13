-- POSTs one lease request (its JSON in TOLLGATE_BENCH_LEASE) to the broker on every request;
-- answers are counted and reported as statuses.lua does (one "BENCH " JSON line for
-- bench/tollgate_bench/wrk.py). The gateway token comes with -H.

wrk.method = "POST"
wrk.body = os.getenv("TOLLGATE_BENCH_LEASE")
wrk.headers["content-type"] = "application/json"

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "statuses.lua")
