-- wrk script: POST chat completions (bench/run-ai.sh).
--
--   BENCH_AI_UNIQUE=0  every request sends the same body
--   BENCH_AI_UNIQUE=1  each request a different prompt ("<thread>-<n>"), so
--                      that with the cache on every request is a miss that
--                      stores a new entry (the cache fills to its bound)
--   BENCH_AI_SEED=s    with BENCH_AI_UNIQUE, the prompts are "<s>-<thread>-<n>":
--                      successive runs send prompts not sent before
--
-- No response() callback: it would make wrk parse every response and take
-- CPU from the servers on a small machine.

local unique = os.getenv("BENCH_AI_UNIQUE") == "1"
local seed = os.getenv("BENCH_AI_SEED") or "0"
local counter = 0
local ids = 0

local fixed = '{"model":"gpt","messages":[{"role":"user","content":"hello"}]}'

function setup(thread)
   ids = ids + 1
   thread:set("tid", ids)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = fixed

if unique then
   function request()
      counter = counter + 1
      local body = '{"model":"gpt","messages":[{"role":"user","content":"prompt ' ..
         seed .. "-" .. tostring(tid) .. "-" .. tostring(counter) .. '"}]}'
      return wrk.format(nil, nil, nil, body)
   end
end
