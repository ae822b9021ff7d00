//! The properties the fuzz targets check, one function per target. Shared, through `#[path]`,
//! by the targets in `fuzz_targets/` and by the corpus replay test of rmq-bus
//! (`rmq-bus/tests/fuzz_corpus.rs`), which runs every committed input on stable Rust.
//!
//! Each function panics when the property fails: a crash for libFuzzer, a failed test for the
//! replay.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use rmq_bus::__fuzz;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// decode_differential: the dispatcher's fast path against the full decode, and the full decode
// against serde_json's own reading of the body.

/// The fast path (pattern read without parsing, data read in one pass by the handler) and the
/// full decode must agree on accept or refuse, on the pattern and on the data; and the full
/// decode must agree with what serde_json reads in the body.
pub fn decode_differential(body: &[u8]) {
    let full = __fuzz::decode(body);
    let shown = String::from_utf8_lossy(body);

    // The full decode against serde_json's reading.
    let reference = reference_packet(body);
    let unchecked = matches!(reference, Reference::Unchecked);
    match (&full, reference) {
        (Ok(decoded), Reference::Packet { key, data, id }) => {
            assert_eq!(decoded.key, key, "pattern of {shown:?}");
            assert_eq!(decoded.data, data, "data of {shown:?}");
            assert_eq!(decoded.id, id, "id of {shown:?}");
        }
        (Ok(_) | Err(_), Reference::Unchecked) => {}
        (Ok(decoded), other) => {
            panic!("the full decode accepts {shown:?} ({decoded:?}), serde_json says {other:?}")
        }
        (Err(_), Reference::Packet { .. }) => {
            panic!("the full decode refuses {shown:?} ({full:?}), a well-formed packet")
        }
        (Err(_), _) => {}
    }

    // The fast path against the full decode, where serde_json's Value can hold the body (a
    // number beyond f64 is refused by a handler reading it as a Value, taken by one reading
    // nothing: both right).
    let Some(pattern) = __fuzz::fast_pattern(body).filter(|_| !unchecked) else {
        return; // left to the full decode
    };
    let data = __fuzz::fast_data(body);
    let check = __fuzz::fast_check(body);
    assert_eq!(
        data.is_ok(),
        check.is_ok(),
        "a handler reading the data and one reading nothing disagree on {shown:?}: {data:?} / {check:?}"
    );
    match (data, &full) {
        (Ok(data), Ok(decoded)) => {
            assert_eq!(pattern, decoded.key, "fast path pattern of {shown:?}");
            assert!(
                !decoded.object,
                "fast path took an object pattern in {shown:?}"
            );
            assert_eq!(data, decoded.data, "fast path data of {shown:?}");
        }
        (Err(_), Err(_)) => {}
        (fast, full) => panic!(
            "fast path and full decode disagree on {shown:?}: fast path {pattern:?} {fast:?}, full decode {full:?}"
        ),
    }
}

/// What serde_json makes of a body, the reference for the full decode.
#[derive(Debug)]
enum Reference {
    /// A packet: an object with a usable pattern, and no top-level key twice that the decoder
    /// reads (`pattern`, `data`, `id`), as serde's derived structs refuse duplicates.
    Packet {
        key: String,
        data: Value,
        id: Option<String>,
    },
    /// JSON, but not a packet: no object, no usable pattern, or a repeated key.
    NotAPacket,
    NotJson,
    /// JSON that serde_json's `Value` cannot hold (a number beyond `f64`, such as `1e3089`,
    /// which JSON's grammar allows and JavaScript reads as Infinity): nothing to compare with.
    Unchecked,
}

fn reference_packet(body: &[u8]) -> Reference {
    let Ok(text) = std::str::from_utf8(body) else {
        return Reference::NotJson;
    };
    if serde_json::from_str::<IgnoredAny>(text).is_err() {
        return Reference::NotJson;
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Reference::Unchecked;
    };
    let Value::Object(map) = &value else {
        return Reference::NotAPacket;
    };
    let Ok(TopKeys(keys)) = serde_json::from_slice::<TopKeys>(body) else {
        return Reference::NotAPacket;
    };
    for name in ["pattern", "data", "id"] {
        if keys.iter().filter(|key| *key == name).count() > 1 {
            return Reference::NotAPacket;
        }
    }
    let Some(key) = map.get("pattern").and_then(__fuzz::pattern_key) else {
        return Reference::NotAPacket;
    };
    let data = map.get("data").cloned().unwrap_or(Value::Null);
    // The decoder takes a missing or null id as none, a string as it is, anything else as JSON.
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(other) => Some(other.to_string()),
    };
    Reference::Packet { key, data, id }
}

