//! The header-block compression contexts: one zlib stream per direction per
//! connection, primed with the SPDY/3 dictionary and sync-flushed after each
//! block, so every block depends on all earlier ones (section 2.6.10.1).
//!
//! Outgoing blocks are stored, not compressed: the zlib stream this side
//! writes is byte for byte what zlib writes at compression level 0
//! (`Z_NO_COMPRESSION`) with the dictionary and a sync flush after each
//! block, which every inflater reads. A deflate state is ~270 KiB that zlib
//! zero-fills, per connection: on this kind of machine (page faults under a
//! software KVM's shadow paging) making one took 150-400 µs, most of a
//! stream's first round trip on every kubectl exec and port-forward, and a
//! node with a hundred exec sessions open would hold 27 MiB of them. What
//! compression would save is a few dozen bytes per stream: the blocks the
//! streaming server sends are its SYN_REPLYs, with no headers at all.

use flate2::{Decompress, FlushDecompress, Status};

use crate::dictionary::{DICTIONARY, DICTIONARY_ID};
use crate::frame::FrameError;

/// The zlib stream's header: deflate with a 32 KiB window (CMF 0x78), the
/// fastest level and a preset dictionary (FLG 0x3f, its check bits as zlib
/// sets them), then the dictionary's Adler-32 (RFC 1950, section 2.2).
const STREAM_HEADER: [u8; 6] = {
    let id = DICTIONARY_ID.to_be_bytes();
    [0x78, 0x3f, id[0], id[1], id[2], id[3]]
};

/// The most one stored block holds (its LEN field is 16 bits).
const MAX_STORED: usize = 0xffff;

/// Writes outgoing header blocks into this side's zlib stream.
pub(crate) struct HeaderCompressor {
    started: bool,
}

impl HeaderCompressor {
    pub(crate) fn new() -> Self {
        HeaderCompressor { started: false }
    }

    /// Appends `raw` to `out` as stored deflate blocks, then an empty one:
    /// a sync flush, so the peer inflates the block whole (RFC 1951,
    /// section 3.2.4). The stream header goes before the first block.
    pub(crate) fn compress(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let blocks = raw.len().div_ceil(MAX_STORED);
        out.reserve(STREAM_HEADER.len() + raw.len() + 5 * (blocks + 1));
        if !self.started {
            out.extend_from_slice(&STREAM_HEADER);
            self.started = true;
        }
        for chunk in raw.chunks(MAX_STORED).chain([&[][..]]) {
            stored_block(chunk, out);
        }
    }
}

/// One stored block, not the last: a byte holding BFINAL 0 and BTYPE 00
/// (this stream is always at a byte boundary between blocks), LEN and its
/// one's complement, little-endian, then the bytes.
fn stored_block(chunk: &[u8], out: &mut Vec<u8>) {
    let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
    out.push(0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&chunk[..usize::from(len)]);
}

/// Inflates incoming header blocks, refusing to produce more than a limit.
pub(crate) struct HeaderDecompressor {
    inner: Decompress,
    ended: bool,
}

impl HeaderDecompressor {
    pub(crate) fn new() -> Self {
        HeaderDecompressor {
            inner: Decompress::new(true),
            ended: false,
        }
    }

