//! Connection defences, before and around HTTP: the accept gate (caps,
//! PROXY protocol, the TLS handshake deadline), the stream wrapper that
//! holds a connection's place and watches its request heads, and the
//! request-head watch itself.

pub mod accept;
pub mod connection;
pub mod proxy_protocol;
pub mod registry;
pub mod request_head;
