#!/usr/bin/env python3
"""An indexer's replay over JSON-RPC over HTTP (keep-alive, TLS, no check of
the certificate): INDEXERS clients at once, each walking the same BLOCKS
finalized blocks of ringway-load's mock node, asking for each its hash,
its header and a storage value at it (as a Substrate indexer does).

    loadtest/indexer.py URL INDEXERS BLOCKS

Prints the number of calls sent; exits 1 if any answer was an error.
"""
import http.client
import json
import ssl
import sys
import threading
import urllib.parse

url, indexers, blocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlsplit(url)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
sent = [0] * indexers
failed = []


def call(conn, method, params, n):
    body = json.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params})
    conn.request("POST", u.path or "/", body, {"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read())
    if "error" in answer:
        failed.append(answer)
    return answer.get("result")


def index(i):
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx)
    # Each indexer starts at another place of the range, as they run apart.
    for k in range(blocks):
        n = 1 + (k + i * blocks // indexers) % blocks
        h = call(conn, "chain_getBlockHash", [n], n)
        call(conn, "chain_getHeader", [h], n)
        call(conn, "state_getStorage", ["0x26aa", h], n)
        sent[i] += 3


threads = [threading.Thread(target=index, args=(i,)) for i in range(indexers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sum(sent))
sys.exit(1 if failed else 0)
