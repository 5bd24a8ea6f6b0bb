#!/usr/bin/env bash
# What one gateway's sync with Redis ([cluster]) costs as its keys grow:
# for 1, 1,000 and 10,000 keys, an idle gateway syncing every SYNC_MS for
# DUR seconds, once with keys that have a rate only (KIND=rate) and once
# with keys that also have a quota (KIND=quota: reservations are asked at
# every sync), measured from its
# /metrics (ringway_cluster_syncs_total, ringway_cluster_sync_seconds_total),
# from Redis (INFO: bytes in and out, its CPU) and from /proc (the
# gateway's CPU).
#
#   loadtest/sync-cost.sh       (SYNC_MS=100 DUR=10 KEYS="1 1000 10000" KINDS="rate quota")
#
# Needs redis-server and redis-cli (Debian: apt-get install redis-server).
# Prints one markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
SYNC_MS=${SYNC_MS:-100} DUR=${DUR:-10} KEYS=${KEYS:-"1 1000 10000"} KINDS=${KINDS:-"rate quota"}
WORK=$PWD/target/sync-cost
mkdir -p "$WORK"
REDIS_PORT=26391 NODE_PORT=19971 PORT=18490 MPORT=18491
cargo build --release --quiet -p ringway -p ringway-load
BIN=$PWD/target/release/ringway LOAD=$PWD/target/release/ringway-load

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
pids+=($!)
$LOAD node --listen 127.0.0.1:$NODE_PORT --block-ms 1000 >"$WORK/node.log" 2>&1 &
pids+=($!)
R() { redis-cli -p $REDIS_PORT "$@"; }
for _ in $(seq 50); do R ping >/dev/null 2>&1 && break; sleep 0.1; done

get() { # path
  exec 3<>"/dev/tcp/127.0.0.1/$MPORT"
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$1" >&3
  cat <&3; exec 3>&-
}
metric() { get /metrics | grep "^$1 " | cut -d' ' -f2; }
info() { R info "$1" | tr -d '\r' | grep "^$2:" | cut -d: -f2; }
cpu() { read -r -a f <"/proc/$1/stat"; echo $((f[13] + f[14])); }
tick=$(getconf CLK_TCK)

echo "| keys | kind | syncs/s | ms per sync | bytes to Redis per sync | bytes from Redis per sync | gateway CPU (% of a core) | Redis CPU (% of a core) |"
echo "|---|---|---|---|---|---|---|---|"
for kind in $KINDS; do
for n in $KEYS; do
  extra=""; [ "$kind" = quota ] && extra="quota = 1000000"
  R flushall >/dev/null
  awk -v n="$n" -v extra="$extra" 'BEGIN { for (i = 0; i < n; i++)
    printf "[[key]]\nname = \"k%d\"\nkey = \"sync-cost-key-%08d\"\nrate = 100\n%s\n\n", i, i, extra }' >"$WORK/keys.toml"
  cat >"$WORK/gw.toml" <<EOF
[server]
metrics_listen = "127.0.0.1:$MPORT"
[keys]
file = "$WORK/keys.toml"
[cluster]
redis = "redis://127.0.0.1:$REDIS_PORT/"
sync_ms = $SYNC_MS
prefix = "sync$kind$n"
instance = "gw"
EOF
  $BIN --listen 127.0.0.1:$PORT --workers 1 --no-pin --upstream ws://127.0.0.1:$NODE_PORT \
    --log-level error --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
  gw=$!; pids+=($gw)
  for _ in $(seq 300); do
    [ "$(metric ringway_cluster_syncs_total 2>/dev/null || echo 0)" -ge 3 ] 2>/dev/null && break
    sleep 0.1
  done
  s0=$(metric ringway_cluster_syncs_total) t0=$(metric ringway_cluster_sync_seconds_total)
  i0=$(info stats total_net_input_bytes) o0=$(info stats total_net_output_bytes)
  r0=$(info cpu used_cpu_user) q0=$(info cpu used_cpu_sys) c0=$(cpu $gw)
  sleep "$DUR"
  s1=$(metric ringway_cluster_syncs_total) t1=$(metric ringway_cluster_sync_seconds_total)
  i1=$(info stats total_net_input_bytes) o1=$(info stats total_net_output_bytes)
  r1=$(info cpu used_cpu_user) q1=$(info cpu used_cpu_sys) c1=$(cpu $gw)
  # The metrics scrapes are a few hundred bytes of the gateway's CPU; the
  # redis-cli INFO calls are in Redis's byte counts (~4 KiB in all).
  awk -v n="$n" -v kind="$kind" -v s=$((s1 - s0)) -v t0="$t0" -v t1="$t1" -v i=$((i1 - i0)) -v o=$((o1 - o0)) \
    -v r0="$r0" -v r1="$r1" -v q0="$q0" -v q1="$q1" -v c=$((c1 - c0)) -v tick="$tick" -v d="$DUR" \
    'BEGIN { printf "| %d | %s | %.1f | %.2f | %d | %d | %.1f | %.1f |\n", n, kind, s / d, (t1 - t0) * 1000 / s,
      i / s, o / s, 100 * c / tick / d, 100 * ((r1 - r0) + (q1 - q0)) / d }'
  kill $gw; wait $gw 2>/dev/null || true
done
done
