#!/usr/bin/env bash
# ringway vs nginx 1.22, side by side, same machine, same run, alternating.
#
# Both proxies terminate TLS with the same ECDSA P-256 certificate in front of
# the same mock node (ringway-load node), with one worker per core. nginx is
# configured like the server block of the Polkadot wiki (seed 000): the same
# proxy_set_header lines, proxy_http_version 1.1, proxy_buffering off,
# ssl_protocols TLSv1 TLSv1.1 TLSv1.2, its cipher list, a shared session cache.
#
#   loadtest/bench.sh [ROUNDS]        (default 3; needs nginx: apt-get install nginx-light)
#   ONLY_B4=1: memory only; SKIP_B4=1: everything else; DUR=8: seconds per load run;
#   B8_RATE=8000: the light fixed rate (messages per second) of B8
#
# Prints one markdown table per benchmark, medians of ROUNDS alternated runs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DUR=${DUR:-8}
WORK=$PWD/target/bench
mkdir -p "$WORK"
NODE_PORT=19944 RW_PORT=18443 NGX_PORT=18444 SH_PORT=18445
# ringway (sessions pinned to their own node connection, as nginx does),
# ringway --shared (a core's sessions share one node connection), nginx.
PROXIES=${PROXIES:-ringway shared nginx}
WORKERS=$(nproc)

command -v nginx >/dev/null || { echo "bench: nginx not found (apt-get install nginx-light)"; exit 1; }
cargo build --release --quiet --bin ringway -p ringway -p ringway-load
LOAD=target/release/ringway-load
ulimit -n 20000 || true

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT

# --- certificate (ECDSA P-256, SAN localhost/127.0.0.1) ---
if [ ! -f "$WORK/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi

# --- the mock node ---
# Listeners use SO_REUSEPORT: a leftover process on one of these ports would
# silently share the load (a second mock node with another chain).
for p in $NODE_PORT $RW_PORT $NGX_PORT $SH_PORT; do
  if ss -Hltn "( sport = :$p )" | grep -q .; then echo "bench: port $p is in use (a leftover process?)"; exit 1; fi
done
$LOAD node --listen 127.0.0.1:$NODE_PORT --block-ms 1000 --workers 1 >"$WORK/node.log" 2>&1 &
pids+=($!)

# --- nginx, as in the seed ---
cat >"$WORK/nginx.conf" <<NGINX
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    server {
        server_name localhost;
        location / {
          proxy_buffering off;
          proxy_pass http://127.0.0.1:$NODE_PORT;
          proxy_set_header X-Real-IP \$remote_addr;
          proxy_set_header Host \$host;
          proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
          proxy_http_version 1.1;
          proxy_set_header Upgrade \$http_upgrade;
          proxy_set_header Connection "upgrade";
        }
        listen 127.0.0.1:$NGX_PORT ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_session_cache shared:cache_nginx_SSL:1m;
        ssl_session_timeout 1440m;
        ssl_protocols TLSv1 TLSv1.1 TLSv1.2;
        ssl_prefer_server_ciphers on;
        ssl_ciphers "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA256:DHE-RSA-AES128-SHA:DHE-RSA-AES256-SHA256:DHE-RSA-AES256-SHA:ECDHE-ECDSA-DES-CBC3-SHA:ECDHE-RSA-DES-CBC3-SHA:EDH-RSA-DES-CBC3-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA:DES-CBC3-SHA:!DSS";
    }
}
NGINX
start_nginx() { nginx -c "$WORK/nginx.conf" -p "$WORK"; sleep 0.5; }
stop_nginx() { nginx -c "$WORK/nginx.conf" -p "$WORK" -s stop 2>/dev/null || true; sleep 0.5; }
start_ringway() { # ringway | shared
  local port=$RW_PORT args=""
  if [ "$1" = shared ]; then port=$SH_PORT; args=--shared; fi
  target/release/ringway --listen 127.0.0.1:$port --no-pin --cert "$WORK/cert.pem" --key "$WORK/key.pem" \
    --upstream ws://127.0.0.1:$NODE_PORT --workers "$WORKERS" --log-level warn $args >"$WORK/$1.log" 2>&1 &
  eval "PID_$1=$!"
  pids+=($!)
  sleep 1
}
stop_ringway() { local p; p=$(proxy_pids "$1"); kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; sleep 0.5; }
start_nginx
start_ringway ringway
start_ringway shared

