#!/usr/bin/env python3
"""Abuse figures for ringway, measured on loopback (README, "Security").

    cargo build --release -p ringway -p ringway-load
    python3 loadtest/abuse.py

Starts the mock node (ringway-load node) and ringway (pinned and --shared),
then, against each, measures the gateway's resident memory (VmRSS of all its
threads) and what clients get for:

  body flood   50 HTTP clients announce a 10 MB body, send 9 MiB, stall;
  no reader    15 WebSocket clients ask for 300 KB answers and never read;
  one reader   one client sends 2,000 cached state_getMetadata (140 KB) and
               never reads, while a neighbour calls system_health (issue 20);
  ping flood   one client sends 200,000 pings and never reads;
  disguises    refused methods spelt so a lenient node would run them
               (escapes, a member twice, another case, padded past 64 KiB);
  hung node    10 HTTP requests to a node that accepts and never answers.

Prints one markdown table. Loopback only; every loop is bounded.
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(args, marker):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        line = p.stdout.readline()
        if marker in line:
            return p, line
    raise SystemExit(f"{args[0]} did not start")


def gateway(node_url, extra, tmp):
    cfg = os.path.join(tmp, "abuse.toml")
    with open(cfg, "w") as f:
        f.write("[pool]\nrequest_timeout_ms = 5000\n[admission]\nmethods = \"safe\"\n")
    p, line = start(
        [os.path.join(BIN, "ringway"), "--listen", "127.0.0.1:0", "--workers", "2",
         "--upstream", node_url, "--config", cfg, "--log-level", "error"] + extra,
        "listening on",
    )
    port = int(line.split("wss://127.0.0.1:")[1].split()[0])
    return p, port


def tls(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return CTX.wrap_socket(s, server_hostname="localhost")


def status_of(s):
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    parts = data.split(b" ")
    return parts[1].decode() if len(parts) > 1 else "none"


def body_flood(port, pid):
    before = rss_kib(pid)
    socks, results = [], []
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    chunk = b" " * 65536
    for _ in range(50):
        s = tls(port)
        s.sendall(head)
        for _ in range(144):  # 9 MiB
            s.sendall(chunk)
        socks.append(s)
    peak = rss_kib(pid)
    start_wait = time.time()

    def wait(s):
        results.append(status_of(s))

    threads = [threading.Thread(target=wait, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.time() - start_wait
    for s in socks:
        s.close()
    time.sleep(1)
    statuses = {st: results.count(st) for st in set(results)}
    return before, peak, rss_kib(pid), f"{statuses} after {took:.1f} s"


def ws_upgrade(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)


def frame(payload):
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(masked)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0xFF]) + n.to_bytes(8, "big")
    return head + mask + masked


def no_reader(port, pid):
    before = rss_kib(pid)
    socks = []
    for c in range(15):
        s = tls(port)
        ws_upgrade(s)
        for i in range(200):
            s.sendall(frame(json.dumps({"jsonrpc": "2.0", "id": i, "method": "state_getMetadata"}).encode()))
        socks.append(s)
    time.sleep(10)
    peak = rss_kib(pid)
    ended, codes, still_open = 0, {}, 0
    for s in socks:
        s.settimeout(5)
        tail = b""
        try:
            while True:
                d = s.recv(1 << 20)
                if not d:
                    ended += 1
                    break
                tail = (tail + d)[-200:]
        except OSError:
            still_open += 1
        # The close frame, if the stream ends with one: 0x88, length, code.
        for i in range(len(tail) - 4, -1, -1):
            if tail[i] == 0x88 and tail[i + 1] < 126 and i + 2 + tail[i + 1] == len(tail):
                code = int.from_bytes(tail[i + 2:i + 4], "big")
                codes[code] = codes.get(code, 0) + 1
                break
        s.close()
    return before, peak, rss_kib(pid), (
        f"{ended} ended (close codes {codes}), {still_open} still open (held by backpressure)"
    )


def peak_while_neighbour_served(port, pid, secs):
    """RSS peak over `secs` while a neighbour calls system_health every 50 ms;
    returns (peak KiB, slowest neighbour answer in ms)."""
    n = tls(port)
    ws_upgrade(n)
    peak, slowest, i = rss_kib(pid), 0.0, 0
    end = time.time() + secs
    while time.time() < end:
        i += 1
        t0 = time.time()
        n.sendall(frame(json.dumps({"jsonrpc": "2.0", "id": i, "method": "system_health"}).encode()))
        got = b""
        while b'"id":%d' % i not in got:
            got += n.recv(65536)
        slowest = max(slowest, (time.time() - t0) * 1000)
        peak = max(peak, rss_kib(pid))
        time.sleep(0.05)
    n.close()
    return peak, slowest


def one_reader(port, pid):
    before = rss_kib(pid)
    s = tls(port)
    ws_upgrade(s)
    s.sendall(b"".join(frame(json.dumps({"jsonrpc": "2.0", "id": i, "method": "state_getMetadata"}).encode())
                       for i in range(2000)))
    peak, slowest = peak_while_neighbour_served(port, pid, 4)
    s.close()
    time.sleep(1)
    return before, peak, rss_kib(pid), f"neighbour answered within {slowest:.0f} ms at worst"


def control(payload, opcode=0x89):
    mask = b"\x01\x02\x03\x04"
    return bytes([opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ping_flood(port, pid):
    before = rss_kib(pid)
    s = tls(port)
    ws_upgrade(s)
    s.settimeout(30)
    ping = control(b"p" * 125)

    def send():
        try:
            s.sendall(ping * 200_000)
        except OSError:
            pass

    t = threading.Thread(target=send)
    t.start()
    peak, slowest = peak_while_neighbour_served(port, pid, 4)
    s.close()
    t.join(10)
    time.sleep(1)
    return before, peak, rss_kib(pid), f"neighbour answered within {slowest:.0f} ms at worst"


DISGUISES = [
    '{"jsonrpc":"2.0","id":%d,"method":"author_rotat\\u0065Keys","params":[]}',
    '{"jsonrpc":"2.0","id":%d,"met\\u0068od":"author_rotateKeys","params":[]}',
    '{"jsonrpc":"2.0","id":%d,"method":"system_health","method":"author_rotateKeys"}',
    '{"jsonrpc":"2.0","id":%d,"method":"system_health","METHOD":"author_rotateKeys"}',
    '{"jsonrpc":"2.0","id":%d,"pad":"' + "x" * 70000 + '","method":"author_rotateKeys","params":[]}',
]


def disguises(port):
    s = tls(port)
    ws_upgrade(s)
    refused = 0
    for i, d in enumerate(DISGUISES):
        s.sendall(frame((d % i).encode()))
        got = b""
        while b'"id":%d' % i not in got and b'"id":null' not in got:
            got += s.recv(65536)
        if b"-32601" in got or b"-32600" in got:
            refused += 1
    s.close()
    return f"{refused} of {len(DISGUISES)} refused by the gateway with their ids"


def hung(tmp):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(64)
    url = f"ws://127.0.0.1:{lst.getsockname()[1]}"
    gw, port = gateway(url, [], tmp)
    try:
        results = []
        start_t = time.time()

        def one(i):
            s = tls(port)
            body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "system_health"}).encode()
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
            results.append(status_of(s))
            s.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        took = time.time() - start_t
        return f"{ {st: results.count(st) for st in set(results)} } within {took:.1f} s (request_timeout_ms = 5000)"
    finally:
        gw.kill()
        lst.close()


def main():
    tmp = tempfile.mkdtemp()
    node_port = free_port()
    node = subprocess.Popen([os.path.join(BIN, "ringway-load"), "node", "--listen", f"127.0.0.1:{node_port}",
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    rows = []
    try:
        for mode, extra in [("pinned", []), ("shared", ["--shared"])]:
            gw, port = gateway(f"ws://127.0.0.1:{node_port}", extra, tmp)
            try:
                b, p, a, what = body_flood(port, gw.pid)
                rows.append(f"| body flood (50 x 9 MiB of 10 MB, stalled) | {mode} | {b // 1024} | {p // 1024} | {a // 1024} | {what} |")
                b, p, a, what = no_reader(port, gw.pid)
                rows.append(f"| no reader (15 x 200 x 300 KB answers) | {mode} | {b // 1024} | {p // 1024} | {a // 1024} | {what} |")
                b, p, a, what = one_reader(port, gw.pid)
                rows.append(f"| one client, 2,000 cached metadata, never reads | {mode} | {b // 1024} | {p // 1024} | {a // 1024} | {what} |")
                b, p, a, what = ping_flood(port, gw.pid)
                rows.append(f"| ping flood (200,000 pings, never reads) | {mode} | {b // 1024} | {p // 1024} | {a // 1024} | {what} |")
                rows.append(f"| disguised refused methods | {mode} | | | | {disguises(port)} |")
            finally:
                gw.kill()
        rows.append(f"| hung node (10 HTTP requests) | pinned | | | | {hung(tmp)} |")
    finally:
        node.kill()
    print("| case | mode | RSS before (MiB) | RSS during (MiB) | RSS after (MiB) | clients got |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
