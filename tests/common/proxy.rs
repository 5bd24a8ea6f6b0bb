//! A WebSocket proxy in front of a real node (chopsticks) that counts what
//! the node receives (calls by method, bytes it sends back), and enforces
//! the one limit of a Substrate node a test of merged follows needs that
//! chopsticks lacks: at most 4 `chainHead_v1_follow` per connection (the
//! fifth gets `-32800`, as `sc-rpc-spec-v2` answers). Health probes
//! (`User-Agent: ringway-health`) pass uncounted.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tungstenite::Message;

/// What the node behind the proxy received.
#[derive(Debug, Default, Clone)]
pub struct NodeLoad {
    pub calls: HashMap<String, usize>,
    /// Bytes of the node's messages to the gateway.
    pub bytes_out: usize,
    pub connections: usize,
    pub max_follows_on_a_connection: usize,
    pub follows_refused: usize,
}

impl NodeLoad {
    pub fn calls_of(&self, method: &str) -> usize {
        self.calls.get(method).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> usize {
        self.calls.values().sum()
    }
}

pub struct CountingProxy {
    pub url: String,
    load: Arc<Mutex<NodeLoad>>,
}

impl CountingProxy {
    pub fn start(node: &str) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let load = Arc::new(Mutex::new(NodeLoad::default()));
        let (l, node) = (load.clone(), node.to_string());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (l, node) = (l.clone(), node.clone());
                thread::spawn(move || relay(stream, &node, l));
            }
        });
        CountingProxy { url, load }
    }

    pub fn load(&self) -> NodeLoad {
        self.load.lock().unwrap().clone()
    }

    /// Forget what was counted so far.
    pub fn reset(&self) {
        *self.load.lock().unwrap() = NodeLoad::default();
    }
}

fn relay(stream: TcpStream, node: &str, load: Arc<Mutex<NodeLoad>>) {
    let Some((mut client, probe)) = super::chainhead::accept_noting_probe(stream) else {
        return;
    };
    let Ok((mut upstream, _)) = tungstenite::connect(node) else {
        return;
    };
    if !probe {
        load.lock().unwrap().connections += 1;
    }
    let timeout = Some(Duration::from_millis(2));
    client.get_ref().set_read_timeout(timeout).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = upstream.get_ref() {
        s.set_read_timeout(timeout).unwrap();
        s.set_nodelay(true).unwrap();
    }
    // Follows open on this connection: asked (by id) and answered.
    let mut asked: Vec<serde_json::Value> = Vec::new();
    let mut follows: Vec<String> = Vec::new();
    let idle = |e: &tungstenite::Error| matches!(e, tungstenite::Error::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    loop {
        let mut quiet = true;
        match client.read() {
            Ok(Message::Text(t)) => {
                quiet = false;
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                let method = v["method"].as_str().unwrap_or("").to_string();
                if !probe {
                    let mut l = load.lock().unwrap();
                    *l.calls.entry(method.clone()).or_default() += 1;
                    // A runtime call, also by its function.
                    if let Some(f) = v["params"][2]
                        .as_str()
                        .filter(|_| method == "chainHead_v1_call")
                    {
                        *l.calls.entry(format!("{method}/{f}")).or_default() += 1;
                    }
                }
                match method.as_str() {
                    "chainHead_v1_follow" if follows.len() + asked.len() >= 4 => {
                        load.lock().unwrap().follows_refused += 1;
                        let e = format!(
                            r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-32800,"message":"Maximum number of chainHead_follow has been reached"}}}}"#,
                            v["id"]
                        );
                        if client.send(Message::Text(e)).is_err() {
                            return;
                        }
                        continue;
                    }
                    "chainHead_v1_follow" => asked.push(v["id"].clone()),
                    "chainHead_v1_unfollow" => {
                        let sub = v["params"][0].as_str().unwrap_or("");
                        follows.retain(|f| f != sub);
                    }
                    _ => {}
                }
                if upstream.send(Message::Text(t)).is_err() {
                    return;
                }
            }
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
        match upstream.read() {
            Ok(Message::Text(t)) => {
                quiet = false;
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                if let Some(i) = asked.iter().position(|id| *id == v["id"]) {
                    asked.remove(i);
                    if let Some(sub) = v["result"].as_str() {
                        follows.push(sub.to_string());
                    }
                }
                if v["params"]["result"]["event"] == "stop" {
                    let sub = v["params"]["subscription"].as_str().unwrap_or("");
                    follows.retain(|f| f != sub);
                }
                if !probe {
                    let mut l = load.lock().unwrap();
                    l.bytes_out += t.len();
                    l.max_follows_on_a_connection =
                        l.max_follows_on_a_connection.max(follows.len());
                }
                if client.send(Message::Text(t)).is_err() {
                    return;
                }
            }
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
        if quiet {
            let _ = client.flush();
            let _ = upstream.flush();
        }
    }
}
