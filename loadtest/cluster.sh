#!/usr/bin/env bash
# Several gateways on one Redis ([cluster]): how many calls a key with
# `rate = RATE` gets answered when driven at OFFERED calls/s spread over 1, 3
# and 5 gateways for DUR seconds, against the README's bound
# (rate x DUR + burst) and against what separate budgets would answer.
#
#   loadtest/cluster.sh            (RATE=100 OFFERED=600 DUR=10 SYNC_MS=100)
#
# Needs redis-server (Debian: apt-get install redis-server). Prints one
# markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-100} OFFERED=${OFFERED:-600} DUR=${DUR:-10} SYNC_MS=${SYNC_MS:-100}
WORK=$PWD/target/cluster-bench
mkdir -p "$WORK"
REDIS_PORT=26390 NODE_PORT=19970 BASE=18470
cargo build --release --quiet -p ringway -p ringway-load
BIN=$PWD/target/release/ringway LOAD=$PWD/target/release/ringway-load

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
if [ ! -f "$WORK/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
pids+=($!)
$LOAD node --listen 127.0.0.1:$NODE_PORT --block-ms 1000 >"$WORK/node.log" 2>&1 &
pids+=($!)
printf '[[key]]\nname = "bench"\nkey = "bench-key-0123456789ab"\nrate = %s\n' "$RATE" >"$WORK/keys.toml"

get() { # host:port path
  exec 3<>"/dev/tcp/${1%:*}/${1#*:}"
  printf 'GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' "$2" >&3
  cat <&3; exec 3>&-
}
field() { echo "$1" | tr ',{}' '\n\n\n' | grep "\"$2\"" | head -1 | cut -d: -f2; }

echo "| gateways | offered (calls/s) | answered in $DUR s | bound (rate x t + burst) | over the bound | separate budgets would answer |"
echo "|---|---|---|---|---|---|"
for n in 1 3 5; do
  gws=()
  for i in $(seq 0 $((n - 1))); do
    port=$((BASE + i)) mport=$((BASE + 50 + i))
    cat >"$WORK/gw$i.toml" <<EOF
[server]
metrics_listen = "127.0.0.1:$mport"
[keys]
file = "$WORK/keys.toml"
[cluster]
redis = "redis://127.0.0.1:$REDIS_PORT/"
sync_ms = $SYNC_MS
prefix = "bench$n"
instance = "gw$i"
EOF
    $BIN --listen 127.0.0.1:$port --workers 1 --no-pin --cert "$WORK/cert.pem" --key "$WORK/key.pem" \
      --upstream ws://127.0.0.1:$NODE_PORT --log-level error --config "$WORK/gw$i.toml" >"$WORK/gw$i.log" 2>&1 &
    gws+=($!); pids+=($!)
  done
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 100); do
      get 127.0.0.1:$((BASE + 50 + i)) /health 2>/dev/null | grep -q "\"instances\":$n" && break
      sleep 0.1
    done
  done
  outs=()
  for i in $(seq 0 $((n - 1))); do
    $LOAD run wss://127.0.0.1:$((BASE + i))/ --insecure --connections 4 --rate $((OFFERED / n)) \
      --duration "$DUR" --json --quiet --keys "$WORK/keys.toml" >"$WORK/load$i.json" 2>/dev/null &
    outs+=($!)
  done
  for p in "${outs[@]}"; do wait "$p" || true; done
  ok=0
  # `ok` counts every answer, `errors` those that are errors (-32005 here).
  for i in $(seq 0 $((n - 1))); do
    j=$(cat "$WORK/load$i.json")
    ok=$((ok + $(field "$j" ok) - $(field "$j" errors)))
  done
  bound=$((RATE * DUR + RATE))
  separate=$(( n * (RATE * DUR + RATE) )); [ $separate -gt $((OFFERED * DUR)) ] && separate=$((OFFERED * DUR))
  over=$((ok > bound ? ok - bound : 0))
  echo "| $n | $OFFERED | $ok | $bound | $over | $separate |"
  for p in "${gws[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
done
