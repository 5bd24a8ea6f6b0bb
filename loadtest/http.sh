#!/usr/bin/env bash
# JSON-RPC over HTTP: ringway (cache on, the default, and cache off) and
# nginx 1.22 (`proxy_pass` to the node's HTTP port, keep-alive upstream),
# side by side, same machine, same run, alternating, in front of one mock
# node (ringway-load node). TLS on every proxy, keep-alive clients (wrk).
#
#   loadtest/http.sh [ROUNDS]        (default 3; needs nginx and wrk:
#                                     apt-get install nginx-light wrk)
#   DUR=5: seconds per run; CONNS=50: wrk connections; ONLY_INDEXER=1: the replay only
#
# The proxies run on CPU 0, the node and wrk on the others (taskset). Prints:
#   1. requests/s and proxy CPU per request (µs), medians: system_health
#      (no proxy can cache it) and chain_getBlockHash of a finalized block;
#   2. an indexer's replay (loadtest/indexer.py: 4 indexers over the same
#      900 finalized blocks, hash + header + storage each, 10,800 calls):
#      the calls that reached the node through each proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DUR=${DUR:-5} CONNS=${CONNS:-50}
WORK=$PWD/target/http-bench
mkdir -p "$WORK"
NODE_PORT=19964 ON_PORT=18463 OFF_PORT=18464 NGX_PORT=18465
command -v nginx >/dev/null || { echo "http.sh: nginx not found (apt-get install nginx-light)"; exit 1; }
command -v wrk >/dev/null || { echo "http.sh: wrk not found (apt-get install wrk)"; exit 1; }
cargo build --release --quiet --bin ringway -p ringway -p ringway-load
LOAD=target/release/ringway-load
RINGWAY=${RINGWAY:-target/release/ringway}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT
for p in $NODE_PORT $ON_PORT $OFF_PORT $NGX_PORT; do
  if ss -Hltn "( sport = :$p )" | grep -q .; then echo "http.sh: port $p is in use"; exit 1; fi
done
if [ ! -f "$WORK/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi
others=1-$(($(nproc) - 1))

# The node, counting its clients' calls (a line when the count changes).
taskset -c "$others" $LOAD node --listen 127.0.0.1:$NODE_PORT --block-ms 60000 --archive --report --workers 1 \
  >"$WORK/node.log" 2>&1 &
pids+=($!)

cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream node { server 127.0.0.1:$NODE_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGX_PORT ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_session_cache shared:SSL:10m;
    location / {
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
taskset -c 0 nginx -c "$WORK/nginx.conf" -g "daemon off;" &
pids+=($!)
NGX_PID=$!

printf '[cache]\nenabled = false\n' >"$WORK/off.toml"
declare -A PORT PID
for v in on off; do
  port=$([ $v = on ] && echo $ON_PORT || echo $OFF_PORT)
  cfg=()
  [ $v = off ] && cfg=(--config "$WORK/off.toml")
  taskset -c 0 "$RINGWAY" --listen 127.0.0.1:$port --workers 1 --no-pin --cert "$WORK/cert.pem" \
    --key "$WORK/key.pem" --upstream ws://127.0.0.1:$NODE_PORT --log-level error "${cfg[@]}" \
    >"$WORK/$v.log" 2>&1 &
  PORT[$v]=$port PID[$v]=$!
  pids+=($!)
done
PORT[nginx]=$NGX_PORT PID[nginx]=$NGX_PID
# nginx's worker is the child that does the work.
sleep 2
PID[nginx]=$(pgrep -P "$NGX_PID" | head -1)

cpu() { read -r -a f < "/proc/$1/stat"; echo $((f[13] + f[14])); }
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY")
LUA
HEALTH='{"jsonrpc":"2.0","id":1,"method":"system_health","params":[]}'
HASH='{"jsonrpc":"2.0","id":1,"method":"chain_getBlockHash","params":[500]}'
declare -A RPS CPU
[ -n "${ONLY_INDEXER:-}" ] && ROUNDS=0
for round in $(seq "$ROUNDS"); do
  for kind in health hash; do
    body=$([ $kind = health ] && echo "$HEALTH" || echo "$HASH")
    for p in on off nginx; do
      c0=$(cpu "${PID[$p]}")
      out=$(BODY="$body" taskset -c "$others" wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$WORK/post.lua" \
        "https://127.0.0.1:${PORT[$p]}/")
      c1=$(cpu "${PID[$p]}")
      total=$(echo "$out" | awk '/requests in/ {print $1}')
      errors=$(echo "$out" | awk '/Non-2xx|Socket errors/' | tr '\n' ' ')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      us=$(echo "$c0 $c1 $total $(getconf CLK_TCK)" | awk '{printf "%.1f", ($2-$1)/$4/$3*1e6}')
      RPS[$p|$kind]="${RPS[$p|$kind]:-} $rps"
      CPU[$p|$kind]="${CPU[$p|$kind]:-} $us"
      echo "round $round $p $kind: $rps req/s, $us µs/request ${errors}" >&2
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
[ -z "${ONLY_INDEXER:-}" ] && {
echo "| JSON-RPC over HTTP, medians of $ROUNDS | ringway, cache on | ringway, cache off | nginx |"
echo "|---|---|---|---|"
for kind in health hash; do
  name=$([ $kind = health ] && echo "system_health" || echo "chain_getBlockHash(500), finalized")
  row="| $name: requests/s"
  for p in on off nginx; do row="$row | $(echo "${RPS[$p|$kind]}" | median)"; done
  echo "$row |"
  row="| $name: proxy CPU per request (µs)"
  for p in on off nginx; do row="$row | $(echo "${CPU[$p|$kind]}" | median)"; done
  echo "$row |"
done
}

# The indexer's replay: the node's call count before and after, per proxy.
calls() { tail -1 "$WORK/node.log" | awk '{print $2}'; }
echo
echo "| an indexer's replay: 4 indexers x 900 blocks x (hash, header, storage) | calls sent | calls that reached the node |"
echo "|---|---|---|"
for p in on off nginx; do
  sleep 1.2
  before=$(calls)
  sent=$(taskset -c "$others" python3 loadtest/indexer.py "https://127.0.0.1:${PORT[$p]}/" 4 900)
  sleep 1.2
  after=$(calls)
  label=$([ $p = nginx ] && echo "nginx" || echo "ringway, cache $p")
  echo "| $label | $sent | $((after - before)) |"
done