/// The keys of a top-level JSON object, in order, repeats included.
struct TopKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for TopKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = TopKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(TopKeys(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

// ---------------------------------------------------------------------------------------------
// topic_match: the wildcard matcher against a simple reference.

/// The longest routing key (and so pattern) the dispatcher matches: longer ones are refused.
const MAX_KEY: usize = 255;

/// Input: a pattern and a key, each byte one character of a small alphabet that makes topic
/// structure likely, separated by a 0 byte.
pub fn topic_match(data: &[u8]) {
    const PATTERN_CHARS: &[u8] = b"ab.*#.";
    const KEY_CHARS: &[u8] = b"ab..*#";
    let (pattern, key) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let text = |bytes: &[u8], alphabet: &[u8]| -> String {
        bytes
            .iter()
            .take(MAX_KEY)
            .map(|&b| char::from(alphabet[usize::from(b) % alphabet.len()]))
            .collect()
    };
    let (pattern, key) = (text(pattern, PATTERN_CHARS), text(key, KEY_CHARS));
    let expected = reference_topic_match(&pattern, &key);
    assert_eq!(
        __fuzz::wildcard_matches(&pattern, &key),
        expected,
        "{pattern:?} against {key:?}"
    );
    // A third opinion on short inputs: backtracking, straight from the definition.
    if pattern.len() <= 12 && key.len() <= 12 {
        assert_eq!(
            backtracking_topic_match(&pattern, &key),
            expected,
            "{pattern:?} against {key:?}"
        );
    }
    // A pattern without wildcards matches only itself.
    if !__fuzz::is_wildcard(&pattern) {
        assert_eq!(expected, pattern == key, "{pattern:?} against {key:?}");
    }
    // The dispatcher's trie of several patterns (the pattern, then its two halves) finds the
    // first one that matches.
    let middle = (0..=pattern.len() / 2)
        .rev()
        .find(|&at| pattern.is_char_boundary(at))
        .unwrap_or(0);
    let mut patterns: Vec<&str> = Vec::new();
    for candidate in [pattern.as_str(), &pattern[..middle], &pattern[middle..]] {
        if !patterns.contains(&candidate) {
            patterns.push(candidate);
        }
    }
    let first = patterns
        .iter()
        .position(|pattern| reference_topic_match(pattern, &key));
    assert_eq!(
        __fuzz::first_wildcard_match(&patterns, &key),
        first,
        "{patterns:?} against {key:?}"
    );
}

/// RabbitMQ's topic matching by backtracking: exponential on many `#`, so for short inputs.
fn backtracking_topic_match(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.split_first(), key.split_first()) {
            (None, None) => true,
            (Some((&"#", rest)), _) => {
                go(rest, key) || key.split_first().is_some_and(|(_, tail)| go(pattern, tail))
            }
            (Some((&"*", rest)), Some((_, tail))) => go(rest, tail),
            (Some((word, rest)), Some((first, tail))) => word == first && go(rest, tail),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    go(&pattern, &key)
}

/// RabbitMQ's topic matching, as a table: `*` is one word, `#` zero or more, others themselves.
fn reference_topic_match(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    // matches[i][j]: the first i words of the pattern match the first j of the key.
    let mut matches = vec![vec![false; key.len() + 1]; pattern.len() + 1];
    matches[0][0] = true;
    for i in 0..pattern.len() {
        for j in 0..=key.len() {
            matches[i + 1][j] = match pattern[i] {
                "#" => matches[i][j] || (j > 0 && matches[i + 1][j - 1]),
                "*" => j > 0 && matches[i][j - 1],
                word => j > 0 && matches[i][j - 1] && key[j - 1] == word,
            };
        }
    }
    matches[pattern.len()][key.len()]
}

// ---------------------------------------------------------------------------------------------
// object_pattern: normalisation of object patterns against NestJS's rules.

/// Input: bytes that build a JSON object pattern (and a reordering of it). Checked:
/// - the routing key does not depend on the order of keys, at any depth;
/// - it is JSON for the very same object, and normalising it again changes nothing;
/// - it is exactly the route NestJS computes (`transformPatternToRoute`: keys sorted, compact,
///   strings unescaped, numbers as JavaScript prints them) where NestJS's rules are defined the
///   same way: keys of lowercase letters and digits (its `localeCompare` then sorts as bytes
///   do), strings without quotes or backslashes, integers.
pub fn object_pattern(data: &[u8]) {
    let mut bytes = Bytes(data);
    let object = build_object(&mut bytes, 0);
    let reordered = reorder(&object, &mut Bytes(data));
    let key = __fuzz::pattern_key(&object).expect("an object is a pattern");
    assert_eq!(
        Some(&key),
        __fuzz::pattern_key(&reordered).as_ref(),
        "{object} and {reordered} are one pattern"
    );
    let parsed: Value = serde_json::from_str(&key).expect("the key is JSON");
    assert_eq!(parsed, object, "the key {key} is the object {object}");
    assert_eq!(
        __fuzz::pattern_key(&parsed).as_ref(),
        Some(&key),
        "normalising {key} again"
    );
    if nest_comparable(&object) {
        assert_eq!(key, nest_route(&object), "NestJS's route of {object}");
    }
}

/// A reader of fuzz bytes as small choices; zeros when they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&first, rest)) => {
                self.0 = rest;
                first
            }
            None => 0,
        }
    }
}

