//! The runtime crate's frame decoder (`runtime::Decoder`, what the daemon points at every sandbox) on
//! arbitrary bytes cut into arbitrary chunks.
//!
//! Input layout: byte 0 modulo 16 is the number `n` of chunk-size bytes that follow; the chunk sizes
//! (`b + 1`, or "all the rest" for 255) are used in turn, cycling; everything after them is the stream.
//! `n = 0` feeds the stream in one piece.
//!
//! Invariants:
//! - nothing panics;
//! - the result does not depend on the cut: the frames, and the error if any, are those of the stream fed
//!   in one piece;
//! - a header error (length out of range, unknown type, an id the type may not carry, meta_len past the
//!   frame) is reported as soon as the 13 header bytes of that frame have arrived; any other error as soon
//!   as the frame's last byte has arrived: the decoder never waits for more;
//! - after `Ok(None)` at most one partial frame is buffered (`< 4 + MAX_FRAME` bytes);
//! - after an error every call is `Desynchronised`, and nothing more is buffered;
//! - every decoded frame obeys the id rules, re-encodes with `runtime::encode`, and decodes back to an
//!   equal frame; encoding that frame again gives the same bytes (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime::{encode_to_vec, DecodeError, Decoder, Frame, HEADER_LEN, MAX_FRAME};

#[derive(Debug)]
enum Outcome {
    Frames(Vec<Frame>),
    /// The frames before the error, and the error's text.
    Failed(Vec<Frame>, String),
}

fn is_header_error(e: &DecodeError) -> bool {
    matches!(
        e,
        DecodeError::FrameTooLarge { .. }
            | DecodeError::FrameTooShort { .. }
            | DecodeError::UnknownType { .. }
            | DecodeError::BadId { .. }
            | DecodeError::MetaOverrun { .. }
    )
}

fn be_u32(buf: &[u8], at: usize) -> Option<usize> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Feeds `stream` in the chunks `sizes` describes, draining frames after each feed.
fn decode_chunked(stream: &[u8], sizes: &[u8]) -> Outcome {
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    let mut fed = 0usize;
    // Offset in `stream` of the frame being decoded.
    let mut frame_start = 0usize;
    let mut turn = 0usize;
    loop {
        let before = fed;
        if fed < stream.len() {
            let size = if sizes.is_empty() {
                stream.len()
            } else {
                let b = sizes[turn % sizes.len()];
                turn += 1;
                if b == 255 {
                    stream.len()
                } else {
                    usize::from(b) + 1
                }
            };
            let end = (fed + size).min(stream.len());
            decoder.feed(&stream[fed..end]);
            fed = end;
        }
        loop {
            match decoder.next() {
                Ok(Some(frame)) => {
                    let len = be_u32(stream, frame_start).expect("a frame was decoded, so its length was there");
                    frame_start += 4 + len;
                    assert!(frame_start <= fed, "a frame was decoded before all its bytes arrived");
                    frames.push(frame);
                }
                Ok(None) => {
                    assert!(decoder.buffered() < 4 + MAX_FRAME, "more than one partial frame buffered");
                    assert_eq!(decoder.buffered(), fed - frame_start, "buffered bytes are not those of the partial frame");
                    break;
                }
                Err(e) => {
                    // Refused as soon as the bytes that show it arrived: not before, and not later.
                    let deadline = if is_header_error(&e) {
                        frame_start + HEADER_LEN
                    } else {
                        frame_start + 4 + be_u32(stream, frame_start).expect("a body error needs a length")
                    };
                    assert!(before < deadline, "error {e} reported late: {before} bytes were already there, {deadline} were enough");
                    // Sticky.
                    for _ in 0..2 {
                        assert!(matches!(decoder.next(), Err(DecodeError::Desynchronised)));
                    }
                    decoder.feed(b"\x00\x00\x00\x09\x13\x00\x00\x00\x00\x00\x00\x00\x00");
                    assert!(matches!(decoder.next(), Err(DecodeError::Desynchronised)));
                    assert_eq!(decoder.buffered(), 0);
                    return Outcome::Failed(frames, e.to_string());
                }
            }
        }
        if fed == stream.len() {
            return Outcome::Frames(frames);
        }
    }
}

fn check_frame(frame: &Frame) {
    match frame {
        Frame::Ready { .. } => assert_eq!(frame.id(), 0),
        Frame::Log { .. } => {}
        _ => assert_ne!(frame.id(), 0, "{frame:?}"),
    }
    if let Frame::Result { json, .. } = frame {
        // JSON text by the RFC's grammar. serde_json's Value also refuses numbers past f64 (`1e400`),
        // nesting past 128 and escaped lone surrogates (`"\ud800"`, which Node's JSON.stringify writes for
        // a lone surrogate), all of which the grammar allows and the decoder lets through.
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(json) {
            let msg = e.to_string();
            assert!(
                ["number out of range", "recursion limit", "hex escape", "surrogate"].iter().any(|m| msg.contains(m)),
                "a decoded Result is not JSON text: {e}: {:?}",
                String::from_utf8_lossy(json)
            );
        }
    }
    let bytes = match encode_to_vec(frame) {
        Ok(b) => b,
        // A meta can grow when re-encoded (an omitted "task" becomes "task":null, say); only a frame
        // already at the limit can then overflow it, and fuzz inputs are far smaller.
        Err(e) => panic!("a decoded frame does not re-encode: {e}: {frame:?}"),
    };
    let mut decoder = Decoder::new();
    decoder.feed(&bytes);
    let again = match decoder.next() {
        Ok(Some(f)) => f,
        other => panic!("a re-encoded frame does not decode: {other:?}\n{frame:?}"),
    };
    assert_eq!(&again, frame, "round trip changed the frame");
    assert!(matches!(decoder.next(), Ok(None)));
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(encode_to_vec(&again).unwrap(), bytes, "the encoding is not canonical");
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let n = usize::from(first % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n);

    let whole = decode_chunked(stream, &[]);
    let chunked = decode_chunked(stream, sizes);
    let byte_by_byte = decode_chunked(stream, &[0]);
    match (&whole, &chunked, &byte_by_byte) {
        (Outcome::Frames(a), Outcome::Frames(b), Outcome::Frames(c)) => {
            assert_eq!(a, b);
            assert_eq!(a, c);
        }
        (Outcome::Failed(a, ea), Outcome::Failed(b, eb), Outcome::Failed(c, ec)) => {
            assert_eq!(a, b);
            assert_eq!(a, c);
            assert_eq!(ea, eb);
            assert_eq!(ea, ec);
        }
        _ => panic!("the cut changed the outcome:\nwhole {whole:?}\nchunked {chunked:?}\nbyte by byte {byte_by_byte:?}"),
    }
    let frames = match whole {
        Outcome::Frames(f) | Outcome::Failed(f, _) => f,
    };
    for frame in &frames {
        check_frame(frame);
    }
});
