//! Micro-benchmarks of the hot-path functions: frame header decode, unmask,
//! UTF-8 validation, the relay decoder over realistic buffers, and the
//! handshake (parse + accept key). Run: `cargo bench --bench codec`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringway::ws::codec::{Decoder, Limits, Role, Step};
use ringway::ws::frame::{write_frame, FrameHeader, OpCode};
use ringway::ws::handshake::{accept_key, parse_head, validate_upgrade, HEADER_ARRAY};
use ringway::ws::mask::apply_mask;
use ringway::ws::utf8::Utf8Validator;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn json_request(id: u32) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"state_getStorage","params":["0x26aa394eea5630e07c48ae0c9558cef7b99d880ec681799c0cf30e8886371da9de1e86a9a8c739864cf3cc5ec2bea59fd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"]}}"#
    )
}

fn frame_header(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_header_decode");
    g.throughput(Throughput::Elements(1));
    for (name, len) in [("7bit", 100usize), ("16bit", 3000), ("64bit", 300_000)] {
        let mut f = Vec::new();
        write_frame(&mut f, OpCode::Text, &vec![b'a'; len], Some(KEY));
        g.bench_function(name, |b| b.iter(|| FrameHeader::parse(black_box(&f[..14]))));
    }
    g.finish();
}

fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for len in [128usize, 4096, 65536, 1 << 20] {
        let mut buf = vec![0x5au8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf[..]), KEY, 1))
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8_validate");
    let text: String = (0..)
        .map(json_request)
        .take(1500)
        .collect::<Vec<_>>()
        .concat();
    let text = &text.as_bytes()[..300 * 1024];
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("300KB_in_16KB_pieces", |b| {
        b.iter(|| {
            let mut v = Utf8Validator::default();
            for piece in text.chunks(16 * 1024) {
                v.feed(black_box(piece)).unwrap();
            }
            v.is_complete()
        })
    });
    g.finish();
}

/// The relay's per-buffer work: walk a 16 KiB read buffer of frames.
fn decoder(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay_decode");
    // Client side: masked JSON-RPC requests (~300 bytes each) filling a read buffer.
    let mut client = Vec::new();
    let mut i = 0;
    while client.len() < 16 * 1024 - 400 {
        write_frame(
            &mut client,
            OpCode::Text,
            json_request(i).as_bytes(),
            Some(KEY),
        );
        i += 1;
    }
    let frames = i as u64;
    g.throughput(Throughput::Bytes(client.len() as u64));
    g.bench_function(format!("client_16KB_{frames}_requests"), |b| {
        b.iter(|| walk(Role::Client, black_box(&client)))
    });
    // Node side: one 300 KB response (state_getMetadata), in 16 KiB reads.
    let body: String = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":"0x{}"}}"#,
        "6d".repeat(150_000)
    );
    let mut server = Vec::new();
    write_frame(&mut server, OpCode::Text, body.as_bytes(), None);
    g.throughput(Throughput::Bytes(server.len() as u64));
    g.bench_function("node_300KB_response", |b| {
        b.iter(|| {
            let mut d = Decoder::new(Role::Server, Limits::default());
            for piece in server.chunks(16 * 1024) {
                let mut at = 0;
                while at < piece.len() {
                    match d.step(&piece[at..]).unwrap() {
                        Step::Forward(n) | Step::Control(_, n) => at += n,
                        Step::NeedMore => break,
                    }
                }
            }
            d.messages()
        })
    });
    g.finish();
}

fn walk(role: Role, buf: &[u8]) -> u64 {
    let mut d = Decoder::new(role, Limits::default());
    let mut at = 0;
    while at < buf.len() {
        match d.step(&buf[at..]).unwrap() {
            Step::Forward(n) | Step::Control(_, n) => at += n,
            Step::NeedMore => break,
        }
    }
    d.messages()
}

fn handshake(c: &mut Criterion) {
    let req = b"GET / HTTP/1.1\r\nHost: rpc.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n\
Origin: https://polkadot.js.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n";
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_validate_accept", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
            let Ok(ringway::ws::frame::Parse::Done(head, _)) =
                parse_head(black_box(req), &mut headers, 16384, 64)
            else {
                unreachable!()
            };
            let up = validate_upgrade(&head).unwrap();
            accept_key(up.key)
        })
    });
    g.finish();
}

criterion_group!(benches, frame_header, unmask, utf8, decoder, handshake);
criterion_main!(benches);
