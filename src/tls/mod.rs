//! TLS termination with rustls: certificates and their reload ([`certs`]),
//! session tickets every worker opens ([`tickets`]), and the TLS stream split
//! into halves for the relay ([`stream`]).

pub mod certs;
pub mod stream;
pub mod tickets;

pub use certs::{
    check_named, kx_groups, load_or_generate, per_worker, server_config, CertifiedKey, Certs,
    ServerTls,
};
pub use stream::{accept, connect, MinRate, TlsReader, TlsWriter};
pub use tickets::TicketSeed;
