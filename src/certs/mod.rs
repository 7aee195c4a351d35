//! Certificates and keys: the file pairs and SNI choice (`tls`), the ones
//! visitord obtains and renews itself over ACME (`acme`), and the keys
//! that sign visitor facts (`signing`).

pub mod acme;
pub mod ca;
pub mod signing;
pub mod tls;
