#!/usr/bin/env bash
# The cost of standing in front of a site (README, "Fronting a site"): wrk
# against the same static upstream, directly and through a proxy, in
# alternating rounds on loopback:
#   direct    wrk -> nginx upstream over plain HTTP/1.1 keep-alive (the floor);
#   visitord  wrk -> visitord (TLS, [[site]], X-Visitor-* headers) -> upstream;
#   nginx     wrk -> nginx (TLS, proxy_pass with keep-alive upstream
#             connections, X-Forwarded-* headers) -> upstream: what the same
#             hop costs with the usual reverse proxy;
# and, to separate TLS termination from the proxy hop, each server answering
# by itself over TLS: visitord's /healthz (a host that is no site) and nginx
# returning the same 512 bytes (vd-local, ngx-local).
# The upstream is an nginx server block returning a fixed 512-byte body.
# Prints each round, then the median req/s and p99 per target and the
# ratios to `direct`.
#
# usage: benches/site-overhead.sh     (after `cargo build --release`)
# environment: ROUNDS (3) DURATION (8s) CONNECTIONS (32) WRK_THREADS (1)
#   THREADS (2, visitord's server.threads and nginx's worker_processes)
#   VISITORD_BIN (target/release/visitord)
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rounds=${ROUNDS:-3}
duration=${DURATION:-8s}
connections=${CONNECTIONS:-32}
wrk_threads=${WRK_THREADS:-1}
threads=${THREADS:-2}
bin=${VISITORD_BIN:-$root/target/release/visitord}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx" >&2; exit 2; }

run=$(mktemp -d /tmp/visitord-site-overhead.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$run/nginx.pid" ] && kill "$(cat "$run/nginx.pid")" 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port); ngx_tls=$(port); vd_tls=$(port); vd_http=$(port); vd_metrics=$(port)

mkdir -p "$run/tls"
cat > "$run/visitord.toml" <<CONF
[server]
threads = $threads
grace_period = "1s"
[[listen]]
addr = "127.0.0.1:$vd_tls"
tls = true
[[listen]]
addr = "127.0.0.1:$vd_http"
redirect_https_port = $vd_tls
[tls]
certificates = [{ cert = "tls/localhost.crt", key = "tls/localhost.key" }]
[api]
projects = "$root/conf/projects.toml"
[geo]
databases = ["$root/geo-db/iptoasn-country.mmdb"]
[client_ip]
trusted_proxies = ["127.0.0.0/8"]
[metrics]
addr = "127.0.0.1:$vd_metrics"
[[site]]
hosts = ["site.test"]
upstreams = ["127.0.0.1:$up"]
CONF
"$bin" dev-cert --config "$run/visitord.toml" >/dev/null

body=$(head -c 512 /dev/zero | tr '\0' 'x')
cat > "$run/nginx.conf" <<CONF
worker_processes $threads;
pid $run/nginx.pid;
error_log $run/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$up; keepalive 64; }
  server {
    listen 127.0.0.1:$up;
    location / { default_type text/plain; return 200 '$body'; }
  }
  server {
    listen 127.0.0.1:$ngx_tls ssl;
    ssl_certificate $run/tls/localhost.crt;
    ssl_certificate_key $run/tls/localhost.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /local { default_type text/plain; return 200 '$body'; }
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
nginx -q -c "$run/nginx.conf"

RUST_LOG=warn "$bin" run --config "$run/visitord.toml" >"$run/visitord.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -skf -o /dev/null -H 'Host: site.test' "https://127.0.0.1:$vd_tls/" && break
  sleep 0.1
done
curl -skf -o /dev/null -H 'Host: site.test' "https://127.0.0.1:$vd_tls/" || { cat "$run/visitord.log" >&2; exit 1; }

ua='Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'
declare -A url=(
  [direct]="http://127.0.0.1:$up/"
  [visitord]="https://127.0.0.1:$vd_tls/"
  [nginx]="https://127.0.0.1:$ngx_tls/"
  [vd-local]="https://127.0.0.1:$vd_tls/healthz"
  [ngx-local]="https://127.0.0.1:$ngx_tls/local"
)
declare -A host=([direct]=site.test [visitord]=site.test [nginx]=site.test [vd-local]=localhost [ngx-local]=localhost)
targets=(direct visitord nginx vd-local ngx-local)

# "req/s p99_ms" from one wrk run of target $1.
measure() {
  local out
  out=$(wrk -t"$wrk_threads" -c"$connections" -d"$duration" --latency \
    -H "Host: ${host[$1]}" -H "User-Agent: $ua" -H 'X-Forwarded-For: 81.2.69.142' "${url[$1]}")
  local rps p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}' <<<"$out")
  echo "$rps $p99"
}

declare -A all_rps all_p99
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    read -r rps p99 < <(measure "$t")
    printf 'round %d  %-9s %10.0f req/s  p99 %7.2f ms\n' "$r" "$t" "$rps" "$p99"
    all_rps[$t]+="$rps "
    all_p99[$t]+="$p99 "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
printf '%-9s %12s %10s %14s %12s\n' target "median req/s" "p99 ms" "req/s÷direct" "p99×direct"
d_rps=$(median <<<"${all_rps[direct]}"); d_p99=$(median <<<"${all_p99[direct]}")
for t in "${targets[@]}"; do
  m_rps=$(median <<<"${all_rps[$t]}"); m_p99=$(median <<<"${all_p99[$t]}")
  printf '%-9s %12.0f %10.2f %14.2f %12.2f\n' "$t" "$m_rps" "$m_p99" \
    "$(awk -v a="$m_rps" -v b="$d_rps" 'BEGIN{print a/b}')" \
    "$(awk -v a="$m_p99" -v b="$d_p99" 'BEGIN{print a/b}')"
done
