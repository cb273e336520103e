-- wrk script: PUT a new 1 KiB coordination session per request.
--
--   wrk -t2 -c32 -d10s -s bench/put_session.lua http://127.0.0.1:8080
--
-- Every request creates a distinct session, /v1/sessions/<prefix>-<thread>-<n>:
-- the thread number comes from setup(), n is a per-thread counter, and the
-- prefix (env BENCH_PREFIX, default a random number) keeps two runs against
-- the same database from overwriting each other.  The body is exactly
-- BENCH_BODY_BYTES bytes (default 1024) of valid session JSON, padded in
-- the topic.  With BENCH_IDS=random the id is instead random hex plus the
-- counter (a UUID's shape: each new session lands away from the last one
-- in every index, as a client's UUIDs do; GET scripts cannot find those).
-- Every id is new, so every good answer is 201; errors (4xx,
-- 5xx) show in wrk's "Non-2xx or 3xx responses" line, which bench/run.sh
-- checks so that a run full of errors cannot pass for a fast one.  (No
-- response() callback: it would make wrk parse every response and take
-- CPU from the server on a small machine.)

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

local counter = 0
local random_ids = os.getenv("BENCH_IDS") == "random"
local prefix
local body
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   math.randomseed(os.time() + tid)
   prefix = (os.getenv("BENCH_PREFIX") or ("b" .. math.random(1, 1000000000))) .. "-" .. tid
   local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "1024")
   local head = '{"topic":"'
   local tail = '","participants":["agent-1","agent-2","agent-3"],"status":"Active"}'
   local pad = size - #head - #tail
   if pad < 1 then pad = 1 end
   body = head .. string.rep("x", pad) .. tail
end

function request()
   counter = counter + 1
   if random_ids then
      return wrk.format("PUT", string.format("/v1/sessions/%08x-%04x-%04x-%d-%d",
                        math.random(0, 0x7fffffff), math.random(0, 0xffff),
                        math.random(0, 0xffff), tid, counter), headers, body)
   end
   return wrk.format("PUT", "/v1/sessions/" .. prefix .. "-" .. counter, headers, body)
end
