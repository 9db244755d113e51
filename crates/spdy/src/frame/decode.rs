//! Reading frames: the frame head's checks, then each frame type's payload.

use super::{
    frame_type, Frame, FrameError, FrameHead, GoAwayStatus, Limits, RstStatus, Setting, FLAG_FIN,
    FLAG_SETTINGS_CLEAR, FLAG_UNIDIRECTIONAL, HEADER_LEN, MAX_31, VERSION,
};
use crate::headers::Headers;
use crate::zlib::HeaderDecompressor;

/// Reads frames sent by one peer: holds the inflate side of the
/// connection's header compression, so one decoder serves one direction of
/// one connection, frames in order. After an error in a header block the
/// context is lost ([`FrameError::CompressionContextLost`]): the connection
/// must end (GOAWAY PROTOCOL_ERROR).
pub struct Decoder {
    limits: Limits,
    inflate: HeaderDecompressor,
    broken: bool,
}

impl Decoder {
    /// A decoder for a new connection.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            inflate: HeaderDecompressor::new(),
            broken: false,
        }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Checks a frame's header before its payload is read: the version of a
    /// control frame and the length limit.
    pub fn check_head(&self, head: &FrameHead) -> Result<(), FrameError> {
        if head.control && head.version != VERSION {
            return Err(FrameError::UnsupportedVersion(head.version));
        }
        if head.length > self.limits.max_frame_len {
            return Err(FrameError::FrameTooLarge {
                kind: head.kind(),
                length: head.length.into(),
                max: self.limits.max_frame_len,
            });
        }
        Ok(())
    }

    /// Decodes the first frame in `buf`: `Ok(None)` while `buf` holds less
    /// than a whole frame, else the frame and how many bytes it took. A
    /// header over the limits is refused as soon as its 8 bytes are in.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let head = FrameHead::parse(*head);
        self.check_head(&head)?;
        let total = HEADER_LEN + head.length as usize;
        let Some(payload) = buf.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        Ok(Some((self.decode_payload(&head, payload)?, total)))
    }

    /// Decodes a frame from its parsed header and whole payload.
    pub fn decode_payload(
        &mut self,
        head: &FrameHead,
        payload: &[u8],
    ) -> Result<Frame, FrameError> {
        let result = self.decode_payload_inner(head, payload);
        let carries_headers = head.control
            && matches!(
                head.frame_type,
                frame_type::SYN_STREAM | frame_type::SYN_REPLY | frame_type::HEADERS
            );
        if result.is_err() && carries_headers {
            // Whether or not its block was inflated, the peer's context has
            // moved on and ours may not have.
            self.broken = true;
        }
        result
    }

    fn decode_payload_inner(
        &mut self,
        head: &FrameHead,
        payload: &[u8],
    ) -> Result<Frame, FrameError> {
        self.check_head(head)?;
        if payload.len() != head.length as usize {
            return Err(FrameError::BadLength {
                kind: head.kind(),
                length: payload.len().try_into().unwrap_or(u32::MAX),
                expected: "the length in its header",
            });
        }
        let fin = head.flags & FLAG_FIN != 0;
        if !head.control {
            if head.stream_id == 0 {
                return Err(FrameError::ZeroStreamId("DATA"));
            }
            return Ok(Frame::Data {
                stream_id: head.stream_id,
                fin,
                data: payload.to_vec(),
            });
        }
        let kind = head.kind();
        // The payload's length is right for its frame type, or the error
        // names what was expected.
        let length_is = |right: bool, expected: &'static str| {
            if right {
                Ok(())
            } else {
                Err(FrameError::BadLength {
                    kind,
                    length: head.length,
                    expected,
                })
            }
        };
        let fixed = |len: u32, expected| length_is(head.length == len, expected);
        let at_least = |min: u32, expected| length_is(head.length >= min, expected);
        let word = |i: usize| {
            u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
        };
        let stream = |i: usize| -> Result<u32, FrameError> {
            match word(i) & MAX_31 {
                0 => Err(FrameError::ZeroStreamId(kind)),
                id => Ok(id),
            }
        };
        Ok(match head.frame_type {
            frame_type::SYN_STREAM => {
                at_least(10, "at least 10 bytes")?;
                let headers = self.header_block(&payload[10..])?;
                Frame::SynStream {
                    stream_id: stream(0)?,
                    associated_to: word(4) & MAX_31,
                    priority: payload[8] >> 5,
                    slot: payload[9],
                    fin,
                    unidirectional: head.flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            frame_type::SYN_REPLY | frame_type::HEADERS => {
                at_least(4, "at least 4 bytes")?;
                let headers = self.header_block(&payload[4..])?;
                let stream_id = stream(0)?;
                if head.frame_type == frame_type::SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            frame_type::RST_STREAM => {
                fixed(8, "8 bytes")?;
                let stream_id = stream(0)?;
                let status =
                    RstStatus::from_code(word(4)).ok_or(FrameError::ZeroRstStatus(stream_id))?;
                Frame::RstStream { stream_id, status }
            }
            frame_type::SETTINGS => {
                at_least(4, "a 4-byte count and 8 bytes per entry")?;
                let count = word(0);
                if u64::from(head.length) != 4 + 8 * u64::from(count) {
                    return Err(FrameError::BadLength {
                        kind,
                        length: head.length,
                        expected: "a 4-byte count and 8 bytes per entry",
                    });
                }
                let entries = payload[4..]
                    .chunks_exact(8)
                    .map(|entry| {
                        let id = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
                        Setting {
                            flags: (id >> 24) as u8,
                            id: id & 0x00ff_ffff,
                            value: u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear: head.flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }
            }
            frame_type::PING => {
                fixed(4, "4 bytes")?;
                Frame::Ping { id: word(0) }
            }
            frame_type::GOAWAY => {
                fixed(8, "8 bytes")?;
                Frame::GoAway {
                    last_good_stream_id: word(0) & MAX_31,
                    status: GoAwayStatus::from_code(word(4)),
                }
            }
            frame_type::WINDOW_UPDATE => {
                fixed(8, "8 bytes")?;
                let stream_id = word(0) & MAX_31;
                let delta = word(4) & MAX_31;
                if delta == 0 {
                    return Err(FrameError::BadWindowDelta { stream_id, delta });
                }
                Frame::WindowUpdate { stream_id, delta }
            }
            other => Frame::Unknown {
                frame_type: other,
                flags: head.flags,
                payload: payload.to_vec(),
            },
        })
    }

    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        if self.broken {
            return Err(FrameError::CompressionContextLost);
        }
        self.inflate
            .decompress(compressed, self.limits.max_header_block)
            .and_then(|raw| Headers::decode(&raw, &self.limits))
    }
}
