//! Method peek and the routing decision, per message: small requests, a
//! block-argument request, a batch, and a 300 KB message.
//! Run: `cargo bench --bench route`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringway::jsonrpc;
use ringway::route::{ChainView, Flavour, HashWindow, Router};

struct View(HashWindow);

impl ChainView for View {
    fn head(&self) -> u64 {
        10_000
    }
    fn height_of(&self, hash: &[u8]) -> Option<u64> {
        self.0.get(hash)
    }
}

fn routing(c: &mut Criterion) {
    let mut window = HashWindow::new(4096);
    for n in 6_000..=10_000u64 {
        window.insert(format!("0x{n:064x}").as_bytes(), n);
    }
    let view = View(window);
    let router = Router::new(Flavour::Substrate, 256, None, &[], None);
    let health = br#"{"jsonrpc":"2.0","id":42,"method":"system_health","params":[]}"#.to_vec();
    let storage = format!(
        r#"{{"jsonrpc":"2.0","id":43,"method":"state_getStorage","params":["0x26aa394eea5630e07c48ae0c9558cef7b99d880ec681799c0cf30e8886371da9","0x{:064x}"]}}"#,
        9_000
    )
    .into_bytes();
    let batch = format!(
        "[{}]",
        vec![String::from_utf8(storage.clone()).unwrap(); 10].join(",")
    )
    .into_bytes();
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":44,"method":"author_submitExtrinsic","params":["0x{}"]}}"#,
        "ab".repeat(150_000)
    )
    .into_bytes();

    let mut g = c.benchmark_group("route");
    for (name, msg) in [
        ("system_health", &health),
        ("state_getStorage_at_hash", &storage),
        ("batch_of_10", &batch),
        ("300KB", &big),
    ] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| b.iter(|| router.route(black_box(msg), &view)));
    }
    g.finish();

    let mut g = c.benchmark_group("peek");
    for (name, msg) in [("system_health", &health), ("300KB", &big)] {
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(name, |b| b.iter(|| jsonrpc::peek(black_box(msg))));
    }
    g.finish();

    // The one reading every decision comes from (strict since issue 20:
    // the whole message checked, member names unescaped).
    let mut g = c.benchmark_group("call_parse");
    for (name, msg) in [
        ("system_health", &health),
        ("state_getStorage_at_hash", &storage),
        ("batch_of_10", &batch),
        ("300KB", &big),
    ] {
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| jsonrpc::Call::parse(black_box(msg)).len())
        });
    }
    g.finish();
}

fn admission(c: &mut Criterion) {
    use ringway::config::AdmissionSection;
    use ringway::policy::AdmissionCtx;
    let call = br#"{"jsonrpc":"2.0","id":42,"method":"system_health","params":[]}"#;
    let total = std::sync::Arc::new(ringway::policy::SharedCounts::default());
    let mut g = c.benchmark_group("admission");
    g.throughput(Throughput::Elements(1));
    // A limit high enough never to refuse: the cost of looking.
    let limited = AdmissionCtx::new(
        &AdmissionSection {
            rate: 1e12,
            burst: 1e12,
            methods: "safe".into(),
            ..AdmissionSection::default()
        },
        total.clone(),
    );
    let ip: std::net::IpAddr = "203.0.113.9".parse().unwrap();
    g.bench_function("rate_and_safe_methods", |b| {
        b.iter(|| {
            let parsed = ringway::jsonrpc::Call::parse(black_box(call));
            limited.check_call(black_box(ip), &parsed, std::time::Instant::now(), None)
        })
    });
    let open = AdmissionCtx::new(&AdmissionSection::default(), total);
    g.bench_function("no_limits", |b| {
        b.iter(|| {
            let parsed = ringway::jsonrpc::Call::parse(black_box(call));
            open.check_call(black_box(ip), &parsed, std::time::Instant::now(), None)
        })
    });
    // An API key with a rate and a quota (never reached): the cost of
    // charging a call to it (a compare-and-swap and an add, shared by
    // every core).
    let dir = std::env::temp_dir().join(format!("ringway-bench-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.toml");
    std::fs::write(
        &file,
        "[[key]]\nname = \"bench\"\nkey = \"bench-0123456789abcdef\"\nrate = 1e12\nburst = 1e12\nquota = 9000000000000000000\n",
    )
    .unwrap();
    let section = ringway::config::keys::KeysSection {
        file: file.display().to_string(),
        ..Default::default()
    };
    let cfg = ringway::config::keys::load(&section, &None, &[])
        .unwrap()
        .unwrap();
    let book = ringway::policy::usage::Book::default();
    let keys = ringway::policy::keys::Keys::build(&cfg, None, &book);
    let key = keys.named("bench").unwrap().clone();
    g.bench_function("api_key_rate_and_quota", |b| {
        b.iter(|| {
            let parsed = ringway::jsonrpc::Call::parse(black_box(call));
            open.check_call(
                black_box(ip),
                &parsed,
                std::time::Instant::now(),
                Some(&key),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, routing, admission);
criterion_main!(benches);
