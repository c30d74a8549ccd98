//! Feeds arbitrary bytes to the pgoutput decoder: it must never panic, and whatever it accepts
//! must encode back to exactly the bytes it was given. The first input byte picks the state the
//! decoder starts in (protocol 1, protocol 2, protocol 2 inside a streamed block).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_connectors::postgres::pgoutput::{Decoder, Message, ProtocolVersion, StreamStart, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&state, payload)) = data.split_first() else {
        return;
    };
    let version = match state & 1 {
        0 => ProtocolVersion::V1,
        _ => ProtocolVersion::V2,
    };
    let mut decoder = Decoder::new(version);
    if state & 0b11 == 0b11 {
        let start = StreamStart {
            xid: 1,
            first_segment: true,
        };
        let opened = decoder.decode(encode(&Message::StreamStart(start)));
        assert!(opened.is_ok(), "Stream Start must open a block: {opened:?}");
    }
    let payload = Bytes::copy_from_slice(payload);
    if let Ok(message) = decoder.decode(payload.clone()) {
        assert_eq!(
            encode(&message),
            payload,
            "{message:?} does not encode back"
        );
    }
});
