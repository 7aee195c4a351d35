//! A request's decisions, as plain data: what was read from it and where
//! it goes (`route`), the API's answer (`api`, `query`), a site request's
//! (`site`), and the answers visitord writes itself (`answer`).

pub mod answer;
pub mod api;
pub mod forward;
pub mod query;
pub mod route;
pub mod site;
