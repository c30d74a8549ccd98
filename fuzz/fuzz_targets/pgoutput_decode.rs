//! Feeds arbitrary bytes to the pgoutput decoder: it must never panic, and whatever it accepts
//! must encode back to exactly the bytes it was given.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_connectors::postgres::pgoutput::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    if let Ok(message) = decode(payload.clone()) {
        assert_eq!(
            encode(&message),
            payload,
            "{message:?} does not encode back"
        );
    }
});
