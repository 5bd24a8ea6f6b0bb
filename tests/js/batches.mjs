// Batching clients through the gateway, whose batch mixes a head read and
// an archive read (the pruned node has block 1's state no more):
// viem's `http(url, { batch: true })`, ethers' JsonRpcProvider (it batches
// by default), ethers' WebSocketProvider, and a raw WebSocket batch.
//
//   node tests/js/batches.mjs https://localhost:PORT/ wss://localhost:PORT/
//
// TLS is trusted through NODE_EXTRA_CA_CERTS (the test CA). Prints one line
// per client and exits 0 when every batch was answered whole, 1 otherwise.
import { createPublicClient, http } from "viem";
import { JsonRpcProvider, WebSocketProvider } from "ethers";
import WebSocket from "ws";

const [httpUrl, wsUrl] = process.argv.slice(2);
const ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

function check(who, [chain, head, balance]) {
  if (Number(chain) <= 0 || Number(head) < 50 || BigInt(balance) <= 0n) {
    throw new Error(`${who}: chain ${chain} head ${head} balance ${balance}`);
  }
  console.log(`${who} chain ${Number(chain)} head ${Number(head)} balance at block 1 ${BigInt(balance)}`);
}

async function viem() {
  const client = createPublicClient({ transport: http(httpUrl, { batch: true, retryCount: 0 }) });
  check(
    "viem-http-batch",
    await Promise.all([
      client.getChainId(),
      client.getBlockNumber(),
      client.getBalance({ address: ACCOUNT, blockNumber: 1n }),
    ]),
  );
}

async function ethers(who, p) {
  check(
    who,
    await Promise.all([
      p.send("eth_chainId", []),
      p.send("eth_blockNumber", []),
      p.send("eth_getBalance", [ACCOUNT, "0x1"]),
    ]),
  );
  await p.destroy();
}

async function raw() {
  const ws = new WebSocket(wsUrl);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  const answer = new Promise((resolve) => ws.once("message", (m) => resolve(JSON.parse(m.toString()))));
  ws.send(
    JSON.stringify([
      { jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] },
      { jsonrpc: "2.0", id: 2, method: "eth_blockNumber", params: [] },
      { jsonrpc: "2.0", id: 3, method: "eth_getBalance", params: [ACCOUNT, "0x1"] },
    ]),
  );
  const a = await answer;
  ws.close();
  if (!Array.isArray(a) || a.map((e) => e.id).join() !== "1,2,3" || a.some((e) => e.error)) {
    throw new Error(`ws-batch: ${JSON.stringify(a)}`);
  }
  check("ws-batch", a.map((e) => e.result));
}

try {
  await viem();
  await ethers("ethers-http", new JsonRpcProvider(httpUrl, undefined, { staticNetwork: true }));
  await ethers("ethers-ws", new WebSocketProvider(wsUrl));
  await raw();
  process.exit(0);
} catch (e) {
  console.error(e.stack || String(e));
  process.exit(1);
}
