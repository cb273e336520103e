-- wrk script: GET sessions that exist, chosen at random.
--
--   BENCH_PREFIX=p BENCH_GET_THREADS=2 BENCH_GET_N=1000 \
--       wrk -t2 -c32 -d10s -s bench/get_session.lua http://127.0.0.1:8080
--
-- Every request GETs /v1/sessions/<prefix>-<t>-<n> with t uniform in
-- 1..BENCH_GET_THREADS and n uniform in 2..BENCH_GET_N: the ids that
-- bench/put_session.lua created when it ran with the same BENCH_PREFIX and
-- BENCH_GET_THREADS wrk threads, and got at least BENCH_GET_N answers per
-- thread (bench/run-backends.sh checks the highest ids with curl first).
-- n starts at 2: wrk calls request() once before the run to check the
-- script, which uses up id 1 of the first thread without sending it.
-- A missing id answers 404, which shows in wrk's "Non-2xx or 3xx responses"
-- line.  (No response() callback: it would make wrk parse every response
-- and take CPU from the server on a small machine.)

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

local prefix
local nthreads
local n

function init(args)
   math.randomseed(os.time() * 1000 + tid)
   prefix = os.getenv("BENCH_PREFIX") or "b"
   nthreads = tonumber(os.getenv("BENCH_GET_THREADS") or "1")
   n = math.max(2, tonumber(os.getenv("BENCH_GET_N") or "2"))
end

function request()
   local path = "/v1/sessions/" .. prefix .. "-" .. math.random(1, nthreads) .. "-" .. math.random(2, n)
   return wrk.format("GET", path)
end
