//! `/metrics` as an operator reads it: every family the README lists, with
//! values that follow the traffic, in text a real Prometheus parser
//! (the Python `prometheus_client`) accepts with HELP and TYPE on each.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use tungstenite::Message;

fn get(gw: &Gateway, pki: &TestPki, path: &str) -> (u16, String) {
    let (status, _, body) = https_get(gw.addr, pki.client_config(), path);
    (status, body)
}

/// The value of the sample `series` (name and labels as printed).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_follow_the_traffic_and_pass_a_prometheus_parser() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Substrate(FakeChain::new(100)));
    let cfg = write_config(
        &pki,
        "metrics-families.toml",
        "[admission]\ndeny_methods = [\"state_traceBlock\"]\n[health]\ninterval_ms = 100\n",
    );
    let gw = Gateway::start(&pki, &[up.url()], &["--config", cfg.to_str().unwrap()]);
    let url = up.url();
    let public = url.trim_end_matches('/');

    // A session: three calls (one refused), then a close.
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for (id, method) in [
        (1, "system_health"),
        (2, "my_custom"),
        (3, "state_traceBlock"),
    ] {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":[]}}"#
        )))
        .unwrap();
        ws.read().unwrap();
    }
    // An HTTP JSON-RPC request, and a plain GET (426: WebSocket expected).
    let mut s = tls_connect(gw.addr, pki.client_config());
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"eth_chainId","params":[]}"#;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    assert_eq!(get(&gw, &pki, "/nothing-here").0, 426);

    let (status, text) = get(&gw, &pki, "/metrics");
    assert_eq!(status, 200);
    let node = format!(r#"chain="default",url="{public}",role="pruned""#);
    assert_eq!(
        value(
            &text,
            &format!(r#"ringway_sessions{{{node},mode="pinned"}}"#)
        ),
        1.0
    );
    assert!(value(&text, r#"ringway_messages_total{from="client"}"#) >= 3.0);
    assert!(value(&text, r#"ringway_messages_total{from="node"}"#) >= 2.0);
    assert!(value(&text, r#"ringway_bytes_total{from="client"}"#) > 100.0);
    for (method, outcome) in [
        ("system_health", "forwarded"),
        ("other", "forwarded"),
        ("state_traceBlock", "refused"),
        ("eth_chainId", "forwarded"),
    ] {
        let series = format!(
            r#"ringway_calls_total{{chain="default",method="{method}",outcome="{outcome}"}}"#
        );
        assert_eq!(value(&text, &series), 1.0, "{series}");
    }
    assert!(
        value(
            &text,
            r#"ringway_tls_handshakes_total{version="1.3",resumed="false"}"#
        ) >= 3.0
    );
    assert_eq!(
        value(&text, r#"ringway_http_responses_total{status="101"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"ringway_http_responses_total{status="426"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"ringway_http_responses_total{status="200"}"#),
        1.0
    );
    let http_answers = format!(r#"ringway_node_response_seconds_count{{{node},measured="http"}}"#);
    assert_eq!(value(&text, &http_answers), 1.0);
    assert!(value(&text, r#"ringway_config_generation"#) == 1.0);
    assert!(text.contains(r#"ringway_info{version=""#), "{text}");

    // The session ends with a close from the gateway: counted by code.
    ws.close(None).unwrap();
    let _ = ws.read();
    wait_for(TIMEOUT, "the close and the session's end", || {
        let text = get(&gw, &pki, "/metrics").1;
        text.contains(r#"ringway_close_codes_total{code="none"} 1"#)
            && text.contains(&format!(r#"ringway_sessions{{{node},mode="pinned"}} 0"#))
    });
    wait_for(TIMEOUT, "a probe timed", || {
        let text = get(&gw, &pki, "/metrics").1;
        value(
            &text,
            &format!(r#"ringway_node_response_seconds_count{{{node},measured="probe"}}"#),
        ) > 0.0
    });

    // The text as Prometheus reads it.
    let text = get(&gw, &pki, "/metrics").1;
    let lib = python_packages(
        "python-prometheus",
        &["prometheus-client==0.21.1"],
        "prometheus_client",
    );
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
families = list(text_string_to_metric_families(text))
helps = sum(1 for l in text.splitlines() if l.startswith('# HELP '))
types = sum(1 for l in text.splitlines() if l.startswith('# TYPE '))
assert helps == types == len(families), (helps, types, len(families))
seen = set()
for f in families:
    assert f.documentation, f.name
    assert f.type in ('counter', 'gauge', 'histogram'), (f.name, f.type)
    for s in f.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        assert key not in seen, key
        seen.add(key)
print(len(families), len(seen))
"#;
    let mut py = Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", &lib)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every series the Grafana dashboard in tuning/ queries exists.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/grafana-dashboard.json"),
    )
    .unwrap();
    for at in dashboard.match_indices("ringway_").map(|(i, _)| i) {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            text.contains(&format!("# TYPE {name} ")) || text.contains(&format!("\n{name}{{")),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
    let counts = String::from_utf8_lossy(&out.stdout);
    let families: usize = counts.split_whitespace().next().unwrap().parse().unwrap();
    assert!(families >= 18, "{counts}");
}
