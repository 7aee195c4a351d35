//! visitord: a self-hosted VisitorAPI on Pingora.
//!
//! Data flows one way (docs/design.md §8, docs/architecture.md): bytes →
//! `Session` → `RequestFacts` (read once) → `Route` → decision → `Answer`
//! (with its verdict) → `respond`. Concerns are folders; each top-level
//! module imports only from its own layer without a cycle, or from layers
//! below it (`tests/architecture.rs` keeps it so):
//!
//! - L0 leaves: `clock net lookup limits observe origin`
//! - L1 `config`: the serde surface and the typed configuration
//! - L2 values built from configuration and data: `visitor certs sites
//!   shared_store`
//! - L3 `snapshot`: one world per request
//! - L4 decisions and views: `request dashboard`
//! - L5 Pingora glue: `proxy conn services`
//! - L6 `server` (and the `visitord` binary)
//!
//! Pingora types are named only in L5, L6 and `sites::upstream`.
//!
//! The library's public surface is what the binary, the integration tests,
//! the benchmarks, the fuzz targets and the examples use: the pure layers
//! (L0 to L4 but the dashboard) and `server::run`. The Pingora glue, the
//! dashboard and the services are crate-private.

#[macro_use]
mod labels;

pub mod certs;
pub mod clock;
pub mod config;
pub(crate) mod conn;
pub(crate) mod dashboard;
pub mod limits;
pub mod lookup;
pub mod net;
pub mod observe;
pub mod origin;
pub(crate) mod proxy;
pub mod request;
pub mod server;
pub(crate) mod services;
pub mod shared_store;
pub mod sites;
pub mod snapshot;
pub mod visitor;