/// Characters keys and strings are made of: NestJS-comparable ones first, then the rest.
const NAME_CHARS: &[char] = &[
    'a',
    'b',
    'c',
    'z',
    '0',
    '1',
    '9',
    'A',
    'Z',
    '_',
    '-',
    ' ',
    '"',
    '\\',
    '\u{e9}',
    '\u{1f600}',
];

fn name(bytes: &mut Bytes<'_>) -> String {
    let length = bytes.next() % 5;
    (0..length)
        .map(|_| NAME_CHARS[usize::from(bytes.next()) % NAME_CHARS.len()])
        .collect()
}

fn build_value(bytes: &mut Bytes<'_>, depth: u8) -> Value {
    match bytes.next() % 8 {
        0 => Value::Null,
        1 => Value::Bool(bytes.next() & 1 == 0),
        2 | 3 => Value::from(i64::from(bytes.next() as i8) * i64::from(bytes.next())),
        4 => Value::from(f64::from(bytes.next()) / 4.0),
        5 | 6 => Value::String(name(bytes)),
        _ if depth < 3 => build_object(bytes, depth + 1),
        _ => Value::Array(vec![Value::from(1), Value::String(name(bytes))]),
    }
}

fn build_object(bytes: &mut Bytes<'_>, depth: u8) -> Value {
    let entries = bytes.next() % 5;
    let mut map = serde_json::Map::new();
    for _ in 0..entries {
        let key = name(bytes);
        let value = build_value(bytes, depth);
        map.insert(key, value);
    }
    Value::Object(map)
}

/// The same value with the keys of every object inserted in another order (serde_json keeps
/// insertion order only with `preserve_order`; without it the order is already sorted, and this
/// checks nothing more, which is fine).
fn reorder(value: &Value, bytes: &mut Bytes<'_>) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            let rotate = usize::from(bytes.next()) % entries.len().max(1);
            entries.rotate_left(rotate);
            entries.reverse();
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key.clone(), reorder(value, bytes)))
                    .collect(),
            )
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| reorder(item, bytes)).collect())
        }
        other => other.clone(),
    }
}

/// Whether NestJS's route of `value` is defined as rmq-bus's key is (see [`object_pattern`]).
fn nest_comparable(value: &Value) -> bool {
    let plain_key = |key: &str| {
        key.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    match value {
        Value::Object(map) => map
            .iter()
            .all(|(key, value)| plain_key(key) && nest_comparable(value)),
        Value::String(text) => !text
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control()),
        Value::Number(number) => number.is_i64() || number.is_u64(),
        Value::Bool(_) | Value::Null => true,
        Value::Array(_) => false,
    }
}

