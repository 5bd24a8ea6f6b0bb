//! A conformant WebSocket echo server (tungstenite), used as the node behind
//! the gateway for the Autobahn|Testsuite run and for manual tests.
//!
//! `cargo run --release --example echo_upstream -- 127.0.0.1:9001`

use std::net::TcpListener;
use std::thread;

use tungstenite::protocol::WebSocketConfig;
use tungstenite::{accept_with_config, Message};

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).expect("bind");
    println!("echo upstream on ws://{}", listener.local_addr().unwrap());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        thread::spawn(move || {
            let cfg = WebSocketConfig {
                max_message_size: Some(64 << 20),
                max_frame_size: Some(16 << 20),
                ..Default::default()
            };
            let Ok(mut ws) = accept_with_config(stream, Some(cfg)) else {
                return;
            };
            loop {
                match ws.read() {
                    Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                        if ws.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
}
