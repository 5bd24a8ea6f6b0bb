//! RFC 6455 by hand, sans-io: everything here takes `&[u8]` and returns
//! values; nothing imports the runtime, so all of it is unit-tested, fuzzed
//! and benchmarked as plain functions.

pub mod codec;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;
