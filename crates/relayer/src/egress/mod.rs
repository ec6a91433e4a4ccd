//! Egress: how the relayer's connections to the backend leave the pod —
//! directly, or through an HTTP CONNECT proxy (config.md "Egress: proxy and
//! endpoint failover"). The decisions are plain functions with table tests
//! ([`no_proxy`]: which hosts bypass the proxy; [`route`]: which proxy, if
//! any, a connection to the backend takes); [`tunnel`] is the one piece of
//! I/O, the CONNECT handshake, with its response parser kept pure (and
//! fuzzed). The gRPC dialer (`connection::channel`) and `register`'s HTTP
//! client both route through here, so they can never disagree.

pub mod no_proxy;
pub mod route;
pub mod tunnel;

pub use no_proxy::NoProxy;
pub use route::{EgressError, EgressRoute};
