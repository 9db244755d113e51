//! The header-block compression contexts: one zlib stream per direction per
//! connection, primed with the SPDY/3 dictionary and sync-flushed after each
//! block, so every block depends on all earlier ones (section 2.6.10.1).

use std::sync::{Mutex, PoisonError};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::dictionary::{DICTIONARY, DICTIONARY_ID};
use crate::frame::FrameError;

/// Deflates outgoing header blocks.
pub(crate) struct HeaderCompressor {
    inner: Option<Compress>,
}

/// Deflate states of ended connections, reset for the next ones. A new
/// state is ~270 KiB that zlib zero-fills: on this kind of machine (page
/// faults under a software KVM's shadow paging) making one took 150-400 µs,
/// most of a stream's first round trip, on every kubectl exec and
/// port-forward; a reset one is ready in a few µs.
static SPARE_DEFLATES: Mutex<Vec<Compress>> = Mutex::new(Vec::new());

/// How many reset deflate states are kept (~270 KiB each).
const SPARE_DEFLATES_KEPT: usize = 4;

fn fresh_deflate() -> Compress {
    let spare = SPARE_DEFLATES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    match spare {
        Some(mut deflate) => {
            deflate.reset();
            deflate
        }
        None => Compress::new(Compression::default(), true),
    }
}

impl Drop for HeaderCompressor {
    fn drop(&mut self) {
        if let Some(deflate) = self.inner.take() {
            let mut spare = SPARE_DEFLATES
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if spare.len() < SPARE_DEFLATES_KEPT {
                spare.push(deflate);
            }
        }
    }
}

impl HeaderCompressor {
    pub(crate) fn new() -> Self {
        HeaderCompressor { inner: None }
    }

    /// Appends the deflated `raw` block to `out`, ending on a sync flush so
    /// the peer can inflate it whole.
    pub(crate) fn compress(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let deflate = match &mut self.inner {
            Some(deflate) => deflate,
            None => {
                let mut deflate = fresh_deflate();
                deflate
                    .set_dictionary(DICTIONARY)
                    .map_err(|e| FrameError::Compress(e.to_string()))?;
                self.inner.insert(deflate)
            }
        };
        let mut consumed = 0usize;
        loop {
            out.reserve(raw.len() - consumed + 64);
            let before = deflate.total_in();
            deflate
                .compress_vec(&raw[consumed..], out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compress(e.to_string()))?;
            consumed += usize::try_from(deflate.total_in() - before)
                .map_err(|_| FrameError::Compress("input count overflow".into()))?;
            // Done once all input is in and the flush left room to spare.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
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

    #[test]
    fn a_reused_deflate_state_starts_a_new_stream() {
        let block = b"\0\0\0\x01\0\0\0\x0astreamtype\0\0\0\x05error".to_vec();
        // An ended connection's compressor, with history, goes back...
        let mut old = HeaderCompressor::new();
        let mut out = Vec::new();
        old.compress(b"\0\0\0\x01\0\0\0\x04port\0\0\0\x048080", &mut out)
            .unwrap();
        old.compress(&block, &mut out).unwrap();
        drop(old);
        // ...and the next connection's first block reads alone, without
        // the old history, as a new compressor's would.
        let mut reused = HeaderCompressor::new();
        let mut a = Vec::new();
        reused.compress(&block, &mut a).unwrap();
        assert_eq!(
            HeaderDecompressor::new().decompress(&a, 1024).unwrap(),
            block
        );
        let mut second = Vec::new();
        reused.compress(&block, &mut second).unwrap();
        let mut d = HeaderDecompressor::new();
        assert_eq!(d.decompress(&a, 1024).unwrap(), block);
        assert_eq!(d.decompress(&second, 1024).unwrap(), block);
    }

    #[test]
    fn blocks_share_one_context_per_direction() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new();
        let first = b"\0\0\0\x01\0\0\0\x0astreamtype\0\0\0\x05stdin".to_vec();
        let mut a = Vec::new();
        c.compress(&first, &mut a).unwrap();
        let mut b = Vec::new();
        c.compress(&first, &mut b).unwrap();
        // The second copy refers back to the first: much shorter.
        assert!(b.len() < a.len(), "{} !< {}", b.len(), a.len());
        assert_eq!(d.decompress(&a, 1024).unwrap(), first);
        assert_eq!(d.decompress(&b, 1024).unwrap(), first);
        // A fresh context cannot read the second block alone.
        assert!(HeaderDecompressor::new().decompress(&b, 1024).is_err());
    }

    #[test]
    fn output_limit_is_enforced() {
        let mut c = HeaderCompressor::new();
        let raw = vec![b'a'; 100_000];
        let mut z = Vec::new();
        c.compress(&raw, &mut z).unwrap();
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
