//! Writing frames, with the sending side of the header compression.

use super::{
    frame_type, Frame, FrameError, FLAG_FIN, FLAG_SETTINGS_CLEAR, FLAG_UNIDIRECTIONAL, HEADER_LEN,
    MAX_31, MAX_FRAME_LEN, VERSION,
};
use crate::headers::Headers;
use crate::zlib::HeaderCompressor;

/// Writes frames to one peer: holds the sending side of the connection's
/// header compression, so frames must go on the wire in the order they
/// were encoded. An error from a header-carrying frame after its block was
/// written leaves the context out of step with the peer's
/// ([`FrameError::CompressionContextLost`] from then on); every check that
/// can be made first is made first.
pub struct Encoder {
    deflate: HeaderCompressor,
    broken: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder for a new connection.
    pub fn new() -> Encoder {
        Encoder {
            deflate: HeaderCompressor::new(),
            broken: false,
        }
    }

    /// Appends `frame`'s bytes to `out`. On error `out` is left as it was.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = out.len();
        let result = self.encode_inner(frame, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_inner(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let kind = frame.kind();
        let id31 = |id: u32| {
            if id > MAX_31 {
                Err(FrameError::IdTooLarge { kind, id })
            } else {
                Ok(id)
            }
        };
        let stream = |id: u32| {
            if id == 0 {
                Err(FrameError::ZeroStreamId(kind))
            } else {
                id31(id)
            }
        };
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let stream_id = stream(*stream_id)?;
                let length = frame_len(kind, data.len())?;
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&flags_length(fin_flag(*fin), length));
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                let stream_id = stream(*stream_id)?;
                let associated_to = id31(*associated_to)?;
                if *priority > 7 {
                    return Err(FrameError::BadPriority(*priority));
                }
                let mut flags = fin_flag(*fin);
                if *unidirectional {
                    flags |= FLAG_UNIDIRECTIONAL;
                }
                let mut fixed = [0u8; 10];
                fixed[..4].copy_from_slice(&stream_id.to_be_bytes());
                fixed[4..8].copy_from_slice(&associated_to.to_be_bytes());
                fixed[8] = priority << 5;
                fixed[9] = *slot;
                self.header_frame(frame_type::SYN_STREAM, flags, &fixed, headers, out)?;
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                let fixed = stream(*stream_id)?.to_be_bytes();
                self.header_frame(frame_type::SYN_REPLY, fin_flag(*fin), &fixed, headers, out)?;
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let fixed = stream(*stream_id)?.to_be_bytes();
                self.header_frame(frame_type::HEADERS, fin_flag(*fin), &fixed, headers, out)?;
            }
            Frame::RstStream { stream_id, status } => {
                let stream_id = stream(*stream_id)?;
                if status.code() == 0 {
                    return Err(FrameError::ZeroRstStatus(stream_id));
                }
                control_head(frame_type::RST_STREAM, 0, 8, out);
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&status.code().to_be_bytes());
            }
            Frame::Settings { clear, entries } => {
                let length = frame_len(kind, entries.len().saturating_mul(8).saturating_add(4))?;
                if let Some(bad) = entries.iter().find(|e| e.id > 0x00ff_ffff) {
                    return Err(FrameError::BadSettingId(bad.id));
                }
                let flags = if *clear { FLAG_SETTINGS_CLEAR } else { 0 };
                control_head(frame_type::SETTINGS, flags, length, out);
                // frame_len() bounded the count by 2^21.
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for entry in entries {
                    out.extend_from_slice(&(u32::from(entry.flags) << 24 | entry.id).to_be_bytes());
                    out.extend_from_slice(&entry.value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                control_head(frame_type::PING, 0, 4, out);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let last = id31(*last_good_stream_id)?;
                control_head(frame_type::GOAWAY, 0, 8, out);
                out.extend_from_slice(&last.to_be_bytes());
                out.extend_from_slice(&status.code().to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let stream_id = id31(*stream_id)?;
                if *delta == 0 || *delta > MAX_31 {
                    return Err(FrameError::BadWindowDelta {
                        stream_id,
                        delta: *delta,
                    });
                }
                control_head(frame_type::WINDOW_UPDATE, 0, 8, out);
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
            }
            Frame::Unknown {
                frame_type,
                flags,
                payload,
            } => {
                let length = frame_len(kind, payload.len())?;
                control_head(*frame_type, *flags, length, out);
                out.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    fn header_frame(
        &mut self,
        frame_type: u16,
        flags: u8,
        fixed: &[u8],
        headers: &Headers,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if self.broken {
            return Err(FrameError::CompressionContextLost);
        }
        let raw = headers.encode()?;
        let start = out.len();
        control_head(frame_type, flags, 0, out);
        out.extend_from_slice(fixed);
        self.deflate.compress(&raw, out);
        let length = out.len() - start - HEADER_LEN;
        // Headers::encode() capped the raw block at 8 MiB, stored in well
        // under 16 MiB; should that fail, the context is spent.
        let length = match frame_len("header", length) {
            Ok(length) => length,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
        out[start + 4..start + HEADER_LEN].copy_from_slice(&flags_length(flags, length));
        Ok(())
    }
}

fn frame_len(kind: &'static str, len: usize) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(len) if len <= MAX_FRAME_LEN => Ok(len),
        _ => Err(FrameError::FrameTooLarge {
            kind,
            length: len as u64,
            max: MAX_FRAME_LEN,
        }),
    }
}

fn flags_length(flags: u8, length: u32) -> [u8; 4] {
    (u32::from(flags) << 24 | length).to_be_bytes()
}

fn control_head(frame_type: u16, flags: u8, length: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&flags_length(flags, length));
}
