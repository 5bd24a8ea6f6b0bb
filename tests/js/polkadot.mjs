// The Polkadot-JS RPC provider (@polkadot/rpc-provider's WsProvider, what
// ApiPromise runs on), unchanged, through the gateway to the test node of
// tests/shared.rs: a call, a subscription with its notifications, its end.
//
//   node tests/js/polkadot.mjs wss://localhost:PORT/
import { WsProvider } from "@polkadot/rpc-provider";

const [gateway] = process.argv.slice(2);
const within = (ms, what, p) =>
  Promise.race([
    p,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)),
  ]);

try {
  const provider = new WsProvider(gateway);
  await within(10000, "connect", provider.isReady);
  const answer = await within(10000, "send", provider.send("polkadot_call", [7, "x"]));
  if (answer.method !== "polkadot_call" || answer.params[0] !== 7) {
    throw new Error(`unexpected answer ${JSON.stringify(answer)}`);
  }
  const events = [];
  let enough;
  const three = new Promise((resolve) => (enough = resolve));
  const id = await within(
    10000,
    "subscribe",
    provider.subscribe("test_event", "test_subscribe", [], (error, result) => {
      if (error) throw error;
      events.push(result);
      if (events.length === 3) enough();
    }),
  );
  await within(10000, "notifications", three);
  const ended = await within(10000, "unsubscribe", provider.unsubscribe("test_event", "test_unsubscribe", id));
  await provider.disconnect();
  console.log(`polkadot-js call ok, subscription ${id}: ${events.length} events, unsubscribed ${ended}`);
  process.exit(ended ? 0 : 1);
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  process.exit(1);
}