    /// Inflates one compressed block (all of `input`) into at most `max`
    /// bytes.
    pub(crate) fn decompress(&mut self, input: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
        if self.ended {
            return Err(FrameError::CompressionStreamEnded);
        }
        let mut out: Vec<u8> =
            Vec::with_capacity(max.min(input.len().saturating_mul(4)).clamp(64, 4096) + 1);
        let mut pos = 0usize;
        loop {
            if out.len() == out.capacity() {
                // Grow, but never past one byte over the limit: that byte
                // is how an oversized block is told from one that fits.
                let room = (max + 1).saturating_sub(out.len());
                if room == 0 {
                    return Err(FrameError::HeaderBlockTooLarge { max });
                }
                out.reserve_exact(room.min(out.len().max(4096)));
            }
            let (in_before, out_before) = (self.inner.total_in(), out.len());
            let result = self
                .inner
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += usize::try_from(self.inner.total_in() - in_before)
                .map_err(|_| FrameError::Decompress("input count overflow".into()))?;
            if out.len() > max {
                return Err(FrameError::HeaderBlockTooLarge { max });
            }
            match result {
                Ok(Status::StreamEnd) => {
                    // The peer finished its zlib stream: later blocks cannot
                    // be inflated, and nothing may follow in this one.
                    self.ended = true;
                    if pos != input.len() {
                        return Err(FrameError::Decompress(
                            "data after the end of the zlib stream".into(),
                        ));
                    }
                    return Ok(out);
                }
                Ok(Status::Ok | Status::BufError) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(id) if id == DICTIONARY_ID => {
                        self.inner
                            .set_dictionary(DICTIONARY)
                            .map_err(|e| FrameError::Decompress(e.to_string()))?;
                        continue;
                    }
                    Some(id) => return Err(FrameError::WrongDictionary(id)),
                    None => return Err(FrameError::Decompress(e.to_string())),
                },
            }
            let progressed = self.inner.total_in() > in_before || out.len() > out_before;
            if pos == input.len() && out.len() < out.capacity() {
                // All input taken and the output had room: the block is whole.
                return Ok(out);
            }
            if !progressed {
                if pos == input.len() {
                    return Ok(out);
                }
                return Err(FrameError::Decompress("inflate made no progress".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// What zlib writes for `blocks` at `level` with the dictionary,
    /// sync-flushing after each (at the default level: as kubectl's zlib).
    fn zlib(level: Compression, blocks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut deflate = Compress::new(level, true);
        deflate.set_dictionary(DICTIONARY).unwrap();
        blocks
            .iter()
            .map(|raw| {
                let mut z = Vec::with_capacity(raw.len() + 64);
                deflate
                    .compress_vec(raw, &mut z, FlushCompress::Sync)
                    .unwrap();
                z
            })
            .collect()
    }

    #[test]
    fn blocks_are_what_zlib_writes_at_level_0() {
        let blocks: [&[u8]; 3] = [
            b"\0\0\0\0",
            b"\0\0\0\x01\0\0\0\x0astreamtype\0\0\0\x05error",
            &[7u8; 3000],
        ];
        let mut c = HeaderCompressor::new();
        let ours: Vec<Vec<u8>> = blocks
            .iter()
            .map(|raw| {
                let mut z = Vec::new();
                c.compress(raw, &mut z);
                z
            })
            .collect();
        assert_eq!(ours, zlib(Compression::none(), &blocks));
        // And they inflate, in order, in one context.
        let mut d = HeaderDecompressor::new();
        for (z, raw) in ours.iter().zip(blocks) {
            assert_eq!(d.decompress(z, 1 << 20).unwrap(), raw);
        }
        // An empty block (zlib would write nothing) is an empty stored one.
        let mut z = Vec::new();
        c.compress(b"", &mut z);
        assert_eq!(z, [0, 0, 0, 0xff, 0xff]);
        assert_eq!(d.decompress(&z, 1024).unwrap(), b"");
    }

    #[test]
    fn a_block_larger_than_a_stored_block_is_split() {
        let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut c = HeaderCompressor::new();
        let mut z = Vec::new();
        c.compress(b"first", &mut z);
        let mut d = HeaderDecompressor::new();
        assert_eq!(d.decompress(&z, 1024).unwrap(), b"first");
        let mut z = Vec::new();
        c.compress(&raw, &mut z);
        // Four blocks of data (three full), and the empty one.
        assert_eq!(z.len(), raw.len() + 5 * 5);
        assert_eq!(d.decompress(&z, 1 << 20).unwrap(), raw);
    }

    #[test]
    fn blocks_share_one_context_per_direction() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new();
        let first = b"\0\0\0\x01\0\0\0\x0astreamtype\0\0\0\x05stdin".to_vec();
        let mut a = Vec::new();
        c.compress(&first, &mut a);
        let mut b = Vec::new();
        c.compress(&first, &mut b);
        assert_eq!(d.decompress(&a, 1024).unwrap(), first);
        assert_eq!(d.decompress(&b, 1024).unwrap(), first);
        // A fresh context cannot read the second block alone: the stream's
        // header was in the first.
        assert!(HeaderDecompressor::new().decompress(&b, 1024).is_err());
        // Compressed blocks from a peer refer back to earlier ones.
        let z = zlib(Compression::default(), &[&first, &first]);
        let mut d = HeaderDecompressor::new();
        assert_eq!(d.decompress(&z[0], 1024).unwrap(), first);
        assert!(z[1].len() < z[0].len());
        assert_eq!(d.decompress(&z[1], 1024).unwrap(), first);
    }

    #[test]
    fn output_limit_is_enforced() {
        // A small block that inflates to 100 kB, as a hostile peer sends.
        let raw = vec![b'a'; 100_000];
        let z = zlib(Compression::default(), &[&raw]).remove(0);
        assert!(z.len() < 1000);
        let mut d = HeaderDecompressor::new();
        assert_eq!(
            d.decompress(&z, 4096),
            Err(FrameError::HeaderBlockTooLarge { max: 4096 })
        );
        let mut d = HeaderDecompressor::new();
        assert_eq!(d.decompress(&z, 100_000).unwrap().len(), 100_000);
    }

    #[test]
    fn a_foreign_dictionary_is_refused() {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(b"not the spdy dictionary").unwrap();
        let mut z = Vec::with_capacity(256);
        deflate
            .compress_vec(b"\0\0\0\0", &mut z, FlushCompress::Sync)
            .unwrap();
        let mut d = HeaderDecompressor::new();
        assert!(matches!(
            d.decompress(&z, 1024),
            Err(FrameError::WrongDictionary(_))
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = HeaderDecompressor::new();
        assert!(d.decompress(&[0xff; 32], 1024).is_err());
        let mut d = HeaderDecompressor::new();
        // A lone zlib header asking for the dictionary, then nothing: an
        // empty block.
        assert_eq!(
            d.decompress(&[0x38, 0xea, 0xe3, 0xc6, 0xa7, 0xc2], 1024),
            Ok(vec![])
        );
    }
}
