//! Golden samples: one realistic event per type, exactly as the contract
//! formats it. They pin the wire format: if encoding changes, these fail
//! before any consumer in another language does.

// Test helpers outside `#[test]` functions panic on purpose: a failure here
// is a failed test, and clippy's in-test exemption does not reach them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fleet_messages::{DEFAULT_MAX_EVENT_BYTES, Envelope, EventType, peek_id};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            (stem, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn there_is_one_golden_sample_per_event_type() {
    let names: BTreeSet<String> = golden_files().into_iter().map(|(name, _)| name).collect();
    let expected: BTreeSet<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn golden_samples_decode_and_re_encode_identically() {
    for (name, bytes) in golden_files() {
        let envelope = Envelope::decode(&bytes, DEFAULT_MAX_EVENT_BYTES)
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(envelope.event_type().as_str(), name, "type of {name}.json");
        assert_eq!(envelope.subject, envelope.data.order_id().to_string());

        let original: Value = serde_json::from_slice(&bytes).unwrap();
        let re_encoded: Value = serde_json::from_slice(&envelope.encode()).unwrap();
        assert_eq!(re_encoded, original, "{name}.json changed on re-encoding");
        assert_eq!(envelope.to_json(), original);

        assert_eq!(peek_id(&bytes), Some(envelope.id.to_string()));
    }
}

#[test]
fn only_order_submitted_has_no_causation_id() {
    for (name, bytes) in golden_files() {
        let envelope = Envelope::decode(&bytes, DEFAULT_MAX_EVENT_BYTES).unwrap();
        assert_eq!(
            envelope.causation_id.is_none(),
            envelope.event_type() == EventType::OrderSubmitted,
            "{name}"
        );
    }
}
