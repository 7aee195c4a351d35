//! Where an HTTP/1 connection is in its request cycle: a request head
//! starts with the first byte read at connection start or after the HTTP
//! layer has finished the previous request (its body read to the end), and
//! ends at the blank line.
//!
//! Pingora times each read, not a head as a whole, and reads heads of up
//! to 1 MiB. [`HeadWatch`] gives the whole head a deadline
//! (`limits.request_header_timeout`, against slowloris) and a size
//! (`limits.max_request_head`), and `connection::Limited` ends the
//! connection when either is passed.
//!
//! A connection's first request is timed from the connection's start (the
//! end of the TLS handshake, or accept on a plain listener), not from its
//! first byte: a client that connects and sends nothing would otherwise
//! wait for Pingora's fixed 60 s read timeout (HTTP/1), or for ever
//! (HTTP/2, whose handshake has no deadline in Pingora 0.9.1). On an HTTP/2
//! connection the "head" is the client preface and the frame after it (its
//! SETTINGS, RFC 9113 §3.4); the h2 crate bounds everything after that.

use std::future::Future as _;
use std::pin::Pin;
use std::task::Context;
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// The limits one connection's request heads are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Time from a head's first byte to its blank line; `None`: no limit.
    pub deadline: Option<Duration>,
    /// Bytes in a head, its blank line included.
    pub max_len: usize,
}

#[derive(Debug)]
pub struct HeadWatch {
    limits: HeadLimits,
    phase: Phase,
    /// Bytes of the current head read so far.
    len: usize,
    /// Taken at the head's first wait for bytes, not at its first byte: a
    /// head that arrives in one read (nearly all) never reads the clock, and
    /// the first wait follows the first partial read within microseconds.
    started: Option<Instant>,
    /// Armed lazily: most heads arrive in one read and never need a timer.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    newlines: u8,
    /// HTTP/2: the preface and the length of the frame that follows it.
    preface: Option<Preface>,
}

/// The first bytes of an HTTP/2 connection: the 24-byte client preface,
/// then a frame header whose first three bytes are the frame's length.
#[derive(Debug, Default)]
struct Preface {
    start: [u8; PREFACE_AND_LENGTH],
    filled: usize,
}

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (24 bytes) and a frame length (3).
const PREFACE_AND_LENGTH: usize = 24 + 3;
/// A frame header is 9 bytes.
const FRAME_HEADER: usize = 9;

