use super::*;

fn kubectl_headers() -> Headers {
    Headers::new()
        .with("streamtype", "data")
        .with("port", "8080")
        .with("requestid", "0")
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::Data {
            stream_id: 1,
            fin: false,
            data: b"hello".to_vec(),
        },
        Frame::Data {
            stream_id: MAX_31,
            fin: true,
            data: vec![],
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 7,
            slot: 2,
            fin: false,
            unidirectional: true,
            headers: kubectl_headers(),
        },
        Frame::SynStream {
            stream_id: 5,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: true,
            unidirectional: false,
            headers: Headers::new(),
        },
        Frame::SynReply {
            stream_id: 3,
            fin: false,
            headers: Headers::new(),
        },
        Frame::SynReply {
            stream_id: 5,
            fin: true,
            headers: kubectl_headers(),
        },
        Frame::RstStream {
            stream_id: 3,
            status: RstStatus::Cancel,
        },
        Frame::RstStream {
            stream_id: 3,
            status: RstStatus::Other(99),
        },
        Frame::Settings {
            clear: true,
            entries: vec![
                Setting {
                    flags: 1,
                    id: settings::INITIAL_WINDOW_SIZE,
                    value: 1 << 20,
                },
                Setting {
                    flags: 0,
                    id: settings::MAX_CONCURRENT_STREAMS,
                    value: 100,
                },
            ],
        },
        Frame::Settings {
            clear: false,
            entries: vec![],
        },
        Frame::Ping { id: 1 },
        Frame::Ping { id: u32::MAX },
        Frame::GoAway {
            last_good_stream_id: 7,
            status: GoAwayStatus::Ok,
        },
        Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::ProtocolError,
        },
        Frame::Headers {
            stream_id: 9,
            fin: true,
            headers: Headers::new().with("status", "200"),
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: MAX_31,
        },
        Frame::WindowUpdate {
            stream_id: 3,
            delta: 1,
        },
        Frame::Unknown {
            frame_type: 10,
            flags: 3,
            payload: vec![1, 2, 3],
        },
    ]
}

#[test]
fn every_frame_type_round_trips() {
    let mut enc = Encoder::new();
    let mut dec = Decoder::new(Limits::default());
    let mut wire = Vec::new();
    let frames = all_frames();
    for frame in &frames {
        enc.encode(frame, &mut wire).unwrap();
    }
    // Decoded one after another from a single buffer, as on a socket.
    let mut pos = 0;
    for frame in &frames {
        let (back, used) = dec.decode(&wire[pos..]).unwrap().unwrap();
        assert_eq!(&back, frame);
        pos += used;
    }
    assert_eq!(pos, wire.len());
    assert_eq!(dec.decode(&wire[pos..]), Ok(None));
}

#[test]
fn fixed_frames_have_their_exact_bytes() {
    let bytes = |frame: Frame| {
        let mut out = Vec::new();
        Encoder::new().encode(&frame, &mut out).unwrap();
        out
    };
    assert_eq!(
        bytes(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::ProtocolError
        }),
        [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1]
    );
    assert_eq!(
        bytes(Frame::Ping { id: 0x12345678 }),
        [0x80, 3, 0, 6, 0, 0, 0, 4, 0x12, 0x34, 0x56, 0x78]
    );
    assert_eq!(
        bytes(Frame::GoAway {
            last_good_stream_id: 0x7fffffff,
            status: GoAwayStatus::InternalError
        }),
        [0x80, 3, 0, 7, 0, 0, 0, 8, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 2]
    );
    assert_eq!(
        bytes(Frame::WindowUpdate {
            stream_id: 0,
            delta: 0x10000
        }),
        [0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0]
    );
    assert_eq!(
        bytes(Frame::Settings {
            clear: false,
            entries: vec![Setting {
                flags: 1,
                id: 7,
                value: 0x20000
            }]
        }),
        [0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 1, 0, 0, 7, 0, 2, 0, 0]
    );
    assert_eq!(
        bytes(Frame::Data {
            stream_id: 5,
            fin: true,
            data: b"ab".to_vec()
        }),
        [0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']
    );
}

#[test]
fn reserved_bits_are_ignored_on_decode() {
    let mut dec = Decoder::new(Limits::default());
    // Data frame: the stream id cannot carry the control bit, but a
    // WINDOW_UPDATE's reserved bits are set here on both fields.
    let wire = [0x80, 3, 0, 9, 0, 0, 0, 8, 0x80, 0, 0, 1, 0x80, 0, 0, 5];
    let (frame, _) = dec.decode(&wire).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 5
        }
    );
}

#[test]
fn encode_refuses_what_cannot_be_sent() {
    let mut enc = Encoder::new();
    let mut out = vec![0xaa];
    let bad = [
        Frame::Data {
            stream_id: 0,
            fin: false,
            data: vec![],
        },
        Frame::Data {
            stream_id: 1 << 31,
            fin: false,
            data: vec![],
        },
        Frame::RstStream {
            stream_id: 1,
            status: RstStatus::Other(0),
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 0,
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 1 << 31,
        },
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 8,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new(),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new().with("", "x"),
        },
        Frame::Settings {
            clear: false,
            entries: vec![Setting {
                flags: 0,
                id: 1 << 24,
                value: 0,
            }],
        },
        Frame::Data {
            stream_id: 1,
            fin: false,
            data: vec![0; MAX_FRAME_LEN as usize + 1],
        },
    ];
    for frame in &bad {
        assert!(enc.encode(frame, &mut out).is_err(), "{frame:?}");
        assert_eq!(out, [0xaa], "{frame:?} left bytes behind");
    }
    // None of those touched the compression context.
    enc.encode(
        &Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: kubectl_headers(),
        },
        &mut out,
    )
    .unwrap();
    let mut dec = Decoder::new(Limits::default());
    let (frame, _) = dec.decode(&out[1..]).unwrap().unwrap();
    assert!(matches!(frame, Frame::SynReply { headers, .. } if headers == kubectl_headers()));
}
