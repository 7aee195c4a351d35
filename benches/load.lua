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

local browsers = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.102 Mobile Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
  "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
  "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Mobile Safari/537.36",
  "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
}

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