/// NestJS's `transformPatternToRoute`, for the values [`nest_comparable`] accepts: keys sorted
/// (`localeCompare`, which for lowercase letters and digits is byte order), `"key":value` joined
/// by commas, string values quoted but not escaped, other values as JavaScript prints them.
fn nest_route(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            let parts: Vec<String> = sorted
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => format!("\"{key}\":\"{text}\""),
                    other => format!("\"{key}\":{}", nest_route(other)),
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// delivery: arbitrary bytes and headers through a microservice on the in-memory broker.

/// The message a handler panics with on purpose; any other panic is a finding.
const DELIBERATE: &str = "fuzz: a handler panics on purpose";

/// How long a delivery may take to be settled before it counts as left unsettled.
const SETTLE_BOUND: Duration = Duration::from_secs(10);

struct Rig {
    runtime: tokio::runtime::Runtime,
    broker: rmq_bus::testing::TestBroker,
    _service: rmq_bus::microservice::RunningMicroservice,
}

const QUEUE: &str = "fuzz";
const REPLIES: &str = "fuzz-replies";

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        // A panic a handler makes on purpose is settled by rmq-bus: not a finding. Any other
        // goes to the hook in place (libFuzzer's aborts, the test harness's reports).
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&DELIBERATE) {
                previous(info);
            }
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let broker = rmq_bus::testing::TestBroker::new();
        broker
            .declare_queue(REPLIES, &rmq_bus::config::QueueOptions::default())
            .expect("reply queue");
        let service = runtime
            .block_on(service(&broker).start())
            .expect("start the microservice");
        Rig {
            runtime,
            broker,
            _service: service,
        }
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Order {
    product_name: String,
    price: f64,
}

/// A service with a handler of each kind: typed, raw, field, no arguments, failing, panicking,
/// leaving its message unsettled, wildcard, requests with string and object patterns; failures
/// retried once, straight away.
fn service(broker: &rmq_bus::testing::TestBroker) -> rmq_bus::Microservice {
    use rmq_bus::handler::HandlerError;
    use rmq_bus::{Microservice, Payload, RmqContext, RpcError};
    let retry = rmq_bus::config::RetryPolicy::exponential(2, Duration::ZERO, Duration::ZERO);
    Microservice::new(broker.options(QUEUE).prefetch(8).retry(retry))
        .on_event(
            "order_created",
            |Payload(_): Payload<Order>, ctx: RmqContext| async move { ctx.ack().await },
        )
        .on_event(
            "raw",
            |Payload(_): Payload<Value>, ctx: RmqContext| async move { ctx.ack().await },
        )
        .on_event("nothing", |ctx: RmqContext| async move { ctx.ack().await })
        .on_event("fail", |Payload(_): Payload<Value>| async move {
            Err::<(), _>(HandlerError::Failed("fuzz: fails on purpose".to_owned()))
        })
        .on_event("bad", |Payload(_): Payload<Value>| async move {
            Err::<(), _>(HandlerError::BadInput("fuzz: bad on purpose".to_owned()))
        })
        .on_event("panic", |Payload(_): Payload<Value>| async move {
            if true {
                std::panic::panic_any(DELIBERATE);
            }
            Ok::<(), HandlerError>(())
        })
        .on_event("keep", |ctx: RmqContext| async move {
            drop(ctx); // the last clone settles it
            Ok::<(), HandlerError>(())
        })
        .on_event(
            "shipment.*",
            |Payload(_): Payload<Value>, ctx: RmqContext| async move { ctx.ack().await },
        )
        .on_message("sum", |Payload(numbers): Payload<Vec<i64>>| async move {
            Ok::<_, RpcError>(numbers.iter().fold(0i64, |sum, n| sum.wrapping_add(*n)))
        })
        .on_message(
            serde_json::json!({"cmd": "echo"}),
            |Payload(value): Payload<Value>| async move { Ok::<_, RpcError>(value) },
        )
}

/// Patterns the input picks from, to reach each handler (and none).
const PATTERNS: &[&str] = &[
    "order_created",
    "raw",
    "nothing",
    "fail",
    "bad",
    "panic",
    "keep",
    "shipment.eu",
    "sum",
    "unknown",
];

