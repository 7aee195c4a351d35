-- wrk script for benches/load.sh: VisitorAPI lookups as a site's visitors
-- make them, arriving through a proxy on loopback (which visitord and the
-- nginx peer both trust): 2,000 public client addresses in X-Forwarded-For,
-- the user agents of 8 current browsers, and the allowed Origin.
--
-- usage: wrk -t1 -c32 -d10s --latency -s benches/load.lua 'https://127.0.0.1:PORT/api/?pid=shop'
-- Ends with one machine-readable line:
--   RESULT requests=N seconds=S rps=R p50_us=.. p99_us=.. non2xx=N socket_errors=N

local CLIENTS = 2000

-- Park-Miller: exact in LuaJIT's doubles, and the same addresses every run.
local seed = 20240611
local function random()
  seed = (seed * 16807) % 2147483647
  return seed
end

-- Unicast addresses outside private, loopback, link-local, CGNAT and
-- reserved space, so each one is a real lookup in a city database.
local function public(a, b)
  return not (a == 0 or a == 10 or a == 127 or a >= 224
    or (a == 100 and b >= 64 and b < 128)
    or (a == 169 and b == 254)
    or (a == 172 and b >= 16 and b < 32)
    or (a == 192 and b == 168))
end

local clients = {}
while #clients < CLIENTS do
  local a, b = random() % 256, random() % 256
  if public(a, b) then
    clients[#clients + 1] = string.format("%d.%d.%d.%d", a, b, random() % 256, random() % 256)
  end
end

-- The browsers, one user agent a line, shared with benches/request_path.rs;
-- found next to this script.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local browsers = {}
for line in io.lines(here .. "browsers.txt") do
  if line ~= "" then browsers[#browsers + 1] = line end
end
assert(#browsers == 8, "benches/browsers.txt: expected 8 user agents")

local sent = 0
request = function()
  sent = sent + 1
  return wrk.format("GET", wrk.path, {
    ["X-Forwarded-For"] = clients[sent % #clients + 1],
    ["User-Agent"] = browsers[sent % #browsers + 1],
    ["Origin"] = "https://shop.example.com",
  })
end

done = function(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
