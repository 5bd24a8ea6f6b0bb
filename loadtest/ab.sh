#!/usr/bin/env bash
# Two ringway binaries side by side (the one before a change, the one after),
# same machine, same run, alternating: proxy CPU per message from /proc.
#
#   loadtest/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]     (default 3 rounds)
#   DUR=5: seconds per load run; WORKERS=1: ringway workers
#   OLD_ARGS, NEW_ARGS: more flags for each binary (e.g. NEW_ARGS="--config
#   keys.toml" with the same binary twice: a feature off and on);
#   OLD_LOAD, NEW_LOAD: more `ringway-load run` flags for each (--keys FILE)
#   The proxies run on CPU 0, the mock node and the load on the others
#   (taskset), so that they do not take turns on one core.
#
# Each binary runs pinned (the default configuration) and --shared, with
# TLS, in front of one mock node (ringway-load node), 100 connections:
# 1 in flight, 4 in flight with a write per request, 8,000 msgs/s. Prints
# one markdown table of medians (µs of proxy CPU per message).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-3}
DUR=${DUR:-5} WORKERS=${WORKERS:-1}
WORK=$PWD/target/ab
mkdir -p "$WORK"
NODE_PORT=19954 PORTS=(18453 18454 18455 18456)
cargo build --release --quiet -p ringway-load
LOAD=target/release/ringway-load

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
for p in $NODE_PORT "${PORTS[@]}"; do
  if ss -Hltn "( sport = :$p )" | grep -q .; then echo "ab: port $p is in use"; exit 1; fi
done
if [ ! -f "$WORK/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi
taskset -c 1-$(($(nproc) - 1)) $LOAD node --listen 127.0.0.1:$NODE_PORT --block-ms 1000 --workers 1 >"$WORK/node.log" 2>&1 &
pids+=($!)

# name -> binary, flags, port
declare -A BIN FLAGS PORT PID
names=(old new old-shared new-shared)
BIN=([old]=$OLD [new]=$NEW [old-shared]=$OLD [new-shared]=$NEW)
FLAGS=([old]="${OLD_ARGS:-}" [new]="${NEW_ARGS:-}" [old-shared]="--shared ${OLD_ARGS:-}" [new-shared]="--shared ${NEW_ARGS:-}")
declare -A LOADX
LOADX=([old]="${OLD_LOAD:-}" [new]="${NEW_LOAD:-}" [old-shared]="${OLD_LOAD:-}" [new-shared]="${NEW_LOAD:-}")
i=0
for n in "${names[@]}"; do
  PORT[$n]=${PORTS[$i]}; i=$((i + 1))
  # shellcheck disable=SC2086
  taskset -c 0 "${BIN[$n]}" --listen 127.0.0.1:${PORT[$n]} --workers "$WORKERS" --no-pin --cert "$WORK/cert.pem" \
    --key "$WORK/key.pem" --upstream ws://127.0.0.1:$NODE_PORT --log-level error ${FLAGS[$n]} \
    >"$WORK/$n.log" 2>&1 &
  PID[$n]=$!; pids+=($!)
done
sleep 2

cpu() { read -r -a f < "/proc/$1/stat"; echo $((f[13] + f[14])); }
field() { echo "$1" | tr ',{}' '\n\n\n' | grep "\"$2\"" | head -1 | cut -d: -f2; }
declare -A R
for round in $(seq "$ROUNDS"); do
  for n in "${names[@]}"; do
    U=wss://127.0.0.1:${PORT[$n]}/
    for kind in d1 d4s r8k; do
      case $kind in
        d1) args=(--depth 1) ;;
        d4s) args=(--depth 4 --separate) ;;
        r8k) args=(--rate 8000) ;;
      esac
      c0=$(cpu "${PID[$n]}")
      # shellcheck disable=SC2086
      out=$(taskset -c 1-$(($(nproc) - 1)) $LOAD run "$U" --insecure --connections 100 "${args[@]}" --duration "$DUR" --json ${LOADX[$n]})
      c1=$(cpu "${PID[$n]}")
      us=$(echo "$c0 $c1 $(field "$out" ok) $(getconf CLK_TCK)" | awk '{printf "%.2f", ($2-$1)/$4/$3*1e6}')
      R[$n|$kind]="${R[$n|$kind]:-} $us"
      echo "round $round $n $kind $us µs/msg (errors $(field "$out" errors))" >&2
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
lowest() { tr ' ' '\n' | grep . | sort -g | head -1; }
echo "| proxy CPU per message (µs), median (lowest) | old | new | new/old |"
echo "|---|---|---|---|"
for mode in "" -shared; do
  for kind in d1 d4s r8k; do
    o=$(echo "${R[old$mode|$kind]}" | median); w=$(echo "${R[new$mode|$kind]}" | median)
    ol=$(echo "${R[old$mode|$kind]}" | lowest); wl=$(echo "${R[new$mode|$kind]}" | lowest)
    label=$(case $kind in d1) echo "1 in flight" ;; d4s) echo "4 in flight, a write each" ;; r8k) echo "8,000 msgs/s" ;; esac)
    m=pinned; [ -n "$mode" ] && m=shared
    echo "| $m, $label | $o ($ol) | $w ($wl) | $(echo "$o $w $ol $wl" | awk '{printf "%.3f (%.3f)", $2/$1, $4/$3}') |"
  done
done