impl Preface {
    /// Where in `bytes` (the read after `seen` bytes of the connection) the
    /// preface's first frame ends.
    fn end(&mut self, seen: usize, bytes: &[u8]) -> Option<usize> {
        let take = (PREFACE_AND_LENGTH - self.filled).min(bytes.len());
        self.start[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
        self.filled += take;
        if self.filled < PREFACE_AND_LENGTH {
            return None;
        }
        let [a, b, c] = [self.start[24], self.start[25], self.start[26]].map(usize::from);
        let total = 24 + FRAME_HEADER + (a << 16 | b << 8 | c);
        (seen + bytes.len() >= total).then(|| total - seen)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests: waiting is Pingora's keep-alive timeout's business.
    Idle,
    /// Inside a request head: it must be complete by `started + deadline`.
    Head,
    /// Head complete; the body and the response are not ours to watch
    /// until the HTTP layer says the request is finished.
    Done,
    /// The head passed `max_len` before its end.
    TooLarge,
}

impl HeadWatch {
    pub fn new(limits: HeadLimits) -> HeadWatch {
        HeadWatch {
            limits,
            phase: Phase::Idle,
            len: 0,
            started: None,
            sleep: None,
            armed: false,
            newlines: 0,
            preface: None,
        }
    }

    /// The watch of a new connection's first HTTP/1 request, timed from now.
    pub fn first_request(limits: HeadLimits) -> HeadWatch {
        HeadWatch {
            phase: Phase::Head,
            started: Some(Instant::now()),
            ..HeadWatch::new(limits)
        }
    }

    /// The watch of a new HTTP/2 connection's preface, timed from now. Its
    /// length is bounded by the h2 crate (a frame over its maximum size is
    /// a protocol error), not by `max_len`.
    pub fn h2_preface(deadline: Option<Duration>) -> HeadWatch {
        HeadWatch {
            preface: Some(Preface::default()),
            ..HeadWatch::first_request(HeadLimits {
                deadline,
                max_len: usize::MAX,
            })
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Takes the bytes of one read.
    pub fn on_read(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Done | Phase::TooLarge => return,
            Phase::Idle if !bytes.is_empty() => {
                self.phase = Phase::Head;
                self.len = 0;
                self.started = None;
                self.armed = false;
                self.newlines = 0;
            }
            Phase::Idle | Phase::Head => {}
        }
        let end = match &mut self.preface {
            Some(preface) => preface.end(self.len, bytes),
            None => self.find_end(bytes),
        };
        self.len += end.unwrap_or(bytes.len());
        if self.len > self.limits.max_len {
            self.phase = Phase::TooLarge;
        } else if end.is_some() {
            self.phase = Phase::Done;
        }
    }

    /// Where in `bytes` the head ends (just past its blank line): "\r\n\r\n",
    /// or "\n\n" from lenient clients. `newlines` counts the line ends seen
    /// with nothing but `\r` between them, across reads.
    fn find_end(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            if self.newlines > 0 {
                // Just after a line end: only `\r`s may come before the next.
                let skip = bytes[at..].iter().position(|&b| b != b'\r')?;
                at += skip;
                if bytes[at] == b'\n' {
                    return Some(at + 1);
                }
                self.newlines = 0;
            }
            // Jumping from line end to line end is what keeps this cheap:
            // the head is read once by Pingora's parser already.
            let next = memchr::memchr(b'\n', &bytes[at..])?;
            self.newlines = 1;
            at += next + 1;
        }
    }

    /// The HTTP layer has finished a request, its body read to the end: the
    /// next byte read starts a new head. (Not the first response byte: a
    /// response can start while the request body is still coming.)
    pub fn next_request(&mut self) {
        if self.phase != Phase::TooLarge && self.preface.is_none() {
            self.phase = Phase::Idle;
        }
    }

    /// While a head is incomplete and the read is pending: has the deadline
    /// passed? Registers the timer with the task so that it wakes.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.limits.deadline.filter(|_| self.phase == Phase::Head) else {
            return false;
        };
        let started = *self.started.get_or_insert_with(Instant::now);
        let deadline = tokio::time::Instant::from_std(started + limit);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    fn watch() -> HeadWatch {
        HeadWatch::new(HeadLimits {
            deadline: Some(Duration::from_secs(1)),
            max_len: 1024,
        })
    }

    #[test]
    fn head_ends_at_the_blank_line() {
        let mut c = watch();
        assert_eq!(c.phase, Phase::Idle);
        c.on_read(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert_eq!(c.phase, Phase::Head);
        c.on_read(b"\r");
        assert_eq!(c.phase, Phase::Head);
        c.on_read(b"\n");
        assert_eq!(c.phase, Phase::Done);
        // Body bytes do not start a new head.
        c.on_read(b"\r\n\r\nabc");
        assert_eq!(c.phase, Phase::Done);
        // A finished request ends the cycle; the next byte starts a new head.
        c.next_request();
        assert_eq!(c.phase, Phase::Idle);
        c.on_read(b"G");
        assert_eq!(c.phase, Phase::Head);
        c.on_read(b"ET / HTTP/1.1\n\n");
        assert_eq!(c.phase, Phase::Done);
    }

    #[test]
    fn a_body_however_long_or_slow_is_not_a_head() {
        let mut c = watch();
        c.on_read(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n");
        for _ in 0..50 {
            c.on_read(&[b'x'; 100]);
        }
        assert_eq!(c.phase, Phase::Done);
        let waker = std::task::Waker::noop();
        assert!(!c.expired(&mut Context::from_waker(waker)));
    }

    #[test]
    fn a_line_of_text_does_not_end_the_head() {
        let mut c = watch();
        c.on_read(b"GET / HTTP/1.1\r\nX: 1\r\nY: 2\r\n");
        assert_eq!(c.phase, Phase::Head);
    }

    #[test]
    fn heads_are_measured_up_to_their_blank_line() {
        let head = |len: usize| {
            let mut h = b"GET / HTTP/1.1\r\nX: ".to_vec();
            h.resize(len - 4, b'a');
            h.extend_from_slice(b"\r\n\r\n");
            h
        };
        // Exactly at the limit, with the next request's bytes behind it.
        let mut c = watch();
        let mut bytes = head(1024);
        bytes.extend_from_slice(&[b'b'; 4000]);
        c.on_read(&bytes);
        assert_eq!(c.phase, Phase::Done);
        // One byte over, in small reads.
        let mut c = watch();
        for chunk in head(1025).chunks(100) {
            c.on_read(chunk);
        }
        assert_eq!(c.phase, Phase::TooLarge);
        // Over the limit without ever ending.
        let mut c = watch();
        for _ in 0..20 {
            c.on_read(&[b'x'; 100]);
        }
        assert_eq!(c.phase, Phase::TooLarge);
        c.next_request();
        assert_eq!(c.phase, Phase::TooLarge, "a refused head stays refused");
        // Each head is measured on its own.
        let mut c = watch();
        for _ in 0..5 {
            c.on_read(&head(1000));
            assert_eq!(c.phase, Phase::Done);
            c.next_request();
        }
    }

    /// The byte-at-a-time rule `on_read` implements, as a reference: the
    /// head's length, or `None` while it has not ended.
    fn reference_end(chunks: &[&[u8]]) -> Option<usize> {
        let mut newlines = 0;
        for (k, &b) in chunks.iter().flat_map(|c| c.iter()).enumerate() {
            match b {
                b'\n' => {
                    newlines += 1;
                    if newlines == 2 {
                        return Some(k + 1);
                    }
                }
                b'\r' => {}
                _ => newlines = 0,
            }
        }
        None
    }

    #[test]
    fn jumping_between_line_ends_agrees_with_the_byte_rule() {
        let alphabet = [b'\r', b'\n', b'a', b' ', b':'];
        let mut seed: u32 = 12345;
        let mut next = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            seed >> 16
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() as usize) % alphabet.len()])
                .collect();
            // The same bytes split into reads at random points.
            let mut cuts: Vec<usize> = (0..(next() % 4))
                .map(|_| next() as usize % (len + 1))
                .collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([len]) {
                chunks.push(&text[from..cut]);
                from = cut;
            }
            let max_len = (next() % 24) as usize;
            let mut c = HeadWatch::new(HeadLimits {
                deadline: None,
                max_len,
            });
            for chunk in &chunks {
                c.on_read(chunk);
            }
            let want = match reference_end(&chunks) {
                Some(end) if end <= max_len => Phase::Done,
                Some(_) => Phase::TooLarge,
                None if len > max_len => Phase::TooLarge,
                None if len == 0 => Phase::Idle,
                None => Phase::Head,
            };
            assert_eq!(
                c.phase,
                want,
                "{:?} max {max_len}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[tokio::test]
    async fn an_unfinished_head_expires() {
        let mut c = HeadWatch::new(HeadLimits {
            deadline: Some(Duration::from_millis(30)),
            max_len: 1024,
        });
        c.on_read(b"GET / HTTP/1.1\r\n");
        let waker = std::task::Waker::noop().clone();
        let mut cx = Context::from_waker(&waker);
        assert!(!c.expired(&mut cx));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(c.expired(&mut cx));
        // Once complete, it never expires.
        c.on_read(b"\r\n");
        assert!(!c.expired(&mut cx));
    }

    #[tokio::test]
    async fn a_first_request_is_timed_from_the_connection_start() {
        let limits = HeadLimits {
            deadline: Some(Duration::from_millis(30)),
            max_len: 1024,
        };
        let waker = std::task::Waker::noop().clone();
        let mut cx = Context::from_waker(&waker);
        // Nothing sent at all.
        let mut c = HeadWatch::first_request(limits);
        assert!(!c.expired(&mut cx));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(c.expired(&mut cx));
        // A request in time ends the watch; the next one is timed from its
        // first byte again.
        let mut c = HeadWatch::first_request(limits);
        c.on_read(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.phase, Phase::Done);
        c.next_request();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!c.expired(&mut cx), "an idle keep-alive is not a head");
    }

    #[tokio::test]
    async fn an_h2_preface_ends_after_its_first_frame() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS, 12 bytes of payload.
        bytes.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 12]);
        for split in [1, 5, 24, 26, 27, 32, 33, 44, bytes.len()] {
            let mut c = HeadWatch::h2_preface(Some(Duration::from_millis(30)));
            for chunk in bytes[..bytes.len() - 1].chunks(split) {
                c.on_read(chunk);
            }
            assert_eq!(c.phase, Phase::Head, "split {split}");
            c.on_read(&bytes[bytes.len() - 1..]);
            assert_eq!(c.phase, Phase::Done, "split {split}");
            c.next_request();
            assert_eq!(c.phase, Phase::Done, "HTTP/2 has no second preface");
        }
        // Half a preface, then silence.
        let mut c = HeadWatch::h2_preface(Some(Duration::from_millis(30)));
        c.on_read(&bytes[..10]);
        let waker = std::task::Waker::noop().clone();
        let mut cx = Context::from_waker(&waker);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(c.expired(&mut cx));
    }

    #[tokio::test]
    async fn without_a_deadline_nothing_expires() {
        let mut c = HeadWatch::new(HeadLimits {
            deadline: None,
            max_len: 1024,
        });
        c.on_read(b"GET / HTTP/1.1\r\n");
        let waker = std::task::Waker::noop().clone();
        let mut cx = Context::from_waker(&waker);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!c.expired(&mut cx));
    }
}
