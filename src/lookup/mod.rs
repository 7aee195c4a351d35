//! What visitord knows about a visitor, from data files and datasets: the
//! geo databases, country facts (names, currencies, languages, EU), and
//! the user-agent rules.

pub mod agent;
pub mod country;
pub mod geo;
