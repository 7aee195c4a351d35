//! A request for a site visitord stands in front of: proxied with the
//! visitor's facts, or refused here by the site's country rule. Pure: facts
//! in, a decision out; `proxy` carries it out. (A site's same-origin API is
//! the API's: `api::same_origin`.)

use http::HeaderValue;

use crate::config::VisitorHeader;
use crate::net::client_ip;
use crate::request::answer::{self, Answer};
use crate::request::route::RequestFacts;
use crate::snapshot::Snapshot;
use crate::visitor;
use crate::visitor::header_buf::HeaderBuf;

/// What the upstream of a site request receives, decided before it is
/// chosen: the headers visitord sets.
#[derive(Debug, Clone)]
pub struct SiteRequest {
    /// The site's index in the snapshot.
    pub index: usize,
    /// In `VisitorHeader` order; `None` for a header the site does not
    /// take (`visitor_headers`).
    pub visitor: [Option<HeaderValue>; VisitorHeader::COUNT],
    pub forwarded_for: HeaderValue,
    /// Whether the peer's own `Forwarded` header may pass.
    pub peer_trusted: bool,
    pub forwarded_host: Option<HeaderValue>,
    /// `X-Real-IP`: the client address (nginx's convention).
    pub real_ip: HeaderValue,
    /// The site's `pass_underscore_headers`.
    pub pass_underscore_headers: bool,
    /// The site's `preserve_header_case`.
    pub preserve_header_case: bool,
}

#[derive(Debug)]
pub enum SiteDecision {
    Proxy(Box<SiteRequest>),
    Answer(Answer),
}

/// Decides a request routed to site `index`.
pub fn decide(snap: &Snapshot, facts: &RequestFacts<'_>, index: usize) -> SiteDecision {
    let Some(site) = snap.sites.get(index) else {
        return SiteDecision::Answer(answer::not_found());
    };
    // Only the lookups this site needs: its country rule and the headers it
    // takes.
    let wanted = site.config.visitor_headers;
    let visitor = snap.visitor_in_part(
        facts.client.ip,
        facts.user_agent,
        wanted.needs_location() || site.config.countries.needs_country(),
        wanted.needs_agent(),
    );
    let data = visitor.data();
    if !site.config.countries.admits(data.country_code) {
        return SiteDecision::Answer(answer::refused_page());
    }
    // Every value in one buffer (see `header_buf`).
    let mut buf = HeaderBuf::with_capacity(256);
    let visitor = visitor::visitor_headers(&data, wanted, &mut buf);
    let forwarded_for = buf.push(|out| {
        client_ip::push_forwarded_for(
            out,
            facts.peer,
            facts.peer_trusted,
            facts.forwarded_for_lines(),
        );
    });
    let real_ip = buf.push(|out| out.extend_from_slice(data.ip_address.as_bytes()));
    let forwarded_host = facts
        .host_raw
        .map(|h| buf.push(|out| out.extend_from_slice(h)));
    let values = buf.freeze();
    SiteDecision::Proxy(Box::new(SiteRequest {
        index,
        visitor: visitor.map(|m| m.map(|m| values.get(&m))),
        forwarded_for: values.get(&forwarded_for),
        peer_trusted: facts.peer_trusted,
        forwarded_host: forwarded_host.map(|m| values.get(&m)),
        real_ip: values.get(&real_ip),
        pass_underscore_headers: site.config.pass_underscore_headers,
        preserve_header_case: site.config.preserve_header_case,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::config::ListenerKind;
    use crate::request::route::tests::{request, snapshot};

    const SITES: &str = "[[site]]\nhosts = [\"shop.example.com\"]\nupstreams = [\"127.0.0.1:1\"]\napi_path = \"/visitor-api/\"\n\
        [[site]]\nhosts = [\"us.example.com\"]\nupstreams = [\"127.0.0.1:2\"]\nallow_countries = [\"US\"]\napi_path = \"/v/\"\n\
        [[site]]\nhosts = [\"slim.example.com\"]\nupstreams = [\"127.0.0.1:3\"]\nvisitor_headers = [\"country\", \"os\"]\n";

    fn decide_for(method: &str, index: usize, peer: &str, xff: &str) -> SiteDecision {
        let snap = snapshot(SITES);
        let req = request(
            method,
            "/",
            &[("host", "Shop.example.com"), ("x-forwarded-for", xff)],
        );
        let facts = RequestFacts::read(&req, peer.parse().unwrap(), ListenerKind::Tls, &snap);
        decide(&snap, &facts, index)
    }

    #[test]
    fn proxied_requests_carry_the_visitor_and_the_forwarding_chain() {
        let SiteDecision::Proxy(r) = decide_for("GET", 0, "127.0.0.1", "8.8.8.8") else {
            panic!("proxied")
        };
        assert_eq!(r.index, 0);
        assert_eq!(
            r.visitor[0].as_ref().unwrap(),
            "US",
            "X-Visitor-Country from the trusted hop"
        );
        assert_eq!(r.forwarded_for, "8.8.8.8, 127.0.0.1");
        assert!(r.peer_trusted);
        assert_eq!(
            r.forwarded_host.as_ref().map(|h| h.to_str().unwrap()),
            Some("Shop.example.com")
        );
        let SiteDecision::Proxy(r) = decide_for("GET", 0, "198.51.100.7", "8.8.8.8") else {
            panic!("proxied")
        };
        assert_eq!(
            r.forwarded_for, "198.51.100.7",
            "an untrusted chain is dropped"
        );
        assert!(!r.peer_trusted);
    }

    #[test]
    fn a_site_gets_only_the_visitor_headers_it_takes() {
        let SiteDecision::Proxy(r) = decide_for("GET", 2, "127.0.0.1", "8.8.8.8") else {
            panic!("proxied")
        };
        let sent: Vec<usize> = (0..VisitorHeader::COUNT)
            .filter(|&i| r.visitor[i].is_some())
            .collect();
        assert_eq!(sent, [0, 9], "country and os");
        assert_eq!(r.visitor[0].as_ref().unwrap(), "US");
    }

    #[test]
    fn country_rules_refuse_with_a_page() {
        let SiteDecision::Answer(a) = decide_for("GET", 1, "127.0.0.1", "81.2.69.142") else {
            panic!("refused")
        };
        assert_eq!(
            (a.status, a.content_type),
            (403, "text/html; charset=utf-8")
        );
        assert!(matches!(
            decide_for("GET", 1, "127.0.0.1", "8.8.8.8"),
            SiteDecision::Proxy(_)
        ));
    }
}
