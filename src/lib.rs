//! visitord: a self-hosted VisitorAPI on Pingora.
//!
//! Data flows one way (DESIGN §8, docs/architecture.md): bytes → `Session`
//! → `RequestFacts` (read once) → `Route` → decision → `Answer` →
//! `respond`. Modules are layered; each imports only from layers below it
//! (`tests/architecture.rs` keeps it so):
//!
//! - L0 leaves: `json country agent geo limits metrics host origin
//!   client_ip proxy_protocol logging systemd`
//! - L1 `config`: the serde surface and the typed configuration
//! - L2 values built from configuration and data: `answer visitor query
//!   tls sites upstream acme`
//! - L3 `snapshot`: one immutable world
//! - L4 decisions: `route api site_request`
//! - L5 Pingora glue: `proxy connection health_checks reload services
//!   acme_service`
//! - L6 `server` (and the `visitord` binary)
//!
//! Pingora types are named only in L5, L6 and `upstream`.

pub mod acme;
pub mod acme_service;
pub mod agent;
pub mod answer;
pub mod api;
pub mod client_ip;
pub mod config;
pub mod connection;
pub mod country;
pub mod geo;
pub mod health_checks;
pub mod host;
pub mod json;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod proxy_protocol;
pub mod query;
pub mod reload;
pub mod route;
pub mod server;
pub mod services;
pub mod site_request;
pub mod sites;
pub mod snapshot;
pub mod systemd;
pub mod tls;
pub mod upstream;
pub mod visitor;
