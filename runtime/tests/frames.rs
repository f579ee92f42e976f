//! The frame codec from the outside: every frame survives a round trip however the bytes are split, and
//! no input, however hostile, makes the decoder panic, allocate without bound or accept garbage.

use bytes::Bytes;
use runtime::{
    encode, encode_to_vec, CompileMeta, DecodeError, Decoder, EncodeError, ErrorKind, Frame, FrameType, HttpRequestMeta, LogLevel, RunMeta,
    HEADER_LEN, MAX_FRAME,
};

fn samples() -> Vec<Frame> {
    vec![
        Frame::Run {
            id: 1,
            meta: RunMeta {
                tenant: "acme".into(),
                task: Some("hello".into()),
                request_id: "req-1".into(),
                key: "task:hello:abc".into(),
                ..Default::default()
            },
            source: Bytes::from_static(b"module.exports = (d) => d;"),
            cache: Bytes::from_static(b"\x00\x01 a V8 code cache \xff"),
            data: Bytes::from_static(br#"{"x":[1,2,"\u00e9"]}"#),
        },
        Frame::Run {
            id: u32::MAX,
            meta: RunMeta {
                tenant: "t".into(),
                task: None,
                request_id: "r \"quoted\" \u{1F600}".into(),
                key: "adhoc:0123".into(),
                ..Default::default()
            },
            source: Bytes::new(),
            cache: Bytes::new(),
            data: Bytes::new(),
        },
        Frame::Compile {
            id: 7,
            meta: CompileMeta { tenant: "acme".into(), task: Some("t".into()), cache: true, ..Default::default() },
            source: Bytes::from_static(b"let x = ;"),
        },
        Frame::Compile {
            id: 8,
            meta: CompileMeta { tenant: "acme".into(), task: None, cache: false, model: Some("rule".into()) },
            source: Bytes::new(),
        },
        Frame::Run {
            id: 12,
            meta: RunMeta {
                tenant: "acme".into(),
                task: Some("hook".into()),
                request_id: "req-12".into(),
                key: "task:hook@webtask:abc".into(),
                model: Some("webtask".into()),
                http: Some(HttpRequestMeta {
                    method: "POST".into(),
                    url: "/a/b?x=1&y=%20".into(),
                    headers: vec![("Content-Type".into(), "application/x-www-form-urlencoded".into()), ("X-Two".into(), "a\tb".into())],
                }),
            },
            source: Bytes::new(),
            cache: Bytes::new(),
            data: Bytes::from_static(b"name=ann&x=\xff"),
        },
        Frame::Ready { pid: 4242, node: "v20.20.2".into() },
        Frame::Result { id: 3, json: Bytes::from_static(b"{\"ok\":true}") },
        Frame::Result { id: 3, json: Bytes::from_static(b"null") },
        Frame::Error { id: 4, kind: ErrorKind::TaskError, message: "Error: boom\n    at x".into() },
        Frame::Error { id: 5, kind: ErrorKind::CompileError, message: "SyntaxError at line 1, column 9".into() },
        Frame::Log { id: 0, level: LogLevel::Log, message: Bytes::from_static(b"outside") },
        Frame::Log { id: 9, level: LogLevel::Info, message: Bytes::new() },
        Frame::Log { id: 9, level: LogLevel::Warn, message: Bytes::from_static(b"w") },
        Frame::Log { id: 9, level: LogLevel::Error, message: Bytes::from_static(b"\xff not utf-8") },
        Frame::Log { id: 9, level: LogLevel::Debug, message: Bytes::from_static(b"d") },
        Frame::Compiled { id: 6, cache: Bytes::new() },
        Frame::Compiled { id: 6, cache: Bytes::from_static(b"\xc0\xde") },
        Frame::Error { id: 10, kind: ErrorKind::BadRequest, message: "this webtask answers HTTP requests".into() },
        Frame::HttpResponse {
            id: 11,
            status: 302,
            headers: vec![
                ("Location".into(), "https://example.com/x?y=1".into()),
                ("Set-Cookie".into(), "a=1".into()),
                ("Set-Cookie".into(), "b=2".into()),
            ],
            body: Bytes::new(),
        },
        Frame::HttpResponse { id: 11, status: 200, headers: Vec::new(), body: Bytes::from_static(b"<p>\xff binary is fine</p>") },
    ]
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut decoder = Decoder::new();
    decoder.feed(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next()? {
        frames.push(frame);
    }
    assert_eq!(decoder.buffered(), 0, "bytes left over");
    Ok(frames)
}

/// A raw frame with arbitrary fields, to say what the encoder never would.
fn raw(ty: u8, id: u32, meta: &[u8], body: &[u8]) -> Vec<u8> {
    let len = (9 + meta.len() + body.len()) as u32;
    let mut out = len.to_be_bytes().to_vec();
    out.push(ty);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
    out
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    match decode_all(bytes) {
        Ok(frames) => panic!("decoded {frames:?}"),
        Err(err) => err,
    }
}

/// xorshift64*: reproducible pseudo-random numbers without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn every_variant_round_trips() {
    for frame in samples() {
        let bytes = encode_to_vec(&frame).unwrap();
        assert_eq!(decode_all(&bytes).unwrap(), vec![frame]);
    }
}

#[test]
fn layout_matches_the_protocol_document() {
    let frame = Frame::Result { id: 0x0102_0304, json: Bytes::from_static(b"[1]") };
    let bytes = encode_to_vec(&frame).unwrap();
    // len = 1 + 4 + 4 + meta_len (0: Result's meta is {}) + body_len
    assert_eq!(bytes, [&[0, 0, 0, 12, 17, 1, 2, 3, 4, 0, 0, 0, 0][..], b"[1]"].concat());

    let run = Frame::Run {
        id: 1,
        meta: RunMeta { tenant: "t".into(), task: None, request_id: "r".into(), key: "adhoc:k".into(), ..Default::default() },
        source: Bytes::from_static(b"SRC"),
        cache: Bytes::new(),
        data: Bytes::from_static(b"42"),
    };
    let bytes = encode_to_vec(&run).unwrap();
    let meta_len = u32::from_be_bytes(bytes[9..13].try_into().unwrap()) as usize;
    let meta: serde_json::Value = serde_json::from_slice(&bytes[HEADER_LEN..HEADER_LEN + meta_len]).unwrap();
    assert_eq!(meta, serde_json::json!({"tenant": "t", "task": null, "requestId": "r", "key": "adhoc:k", "sourceLen": 3}));
    assert_eq!(&bytes[HEADER_LEN + meta_len..], b"SRC42");
}

#[test]
fn frames_split_anywhere_decode_the_same() {
    let frames = samples();
    let mut stream = Vec::new();
    for frame in &frames {
        encode(frame, &mut stream).unwrap();
    }

    // Byte by byte.
    let mut decoder = Decoder::new();
    let mut got = Vec::new();
    for byte in &stream {
        decoder.feed(std::slice::from_ref(byte));
        while let Some(frame) = decoder.next().unwrap() {
            got.push(frame);
        }
    }
    assert_eq!(got, frames);

    // In random pieces.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..200 {
        let mut decoder = Decoder::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(64));
            decoder.feed(&rest[..n]);
            rest = &rest[n..];
            while let Some(frame) = decoder.next().unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn empty_meta_means_an_empty_object() {
    assert_eq!(decode_all(&raw(20, 1, b"", b"")).unwrap(), vec![Frame::Compiled { id: 1, cache: Bytes::new() }]);
    assert_eq!(decode_all(&raw(20, 1, b" {} ", b"")).unwrap(), vec![Frame::Compiled { id: 1, cache: Bytes::new() }]);
    // Unknown meta fields are ignored.
    let log = raw(19, 2, br#"{"level":"warn","extra":[1]}"#, b"m");
    assert_eq!(decode_all(&log).unwrap(), vec![Frame::Log { id: 2, level: LogLevel::Warn, message: Bytes::from_static(b"m") }]);
}

#[test]
fn oversized_lengths_are_refused_from_the_length_field_alone() {
    for len in [MAX_FRAME as u32 + 1, u32::MAX, 0x8000_0000] {
        let mut decoder = Decoder::new();
        decoder.feed(&len.to_be_bytes());
        assert!(matches!(decoder.next(), Err(DecodeError::FrameTooLarge { len: l }) if l == len));
        // The stream is dead afterwards.
        decoder.feed(&raw(20, 1, b"", b""));
        assert!(matches!(decoder.next(), Err(DecodeError::Desynchronised)));
        assert_eq!(decoder.buffered(), 0);
    }
    // The largest allowed length is accepted (and waited for).
    let mut decoder = Decoder::new();
    decoder.feed(&(MAX_FRAME as u32).to_be_bytes());
    decoder.feed(&[19, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert!(matches!(decoder.next(), Ok(None)));
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let big = Frame::Result { id: 1, json: Bytes::from(vec![b' '; MAX_FRAME]) };
    let mut out = b"keep".to_vec();
    assert!(matches!(encode(&big, &mut out), Err(EncodeError::FrameTooLarge { ty: FrameType::Result, .. })));
    assert_eq!(out, b"keep");

    // The largest frame that fits does round trip.
    let body_len = MAX_FRAME - (HEADER_LEN - 4) - 2;
    let mut json = vec![b' '; body_len];
    json[0] = b'0';
    let fits = Frame::Result { id: 1, json: Bytes::from(json) };
    assert_eq!(decode_all(&encode_to_vec(&fits).unwrap()).unwrap(), vec![fits]);
}

#[test]
fn malformed_headers_are_refused_before_the_body_arrives() {
    let header_only = |frame: Vec<u8>| {
        let mut decoder = Decoder::new();
        decoder.feed(&frame[..HEADER_LEN]);
        decoder.next().unwrap_err()
    };
    assert!(matches!(header_only(raw(4, 1, b"{}", b"xxxx")), DecodeError::UnknownType { ty: 4 }));
    assert!(matches!(header_only(raw(0, 1, b"{}", b"")), DecodeError::UnknownType { ty: 0 }));
    assert!(matches!(header_only(raw(16, 5, br#"{"pid":1,"node":"v"}"#, b"")), DecodeError::BadId { ty: FrameType::Ready, id: 5 }));
    for ty in [1, 2, 17, 18, 20] {
        assert!(matches!(header_only(raw(ty, 0, b"{}", b"")), DecodeError::BadId { id: 0, .. }));
    }
    let mut overrun = raw(17, 1, b"{}", b"1");
    overrun[9..13].copy_from_slice(&100u32.to_be_bytes());
    assert!(matches!(header_only(overrun), DecodeError::MetaOverrun { meta_len: 100, len: 12, .. }));

    for len in 0..9u32 {
        let mut decoder = Decoder::new();
        decoder.feed(&len.to_be_bytes());
        assert!(matches!(decoder.next(), Err(DecodeError::FrameTooShort { len: l }) if l == len));
    }
}

#[test]
fn bad_metas_and_bodies_are_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // Truncated, not JSON, not an object, wrong shape.
        (raw(16, 0, br#"{"pid":1,"no"#, b""), "BadMeta"),
        (raw(16, 0, b"\xff\xfe", b""), "MetaNotObject"),
        (raw(16, 0, br#"[1,"v"]"#, b""), "MetaNotObject"),
        (raw(16, 0, br#""pid""#, b""), "MetaNotObject"),
        (raw(16, 0, br#"{"pid":-1,"node":"v"}"#, b""), "BadMeta"),
        (raw(16, 0, br#"{"pid":1}"#, b""), "BadMeta"),
        (raw(16, 0, br#"{"pid":1,"node":"v"} x"#, b""), "BadMeta"),
        (raw(16, 0, br#"{"pid":1,"node":"v"}"#, b"body"), "UnexpectedBody"),
        (raw(18, 1, br#"{"kind":"panic","message":"m"}"#, b""), "BadMeta"),
        (raw(18, 1, br#"{"kind":"task_error","message":"m"}"#, b"x"), "UnexpectedBody"),
        (raw(19, 1, br#"{"level":"fatal"}"#, b"m"), "BadMeta"),
        (raw(19, 1, b"", b"m"), "BadMeta"),
        (raw(20, 1, b"null", b""), "MetaNotObject"),
        (raw(17, 1, b"", b""), "ResultNotJson"),
        (raw(17, 1, b"", b"{\"a\":1}, \"b\": 2"), "ResultNotJson"),
        (raw(17, 1, b"", b"[[[["), "ResultNotJson"),
        (raw(17, 1, b"", b"\"\xff\""), "ResultNotUtf8"),
        (raw(1, 1, br#"{"tenant":"t","task":null,"requestId":"r","key":"k","sourceLen":5}"#, b"abc"), "SourceOverrun"),
        (
            // Each fits; together they do not (nor may their sum wrap around).
            raw(1, 1, br#"{"tenant":"t","requestId":"r","key":"k","sourceLen":2,"cacheLen":2}"#, b"abc"),
            "SourceOverrun",
        ),
        (raw(1, 1, br#"{"tenant":"t","requestId":"r","key":"k","sourceLen":4294967295,"cacheLen":4294967295}"#, b"abc"), "SourceOverrun"),
        (raw(1, 1, br#"{"tenant":"t","requestId":"r","key":"k","sourceLen":-1}"#, b""), "BadMeta"),
    ];
    for (bytes, want) in cases {
        let err = decode_err(&bytes);
        let got = format!("{err:?}");
        assert!(got.starts_with(want), "{bytes:?}: want {want}, got {got}");
        // Every error has a message of its own.
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn a_truncated_stream_is_only_ever_incomplete() {
    for frame in samples() {
        let bytes = encode_to_vec(&frame).unwrap();
        for cut in 0..bytes.len() {
            let mut decoder = Decoder::new();
            decoder.feed(&bytes[..cut]);
            assert!(matches!(decoder.next(), Ok(None)), "{frame:?} cut at {cut}");
        }
    }
}

#[test]
fn the_decoder_survives_random_bytes() {
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    for round in 0..20_000 {
        let len = rng.below(64);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Often make the length field plausible, so that the rest of the header gets exercised.
        if len >= 4 && round % 2 == 0 {
            let plausible = (len - 4) as u32 + (rng.below(3) as u32);
            bytes[..4].copy_from_slice(&plausible.to_be_bytes());
        }
        let mut decoder = Decoder::new();
        decoder.feed(&bytes);
        for _ in 0..4 {
            if !matches!(decoder.next(), Ok(Some(_))) {
                break;
            }
        }
        assert!(decoder.buffered() <= bytes.len());
    }
}

#[test]
fn the_decoder_survives_mutated_frames() {
    let mut stream = Vec::new();
    for frame in samples() {
        encode(&frame, &mut stream).unwrap();
    }
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let mut bytes = stream.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            bytes.truncate(rng.below(bytes.len()));
        }
        let mut decoder = Decoder::new();
        let mut rest = &bytes[..];
        'feed: while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(40));
            decoder.feed(&rest[..n]);
            rest = &rest[n..];
            loop {
                match decoder.next() {
                    Ok(Some(frame)) => {
                        // Whatever got through is well-formed.
                        if let Frame::Result { json, .. } = &frame {
                            serde_json::from_slice::<serde_json::Value>(json).unwrap();
                        }
                        assert_eq!(decode_all(&encode_to_vec(&frame).unwrap()).unwrap(), vec![frame]);
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
}

#[test]
fn frame_ids_and_types() {
    for frame in samples() {
        let bytes = encode_to_vec(&frame).unwrap();
        assert_eq!(FrameType::from_u8(bytes[4]), Some(frame.frame_type()));
        assert_eq!(u32::from_be_bytes(bytes[5..9].try_into().unwrap()), frame.id());
    }
    let from_sandbox: Vec<u8> = (0..=255).filter_map(FrameType::from_u8).filter(|t| t.sent_by_sandbox()).map(|t| t as u8).collect();
    assert_eq!(from_sandbox, [16, 17, 18, 19, 20, 21]);
    assert_eq!(ErrorKind::BadRequest.as_str(), "bad_request");
    assert_eq!(ErrorKind::CompileError.as_str(), "compile_error");
    assert_eq!(LogLevel::Debug.as_str(), "debug");
}

#[test]
fn the_bootstrap_uses_the_same_limits() {
    let js = runtime::BOOTSTRAP_JS;
    assert!(js.contains("const MAX_FRAME = 8 * 1024 * 1024 + 4 * 1024;"));
    assert_eq!(MAX_FRAME, 8 * 1024 * 1024 + 4 * 1024);
    assert!(js.contains(&format!("const HEADER_LEN = {HEADER_LEN};")));
    assert!(js.contains("const RESULT_LIMIT = 1024 * 1024;"));
    assert_eq!(runtime::RESULT_LIMIT, 1024 * 1024);
    for ty in [1, 2, 16, 17, 18, 19, 20] {
        let name = FrameType::from_u8(ty).unwrap().name().to_uppercase();
        assert!(js.contains(&format!("const {name} = {ty};")), "{name}");
    }
}

/// An HttpResponse goes into the daemon's response head: a frame that could split it (CR/LF in a value, a
/// name that is not a token, a status that is not a final one) is refused as the protocol error it is (only
/// code that bypassed the bootstrap sends one).
#[test]
fn http_responses_that_could_split_a_head_are_refused() {
    let refused = |meta: &str| decode_err(&raw(FrameType::HttpResponse as u8, 1, meta.as_bytes(), b""));
    assert!(matches!(refused(r#"{"status":302,"headers":[["Location","/x\r\nSet-Cookie: a=1"]]}"#), DecodeError::BadHeaderValue { .. }));
    assert!(matches!(refused(r#"{"status":200,"headers":[["X-A","\n"]]}"#), DecodeError::BadHeaderValue { .. }));
    assert!(matches!(refused(r#"{"status":200,"headers":[["X-A","\u0000"]]}"#), DecodeError::BadHeaderValue { .. }));
    assert!(matches!(refused(r#"{"status":200,"headers":[["Bad Name","v"]]}"#), DecodeError::BadHeaderName { .. }));
    assert!(matches!(refused(r#"{"status":200,"headers":[["X-A:","v"]]}"#), DecodeError::BadHeaderName { .. }));
    assert!(matches!(refused(r#"{"status":200,"headers":[["","v"]]}"#), DecodeError::BadHeaderName { .. }));
    assert!(matches!(refused(r#"{"status":101}"#), DecodeError::BadStatus { status: 101 }));
    assert!(matches!(refused(r#"{"status":600}"#), DecodeError::BadStatus { status: 600 }));
    assert!(matches!(refused(r#"{"status":70000}"#), DecodeError::BadMeta { .. }));
    assert!(matches!(refused(r#"{"headers":[]}"#), DecodeError::BadMeta { .. }));
    assert!(matches!(refused(r#"{"status":200,"headers":[["a","b","c"]]}"#), DecodeError::BadMeta { .. }));
    let many: Vec<String> = (0..101).map(|i| format!("[\"X-{i}\",\"v\"]")).collect();
    assert!(matches!(
        refused(&format!("{{\"status\":200,\"headers\":[{}]}}", many.join(","))),
        DecodeError::TooManyHeaders { count: 101, .. }
    ));
    // Tabs, UTF-8 and obs-text-like characters in a value are fine; HttpResponse never has id 0.
    let ok =
        decode_all(&raw(FrameType::HttpResponse as u8, 1, r#"{"status":200,"headers":[["X-A","a\tb \u00e9"]]}"#.as_bytes(), b"x")).unwrap();
    assert_eq!(
        ok,
        vec![Frame::HttpResponse {
            id: 1,
            status: 200,
            headers: vec![("X-A".into(), "a\tb \u{e9}".into())],
            body: Bytes::from_static(b"x")
        }]
    );
    assert!(matches!(decode_err(&raw(FrameType::HttpResponse as u8, 0, br#"{"status":200}"#, b"")), DecodeError::BadId { .. }));
}
