//! Addresses and names as they arrive: host and port parsing, the client
//! address behind trusted proxies, and lists of networks.

pub mod client_ip;
pub mod host;
