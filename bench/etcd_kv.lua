-- wrk script: etcd v3 puts or gets through its JSON gateway, the peer that
-- bench/run-peers.sh measures rhemad against.
--
--   BENCH_ETCD_OP=put BENCH_PREFIX=p wrk -t2 -c32 -d10s -s bench/etcd_kv.lua http://127.0.0.1:2379
--   BENCH_ETCD_OP=get BENCH_PREFIX=p BENCH_GET_THREADS=2 BENCH_GET_N=500 wrk ... same
--
-- put: POST /v3/kv/put of a new key <prefix>-<thread>-<n> with a value of
-- BENCH_VALUE_BYTES bytes (default 512); get: POST /v3/kv/range of a key
-- that the put run wrote (thread in 1..BENCH_GET_THREADS, n in
-- 2..BENCH_GET_N), a linearizable read (etcd's default).  Keys and values
-- are base64 in the JSON, as the gateway wants them.  BENCH_IDS=random: put
-- random keys instead (as bench/put_session.lua does with it).  (No response()
-- callback, as in the other scripts: it would take CPU from the server.)

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
   local out = {}
   for i = 1, #s, 3 do
      local a, b, c = s:byte(i, i + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      local c1 = math.floor(n / 262144) % 64
      local c2 = math.floor(n / 4096) % 64
      local c3 = math.floor(n / 64) % 64
      local c4 = n % 64
      out[#out + 1] = b64chars:sub(c1 + 1, c1 + 1) .. b64chars:sub(c2 + 1, c2 + 1) ..
         (b and b64chars:sub(c3 + 1, c3 + 1) or "=") .. (c and b64chars:sub(c4 + 1, c4 + 1) or "=")
   end
   return table.concat(out)
end

local op, prefix, value, nthreads, n, random_ids
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   math.randomseed(os.time() * 1000 + tid)
   op = os.getenv("BENCH_ETCD_OP") or "put"
   random_ids = os.getenv("BENCH_IDS") == "random"
   prefix = os.getenv("BENCH_PREFIX") or "b"
   value = b64(string.rep("x", tonumber(os.getenv("BENCH_VALUE_BYTES") or "512")))
   nthreads = tonumber(os.getenv("BENCH_GET_THREADS") or "1")
   n = math.max(2, tonumber(os.getenv("BENCH_GET_N") or "2"))
end

function request()
   if op == "put" then
      counter = counter + 1
      local id = prefix .. "-" .. tid .. "-" .. counter
      if random_ids then -- BENCH_IDS=random, as bench/put_session.lua
         id = string.format("%08x-%04x-%04x-%d-%d", math.random(0, 0x7fffffff),
                            math.random(0, 0xffff), math.random(0, 0xffff), tid, counter)
      end
      local key = b64(id)
      return wrk.format("POST", "/v3/kv/put", headers,
                        '{"key":"' .. key .. '","value":"' .. value .. '"}')
   end
   local key = b64(prefix .. "-" .. math.random(1, nthreads) .. "-" .. math.random(2, n))
   return wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key .. '"}')
end