/// Input: a first byte of choices, then a body. The choices pick properties (a reply address,
/// headers of odd types, a correlation id) and whether the body is sent as it is or wrapped
/// in a packet for one of the handlers. Checked: every delivery ends acked, dead-lettered with
/// a reason, or rejected with a reason, within a bound, never left unsettled; retries end.
pub fn delivery(data: &[u8]) {
    let rig = rig();
    let (choices, rest) = data.split_first().map_or((0, &[][..]), |(c, r)| (*c, r));
    let body = match choices & 0b11 {
        // As it is.
        0 | 1 => rest.to_vec(),
        // As the data of a packet for a handler (the data itself not JSON, perhaps).
        _ => {
            let (which, data) = rest.split_first().map_or((0, &[][..]), |(w, d)| (*w, d));
            let pattern = if which & 0x80 != 0 {
                r#"{"cmd":"echo"}"#.to_owned()
            } else {
                format!("{:?}", PATTERNS[usize::from(which) % PATTERNS.len()])
            };
            let mut body = format!(r#"{{"pattern":{pattern},"data":"#).into_bytes();
            body.extend_from_slice(data);
            body.push(b'}');
            body
        }
    };
    let mut properties = rmq_bus::context::Properties::default();
    if choices & 0b100 != 0 {
        properties.reply_to = Some(REPLIES.to_owned());
        properties.correlation_id =
            Some(String::from_utf8_lossy(rest.get(..8).unwrap_or(rest)).into_owned());
    }
    if choices & 0b1000 != 0 {
        let odd = serde_json::from_slice::<Value>(rest).unwrap_or_else(|_| Value::from(rest.len()));
        for header in [
            "x-rmq-bus-attempts",
            "x-death",
            "traceparent",
            "x-first-death-reason",
        ] {
            properties.headers.insert(header.to_owned(), odd.clone());
        }
    }
    if choices & 0b1_0000 != 0 {
        properties.content_type = Some("application/octet-stream".to_owned());
        properties.headers.insert(
            "x-rmq-bus-attempts".to_owned(),
            Value::from(u64::from(choices)),
        );
    }
    rig.broker
        .publish_raw(QUEUE, body.clone(), properties)
        .expect("publish");
    let outcome = rig.runtime.block_on(settle(&rig.broker, &body));
    // What is not a packet never reaches a handler that could ack it.
    if !__fuzz::is_packet(&body) {
        assert!(
            !matches!(outcome, rmq_bus::context::Outcome::Acked),
            "not a packet, yet acked: {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    // Keep what piles up from growing over a long run.
    let _ = rig.broker.messages(REPLIES);
    let _ = rig.broker.messages(&format!("{QUEUE}.dlq"));
}

/// Waits for the delivery of `body` to end, through its retries and requeues; how it ended.
async fn settle(broker: &rmq_bus::testing::TestBroker, body: &[u8]) -> rmq_bus::context::Outcome {
    use rmq_bus::context::Outcome;
    let shown = || String::from_utf8_lossy(body).into_owned();
    for _ in 0..4 {
        let Some(settled) = broker.settled_within(QUEUE, SETTLE_BOUND).await else {
            panic!(
                "a delivery was left unsettled for {SETTLE_BOUND:?}: {:?}",
                shown()
            );
        };
        match &settled.outcome {
            Outcome::Acked => return settled.outcome,
            Outcome::DeadLettered { reason, .. }
            | Outcome::Rejected {
                reason: Some(reason),
            } => {
                assert!(
                    !reason.trim().is_empty(),
                    "dead-lettered without a reason: {:?}",
                    shown()
                );
                return settled.outcome;
            }
            Outcome::Rejected { reason: None } => {
                panic!("rejected without a reason, so dropped: {:?}", shown())
            }
            // Another delivery of the same message follows.
            Outcome::Retried { .. } | Outcome::Requeued => {}
            _ => panic!("unexpected outcome {:?} for {:?}", settled.outcome, shown()),
        }
    }
    panic!(
        "a delivery was retried or requeued more than 3 times: {:?}",
        shown()
    );
}
