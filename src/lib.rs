//! visitord: a self-hosted VisitorAPI on Pingora.
//!
//! Data flows one way (DESIGN §8, docs/architecture.md): bytes → `Session`
//! → `RequestFacts` (read once) → `Route` → decision → `Answer` →
//! `respond`. Modules are layered; each imports only from layers below it
//! (`tests/architecture.rs` keeps it so):
//!
//! - L0 leaves: `clock header_buf json country agent geo limits project_counts metrics host
//!   origin client_ip proxy_protocol logging systemd request_head usage
//!   metrics_access reload_history`
//! - L1 `config`: the serde surface and the typed configuration
//! - L2 values built from configuration and data: `answer visitor query
//!   tls sites upstream shared_store acme`
//! - L3 `snapshot`: one immutable world
//! - L4 decisions and views: `route api site_request dashboard`
//! - L5 Pingora glue: `proxy accept connection health_checks reload services
//!   store_sync acme_service`
//! - L6 `server` (and the `visitord` binary)
//!
//! Pingora types are named only in L5, L6 and `upstream`.

pub mod accept;
pub mod acme;
pub mod acme_service;
pub mod agent;
pub mod answer;
pub mod api;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod connection;
pub mod country;
pub mod dashboard;
pub mod geo;
pub mod header_buf;
pub mod health_checks;
pub mod host;
pub mod json;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod metrics_access;
pub mod origin;
pub mod project_counts;
pub mod proxy;
pub mod proxy_protocol;
pub mod query;
pub mod reload;
pub mod reload_history;
pub mod request_head;
pub mod route;
pub mod server;
pub mod services;
pub mod shared_store;
pub mod site_request;
pub mod sites;
pub mod snapshot;
pub mod store_sync;
pub mod systemd;
pub mod tls;
pub mod upstream;
pub mod usage;
pub mod visitor;
