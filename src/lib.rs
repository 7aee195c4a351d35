//! visitord: a self-hosted VisitorAPI on Pingora.
//!
//! Data flows one way (DESIGN §8): bytes → `Session` → request facts →
//! decision → answer. Modules below `proxy`, `server` and `upstream` never
//! touch Pingora types; they are plain functions over plain data.

pub mod agent;
pub mod api;
pub mod client_ip;
pub mod config;
pub mod connection;
pub mod country;
pub mod geo;
pub mod json;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod server;
pub mod sites;
pub mod snapshot;
pub mod systemd;
pub mod tls;
pub mod upstream;
