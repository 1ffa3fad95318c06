//! Any bytes a client or a broken producer may publish go through the
//! envelope decoder. It must never panic, overflow its stack or loop; what
//! it accepts must encode and decode again to the same event.

#![no_main]

use fleet_messages::{DecodeError, Envelope, peek_id};
use libfuzzer_sys::fuzz_target;

/// The contract's default limit (256 KiB).
const MAX_EVENT_BYTES: usize = 256 * 1024;

fuzz_target!(|bytes: &[u8]| {
    // Dead-letter identity is computed from any body, poison included.
    let _ = peek_id(bytes);
    match Envelope::decode(bytes, MAX_EVENT_BYTES) {
        Ok(envelope) => {
            let encoded = envelope.encode();
            let again = Envelope::decode(&encoded, usize::MAX)
                .unwrap_or_else(|error| panic!("re-decoding what was accepted: {error}"));
            assert_eq!(again, envelope, "a decoded event survives a round trip");
            assert_eq!(again.encode(), encoded, "encoding is stable");
        }
        Err(error) => {
            assert!(DecodeError::KINDS.contains(&error.kind()), "unknown kind {}", error.kind());
            assert!(!error.to_string().is_empty(), "every error says why");
        }
    }
});
