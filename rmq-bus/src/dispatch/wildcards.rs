//! Topic wildcard patterns (`order.*`, `audit.#`) in a trie of their words, so finding the
//! handler of a key follows only the branches its words take, instead of trying every pattern.
//!
//! Matching runs the trie as an automaton over the key's words, keeping the set of nodes reached
//! so far: time is bounded by the key's words times the nodes alive at once, however many `#` a
//! pattern has (following each `#` branch recursively instead is exponential on `#.#.#…`).

use std::collections::HashMap;

/// Wildcard patterns and their values; where several match a key, the first registered wins.
pub(crate) struct Wildcards<T> {
    nodes: Vec<Node>,
    /// Patterns and values, in registration order; nodes name them by place.
    entries: Vec<(String, T)>,
}

/// One node: the words that may follow it. Node 0 is the root.
#[derive(Default)]
struct Node {
    words: HashMap<Box<str>, usize>,
    star: Option<usize>,
    hash: Option<usize>,
    /// Reached by a `#`: it takes any number of further words itself.
    takes_any: bool,
    /// The entry whose pattern ends here.
    end: Option<usize>,
}

impl<T> Default for Wildcards<T> {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
            entries: Vec::new(),
        }
    }
}

impl<T> Wildcards<T> {
    /// Adds `pattern`; gives `value` back if the pattern is already there.
    pub(crate) fn insert(&mut self, pattern: String, value: T) -> Result<(), T> {
        let mut at = 0;
        for word in pattern.split('.') {
            at = self.child(at, word);
        }
        if self.nodes[at].end.is_some() {
            return Err(value);
        }
        self.nodes[at].end = Some(self.entries.len());
        self.entries.push((pattern, value));
        Ok(())
    }

    /// The child of `at` for `word`, made if missing.
    fn child(&mut self, at: usize, word: &str) -> usize {
        let next = self.nodes.len();
        let node = &mut self.nodes[at];
        let (slot, takes_any) = match word {
            "*" => (node.star.get_or_insert(next), false),
            "#" => (node.hash.get_or_insert(next), true),
            _ => (node.words.entry(word.into()).or_insert(next), false),
        };
        let child = *slot;
        if child == next {
            self.nodes.push(Node {
                takes_any,
                ..Node::default()
            });
        }
        child
    }

    /// The value of the first registered pattern matching `key`, with the pattern.
    pub(crate) fn get(&self, key: &str) -> Option<(&str, &T)> {
        if self.entries.is_empty() {
            return None;
        }
        let mut alive = Vec::with_capacity(8);
        self.reach(0, &mut alive);
        let mut next = Vec::with_capacity(8);
        for word in key.split('.') {
            next.clear();
            for &at in &alive {
                let node = &self.nodes[at];
                if node.takes_any {
                    self.reach(at, &mut next);
                }
                if let Some(&child) = node.words.get(word) {
                    self.reach(child, &mut next);
                }
                if let Some(child) = node.star {
                    self.reach(child, &mut next);
                }
            }
            std::mem::swap(&mut alive, &mut next);
            if alive.is_empty() {
                return None;
            }
        }
        let first = alive.iter().filter_map(|&at| self.nodes[at].end).min()?;
        self.entries
            .get(first)
            .map(|(pattern, value)| (pattern.as_str(), value))
    }

    /// Adds `at` to `alive`, and the `#` that may follow it matching no word.
    fn reach(&self, mut at: usize, alive: &mut Vec<usize>) {
        loop {
            if !alive.contains(&at) {
                alive.push(at);
            }
            match self.nodes[at].hash {
                Some(hash) => at = hash,
                None => return,
            }
        }
    }

    /// Every pattern and value, in registration order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries
            .iter()
            .map(|(pattern, value)| (pattern.as_str(), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::wildcard_matches;

    fn trie(patterns: &[&str]) -> Wildcards<usize> {
        let mut trie = Wildcards::default();
        for (index, pattern) in patterns.iter().enumerate() {
            assert!(
                trie.insert((*pattern).to_owned(), index).is_ok(),
                "{pattern}"
            );
        }
        trie
    }

    #[test]
    fn the_first_registered_match_wins() {
        let trie = trie(&["order.*", "#", "order.created", "*.created.#"]);
        assert_eq!(trie.get("order.created"), Some(("order.*", &0)));
        assert_eq!(trie.get("invoice.created"), Some(("#", &1)));
        assert_eq!(trie.get(""), Some(("#", &1)));
        let trie = self::trie(&["a.#.b", "a.*"]);
        assert_eq!(trie.get("a.b"), Some(("a.#.b", &0)));
        assert_eq!(trie.get("a.x.y.b"), Some(("a.#.b", &0)));
        assert_eq!(trie.get("a.x"), Some(("a.*", &1)));
        assert_eq!(trie.get("a.x.y"), None);
        assert_eq!(trie.get("b"), None);
    }

    #[test]
    fn a_pattern_registered_twice_is_refused() {
        let mut trie = trie(&["a.#", "a.*"]);
        assert_eq!(trie.insert("a.#".into(), 9), Err(9));
        assert_eq!(trie.insert("a.#.#".into(), 9), Ok(()));
        assert_eq!(trie.iter().count(), 3);
    }

    /// Against the single-pattern matcher on every pattern and key of words `a`, `b`, `*`, `#`
    /// up to three long: the trie finds the first pattern that matches, or none.
    #[test]
    fn agrees_with_matching_each_pattern_in_turn() {
        let words = ["a", "b", "*", "#"];
        let mut all = vec![String::new()];
        for length in 1..=3 {
            let mut texts = vec![String::new()];
            for _ in 0..length {
                texts = texts
                    .iter()
                    .flat_map(|text| {
                        words.iter().map(move |word| match text.is_empty() {
                            true => (*word).to_owned(),
                            false => format!("{text}.{word}"),
                        })
                    })
                    .collect();
            }
            all.extend(texts);
        }
        // Registration orders that differ: every pattern, and every third in reverse.
        let reversed: Vec<&str> = all.iter().rev().step_by(3).map(String::as_str).collect();
        let forward: Vec<&str> = all.iter().map(String::as_str).collect();
        for patterns in [forward, reversed] {
            let trie = trie(&patterns);
            for key in all.iter().filter(|key| !key.contains(['*', '#'])) {
                let expected = patterns
                    .iter()
                    .position(|pattern| wildcard_matches(pattern, key));
                assert_eq!(
                    trie.get(key).map(|(_, index)| *index),
                    expected,
                    "key {key:?}"
                );
            }
        }
    }

    #[test]
    fn many_hashes_stay_cheap() {
        let pattern = vec!["#"; 100].join(".") + ".b";
        let key = vec!["a"; 120].join(".");
        let trie = trie(&[&pattern]);
        assert_eq!(trie.get(&key), None);
        assert!(trie.get(&(key + ".b")).is_some());
    }
}
