//! polkadot-api (PAPI 2.2, the client of the new JSON-RPC spec), unchanged,
//! many at once through the gateway to a real runtime (chopsticks: Rococo
//! Asset Hub), in both session modes. What reaches the node is counted by
//! a proxy in front of it that also refuses a fifth follow on one
//! connection, as a Substrate node does ([`common::CountingProxy`]).

mod common;

use common::*;

/// Run `n` PAPI clients through `gw` (or straight to the node when `None`):
/// what the script printed, and what the node received.
fn papi(
    pki: &TestPki,
    gw: Option<&Gateway>,
    proxy: &CountingProxy,
    node: &Chopsticks,
    n: usize,
) -> (String, NodeLoad) {
    proxy.reset();
    let script = JsScript::with_packages("papi.mjs", pki, "papi", PAPI);
    let url = match gw {
        Some(gw) => format!("wss://localhost:{}/", gw.addr.port()),
        None => proxy.url.clone(),
    };
    let (ok, stdout, stderr) = script.run(&[&url, &n.to_string(), &node.url]);
    assert!(ok, "{stdout}\n{stderr}");
    (stdout, proxy.load())
}

fn gateway(pki: &TestPki, proxy: &CountingProxy, shared: bool) -> Gateway {
    let cfg = write_config(pki, "papi.toml", &format!("[pool]\nshared = {shared}\n"));
    Gateway::start(
        pki,
        std::slice::from_ref(&proxy.url),
        // (No health probe: its connection may become the core's shared
        // one, which the proxy would then not count.)
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--workers",
            "1",
            "--health-probe",
            "off",
        ],
    )
}

fn forty_papi_clients_cost_the_node_what_one_costs(shared: bool) {
    let pki = TestPki::new();
    let node = chopsticks();
    let proxy = CountingProxy::start(&node.url);
    let gw = gateway(&pki, &proxy, shared);
    let (_, one) = papi(&pki, Some(&gw), &proxy, &node, 1);
    let (out, forty) = papi(&pki, Some(&gw), &proxy, &node, 40);
    assert!(out.contains("papi 40 clients"), "{out}");
    assert_eq!(forty.follows_refused, 0, "{forty:?}");
    assert_eq!(forty.max_follows_on_a_connection, 1, "{forty:?}");
    assert_eq!(forty.calls_of("chainHead_v1_follow"), 1, "{forty:?}");
    // (This runtime offers metadata v14 only: `Metadata_metadata`.)
    let metadata = forty.calls_of("chainHead_v1_call/Metadata_metadata")
        + forty.calls_of("chainHead_v1_call/Metadata_metadata_at_version");
    assert_eq!(metadata, 1, "the metadata once: {forty:?}");
    assert!(
        forty.total_calls() <= 3 * one.total_calls(),
        "40 PAPI clients cost the node {} calls, one {}: {forty:?} against {one:?}",
        forty.total_calls(),
        one.total_calls()
    );
}

#[test]
fn forty_papi_clients_on_shared_connections_cost_the_node_what_one_costs() {
    forty_papi_clients_cost_the_node_what_one_costs(true);
}

#[test]
fn forty_papi_clients_on_pinned_sessions_cost_the_node_what_one_costs() {
    forty_papi_clients_cost_the_node_what_one_costs(false);
}

/// A process's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Not a test: the figures of BENCHMARKS.md's "polkadot-api at scale".
/// `cargo test --release --test papi -- --ignored --nocapture papi_at_scale`
/// 1, 40 and 400 PAPI clients straight to the node (through the counting
/// proxy) and through each mode: the calls and bytes the node receives,
/// the time to the first finalized block and to the next one, and the
/// gateway's memory per client (session and follow) while they are on.
#[test]
#[ignore]
fn papi_at_scale() {
    use std::io::BufRead;
    let pki = TestPki::new();
    let node = chopsticks();
    let proxy = CountingProxy::start(&node.url);
    let script = JsScript::with_packages("papi.mjs", &pki, "papi", PAPI);
    println!("| clients | path | node calls | node bytes | first finalized | next finalized | gateway KiB per client |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for n in [1usize, 40, 400] {
        for mode in ["direct", "pinned", "shared"] {
            let gw = (mode != "direct").then(|| gateway(&pki, &proxy, mode == "shared"));
            let url = match &gw {
                Some(gw) => format!("wss://localhost:{}/", gw.addr.port()),
                None => proxy.url.clone(),
            };
            let before = gw.as_ref().map(|g| rss_kib(g.pid()));
            proxy.reset();
            let mut child = script.spawn(&[&url, &n.to_string(), &node.url, "1500"]);
            let out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut during = None;
            let mut summary = String::new();
            for line in out.lines().map_while(Result::ok) {
                if line == "holding" {
                    during = gw.as_ref().map(|g| rss_kib(g.pid()));
                } else {
                    summary = line;
                }
            }
            assert!(child.wait().unwrap().success(), "{mode} {n}: {summary}");
            let load = proxy.load();
            let ms = |label: &str| {
                summary
                    .split(label)
                    .nth(1)
                    .and_then(|r| r.split(" ms").next())
                    .and_then(|r| r.rsplit(' ').next())
                    .unwrap_or("?")
                    .to_string()
            };
            let per_client = match (before, during) {
                (Some(b), Some(d)) => format!("{:.0}", d.saturating_sub(b) as f64 / n as f64),
                _ => "-".into(),
            };
            println!(
                "| {n} | {mode} | {} | {} | {} ms | {} ms | {per_client} |",
                load.total_calls(),
                load.bytes_out,
                ms("first finalized in"),
                ms("next finalized #"),
            );
        }
    }
}
