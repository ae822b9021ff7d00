//! AsyncAPI documents, with no broker:
//!
//! - the committed documents of the examples (`examples/asyncapi/*.json`) are exactly what
//!   `cargo run --example orders -- --asyncapi` (and `billing`) print now, so that a contract
//!   changed without its document fails CI (`UPDATE_ASYNCAPI=1` writes them anew);
//! - the official AsyncAPI parser (`interop/asyncapi`, installed by `scripts/test.sh`) finds no
//!   error in them, nor in [`document::service`], a document using every feature;
//! - what that document says: channels and bindings, operations, replies, schemas, extensions.
// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::panic, dead_code, unreachable_pub)]

mod asyncapi {
    pub mod contracts;
    #[cfg(feature = "asyncapi")]
    pub mod document;
}

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

#[cfg(feature = "asyncapi")]
use asyncapi::document;

/// The examples that print a document, and where it is committed.
const EXAMPLES: [&str; 2] = ["orders", "billing"];

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn committed(example: &str) -> PathBuf {
    workspace().join(format!("examples/asyncapi/{example}.json"))
}

/// What each example prints with `--asyncapi` now: built once (as cargo reports the
/// executables, so any target directory setting is honoured), run with no `RABBIT_MQ_*`
/// variable, so that the documents show the defaults whatever the environment.
fn printed() -> &'static [(&'static str, String)] {
    static PRINTED: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    PRINTED.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(workspace()).args([
            "build",
            "-p",
            "rmq-bus",
            "--message-format=json-render-diagnostics",
        ]);
        for example in EXAMPLES {
            build.args(["--example", example]);
        }
        let output = build.output().expect("run cargo build");
        assert!(
            output.status.success(),
            "cargo build of the examples failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        EXAMPLES
            .iter()
            .map(|&example| {
                let executable = stdout
                    .lines()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .filter(|message| message["reason"] == "compiler-artifact")
                    .filter(|message| message["target"]["name"] == example)
                    .find_map(|message| message["executable"].as_str().map(PathBuf::from))
                    .unwrap_or_else(|| panic!("cargo build reported no executable for {example}"));
                let mut run = Command::new(&executable);
                run.arg("--asyncapi");
                for (name, _) in std::env::vars_os() {
                    if name.to_string_lossy().starts_with("RABBIT_MQ_") {
                        run.env_remove(name);
                    }
                }
                let output = run
                    .output()
                    .unwrap_or_else(|e| panic!("run {}: {e}", executable.display()));
                assert!(
                    output.status.success(),
                    "{example} --asyncapi failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let document = String::from_utf8(output.stdout).expect("the document is UTF-8");
                (example, document)
            })
            .collect()
    })
}

/// Fails on any difference between a committed document and what its example prints, saying
/// where and how to regenerate; with `UPDATE_ASYNCAPI=1`, writes them instead.
#[test]
fn the_committed_documents_are_what_the_examples_print() {
    let update = std::env::var_os("UPDATE_ASYNCAPI").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (example, document) in printed() {
        let path = committed(example);
        if update {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the folder");
            std::fs::write(&path, document).expect("write the document");
            continue;
        }
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old != *document {
            let line = old
                .lines()
                .zip(document.lines())
                .position(|(old, new)| old != new)
                .unwrap_or_else(|| old.lines().count().min(document.lines().count()));
            stale.push(format!(
                "{} differs from what `cargo run --example {example} -- --asyncapi` prints, from line {}:\n  committed: {}\n  now:       {}",
                path.display(),
                line + 1,
                old.lines().nth(line).unwrap_or("(end of file)"),
                document.lines().nth(line).unwrap_or("(end of file)"),
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n\nThe services' contracts changed. Regenerate the documents with\n  UPDATE_ASYNCAPI=1 cargo test -p rmq-bus --test asyncapi\nand review and commit the diff.",
        stale.join("\n\n")
    );
}

/// `interop/asyncapi`, checked to be installed.
fn validator() -> PathBuf {
    let dir = workspace().join("interop/asyncapi");
    assert!(
        dir.join("node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI parser is not installed in {}: run scripts/test.sh, which installs it \
         (or `npm ci --prefix interop/asyncapi`; needs Node.js 20+)",
        dir.display()
    );
    dir.join("validate.js")
}

/// The documents the examples print now (and, with the feature, the document of every
/// feature) pass the official AsyncAPI parser: no diagnostic of error severity.
#[test]
fn the_asyncapi_parser_finds_no_error() {
    let validate = validator();
    let dir = std::env::temp_dir().join(format!("rmq-bus-asyncapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    #[cfg_attr(not(feature = "asyncapi"), allow(unused_mut))]
    let mut documents: Vec<(String, String)> = printed()
        .iter()
        .map(|(example, document)| (format!("{example}.json"), document.clone()))
        .collect();
    #[cfg(feature = "asyncapi")]
    documents.push((
        "every-feature.json".to_owned(),
        document::service().to_json(),
    ));
    let mut files = Vec::new();
    for (name, document) in &documents {
        let file = dir.join(name);
        std::fs::write(&file, document).expect("write the document");
        files.push(file);
    }
    let output = Command::new("node")
        .arg(&validate)
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node` (install Node.js 20+): {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "the AsyncAPI parser found errors ({}):\n{report}",
        output.status
    );
    assert_eq!(
        report.matches(", 0 errors").count(),
        documents.len(),
        "every document should be parsed:\n{report}"
    );
}
