//! Header values written into one buffer and handed out as slices of it:
//! one allocation for all the values visitord sets on a proxied request,
//! and a clone of a value (Pingora takes values by value, on every attempt)
//! is a reference count, not a copy.

use std::ops::Range;

use bytes::Bytes;
use http::HeaderValue;

/// The buffer while values are written.
#[derive(Debug, Default)]
pub struct HeaderBuf {
    bytes: Vec<u8>,
}

/// Where one value is in its [`HeaderBuf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark(Range<usize>);

impl HeaderBuf {
    pub fn with_capacity(bytes: usize) -> HeaderBuf {
        HeaderBuf {
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// Writes one value with `write`.
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Mark {
        let start = self.bytes.len();
        write(&mut self.bytes);
        Mark(start..self.bytes.len())
    }

    /// Writing is done: the values can be taken.
    pub fn freeze(self) -> HeaderValues {
        HeaderValues(Bytes::from(self.bytes))
    }
}

/// The written buffer.
#[derive(Debug)]
pub struct HeaderValues(Bytes);

impl HeaderValues {
    /// The value at `mark`, sharing the buffer; empty if its bytes are not
    /// a valid header value (a control character).
    pub fn get(&self, mark: &Mark) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.0.slice(mark.0.clone()))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn values_are_the_bytes_written_and_share_one_buffer() {
        let mut buf = HeaderBuf::with_capacity(8);
        let a = buf.push(|out| out.extend_from_slice(b"GB"));
        let empty = buf.push(|_| {});
        let b = buf.push(|out| out.extend_from_slice(b"51.514200,-0.093100"));
        let bad = buf.push(|out| out.extend_from_slice(b"line\r\nX-Evil: 1"));
        let values = buf.freeze();
        assert_eq!(values.get(&a), "GB");
        assert_eq!(values.get(&empty), "");
        assert_eq!(values.get(&b), "51.514200,-0.093100");
        assert_eq!(values.get(&bad), "", "a control character is refused");
        let (x, y) = (values.get(&a), values.get(&b));
        assert_eq!(
            y.as_bytes().as_ptr(),
            x.as_bytes().as_ptr().wrapping_add(2),
            "one buffer"
        );
    }
}
