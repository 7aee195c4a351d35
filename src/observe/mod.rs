//! What an operator sees: Prometheus metrics, the log and its filters,
//! per-project usage, recent reloads, and who may read the metrics
//! listener.

pub mod logging;
pub mod metrics;
pub mod metrics_access;
pub mod reload_history;
pub mod usage;
pub mod verdict;
