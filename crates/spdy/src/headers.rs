//! Header blocks: the name/value list carried (compressed) by SYN_STREAM,
//! SYN_REPLY and HEADERS frames.
//!
//! Uncompressed layout (SPDY/3, section 2.6.10): a 32-bit pair count, then
//! for each pair a 32-bit name length, the name, a 32-bit value length and
//! the value. Names are lowercase and unique; a value holding several values
//! separates them with NUL bytes.

use crate::frame::{FrameError, Limits};

/// The largest uncompressed header block the encoder accepts: its deflated
/// form then always fits in a frame's 24-bit length.
pub(crate) const MAX_ENCODED_BLOCK: usize = 8 << 20;

/// A header block: lowercase names, in insertion order, each with one value
/// (several values joined by NUL bytes, as on the wire).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.entries
                    .iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

impl Headers {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` (lowercased, as SPDY requires) to `value`, replacing an
    /// earlier value of the same name.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Self {
        let mut name = name.into();
        name.make_ascii_lowercase();
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((name, value)),
        }
        self
    }

    /// [`insert`](Self::insert), by value, for building a block in one expression.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of `name` (looked up case-insensitively) if it is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The raw value of `name` (looked up case-insensitively).
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Each of the NUL-separated values of `name`.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_bytes(name)
            .into_iter()
            .flat_map(|v| v.split(|&b| b == 0))
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Vec<u8>> {
        let i = self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        Some(self.entries.remove(i).1)
    }

    /// The (name, value) pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// How many names the block holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the block holds no name.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks that the block can be sent: no empty name, and a size the
    /// encoder accepts.
    pub fn validate(&self) -> Result<(), FrameError> {
        let mut size = 4usize;
        for (name, value) in &self.entries {
            if name.is_empty() {
                return Err(FrameError::EmptyHeaderName);
            }
            size = size.saturating_add(8 + name.len() + value.len());
        }
        if size > MAX_ENCODED_BLOCK || self.entries.len() > u32::MAX as usize {
            return Err(FrameError::HeaderBlockTooLarge {
                max: MAX_ENCODED_BLOCK,
            });
        }
        Ok(())
    }

    /// The block, uncompressed (as deflated into frames). Public for tests
    /// and fuzzing; frames are built by [`Encoder`](crate::Encoder).
    pub fn to_block(&self) -> Result<Vec<u8>, FrameError> {
        self.encode()
    }

    /// Parses an uncompressed block within `limits`. Public for tests and
    /// fuzzing; frames are read by [`Decoder`](crate::Decoder).
    pub fn from_block(block: &[u8], limits: &Limits) -> Result<Headers, FrameError> {
        Headers::decode(block, limits)
    }

    /// The uncompressed block.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.validate()?;
        let size = 4 + self
            .entries
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        // validate() bounded the count and every length by MAX_ENCODED_BLOCK.
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (name, value) in &self.entries {
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        Ok(out)
    }

    /// Parses an uncompressed block, within `limits`.
    pub(crate) fn decode(mut block: &[u8], limits: &Limits) -> Result<Headers, FrameError> {
        let count = take_u32(&mut block)? as usize;
        if count > limits.max_headers {
            return Err(FrameError::TooManyHeaders {
                count,
                max: limits.max_headers,
            });
        }
        // Each pair needs at least its two length fields.
        if count > block.len() / 8 {
            return Err(FrameError::TruncatedHeaderBlock);
        }
        let mut entries: Vec<(String, Vec<u8>)> = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_bytes(&mut block)?;
            if name.is_empty() {
                return Err(FrameError::EmptyHeaderName);
            }
            let name = std::str::from_utf8(name).map_err(|_| FrameError::InvalidHeaderName)?;
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(FrameError::UppercaseHeaderName(name.to_owned()));
            }
            if entries.iter().any(|(n, _)| n == name) {
                return Err(FrameError::DuplicateHeader(name.to_owned()));
            }
            let value = take_bytes(&mut block)?;
            entries.push((name.to_owned(), value.to_vec()));
        }
        if !block.is_empty() {
            return Err(FrameError::TrailingHeaderBytes(block.len()));
        }
        Ok(Headers { entries })
    }
}

impl<N: Into<String>, V: Into<Vec<u8>>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in iter {
            headers.insert(name, value);
        }
        headers
    }
}

fn take_u32(block: &mut &[u8]) -> Result<u32, FrameError> {
    let (head, rest) = block
        .split_first_chunk::<4>()
        .ok_or(FrameError::TruncatedHeaderBlock)?;
    *block = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_bytes<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
    let len = take_u32(block)? as usize;
    if len > block.len() {
        return Err(FrameError::TruncatedHeaderBlock);
    }
    let (bytes, rest) = block.split_at(len);
    *block = rest;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lowercases_and_replaces() {
        let mut h = Headers::new();
        h.insert("StreamType", "stdin")
            .insert("streamtype", "stdout");
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("STREAMTYPE"), Some("stdout"));
        assert_eq!(h.iter().next(), Some(("streamtype", &b"stdout"[..])));
    }

    #[test]
    fn block_round_trip_and_multi_values() {
        let h = Headers::new()
            .with("port", "8080")
            .with("requestid", "0")
            .with("accept", &b"a\0b"[..]);
        let raw = h.encode().unwrap();
        let back = Headers::decode(&raw, &Limits::default()).unwrap();
        assert_eq!(back, h);
        let all: Vec<&[u8]> = back.get_all("accept").collect();
        assert_eq!(all, [&b"a"[..], &b"b"[..]]);
    }

    #[test]
    fn decode_rejects_bad_blocks() {
        let limits = Limits::default();
        let block = |pairs: &[(&[u8], &[u8])], count: u32| {
            let mut out = count.to_be_bytes().to_vec();
            for (n, v) in pairs {
                out.extend_from_slice(&(n.len() as u32).to_be_bytes());
                out.extend_from_slice(n);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            out
        };
        assert_eq!(
            Headers::decode(&block(&[(b"", b"x")], 1), &limits),
            Err(FrameError::EmptyHeaderName)
        );
        assert_eq!(
            Headers::decode(&block(&[(b"Port", b"1")], 1), &limits),
            Err(FrameError::UppercaseHeaderName("Port".into()))
        );
        assert_eq!(
            Headers::decode(&block(&[(b"a", b"1"), (b"a", b"2")], 2), &limits),
            Err(FrameError::DuplicateHeader("a".into()))
        );
        assert_eq!(
            Headers::decode(&block(&[(b"a", b"1")], 2), &limits),
            Err(FrameError::TruncatedHeaderBlock)
        );
        assert_eq!(
            Headers::decode(&block(&[(b"a", b"1")], 0), &limits),
            Err(FrameError::TrailingHeaderBytes(10))
        );
        assert_eq!(
            Headers::decode(&block(&[(b"\xff", b"1")], 1), &limits),
            Err(FrameError::InvalidHeaderName)
        );
        assert_eq!(
            Headers::decode(&[0, 0], &limits),
            Err(FrameError::TruncatedHeaderBlock)
        );
        // A count beyond the limit is refused before anything is allocated.
        assert_eq!(
            Headers::decode(&u32::MAX.to_be_bytes(), &limits),
            Err(FrameError::TooManyHeaders {
                count: u32::MAX as usize,
                max: limits.max_headers
            })
        );
        // A name length past the end of the block.
        let mut bad = 1u32.to_be_bytes().to_vec();
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        bad.extend_from_slice(&[0; 8]);
        assert_eq!(
            Headers::decode(&bad, &limits),
            Err(FrameError::TruncatedHeaderBlock)
        );
    }

    #[test]
    fn encode_refuses_empty_names() {
        let h = Headers::new().with("", "x");
        assert_eq!(h.encode(), Err(FrameError::EmptyHeaderName));
    }
}
