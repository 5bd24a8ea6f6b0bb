//! The response cache on the relay path, per request: deciding whether a
//! request may be answered from it (`plan`), and a hit (`get` and the answer
//! with the client's id, as a frame payload) for a small static answer and
//! a 300 KB `state_getMetadata`. Run: `cargo bench --bench cache`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringway::cache::{answer_parts, plan, Cache, Rules, Ttls};
use ringway::jsonrpc::Call;
use ringway::route::{ChainView, Flavour};

struct View;

impl ChainView for View {
    fn head(&self) -> u64 {
        10_002
    }
    fn height_of(&self, _: &[u8]) -> Option<u64> {
        None
    }
    fn finalized(&self) -> u64 {
        10_000
    }
    fn finalized_hash(&self) -> Option<Rc<[u8]>> {
        Some(Rc::from(format!("0x{:064x}", 10_000).as_bytes()))
    }
}

fn cache(c: &mut Criterion) {
    let ttls = Ttls {
        static_ttl: Duration::from_secs(300),
        final_ttl: Duration::from_secs(3600),
    };
    let rules = Rules::new(Flavour::Substrate, ttls, &[]);
    let store = Cache::new(rules.clone(), 32 << 20, 0);
    let chain = br#"{"jsonrpc":"2.0","id":42,"method":"system_chain","params":[]}"#;
    let meta = br#"{"jsonrpc":"2.0","id":43,"method":"state_getMetadata","params":[]}"#;
    let miss = br#"{"jsonrpc":"2.0","id":44,"method":"state_getStorage","params":["0x26aa"]}"#;
    let plan_of = |msg: &[u8]| {
        let call = Call::parse(msg);
        plan(&rules, call.single().unwrap(), &View)
    };
    let chain_key = plan_of(chain).unwrap().key;
    let meta_key = plan_of(meta).unwrap().key;
    store.insert(
        &chain_key,
        br#"{"jsonrpc":"2.0","id":1,"result":"Polkadot"}"#,
        ttls.static_ttl,
        None,
    );
    let metadata = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":"0x{}"}}"#,
        "6d".repeat(150_000)
    );
    store.insert(&meta_key, metadata.as_bytes(), ttls.final_ttl, None);

    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plan: not cacheable (state_getStorage)", |b| {
        b.iter(|| plan_of(black_box(miss)))
    });
    g.bench_function("plan: static (system_chain)", |b| {
        b.iter(|| plan_of(black_box(chain)))
    });
    g.bench_function("plan: latest metadata, hash filled in", |b| {
        b.iter(|| plan_of(black_box(meta)))
    });
    let mut out = Vec::with_capacity(400_000);
    g.bench_function("hit: system_chain answer with the client's id", |b| {
        b.iter(|| {
            let head = store.get(black_box(&chain_key), Instant::now()).unwrap();
            out.clear();
            for p in answer_parts(&head, b"42") {
                out.extend_from_slice(p);
            }
            black_box(out.len())
        })
    });
    g.throughput(Throughput::Bytes(metadata.len() as u64));
    g.bench_function(
        "hit: 300 KB state_getMetadata answer with the client's id",
        |b| {
            b.iter(|| {
                let head = store.get(black_box(&meta_key), Instant::now()).unwrap();
                out.clear();
                for p in answer_parts(&head, b"43") {
                    out.extend_from_slice(p);
                }
                black_box(out.len())
            })
        },
    );
    g.finish();
}

criterion_group!(benches, cache);
criterion_main!(benches);
