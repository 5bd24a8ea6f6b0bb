// polkadot-api (PAPI: the new JSON-RPC spec's client), unchanged: N clients
// at once through the gateway to a real runtime (chopsticks). Each follows
// the chain, reads storage through the runtime's metadata, and sees the
// next finalized block, which this script asks chopsticks to make (on its
// own URL) once every client is ready.
//
//   node tests/js/papi.mjs wss://localhost:PORT/ N ws://127.0.0.1:CHOPSTICKS [HOLD_MS]
//
// With HOLD_MS, the clients stay connected that long once done (after
// printing `holding`), for a benchmark to measure the gateway meanwhile.
//
// Prints one line: `papi N clients: first finalized in T ms, storage ok,
// next finalized #H in U ms`; exits 1 on any failure.
import { createClient } from "polkadot-api";
import { getWsProvider } from "polkadot-api/ws";
import { WebSocket } from "ws";

const [gateway, count, node, hold] = process.argv.slice(2);
const n = Number(count);
const within = (ms, what, p) =>
  Promise.race([
    p,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: nothing in ${ms} ms`)), ms)),
  ]);

/// One call straight to chopsticks (not through the gateway).
function direct(method, params) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(node);
    ws.on("open", () => ws.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method, params })));
    ws.on("message", (m) => {
      const a = JSON.parse(m.toString());
      ws.close();
      a.error ? reject(new Error(JSON.stringify(a.error))) : resolve(a.result);
    });
    ws.on("error", reject);
  });
}

try {
  const t0 = Date.now();
  const clients = Array.from({ length: n }, () =>
    createClient(getWsProvider(gateway, { websocketClass: WebSocket })),
  );
  const first = await within(
    120000,
    "first finalized block",
    Promise.all(clients.map((c) => c.getFinalizedBlock())),
  );
  const tFirst = Date.now() - t0;
  const numbers = await within(
    120000,
    "storage through the metadata",
    Promise.all(clients.map((c) => c.getUnsafeApi().query.System.Number.getValue())),
  );
  if (!numbers.every((x) => typeof x === "number" && x === numbers[0])) {
    throw new Error(`storage reads differ: ${numbers}`);
  }
  const height = Math.max(...first.map((b) => b.number));
  const next = clients.map(
    (c) =>
      new Promise((resolve) => {
        const sub = c.finalizedBlock$.subscribe((b) => {
          if (b.number > height) {
            sub.unsubscribe();
            resolve(b);
          }
        });
      }),
  );
  const t1 = Date.now();
  await direct("dev_newBlock", [{ count: 1 }]);
  const after = await within(60000, "next finalized block", Promise.all(next));
  const tNext = Date.now() - t1;
  if (!after.every((b) => b.hash === after[0].hash)) {
    throw new Error("clients saw different finalized blocks");
  }
  if (hold) {
    console.log("holding");
    await new Promise((r) => setTimeout(r, Number(hold)));
  }
  for (const c of clients) c.destroy();
  console.log(
    `papi ${n} clients: first finalized in ${tFirst} ms, storage ok (#${numbers[0]}), ` +
      `next finalized #${after[0].number} in ${tNext} ms`,
  );
  process.exit(0);
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
}
