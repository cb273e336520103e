-- wrk script: a mixed load of session reads and writes.
--
--   BENCH_PREFIX=p BENCH_GET_THREADS=2 BENCH_GET_N=1000 BENCH_PUT_PERCENT=10 \
--       wrk -t2 -c32 -d10s -s bench/mixed_session.lua http://127.0.0.1:8080
--
-- Every request is, at random, a PUT of a new 1 KiB session (BENCH_PUT_PERCENT
-- of them, default 10; ids <prefix>-m<thread>-<n>, never read) or a GET of a
-- session that bench/put_session.lua created with the same BENCH_PREFIX (as
-- bench/get_session.lua chooses them).  done() prints one line
--     mixed: puts N gets M
-- the requests of each kind sent (a request in flight when the run ended is
-- counted without its answer: at most -c of them).  Errors show in wrk's
-- "Non-2xx or 3xx responses" line.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
   thread:set("puts", 0)
   thread:set("gets", 0)
end

local prefix, nthreads, n, pct, body
local counter, puts, gets = 0, 0, 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   math.randomseed(os.time() * 1000 + tid)
   prefix = os.getenv("BENCH_PREFIX") or "b"
   nthreads = tonumber(os.getenv("BENCH_GET_THREADS") or "1")
   n = math.max(2, tonumber(os.getenv("BENCH_GET_N") or "2"))
   pct = tonumber(os.getenv("BENCH_PUT_PERCENT") or "10")
   local head = '{"topic":"'
   local tail = '","participants":["agent-1","agent-2","agent-3"],"status":"Active"}'
   body = head .. string.rep("x", 1024 - #head - #tail) .. tail
end

function request()
   if math.random() * 100 < pct then
      counter = counter + 1
      puts = puts + 1
      wrk.thread:set("puts", puts)
      return wrk.format("PUT", "/v1/sessions/" .. prefix .. "-m" .. tid .. "-" .. counter, headers, body)
   end
   gets = gets + 1
   wrk.thread:set("gets", gets)
   local path = "/v1/sessions/" .. prefix .. "-" .. math.random(1, nthreads) .. "-" .. math.random(2, n)
   return wrk.format("GET", path)
end

function done(summary, latency, requests)
   local p, g = 0, 0
   for _, t in ipairs(threads) do
      p = p + t:get("puts")
      g = g + t:get("gets")
   end
   io.write(string.format("mixed: puts %d gets %d\n", p, g))
end
