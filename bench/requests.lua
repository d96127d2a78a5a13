-- wrk script for bench/run.py: replays pre-generated, pre-signed Volt webhooks, each once.
--
-- Why a script and not `wrk -s` with a fixed body: voltd deduplicates on the envelope id, so a
-- repeated body would measure the dedup shortcut, not the full verify-route-commit path. The
-- runner writes the signed requests to a file; this script sends them in order and, only if
-- the run outlasts them, starts over (then voltd answers repeats from its dedup table, and the
-- runner reports that the run cycled).
--
-- Inputs (environment, because wrk's done() runs in a Lua state that never sees init's args):
--   BENCH_EVENTS    file of request pairs: a signature line, then a compact JSON body line
--   BENCH_PATH      request path (default: the URL's path)
--   BENCH_IDS_OUT   optional file: the envelope id of every 2xx answer that names one
--   BENCH_HIST_OUT  optional file: wrk's latency histogram, "microseconds count" per line
--   BENCH_SIG_HEADER  signature header name (default X-Respond-Flow-Signature)
--
-- done() prints one line "BENCH_RESULT {json}" that run.py parses. Only one wrk thread (-t1)
-- is supported: the request order and the counters live in that thread's Lua state.

local requests = {}
local i = 0
local verified = false

-- Per-thread counters, read by done() through thread:get (numbers and strings only: wrk's
-- table copy between Lua states is not safe to rely on).
n = 0
sent = 0
ok = 0
non2xx = 0
cycles = 0
seen_codes = ""
first_error = nil

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = os.getenv("BENCH_EVENTS")
   if not path then
      error("BENCH_EVENTS is not set")
   end
   local header = os.getenv("BENCH_SIG_HEADER") or "X-Respond-Flow-Signature"
   local req_path = os.getenv("BENCH_PATH") or wrk.path
   local f = assert(io.open(path, "rb"))
   while true do
      local sig = f:read("*l")
      if not sig then break end
      local body = f:read("*l")
      if not body then error("odd number of lines in " .. path) end
      local headers = {}
      headers["Content-Type"] = "application/json"
      headers["User-Agent"] = "voltd-bench"
      headers[header] = sig
      n = n + 1
      -- Formatted once here so that request() costs a table lookup, not string building.
      requests[n] = wrk.format("POST", req_path, headers, body)
   end
   f:close()
   if n == 0 then error("no requests in " .. path) end
   local ids_path = os.getenv("BENCH_IDS_OUT")
   if ids_path and ids_path ~= "" then
      -- Buffered; the C library flushes it when wrk exits.
      ids_file = assert(io.open(ids_path, "wb"))
   end
end

function request()
   -- wrk calls request() once before the run to check that it parses; that call must not
   -- consume an event, or event 1 would be skipped and counted as sent.
   if not verified then
      verified = true
      return requests[1]
   end
   i = i + 1
   if i > n then
      i = 1
      cycles = cycles + 1
   end
   sent = sent + 1
   return requests[i]
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
      if ids_file then
         local id = body:match('"id"%s*:%s*"([^"]+)"')
         if id then ids_file:write(id, "\n") end
      end
   else
      non2xx = non2xx + 1
      local key = "status_" .. status
      if _G[key] == nil then
         _G[key] = 0
         seen_codes = seen_codes .. status .. ","
      end
      _G[key] = _G[key] + 1
      if first_error == nil then
         first_error = status .. " " .. string.sub(body, 1, 300)
      end
   end
end

-- Wall clock at the end of the load, so that run.py can time voltd's backlog drain from the
-- moment the last request finished rather than from wrk's exit (the histogram dump takes time).
-- Needs LuaJIT's FFI (Debian's wrk has it); without it run.py falls back to wrk's exit time.
local function wall_clock_us()
   local ok_ffi, ffi = pcall(require, "ffi")
   if not ok_ffi then return nil end
   pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_usec; } bench_timeval;
      int gettimeofday(bench_timeval *tv, void *tz);
   ]])
   local tv = ffi.new("bench_timeval")
   if ffi.C.gettimeofday(tv, nil) ~= 0 then return nil end
   return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local function json_string(s)
   s = s:gsub('[%c"\\]', function(c)
      if c == '"' then return '\\"' end
      if c == "\\" then return "\\\\" end
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

local function dump_histogram(latency, out_path)
   -- latency(i) scans wrk's microsecond array from min each call, so the dump costs
   -- distinct values x range; skip it when that would take more than a few seconds.
   local distinct = #latency
   local span = latency.max - latency.min
   if distinct * span > 3e9 then
      return "histogram too wide to dump (" .. distinct .. " values over " .. span .. " us)"
   end
   local f = assert(io.open(out_path, "wb"))
   for k = 1, distinct do
      local value, count = latency(k)
      f:write(string.format("%d %d\n", value, count))
   end
   f:close()
   return nil
end

function done(summary, latency, reqs)
   local end_us = wall_clock_us()
   local t_sent, t_ok, t_non2xx, t_cycles, t_events = 0, 0, 0, 0, 0
   local codes = {}
   local first = nil
   for _, t in ipairs(threads) do
      t_sent = t_sent + t:get("sent")
      t_ok = t_ok + t:get("ok")
      t_non2xx = t_non2xx + t:get("non2xx")
      t_cycles = t_cycles + t:get("cycles")
      t_events = t_events + t:get("n")
      for code in string.gmatch(t:get("seen_codes"), "(%d+),") do
         codes[#codes + 1] = json_string(code) .. ": " .. t:get("status_" .. code)
      end
      first = first or t:get("first_error")
   end
   local hist_note = nil
   local hist_path = os.getenv("BENCH_HIST_OUT")
   if hist_path and hist_path ~= "" and summary.requests > 0 then
      hist_note = dump_histogram(latency, hist_path)
   end
   local e = summary.errors
   local parts = {
      '"requests": ' .. summary.requests,
      '"duration_us": ' .. summary.duration,
      '"bytes": ' .. summary.bytes,
      '"sent": ' .. t_sent,
      '"ok": ' .. t_ok,
      '"non2xx": ' .. t_non2xx,
      '"cycles": ' .. t_cycles,
      '"events": ' .. t_events,
      '"load_end_unix_us": ' .. (end_us and string.format("%d", end_us) or "null"),
      '"status_codes": {' .. table.concat(codes, ", ") .. '}',
      '"first_error": ' .. (first and json_string(first) or "null"),
      string.format(
         '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}',
         e.connect, e.read, e.write, e.status, e.timeout
      ),
      '"req_per_s": ' .. string.format("%.2f", t_ok / (summary.duration / 1e6)),
      string.format(
         '"wrk_latency_ms": {"p50": %.3f, "p90": %.3f, "p99": %.3f, "p99.9": %.3f, '
            .. '"mean": %.3f, "max": %.3f}',
         latency:percentile(50) / 1000, latency:percentile(90) / 1000,
         latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
         latency.mean / 1000, latency.max / 1000
      ),
      '"histogram_note": ' .. (hist_note and json_string(hist_note) or "null"),
   }
   io.write("BENCH_RESULT {" .. table.concat(parts, ", ") .. "}\n")
end
