//! The per-database record cache: a decoded [`Location`] kept as spans of
//! the database bytes ([`CachedRecord`]), keyed by record offset.

use super::location::{Location, STRING_FIELDS};

/// A decoded [`Location`] that can be kept beside the bytes it came from:
/// its strings, which the decoder borrowed from the database, as ranges of
/// those bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct CachedRecord {
    /// In [`Location::strings`] order.
    strings: [Span; STRING_FIELDS],
    latitude: Option<f64>,
    longitude: Option<f64>,
    asn: u32,
    is_eu: Option<bool>,
}

/// `start..start + len` of the database bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

impl CachedRecord {
    /// `None` when a string is not a slice of `bytes` (or lies beyond
    /// 4 GiB): such a record is simply not cached.
    pub(super) fn of(location: &Location<'_>, bytes: &[u8]) -> Option<CachedRecord> {
        let base = bytes.as_ptr() as usize;
        let span = |s: &str| -> Option<Span> {
            if s.is_empty() {
                return Some(Span::default());
            }
            let start = (s.as_ptr() as usize).checked_sub(base)?;
            if start.checked_add(s.len())? > bytes.len() {
                return None;
            }
            Some(Span {
                start: u32::try_from(start).ok()?,
                len: u32::try_from(s.len()).ok()?,
            })
        };
        let mut strings = [Span::default(); STRING_FIELDS];
        for (slot, s) in strings.iter_mut().zip(location.strings()) {
            *slot = span(s)?;
        }
        Some(CachedRecord {
            strings,
            latitude: location.latitude,
            longitude: location.longitude,
            asn: location.asn,
            is_eu: location.is_eu,
        })
    }

    /// The location again, its strings re-borrowed from `bytes` (checked
    /// again, so a mismatch gives `None`, never a wrong string).
    pub(super) fn location<'a>(&self, bytes: &'a [u8]) -> Option<Location<'a>> {
        let mut location = Location {
            latitude: self.latitude,
            longitude: self.longitude,
            asn: self.asn,
            is_eu: self.is_eu,
            ..Location::default()
        };
        for (field, span) in location.strings_mut().into_iter().zip(&self.strings) {
            if span.len == 0 {
                continue;
            }
            let start = span.start as usize;
            let raw = bytes.get(start..start + span.len as usize)?;
            *field = std::str::from_utf8(raw).ok()?;
        }
        Some(location)
    }
}