ngx_pids() { pgrep -f "nginx: (master|worker) process" | tr '\n' ' '; }
proxy_pids() { case $1 in ringway) echo "$PID_ringway" ;; shared) echo "$PID_shared" ;; *) ngx_pids ;; esac; }
port() { case $1 in ringway) echo $RW_PORT ;; shared) echo $SH_PORT ;; *) echo $NGX_PORT ;; esac; }
url() { echo "wss://127.0.0.1:$(port "$1")/"; }
# CPU seconds (user+sys) of a set of processes, all threads.
cpu() { local t=0; for p in $1; do read -r -a f < "/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t $(getconf CLK_TCK)" | awk '{printf "%.3f", $1/$2}'; }
# Proportional set size (KiB) of a set of processes (shared pages split fairly).
pss() { local t=0; for p in $1; do v=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup"); t=$((t + v)); done; echo $t; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

declare -A R
record() { R["$1|$2"]="${R["$1|$2"]:-} $3"; }

[ -n "${ONLY_B4:-}" ] && ROUNDS_LOAD=0 || ROUNDS_LOAD=$ROUNDS
for round in $(seq "$ROUNDS_LOAD"); do
  for p in $PROXIES; do
    P=$(proxy_pids $p); U=$(url $p)
    # B1 + B2: throughput and CPU per request/response pair, closed loop.
    c0=$(cpu "$P")
    out=$($LOAD run "$U" --insecure --connections 100 --depth 1 --duration "$DUR" --json)
    c1=$(cpu "$P")
    ok=$(field "$out" ok); rate=$(field "$out" rate)
    record b1 $p "$rate"
    record b2 $p "$(echo "$c0 $c1 $ok" | awk '{printf "%.2f", ($2-$1)/$3*1e6}')"
    # Per core: pairs per second of proxy CPU time (the machine's 2 cores are
    # shared with the client and the node, which bound the req/s above).
    record b1core $p "$(echo "$c0 $c1 $ok" | awk '{printf "%.0f", $3/($2-$1)}')"
    echo "round $round $p B1 $rate/s errors $(field "$out" errors), CPU $(echo "$c0 $c1" | awk '{print $2-$1}') s" >&2
    # B7: pipelined clients (4 requests in flight per connection, as
    # Polkadot-JS at start-up and ethers with concurrent calls).
    c0=$(cpu "$P")
    out=$($LOAD run "$U" --insecure --connections 100 --depth 4 --duration "$DUR" --json)
    c1=$(cpu "$P"); ok=$(field "$out" ok)
    record b7 $p "$(field "$out" rate)"
    record b7cpu $p "$(echo "$c0 $c1 $ok" | awk '{printf "%.2f", ($2-$1)/$3*1e6}')"
    echo "round $round $p B7 $(field "$out" rate)/s" >&2
    # B7s: the same with a write per request (one TLS record and one send
    # each, as a browser's ws.send): nothing batched by the client.
    c0=$(cpu "$P")
    out=$($LOAD run "$U" --insecure --connections 100 --depth 4 --separate --duration "$DUR" --json)
    c1=$(cpu "$P"); ok=$(field "$out" ok)
    record b7s $p "$(field "$out" rate)"
    record b7scpu $p "$(echo "$c0 $c1 $ok" | awk '{printf "%.2f", ($2-$1)/$3*1e6}')"
    echo "round $round $p B7s $(field "$out" rate)/s" >&2
    # B8: a light fixed rate: CPU per message and tail latency when idle most of the time.
    c0=$(cpu "$P")
    out=$($LOAD run "$U" --insecure --connections 100 --rate "${B8_RATE:-8000}" --duration "$DUR" --json)
    c1=$(cpu "$P"); ok=$(field "$out" ok)
    record b8cpu $p "$(echo "$c0 $c1 $ok" | awk '{printf "%.2f", ($2-$1)/$3*1e6}')"
    record b8p99 $p "$(field "$out" p99_ms)"
    echo "round $round $p B8 p99 $(field "$out" p99_ms) ms" >&2
  done
  # The limit: the client straight to the node (plain ws://, no proxy, no
  # TLS): the floor any proxy approaches.
  out=$($LOAD run "ws://127.0.0.1:$NODE_PORT/" --connections 100 --depth 1 --duration "$DUR" --json)
  record b1 limit "$(field "$out" rate)"
  out=$($LOAD run "ws://127.0.0.1:$NODE_PORT/" --connections 100 --depth 4 --duration "$DUR" --json)
  record b7 limit "$(field "$out" rate)"
  out=$($LOAD run "ws://127.0.0.1:$NODE_PORT/" --connections 100 --depth 4 --separate --duration "$DUR" --json)
  record b7s limit "$(field "$out" rate)"
done
# B3 at a rate both sustain: half of nginx's median B1.
B3_RATE=${B3_RATE:-$(echo "${R[b1|nginx]:-0}" | median | awk '{printf "%d", $1/2}')}
for round in $(seq "$ROUNDS_LOAD"); do
  for p in $PROXIES; do
    out=$($LOAD run "$(url $p)" --insecure --connections 100 --rate "$B3_RATE" --duration "$DUR" --json)
    record b3p50 $p "$(field "$out" p50_ms)"; record b3p99 $p "$(field "$out" p99_ms)"; record b3p999 $p "$(field "$out" p999_ms)"
    echo "round $round $p B3 @$B3_RATE/s p99 $(field "$out" p99_ms) ms" >&2
    # B5: new TLS + WebSocket sessions per second, and proxy CPU per session.
    P=$(proxy_pids $p); c0=$(cpu "$P")
    out=$($LOAD connect "$(url $p)" --insecure --count 3000 --concurrency 64 --duration 30 --json)
    c1=$(cpu "$P"); ok=$(field "$out" ok)
    record b5 $p "$(field "$out" rate)"
    record b5cpu $p "$(echo "$c0 $c1 $ok" | awk '{printf "%.1f", ($2-$1)/$3*1e6}')"
    record b5core $p "$(echo "$c0 $c1 $ok" | awk '{printf "%.0f", $3/($2-$1)}')"
    echo "round $round $p B5 $(field "$out" rate)/s" >&2
    # B6: 300 KB responses.
    out=$($LOAD run "$(url $p)" --insecure --connections 10 --method state_getMetadata --duration "$DUR" --json)
    record b6 $p "$(field "$out" bytes | awk -v d="$DUR" '{printf "%.1f", $1/1e6/d}')"
    echo "round $round $p B6 done" >&2
  done
done
# B4: memory per idle WSS connection (PSS of all proxy processes), 2,000 and
# 8,000. Each measurement starts a fresh proxy: memory freed by an earlier run
# may stay mapped, which would hide this run's growth.
for n in $([ -n "${SKIP_B4:-}" ] || echo 2000 8000); do
  for round in $(seq "$ROUNDS"); do
    for p in $PROXIES; do
      if [ $p = nginx ]; then stop_nginx; start_nginx; else stop_ringway $p; start_ringway $p; fi
      # One session first, so one-time allocations (TLS config, pools) are in the baseline.
      $LOAD connect "$(url $p)" --insecure --count 1 --json >/dev/null
      P=$(proxy_pids $p); m0=$(pss "$P")
      $LOAD connect "$(url $p)" --insecure --count $n --concurrency 64 --hold --duration 15 --json >"$WORK/hold.json" &
      lp=$!
      # wait until every connection is open
      for _ in $(seq 40); do
        est=$(ss -Htn state established "( dport = :$(port $p) )" | wc -l)
        [ "$est" -ge "$n" ] && break; sleep 0.5
      done
      sleep 1; m1=$(pss "$(proxy_pids $p)")
      record "b4_$n" $p "$(echo "$m0 $m1 $n" | awk '{printf "%.1f", ($2-$1)/$3}')"
      echo "round $round $p B4 $n conns ($est open): $(( (m1-m0) )) KiB" >&2
      wait $lp || true
      sleep 2
    done
  done
done

row() { # name key unit
  local a s b l; a=$(echo "${R[$2|ringway]:-}" | median); s=$(echo "${R[$2|shared]:-}" | median); b=$(echo "${R[$2|nginx]:-}" | median)
  l=$(echo "${R[$2|limit]:-}" | median)
  ratio() { echo "$1 $2" | awk '{ if ($1 != "" && $2 > 0) printf "%.2f", $1/$2; else print "-" }'; }
  echo "| $1 | $a | $s | $b | $(ratio "$a" "$b") | $(ratio "$s" "$b") | ${l:--} | $3 |"
}
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); rounds: $ROUNDS, ${DUR}s each; $(date -u +%F)"
echo
echo "| benchmark | ringway | ringway --shared | nginx 1.22 | ringway/nginx | shared/nginx | limit (no proxy) | unit |"
echo "|---|---|---|---|---|---|---|---|"
row "B1 throughput, 100 conns, closed loop" b1 "req/s (higher is better)"
row "B1 per proxy core (pairs per CPU-second of the proxy)" b1core "req/s/core (higher is better)"
row "B2 proxy CPU per request/response" b2 "µs (lower is better)"
row "B7 throughput, 100 conns, 4 in flight each (pipelined)" b7 "msgs/s (higher is better)"
row "B7 proxy CPU per message, 4 in flight" b7cpu "µs (lower is better)"
row "B7s throughput, 4 in flight, a write per request" b7s "msgs/s (higher is better)"
row "B7s proxy CPU per message, 4 in flight, a write per request" b7scpu "µs (lower is better)"
row "B8 proxy CPU per message @ ${B8_RATE:-8000} msgs/s" b8cpu "µs (lower is better)"
row "B8 p99 @ ${B8_RATE:-8000} msgs/s" b8p99 "ms"
row "B3 p50 @ $B3_RATE req/s" b3p50 "ms"
row "B3 p99 @ $B3_RATE req/s" b3p99 "ms"
row "B3 p99.9 @ $B3_RATE req/s" b3p999 "ms"
row "B4 memory per idle WSS conn, 2,000" b4_2000 "KiB (lower is better)"
row "B4 memory per idle WSS conn, 8,000" b4_8000 "KiB (lower is better)"
row "B5 new TLS+WS sessions" b5 "sessions/s (higher is better)"
row "B5 proxy CPU per session" b5cpu "µs (lower is better)"
row "B5 per proxy core (sessions per CPU-second of the proxy)" b5core "sessions/s/core (higher is better)"
row "B6 300 KB responses, 10 conns" b6 "MB/s (higher is better)"
