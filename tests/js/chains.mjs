// Polkadot-JS (ApiPromise over its WsProvider) and ethers, unchanged, each
// reaching its own chain of one gateway by host name, each verifying the
// certificate of its own name (NODE_EXTRA_CA_CERTS trusts the test CA).
//
//   node tests/js/chains.mjs wss://dot.test:PORT/ wss://eth.test:PORT/ [ETH_API_KEY]
//
// With ETH_API_KEY, ethers sends it in an X-Api-Key header field (through
// the `ws` WebSocket it is built on); Polkadot-JS's key, if any, is in its URL.
//
// Names under .test resolve to 127.0.0.1 here (the gateway listens on
// loopback): the clients connect by name, send it as SNI and Host.
import dns from "node:dns";

const system = dns.lookup;
dns.lookup = function (host, options, callback) {
  if (typeof options === "function") [callback, options] = [options, {}];
  if (typeof options === "number") options = { family: options };
  if (!/\.test$/.test(host)) return system.call(this, host, options, callback);
  if (options && options.all) return process.nextTick(callback, null, [{ address: "127.0.0.1", family: 4 }]);
  return process.nextTick(callback, null, "127.0.0.1", 4);
};

const { ApiPromise, WsProvider } = await import("@polkadot/api");
const { WebSocketProvider } = await import("ethers");

const [dot, eth, ethKey] = process.argv.slice(2);
const within = (ms, what, p) =>
  Promise.race([
    p,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)),
  ]);

try {
  // A real runtime: metadata, runtime version, a new head by subscription.
  const provider = new WsProvider(dot, 1000);
  const api = await within(60000, "ApiPromise.create", ApiPromise.create({ provider, throwOnConnect: true }));
  const spec = api.runtimeVersion.specName.toString();
  const chain = (await within(10000, "system_chain", api.rpc.system.chain())).toString();
  const before = (await api.rpc.chain.getHeader()).number.toNumber();
  let seen;
  const next = new Promise((resolve) => (seen = resolve));
  const unsub = await api.rpc.chain.subscribeNewHeads((h) => {
    if (h.number.toNumber() > before) seen(h.number.toNumber());
  });
  await provider.send("dev_newBlock", []);
  const after = await within(30000, "a new head", next);
  unsub();
  await api.disconnect();
  console.log(`polkadot-js ${spec} "${chain}" head ${before} -> ${after}`);

  let p;
  if (ethKey) {
    const { WebSocket } = await import("ws");
    p = new WebSocketProvider(() => new WebSocket(eth, { headers: { "X-Api-Key": ethKey } }));
  } else {
    p = new WebSocketProvider(eth);
  }
  const net = await within(10000, "ethers getNetwork", p.getNetwork());
  const block = await within(10000, "ethers getBlockNumber", p.getBlockNumber());
  await p.destroy();
  console.log(`ethers ${net.chainId} block ${block}`);
  process.exit(0);
} catch (e) {
  console.error(e);
  process.exit(1);
}
