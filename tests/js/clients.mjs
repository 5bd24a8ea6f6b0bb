// ethers and web3.js, unchanged, through the gateway to a real Ethereum node
// (anvil): calls, a subscription to new heads, and its end.
//
//   node tests/js/clients.mjs wss://localhost:PORT/ http://127.0.0.1:ANVIL_PORT
//
// TLS is trusted through NODE_EXTRA_CA_CERTS (the test CA). Prints one line
// per client and exits 0 when everything answered, 1 otherwise.
import { WebSocketProvider } from "ethers";
import { Web3 } from "web3";

const [gateway, node] = process.argv.slice(2);
const within = (ms, what, p) =>
  Promise.race([
    p,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)),
  ]);
async function mine() {
  const r = await fetch(node, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "anvil_mine", params: ["0x1"] }),
  });
  if (!r.ok) throw new Error(`anvil_mine: HTTP ${r.status}`);
}

async function ethers() {
  const p = new WebSocketProvider(gateway);
  const chain = await within(10000, "ethers getNetwork", p.getNetwork());
  const before = await p.getBlockNumber();
  const seen = new Promise((resolve) => p.once("block", resolve));
  // ethers subscribes (eth_subscribe newHeads) when the listener is added.
  await new Promise((r) => setTimeout(r, 300));
  await mine();
  const block = await within(10000, "ethers block event", seen);
  const balance = await p.getBalance("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
  await p.destroy();
  if (block <= before) throw new Error(`ethers: block ${block} after ${before}`);
  console.log(`ethers ${chain.chainId} block ${before} -> ${block} balance ${balance}`);
}

async function web3() {
  const provider = new Web3.providers.WebsocketProvider(gateway);
  const w3 = new Web3(provider);
  const chainId = await within(10000, "web3 getChainId", w3.eth.getChainId());
  const sub = await within(10000, "web3 subscribe", w3.eth.subscribe("newBlockHeaders"));
  const seen = new Promise((resolve, reject) => {
    sub.on("data", resolve);
    sub.on("error", reject);
  });
  await mine();
  const head = await within(10000, "web3 newBlockHeaders", seen);
  await within(10000, "web3 unsubscribe", sub.unsubscribe());
  const number = await w3.eth.getBlockNumber();
  provider.disconnect();
  console.log(`web3 ${chainId} head ${head.number} block ${number}`);
}

try {
  await ethers();
  await web3();
  process.exit(0);
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
}
