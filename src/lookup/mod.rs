//! What visitord knows about a visitor, from data files and datasets: the
//! geo databases, country facts (names, currencies, languages, EU), and
//! the user-agent rules; and how every input file is read (`input`).

pub mod agent;
pub mod country;
pub mod geo;
pub mod input;
