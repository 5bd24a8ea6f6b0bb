#!/usr/bin/env bash
# Hedged reads on shared WebSocket connections (BENCHMARKS.md, issue 24):
# two mock nodes, one late by 200 ms with every DELAY_EVERY-th answer;
# ringway --shared with pool.hedge off and auto, alternately, ROUNDS rounds;
# `ringway-load run` at depth 1 over 20 connections: latency percentiles.
#
#   loadtest/hedge-ws.sh [DELAY_EVERY] [ROUNDS]      (default 10 and 2)
set -euo pipefail
cd "$(dirname "$0")/.."
EVERY=${1:-10} ROUNDS=${2:-2} DUR=${DUR:-8}
WORK=$PWD/target/hedge-ws
mkdir -p "$WORK"
cargo build --release --quiet -p ringway -p ringway-load
BIN=$PWD/target/release/ringway LOAD=$PWD/target/release/ringway-load
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
$LOAD node --listen 127.0.0.1:19981 --block-ms 1000 >/dev/null 2>&1 &
pids+=($!)
$LOAD node --listen 127.0.0.1:19982 --block-ms 1000 --delay-ms 200 --delay-every "$EVERY" >/dev/null 2>&1 &
pids+=($!)
field() { echo "$1" | tr ',{}' '\n\n\n' | grep "\"$2\"" | head -1 | cut -d: -f2; }
echo "| pool.hedge, round | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for hedge in off auto; do
    printf '[health]\nprobe = "connect"\n[pool]\nshared = true\nhedge = "%s"\n' "$hedge" >"$WORK/$hedge.toml"
    $BIN --listen 127.0.0.1:18490 --workers 1 --no-pin --log-level error --config "$WORK/$hedge.toml" \
      --upstream ws://127.0.0.1:19981 --upstream ws://127.0.0.1:19982 >"$WORK/gw.log" 2>&1 &
    gw=$!; pids+=($gw)
    sleep 1
    out=$($LOAD run wss://127.0.0.1:18490/ --insecure --connections 20 --depth 1 --duration "$DUR" --json --quiet)
    kill "$gw"; wait "$gw" 2>/dev/null || true
    echo "| $hedge, $round | $(field "$out" p50_ms) | $(field "$out" p90_ms) | $(field "$out" p99_ms) | $(field "$out" p999_ms) | $(field "$out" max_ms) |"
  done
done
