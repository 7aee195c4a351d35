//! Certificates: the file pairs and SNI choice (`tls`), and the ones
//! visitord obtains and renews itself over ACME (`acme`).

pub mod acme;
pub mod ca;
pub mod tls;
