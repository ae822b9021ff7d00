//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets'
//! checks, on stable Rust and without libFuzzer: every input a fuzzing run kept, and every crash
//! it found (`fuzz/corpus/<target>/crash-*`, fixed since), stays a regression test. Fuzzing
//! itself: `scripts/fuzz.sh`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::PathBuf;

/// Runs `check` on every file of the corpus of `target`; fails naming the file.
fn replay(target: &str, check: fn(&[u8])) {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|error| panic!("the corpus {}: {error}", folder.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the corpus {} is empty",
        folder.display()
    );
    for file in &files {
        let input = std::fs::read(file).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(
            outcome.is_ok(),
            "{target} fails on {} ({} bytes): {:?}",
            file.display(),
            input.len(),
            String::from_utf8_lossy(&input)
        );
    }
    println!("{target}: {} inputs replayed", files.len());
}

#[test]
fn decode_differential_corpus() {
    replay("decode_differential", checks::decode_differential);
}

#[test]
fn topic_match_corpus() {
    replay("topic_match", checks::topic_match);
}

#[test]
fn object_pattern_corpus() {
    replay("object_pattern", checks::object_pattern);
}

#[test]
fn delivery_corpus() {
    replay("delivery", checks::delivery);
}
