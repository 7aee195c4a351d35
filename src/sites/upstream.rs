//! The Pingora side of sites: one `HttpPeer` template per upstream address,
//! built with the snapshot (`health_checks` probes them).
//!
//! Why not `pingora-load-balancing`: its `LoadBalancer` keeps health inside
//! each instance and starts every backend healthy, so each reload (a new
//! snapshot) would send traffic back to upstreams known to be down until
//! the next probe; and its per-backend SNI and CA would need a side table.
//! Round robin and health live in `sites.rs` as plain atomics shared by
//! address across snapshots; this module only connects.

use std::sync::Arc;

use pingora::prelude::HttpPeer;
use pingora::utils::tls::WrappedX509;

use crate::sites::{Site, Sites};

/// The peer of every upstream of every site, in `Sites` order.
pub struct Peers {
    sites: Vec<Vec<HttpPeer>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("sites", &self.sites.len())
            .finish()
    }
}

impl Peers {
    /// Templates for `sites`. A request clones one: cheap, and the CA
    /// certificates are parsed once per snapshot instead of per request.
    pub fn build(sites: &Sites) -> Peers {
        Peers {
            sites: sites.iter().map(site_peers).collect(),
        }
    }

    pub fn get(&self, site: usize, upstream: usize) -> Option<&HttpPeer> {
        self.sites.get(site)?.get(upstream)
    }
}

fn site_peers(site: &Site) -> Vec<HttpPeer> {
    // `Sites::build` checked that each certificate parses as X.509;
    // `parse_x509` (called by `WrappedX509::new`) would panic otherwise.
    let ca: Option<Arc<[WrappedX509]>> = site.ca.as_ref().map(|certs| {
        certs
            .iter()
            .map(|der| WrappedX509::new(der.to_vec(), pingora::utils::tls::parse_x509))
            .collect()
    });
    let group_key = trust_group(site.ca.as_deref());
    let c = &site.config;
    site.upstreams
        .iter()
        .map(|u| {
            // `u.sni` is never empty: with rustls an empty SNI would turn
            // certificate verification off.
            let mut peer = HttpPeer::new(u.addr, c.upstream_tls, u.sni.clone());
            let o = &mut peer.options;
            // Pingora's defaults are "no timeout" for every one of these.
            o.connection_timeout = Some(c.timeouts.connect);
            o.total_connection_timeout = Some(c.timeouts.connect);
            o.read_timeout = Some(c.timeouts.read);
            o.write_timeout = Some(c.timeouts.write);
            o.idle_timeout = Some(c.timeouts.idle);
            o.verify_cert = true;
            o.verify_hostname = true;
            o.ca = ca.clone();
            peer.group_key = group_key;
            peer
        })
        .collect()
}

/// Pingora pools upstream connections by address, SNI and verification
/// flags, but not by CA (pingora-core 0.9.1 `impl Hash for HttpPeer`): a
/// connection verified against one site's `upstream_ca` would be reused for
/// a site that trusts only the system roots. The group key keeps pools of
/// different trust apart; 0 is the system roots.
fn trust_group(ca: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(certs) = ca else {
        return 0;
    };
    // SipHash with fixed keys: equal CA files give equal keys, also
    // across snapshots, so a reload keeps the pool.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in certs {
        c.as_ref().hash(&mut h);
    }
    h.finish() | 1
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn sites(text: &str) -> Sites {
        let file = Path::new("visitord.toml");
        Sites::build(file, &crate::config::test_sites(&[text]), None).unwrap()
    }

    #[test]
    fn every_peer_has_every_timeout_and_a_name_to_verify() {
        let s = sites(
            r#"
hosts = ["a.com"]
upstreams = ["127.0.0.1:8443", "127.0.0.2:8443"]
upstream_tls = true
upstream_sni = "app.test"
connect_timeout = "2s"
read_timeout = "3s"
write_timeout = "4s"
idle_timeout = "5s"
"#,
        );
        let peers = Peers::build(&s);
        for u in 0..2 {
            let p = peers.get(0, u).unwrap();
            assert_eq!(p._address.to_string(), format!("127.0.0.{}:8443", u + 1));
            assert!(p.is_tls());
            assert_eq!(p.sni, "app.test");
            let o = &p.options;
            assert_eq!(o.connection_timeout, Some(Duration::from_secs(2)));
            assert_eq!(o.total_connection_timeout, Some(Duration::from_secs(2)));
            assert_eq!(o.read_timeout, Some(Duration::from_secs(3)));
            assert_eq!(o.write_timeout, Some(Duration::from_secs(4)));
            assert_eq!(o.idle_timeout, Some(Duration::from_secs(5)));
            assert!(o.verify_cert && o.verify_hostname);
            assert!(o.ca.is_none());
            assert_eq!(p.group_key, 0);
        }
        assert!(peers.get(0, 2).is_none());
        assert!(peers.get(1, 0).is_none());
    }

    #[test]
    fn plain_upstreams_get_their_host_as_sni_anyway() {
        let s = sites("hosts = [\"a.com\"]\nupstreams = [\"localhost:8080\"]");
        let p = Peers::build(&s);
        let p = p.get(0, 0).unwrap();
        assert!(!p.is_tls());
        assert_eq!(p.sni, "localhost");
    }

    #[test]
    fn trust_groups_follow_the_ca_content() {
        let der = |b: &[u8]| rustls::pki_types::CertificateDer::from(b.to_vec());
        let one = [der(b"one")];
        let same = [der(b"one")];
        let two = [der(b"two")];
        assert_eq!(trust_group(None), 0);
        assert_ne!(trust_group(Some(&one)), 0);
        assert_eq!(trust_group(Some(&one)), trust_group(Some(&same)));
        assert_ne!(trust_group(Some(&one)), trust_group(Some(&two)));
    }
}
