#!/usr/bin/env bash
# Autobahn|Testsuite (fuzzingclient) against ringway in front of a conformant
# echo node (tungstenite), over ws:// and wss://. Every case outside 12.* and
# 13.* (compression, not negotiated by ringway) must be OK, NON-STRICT or
# INFORMATIONAL. Needs Python 2.7 (autobahntestsuite is Python 2 only).
#
#   tests/autobahn/run.sh            # reports in target/autobahn/
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=$root/target/autobahn
mkdir -p "$out"

py2=""
for cand in python2.7 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7; do
  # (a pyenv shim exists even when that version is not selected: try to run it)
  if "$cand" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then
    py2=$("$cand" -c 'import sys; print(sys.executable)'); break
  fi
done
if [ -z "$py2" ]; then
  echo "autobahn: no Python 2.7 found; skipping"
  exit 0
fi
wstest="$(dirname "$py2")/wstest"
if [ ! -x "$wstest" ]; then
  echo "autobahn: installing autobahntestsuite for $py2"
  "$py2" -m pip install --quiet --disable-pip-version-check autobahntestsuite
fi

cargo build --release --quiet --bin ringway --example echo_upstream

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Start a program that prints "... ws[s]://ADDR ..." on stdout; set ADDR.
# (Not in a command substitution: the pid must reach the cleanup list.)
start() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    ADDR=$({ grep -o 'wss\?://[0-9.:]*' "$log" || true; } | head -1 | sed 's#wss\?://##')
    if [ -n "$ADDR" ]; then return; fi
    sleep 0.1
  done
  echo "autobahn: $* did not start:" >&2; cat "$log" >&2; exit 1
}

start "$out/echo.log" target/release/examples/echo_upstream 127.0.0.1:0
echo_addr=$ADDR
# The echo node is not a JSON-RPC node: ringway runs as a plain WebSocket
# relay (no call is read: no cache, no per-call limits; messages as large
# as Autobahn sends), and health checks only test the node's upgrade.
cat >"$out/relay.toml" <<TOML
[limits]
max_frame_bytes = 16777216
max_message_bytes = 67108864
[cache]
enabled = false
[admission]
max_subscriptions_per_connection = 0
max_inflight_per_connection = 0
TOML
start "$out/ringway-ws.log" target/release/ringway --config "$out/relay.toml" --listen 127.0.0.1:0 --plaintext \
  --upstream "ws://$echo_addr" --health-probe connect --log-level warn
ws_addr=$ADDR
start "$out/ringway-wss.log" target/release/ringway --config "$out/relay.toml" --listen 127.0.0.1:0 \
  --upstream "ws://$echo_addr" --health-probe connect --log-level warn
wss_addr=$ADDR

cat >"$out/fuzzingclient.json" <<JSON
{
  "outdir": "$out/reports",
  "servers": [
    {"agent": "ringway-ws", "url": "ws://$ws_addr"},
    {"agent": "ringway-wss", "url": "wss://$wss_addr"}
  ],
  "cases": ["*"],
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {}
}
JSON
rm -rf "$out/reports"
(cd "$out" && "$wstest" -m fuzzingclient -s fuzzingclient.json >"$out/wstest.log" 2>&1)

python3 - "$out/reports/index.json" <<'PY'
import json, sys
from collections import Counter
ok = {"OK", "NON-STRICT", "INFORMATIONAL"}
bad = 0
for agent, cases in sorted(json.load(open(sys.argv[1])).items()):
    counts = Counter(c["behavior"] for c in cases.values())
    print(f"autobahn {agent}: {len(cases)} cases: {dict(counts)}")
    for case, c in sorted(cases.items()):
        if c["behavior"] not in ok or c["behaviorClose"] not in ok:
            bad += 1
            print(f"  {case}: {c['behavior']} / close {c['behaviorClose']}")
print(f"autobahn: {'all cases pass' if bad == 0 else f'{bad} cases fail'} (reports: {sys.argv[1].rsplit('/', 1)[0]}/index.html)")
sys.exit(1 if bad else 0)
PY
