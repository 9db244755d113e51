//! Fuzzes the SPDY/3.1 frame decoder and header-block decoder: no input may
//! panic, and every frame decoded must encode and decode back to itself.
#![no_main]

use berth_spdy::frame::MAX_FRAME_LEN;
use berth_spdy::{Decoder, Encoder, Headers, Limits};

/// A zlib header with FDICT set and the SPDY/3 dictionary's id, so that
/// inputs reach the inflater rather than stop at the zlib header check.
const ZLIB_SPDY_HEADER: [u8; 6] = [0x78, 0xbb, 0xe3, 0xc6, 0xa7, 0xc2];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();

    // The input as what a peer sends: frames in a row, through one decoder
    // (one compression context), each re-encoded by one encoder and read
    // back by a second decoder.
    let mut decoder = Decoder::new(limits);
    let mut encoder = Encoder::new();
    let mut check = Decoder::new(Limits {
        max_frame_len: MAX_FRAME_LEN,
        ..limits
    });
    let mut rest = data;
    while let Ok(Some((frame, used))) = decoder.decode(rest) {
        assert!(used >= 8 && used <= rest.len());
        rest = &rest[used..];
        let mut wire = Vec::new();
        encoder
            .encode(&frame, &mut wire)
            .expect("a decoded frame encodes");
        let (back, n) = check
            .decode(&wire)
            .expect("an encoded frame decodes")
            .expect("an encoded frame is whole");
        assert_eq!(n, wire.len());
        assert_eq!(back, frame);
    }

    // The input as an uncompressed header block.
    if let Ok(headers) = Headers::from_block(data, &limits) {
        let block = headers.to_block().expect("a parsed block encodes");
        assert_eq!(Headers::from_block(&block, &limits), Ok(headers));
    }

    // The input as the compressed block of a SYN_REPLY, raw and behind a
    // zlib header naming the SPDY dictionary.
    let body = &data[..data.len().min(64 << 10)];
    for prefix in [&[][..], &ZLIB_SPDY_HEADER[..]] {
        let mut frame = vec![0x80, 3, 0, 2];
        frame.extend_from_slice(&((4 + prefix.len() + body.len()) as u32).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 1]);
        frame.extend_from_slice(prefix);
        frame.extend_from_slice(body);
        let _ = Decoder::new(limits).decode(&frame);
    }
});
