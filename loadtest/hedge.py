#!/usr/bin/env python3
"""Hedged reads over HTTP, measured (BENCHMARKS.md, "Hedged reads over HTTP").

    cargo build --release -p ringway -p ringway-load
    python3 loadtest/hedge.py [DELAY_EVERY]     (default 10: a tenth of one node's answers late)

Two mock nodes, one late by 200 ms with every DELAY_EVERY-th answer; ringway
(2 workers) with pool.hedge off and auto, alternately, 2 rounds: latency of
1,000 reads over 10 keep-alive TLS connections. Then, with no node late, the
proxy's CPU per read with hedging off and on (1 worker, 3 rounds).
"""
import http.client, json, ssl, subprocess, sys, threading, time

BIN = "target/release"
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def node(port, *args):
    return subprocess.Popen([f"{BIN}/ringway-load", "node", "--listen", f"127.0.0.1:{port}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def gateway(hedge, ports, workers):
    cfg = f"/tmp/ringway-hedge-{hedge}.toml"
    with open(cfg, "w") as f:
        f.write(f'[health]\nprobe = "connect"\n[pool]\nhedge = "{hedge}"\n')
    args = [f"{BIN}/ringway", "--listen", "127.0.0.1:0", "--workers", str(workers), "--config", cfg,
            "--log-level", "error"]
    for p in ports:
        args += ["--upstream", f"ws://127.0.0.1:{p}"]
    gw = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = gw.stdout.readline()
        if "listening on" in line:
            return gw, int(line.split("wss://127.0.0.1:")[1].split()[0])
        if not line:
            raise SystemExit("ringway did not start")


def reads(port, conns, each, lat):
    def worker():
        c = http.client.HTTPSConnection("127.0.0.1", port, context=CTX, timeout=30)
        for i in range(each):
            body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "system_health", "params": []})
            t = time.perf_counter()
            c.request("POST", "/", body, {"Content-Type": "application/json"})
            c.getresponse().read()
            lat.append((time.perf_counter() - t) * 1000)
    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / 100.0


def main():
    every = sys.argv[1] if len(sys.argv) > 1 else "10"
    nodes = [node(19971), node(19972, "--delay-ms", "200", "--delay-every", every)]
    time.sleep(0.5)
    try:
        print("| hedge | round | p50 ms | p90 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        for rnd in (1, 2):
            for hedge in ("off", "auto"):
                gw, port = gateway(hedge, (19971, 19972), 2)
                lat = []
                reads(port, 10, 100, lat)
                gw.kill()
                lat.sort()
                q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
                print(f"| {hedge} | {rnd} | {q(0.5):.1f} | {q(0.9):.1f} | {q(0.99):.1f} | {lat[-1]:.1f} |")
    finally:
        for n in nodes:
            n.kill()
    nodes = [node(19981), node(19982)]
    time.sleep(0.5)
    try:
        res = {"off": [], "auto": []}
        for _ in range(3):
            for hedge in ("off", "auto"):
                gw, port = gateway(hedge, (19981, 19982), 1)
                lat = []
                c0 = cpu(gw.pid)
                reads(port, 4, 1500, lat)
                res[hedge].append((cpu(gw.pid) - c0) / len(lat) * 1e6)
                gw.kill()
        for hedge, v in res.items():
            print(f"CPU per read, hedge={hedge}: " + " / ".join(f"{x:.1f}" for x in v) + " µs")
    finally:
        for n in nodes:
            n.kill()


if __name__ == "__main__":
    main()
