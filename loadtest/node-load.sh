#!/usr/bin/env bash
# Node load behind ringway --shared (or MODE=pinned): node calls and node
# CPU for 1, 10 and 100 clients starting at once as Polkadot-JS does (`ringway-load startup`), with
# the response cache and merged subscriptions (the default) and without the
# cache (cache.enabled = false). The mock node serves a 300 KB metadata.
#
#   loadtest/node-load.sh            (CLIENTS="1 10 100")
#   MODE=pinned loadtest/node-load.sh: the default mode (a node connection
#   per session; cacheable calls still go the core's shared way)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$PWD/target/node-load
mkdir -p "$WORK"
cargo build --release --quiet --bin ringway -p ringway -p ringway-load
LOAD=target/release/ringway-load
ulimit -n 20000 || true
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
cpu() { local t=0; for p in $(ls /proc/$1/task); do read -r -a f < "/proc/$1/task/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
calls() { grep '^calls' "$1" | tail -n 1 | awk '{print $2, $4}'; }

printf '| clients | cache | node calls | state_getMetadata calls | node CPU ms | clients ready p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|---|\n'
port=19970
for clients in ${CLIENTS:-1 10 100}; do
  for cache in on off; do
    port=$((port + 2))
    $LOAD node --listen 127.0.0.1:$port --block-ms 1000 --metadata-bytes 307200 --report >"$WORK/node.log" 2>&1 &
    node=$!; pids+=($node)
    printf '[cache]\nenabled = %s\n[health]\ninterval_ms = 500\n' "$([ $cache = on ] && echo true || echo false)" >"$WORK/gw.toml"
    target/release/ringway --plaintext --listen 127.0.0.1:$((port + 1)) --upstream ws://127.0.0.1:$port \
      $([ "${MODE:-shared}" = shared ] && echo --shared) --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
    gw=$!; pids+=($gw)
    sleep 2   # a probe has seen the finalized block
    c0=$(cpu $node); read -r n0 m0 < <(calls "$WORK/node.log" || echo "0 0"); n0=${n0:-0}; m0=${m0:-0}
    out=$($LOAD startup ws://127.0.0.1:$((port + 1))/ --clients "$clients" --json || true)
    sleep 1.2
    c1=$(cpu $node); read -r n1 m1 < <(calls "$WORK/node.log")
    p50=$(echo "$out" | sed 's/.*"p50_ms":\([0-9.]*\).*/\1/'); p99=$(echo "$out" | sed 's/.*"p99_ms":\([0-9.]*\).*/\1/')
    errs=$(echo "$out" | sed 's/.*"errors":\([0-9]*\).*/\1/')
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$clients" "$cache" "$((n1 - n0))" "$((m1 - m0))" \
      "$(( (c1 - c0) * 10 ))" "$p50" "$p99" "$errs"
    kill $gw $node 2>/dev/null || true
    wait $gw $node 2>/dev/null || true
  done
done
