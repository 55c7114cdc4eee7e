//! A fetched record's key, value and headers, copied out of librdkafka in one allocation.
//!
//! The engine copies every record it takes from the consumer (the record outlives librdkafka's
//! buffer: it is handed to a lane). One buffer per record instead of one for the key, one for the
//! value and two per header: the copies are made on the engine's thread and freed on a worker's,
//! and each allocation freed on another thread costs far more than the bytes it holds.

use std::fmt;

/// Layout of `buf`: the key's bytes, the value's bytes, then each header as its name's length and
/// its value's length (`u32`, little-endian), its name and its value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RawRecord {
    buf: Vec<u8>,
    /// The key's length; `None` for a record without a key.
    key: Option<u32>,
    /// The value's length; `None` for a record without a value (a tombstone).
    payload: Option<u32>,
}

const LENGTHS: usize = 2 * size_of::<u32>();

impl RawRecord {
    /// Copies a record. `headers` is called twice: to size the buffer, then to fill it. A header
    /// without a value reads as an empty one. Lengths beyond `u32::MAX` are cut (Kafka's own
    /// limits are far below it).
    pub fn new<'h, I>(key: Option<&[u8]>, payload: Option<&[u8]>, headers: impl Fn() -> I) -> Self
    where
        I: Iterator<Item = (&'h str, &'h [u8])>,
    {
        let key = key.map(|k| &k[..k.len().min(u32::MAX as usize)]);
        let payload = payload.map(|p| &p[..p.len().min(u32::MAX as usize)]);
        let header_bytes: usize = headers()
            .map(|(name, value)| LENGTHS + name.len() + value.len())
            .sum();
        let mut buf = Vec::with_capacity(
            key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + header_bytes,
        );
        buf.extend_from_slice(key.unwrap_or_default());
        buf.extend_from_slice(payload.unwrap_or_default());
        for (name, value) in headers() {
            let name = cut(name.as_bytes());
            let value = cut(value);
            buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(name);
            buf.extend_from_slice(value);
        }
        RawRecord {
            buf,
            key: key.map(|k| k.len() as u32),
            payload: payload.map(|p| p.len() as u32),
        }
    }

    /// The record's Kafka key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.map(|len| &self.buf[..len as usize])
    }

    /// The record's value, as fetched (encoded).
    pub fn payload(&self) -> Option<&[u8]> {
        let start = self.key.unwrap_or(0) as usize;
        self.payload
            .map(|len| &self.buf[start..start + len as usize])
    }

    /// The record's headers, in order. A name that is not UTF-8 (the engine copies only `&str`
    /// names, so only a hand-built record has one) reads as empty.
    pub fn headers(&self) -> Headers<'_> {
        let start = self.key.unwrap_or(0) as usize + self.payload.unwrap_or(0) as usize;
        Headers {
            rest: &self.buf[start..],
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(header, _)| *header == name)
            .map(|(_, value)| value)
    }

    /// Bytes held: key, value and headers.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn cut(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(u32::MAX as usize)]
}

impl fmt::Debug for RawRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawRecord")
            .field("key", &self.key().map(String::from_utf8_lossy))
            .field("payload_bytes", &self.payload().map(<[u8]>::len))
            .field(
                "headers",
                &self
                    .headers()
                    .map(|(name, value)| (name, String::from_utf8_lossy(value)))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The headers of a [`RawRecord`], in order: (name, value).
#[derive(Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (lengths, rest) = self.rest.split_first_chunk::<LENGTHS>()?;
        let (name_len, value_len) = lengths.split_at(size_of::<u32>());
        let name_len = u32::from_le_bytes(name_len.try_into().ok()?) as usize;
        let value_len = u32::from_le_bytes(value_len.try_into().ok()?) as usize;
        let (name, rest) = rest.split_at_checked(name_len)?;
        let (value, rest) = rest.split_at_checked(value_len)?;
        self.rest = rest;
        Some((std::str::from_utf8(name).unwrap_or_default(), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_key_value_and_headers_apart() {
        let headers = [("response_id", b"r-1".as_slice()), ("revision", b"2")];
        let raw = RawRecord::new(Some(b"household"), Some(b"\xc3\x01avro"), || {
            headers.iter().copied()
        });
        assert_eq!(raw.key(), Some(b"household".as_slice()));
        assert_eq!(raw.payload(), Some(b"\xc3\x01avro".as_slice()));
        assert_eq!(raw.headers().collect::<Vec<_>>(), headers.to_vec());
        assert_eq!(raw.header("revision"), Some(b"2".as_slice()));
        assert_eq!(raw.header("missing"), None);
        assert_eq!(raw.len(), 9 + 6 + 2 * 8 + 11 + 3 + 8 + 1);
    }

    #[test]
    fn tells_absent_from_empty() {
        let raw = RawRecord::new(None, Some(b""), std::iter::empty);
        assert_eq!(raw.key(), None);
        assert_eq!(raw.payload(), Some(b"".as_slice()));
        assert_eq!(raw.headers().count(), 0);

        let tombstone = RawRecord::new(Some(b""), None, || [("h", b"".as_slice())].into_iter());
        assert_eq!(tombstone.key(), Some(b"".as_slice()));
        assert_eq!(tombstone.payload(), None);
        assert_eq!(tombstone.header("h"), Some(b"".as_slice()));
        assert_eq!(RawRecord::default().payload(), None);
    }
}
