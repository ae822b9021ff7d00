//! Message patterns: the key a packet is routed by.
//!
//! NestJS accepts strings and objects (`{"cmd": "sum"}`) as patterns and matches objects after
//! normalising them (keys sorted, compact JSON), so `{"b":1,"a":2}` and `{"a":2,"b":1}` are one
//! pattern. [`Pattern`] keeps both the wire form and that normalised key.

use std::borrow::Cow;
use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::Value;

/// A message pattern, as written on the wire and as routed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// Borrowed for the patterns of typed contracts, which are `'static`: no allocation per send.
    key: Cow<'static, str>,
    object: Option<Value>,
}

impl Pattern {
    /// The normalised routing key: the string itself, or an object as sorted compact JSON.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The normalised routing key, taken out.
    pub(crate) fn into_key(self) -> String {
        self.key.into_owned()
    }

    /// A string pattern known at compile time, as typed contracts have: nothing is copied.
    pub const fn from_static(key: &'static str) -> Self {
        Self {
            key: Cow::Borrowed(key),
            object: None,
        }
    }

    /// Reads a pattern off the wire. Strings and numbers are taken as text, objects normalised;
    /// anything else (null, arrays, booleans) is not a pattern.
    pub fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::String(s) => Some(Self::from(s.as_str())),
            Value::Number(n) => Some(Self::from(n.to_string())),
            Value::Object(_) => {
                let sorted = sort_keys(value);
                Some(Self {
                    key: Cow::Owned(sorted.to_string()),
                    object: Some(sorted),
                })
            }
            _ => None,
        }
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Self {
        Self {
            key: Cow::Owned(s.to_owned()),
            object: None,
        }
    }
}

impl From<String> for Pattern {
    fn from(key: String) -> Self {
        Self {
            key: Cow::Owned(key),
            object: None,
        }
    }
}

impl From<&String> for Pattern {
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<Value> for Pattern {
    /// Objects become object patterns; other values are taken as their text.
    fn from(value: Value) -> Self {
        Self::from_json(&value).unwrap_or_else(|| Self::from(value.to_string()))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.object {
            Some(object) => object.serialize(serializer),
            None => serializer.serialize_str(&self.key),
        }
    }
}

/// Whether `key` is a topic wildcard pattern: a dot-separated segment is `*` or `#`.
pub(crate) fn is_wildcard(key: &str) -> bool {
    key.split('.')
        .any(|segment| segment == "*" || segment == "#")
}

/// Topic matching as RabbitMQ does it: `*` is exactly one dot-separated segment, `#` zero or more.
///
/// One pass over the pattern, keeping which prefixes of the key it can match so far: time is
/// the product of the two lengths, whatever the wildcards. (A backtracking matcher, as this was,
/// takes exponential time on a pattern of many `#` against a long key that does not match;
/// found by fuzzing.)
pub(crate) fn wildcard_matches(pattern: &str, key: &str) -> bool {
    let key: Vec<&str> = key.split('.').collect();
    // matched[j]: the pattern's words so far match the key's first j words.
    let mut matched = vec![false; key.len() + 1];
    matched[0] = true;
    for word in pattern.split('.') {
        match word {
            // Zero words, or one more than a match that already took some.
            "#" => {
                for j in 1..=key.len() {
                    matched[j] = matched[j] || matched[j - 1];
                }
            }
            _ => {
                for j in (1..=key.len()).rev() {
                    matched[j] = matched[j - 1] && (word == "*" || key[j - 1] == word);
                }
                matched[0] = false;
            }
        }
    }
    matched[key.len()]
}

/// Rebuilds `value` with every object's keys in sorted order, whatever map serde_json uses.
fn sort_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_patterns_match_whatever_the_key_order() {
        let a = Pattern::from(json!({"cmd": "sum", "area": {"z": 1, "a": 2}}));
        let b = Pattern::from_json(&json!({"area": {"a": 2, "z": 1}, "cmd": "sum"}));
        assert_eq!(Some(&a), b.as_ref());
        assert_eq!(a.key(), r#"{"area":{"a":2,"z":1},"cmd":"sum"}"#);
    }

    #[test]
    fn strings_and_numbers_are_text() {
        assert_eq!(
            Pattern::from_json(&json!("order_created")).map(|p| p.key().to_owned()),
            Some("order_created".into())
        );
        assert_eq!(
            Pattern::from_json(&json!(42)).map(|p| p.key().to_owned()),
            Some("42".into())
        );
        assert_eq!(Pattern::from_json(&json!(null)), None);
        assert_eq!(Pattern::from_json(&json!([1])), None);
    }

    #[test]
    fn wildcards_match_like_topic_exchanges() {
        let cases = [
            ("order.*", "order.created", true),
            ("order.*", "order.created.eu", false),
            ("order.*", "order", false),
            ("order.#", "order", true),
            ("order.#", "order.created.eu", true),
            ("#.eu", "order.created.eu", true),
            ("*.created.*", "order.created.eu", true),
            ("#", "anything.at.all", true),
            ("order.*.eu", "order.created.us", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(
                wildcard_matches(pattern, key),
                expected,
                "{pattern} ~ {key}"
            );
        }
        // Many `#` against a long key that does not match: quick, not exponential.
        let hashes = vec!["#"; 60].join(".") + ".x";
        let long_key = vec!["a"; 120].join(".");
        assert!(!wildcard_matches(&hashes, &long_key));
        assert!(wildcard_matches(&hashes, &(long_key + ".x")));
        assert!(
            is_wildcard("order.#")
                && is_wildcard("*.x")
                && !is_wildcard("order_created")
                && !is_wildcard("a*b")
        );
    }

    #[test]
    fn serializes_in_wire_form() {
        assert_eq!(
            serde_json::to_string(&Pattern::from("a")).ok(),
            Some("\"a\"".into())
        );
        let object = Pattern::from(json!({"b": 1, "a": 2}));
        assert_eq!(
            serde_json::to_string(&object).ok(),
            Some(r#"{"a":2,"b":1}"#.into())
        );
    }
}
