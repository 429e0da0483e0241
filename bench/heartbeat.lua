-- wrk script for bench.heartbeat: rotate over candidates, each request with its own token.
--
-- Environment (set by bench/heartbeat.py):
--   BENCH_TOKENS        file of "candidate_id<TAB>token" lines
--   BENCH_ANSWER_EVERY  every Nth request is an answer save (PATCH .../answers); 0 = none
--   BENCH_PATH          send every request to this path instead (the empty-endpoint baseline)
--   BENCH_SEQ_BASE      first answer seq (milliseconds since the epoch: increases across runs)
-- done() prints one line "BENCH_RESULT {json}" with requests, errors and latency percentiles.

local ids, tokens = {}, {}
local answer_every = tonumber(os.getenv("BENCH_ANSWER_EVERY") or "0")
local fixed_path = os.getenv("BENCH_PATH") or ""
local seq_base = tonumber(os.getenv("BENCH_SEQ_BASE") or "0")
local counter = 0
local threads = {}

function setup(thread)
   thread:set("thread_id", #threads)
   table.insert(threads, thread)
end

function init(args)
   for line in io.lines(os.getenv("BENCH_TOKENS")) do
      local id, token = line:match("^([^\t]+)\t(.+)$")
      if id then
         ids[#ids + 1] = id
         tokens[#tokens + 1] = token
      end
   end
   -- threads start at different candidates
   counter = (thread_id or 0) * math.floor(#ids / 16)
end

function request()
   counter = counter + 1
   local k = (counter % #ids) + 1
   local headers = {
      ["Authorization"] = "Bearer " .. tokens[k],
      ["Content-Type"] = "application/json",
   }
   local method, path, body
   if answer_every > 0 and counter % answer_every == 0 then
      method = "PATCH"
      path = "/api/v1/sessions/" .. ids[k] .. "/answers"
      body = string.format('{"answers":{"q%d":"answer %d"},"seq":%d}',
                           counter % 20, counter, seq_base + counter * 16 + (thread_id or 0))
   else
      method = "POST"
      path = "/api/v1/sessions/" .. ids[k] .. "/heartbeat"
      body = '{"active":true}'
   end
   if fixed_path ~= "" then
      path = fixed_path
   end
   return wrk.format(method, path, headers, body)
end

statuses = {}
sample = ""

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if (status < 200 or status > 299) and sample == "" then
      sample = tostring(status) .. " " .. string.sub(body or "", 1, 300)
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   -- status counts and the first refusal of each thread, on stderr
   for _, thread in ipairs(threads) do
      local counts = thread:get("statuses")
      for status, n in pairs(counts) do
         io.stderr:write(string.format("BENCH_STATUS %d %d\n", status, n))
      end
      local s = thread:get("sample")
      if s ~= "" then
         io.stderr:write("BENCH_SAMPLE " .. s:gsub("\n", " ") .. "\n")
      end
   end
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,' ..
      '"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
