//! Prometheus text exposition read by a real parser: the Python `prometheus-client`'s
//! (`scripts/test.sh` installs it), so that what rmq-bus's metrics look like to Prometheus is
//! what the tests check, not what a string match happens to find.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;

/// One sample of a metric family.
#[derive(Clone, Debug, Deserialize)]
pub struct Sample {
    /// The family's type: `counter`, `gauge`, `histogram`, `summary`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The sample's name (`messaging_client_sent_messages_total`, `…_bucket`, `…_count`).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"type": family.type, "name": sample.name,
                        "labels": sample.labels, "value": sample.value})
print(json.dumps(samples))
"#;

/// Parses `exposition`; fails the test if the parser refuses it.
pub fn parse(exposition: &str) -> Vec<Sample> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (the Prometheus parser: pip install prometheus-client)");
    child
        .stdin
        .take()
        .expect("parser stdin")
        .write_all(exposition.as_bytes())
        .expect("write the exposition to the parser");
    let output = child.wait_with_output().expect("wait for the parser");
    assert!(
        output.status.success(),
        "the Prometheus parser refused the exposition: {}\n{exposition}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the parser's JSON")
}

/// The samples named `name` whose labels are exactly `labels` (besides `le` and `quantile`).
pub fn exactly<'s>(samples: &'s [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'s Sample> {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            let own = sample
                .labels
                .iter()
                .filter(|(key, _)| !matches!(key.as_str(), "le" | "quantile"));
            own.map(|(key, value)| (key.as_str(), value.as_str()))
                .eq(sorted(labels))
        })
        .collect()
}

/// The value of the one sample named `name` with exactly `labels`; fails the test, listing what
/// there is, if there is not exactly one.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    match exactly(samples, name, labels).as_slice() {
        [sample] => sample.value,
        found => panic!(
            "expected one sample {name}{labels:?}, found {}; samples of that name: {:#?}",
            found.len(),
            samples
                .iter()
                .filter(|sample| sample.name == name)
                .collect::<Vec<_>>()
        ),
    }
}

fn sorted<'a>(labels: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut labels = labels.to_vec();
    labels.sort_unstable();
    labels
}
