//! Topic filters to functions.
//!
//! A [`Router`] maps MQTT topic filters (`+` matches one level, `#` matches
//! the rest and must come last) to targets, usually function ids. It is a
//! pure struct with no I/O: ingress asks it where a message goes, and config
//! and the emit grants use the same filter rules through [`validate_filter`]
//! and [`filter_matches`].
//!
//! Filters are stored in a trie over topic levels, as rumqttd and mosquitto
//! do, so routing a message costs work proportional to the number of levels
//! in its topic and the wildcards that actually branch, not to the number of
//! filters: a gateway with a thousand subscriptions does not scan a thousand
//! filters per message.
//!
//! MQTT semantics kept here (MQTT 3.1.1 §4.7, MQTT 5 §4.7):
//! - `sport/#` matches `sport` itself as well as everything below it;
//! - `+` matches an empty level, so `a/+/b` matches `a//b`;
//! - topics starting with `$` (`$SYS/...`) are not matched by a filter whose
//!   first level is a wildcard (`#`, `+/...`), only by one that names the `$`
//!   level explicitly (`$SYS/#`);
//! - topic names containing `+` or `#` are not routable: they match nothing.

use std::collections::HashMap;

/// The usual router target: the index of a function in the config.
pub type FunctionId = usize;

/// The longest topic or filter MQTT can carry: a two-byte length prefix.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic filter or a topic name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// MQTT requires at least one character.
    #[error("must not be empty")]
    Empty,
    /// MQTT cannot carry it.
    #[error("is {len} bytes long; MQTT allows at most {MAX_TOPIC_LEN}")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// U+0000 is forbidden in topics and filters.
    #[error("must not contain the NUL character")]
    NulChar,
    /// `#` matches everything below it, so nothing may follow it.
    #[error("'#' must be the last level")]
    HashNotLast,
    /// A wildcard shares a level with other characters, as in `a/b+` or `#x`.
    #[error("a wildcard must occupy a whole level, not be part of {level:?}")]
    WildcardInLevel {
        /// The offending level.
        level: String,
    },
    /// A topic name (what is published to) contains `+` or `#`.
    #[error("a topic name must not contain the wildcards '+' or '#'")]
    WildcardInTopicName,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    if s.contains('\0') {
        return Err(TopicError::NulChar);
    }
    Ok(())
}

/// Checks that `filter` is a valid MQTT topic filter.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return Err(TopicError::HashNotLast),
            "#" | "+" => {}
            _ if level.contains(['+', '#']) => {
                return Err(TopicError::WildcardInLevel {
                    level: level.to_owned(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks that `topic` is a valid MQTT topic name (something one publishes to).
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopicName);
    }
    Ok(())
}

/// Whether the topic name `topic` matches the topic filter `filter`.
///
/// An invalid filter or topic name matches nothing. This is the reference
/// matcher: it walks one filter, for checks against a handful of filters
/// such as a function's emit grants; use a [`Router`] for many filters.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if validate_filter(filter).is_err() || validate_topic_name(topic).is_err() {
        return false;
    }
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` also matches the parent level: `sport/#` matches `sport`.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// One level of the trie: the filters that continue through it.
#[derive(Debug)]
struct Node<T> {
    /// Children for literal levels.
    literal: HashMap<Box<str>, Node<T>>,
    /// Child for a `+` level.
    plus: Option<Box<Node<T>>>,
    /// Targets of filters that end here with `#` (`prefix/#`).
    hash: Vec<T>,
    /// Targets of filters that end exactly here.
    exact: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            plus: None,
            hash: Vec::new(),
            exact: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

/// Routes topic names to the targets whose filters match them.
///
/// A target may be added under several filters; a topic that matches more
/// than one of them still yields that target once. [`Router::route`] returns
/// targets in ascending order, so the result does not depend on the order
/// filters were added in or on how the trie is laid out.
#[derive(Debug)]
pub struct Router<T = FunctionId> {
    root: Node<T>,
    /// Number of distinct (filter, target) pairs.
    len: usize,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: Copy + Ord> Router<T> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct (filter, target) pairs added.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no filter has been added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Routes messages whose topic matches `filter` to `target`.
    ///
    /// Adding the same (filter, target) pair twice is harmless: it is kept once.
    pub fn add(&mut self, filter: &str, target: T) -> Result<(), TopicError> {
        validate_filter(filter)?;
        let mut node = &mut self.root;
        let mut levels = filter.split('/');
        let list = loop {
            match levels.next() {
                None => break &mut node.exact,
                Some("#") => break &mut node.hash,
                Some("+") => node = node.plus.get_or_insert_with(Box::default),
                Some(level) => node = node.literal.entry(level.into()).or_default(),
            }
        };
        if !list.contains(&target) {
            list.push(target);
            self.len += 1;
        }
        Ok(())
    }

    /// Stops routing `filter` to `target`; returns whether the pair was present.
    pub fn remove(&mut self, filter: &str, target: T) -> bool {
        if validate_filter(filter).is_err() {
            return false;
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_in(&mut self.root, &levels, target);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// The targets whose filters match `topic`, each once, in ascending order.
    ///
    /// A topic name that is not valid (empty, or containing `+` or `#`)
    /// matches nothing.
    pub fn route(&self, topic: &str) -> Vec<T> {
        let mut out = Vec::new();
        self.route_into(topic, &mut out);
        out
    }

    /// Like [`Router::route`], but reuses `out` (cleared first) to spare an
    /// allocation per message on the hot path.
    pub fn route_into(&self, topic: &str, out: &mut Vec<T>) {
        out.clear();
        if validate_topic_name(topic).is_err() {
            return;
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        collect(&self.root, &levels, dollar, out);
        out.sort_unstable();
        out.dedup();
    }
}

/// Adds the targets of every filter under `node` that matches `levels`.
/// `at_dollar_root` is true only at the root of a `$` topic, where wildcards
/// must not match the first level.
fn collect<T: Copy>(node: &Node<T>, levels: &[&str], at_dollar_root: bool, out: &mut Vec<T>) {
    if !at_dollar_root {
        // `prefix/#` matches `prefix` and everything below it.
        out.extend_from_slice(&node.hash);
    }
    let Some((level, rest)) = levels.split_first() else {
        out.extend_from_slice(&node.exact);
        return;
    };
    if let Some(child) = node.literal.get(*level) {
        collect(child, rest, false, out);
    }
    if let (Some(child), false) = (&node.plus, at_dollar_root) {
        collect(child, rest, false, out);
    }
}

/// Removes `target` from the filter spelled by `levels` under `node`, pruning
/// nodes left empty. Returns whether it was there.
fn remove_in<T: Copy + Eq>(node: &mut Node<T>, levels: &[&str], target: T) -> bool {
    fn take<T: Eq>(list: &mut Vec<T>, target: &T) -> bool {
        let before = list.len();
        list.retain(|t| t != target);
        list.len() != before
    }
    match levels.split_first() {
        None => take(&mut node.exact, &target),
        Some((&"#", _)) => take(&mut node.hash, &target),
        Some((&"+", rest)) => {
            let Some(child) = node.plus.as_deref_mut() else {
                return false;
            };
            let removed = remove_in(child, rest, target);
            if child.is_empty() {
                node.plus = None;
            }
            removed
        }
        Some((level, rest)) => {
            let Some(child) = node.literal.get_mut(*level) else {
                return false;
            };
            let removed = remove_in(child, rest, target);
            if child.is_empty() {
                node.literal.remove(*level);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn router(filters: &[(&str, usize)]) -> Router {
        let mut r = Router::new();
        for (f, t) in filters {
            r.add(f, *t).unwrap();
        }
        r
    }

    #[test]
    fn valid_filters_are_accepted() {
        for f in [
            "a",
            "a/b",
            "/",
            "a//b",
            "/a",
            "a/",
            "+",
            "#",
            "+/+",
            "a/+/b",
            "a/#",
            "+/#",
            "$SYS/#",
            "$SYS/broker/+",
            "sport/tennis/+/#",
            "ünïcode/ok",
            "with space",
        ] {
            assert_eq!(validate_filter(f), Ok(()), "{f}");
        }
    }

    #[test]
    fn invalid_filters_are_rejected_with_the_reason() {
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::HashNotLast));
        assert_eq!(validate_filter("#/a"), Err(TopicError::HashNotLast));
        assert_eq!(validate_filter("#/#"), Err(TopicError::HashNotLast));
        assert_eq!(
            validate_filter("a/b+"),
            Err(TopicError::WildcardInLevel { level: "b+".into() })
        );
        assert_eq!(
            validate_filter("a#"),
            Err(TopicError::WildcardInLevel { level: "a#".into() })
        );
        assert_eq!(
            validate_filter("++/a"),
            Err(TopicError::WildcardInLevel { level: "++".into() })
        );
        assert_eq!(validate_filter("a\0b"), Err(TopicError::NulChar));
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            validate_filter(&long),
            Err(TopicError::TooLong {
                len: MAX_TOPIC_LEN + 1
            })
        );
        assert_eq!(
            TopicError::HashNotLast.to_string(),
            "'#' must be the last level"
        );
    }

    #[test]
    fn topic_names_with_wildcards_are_not_valid() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("a//b"), Ok(()));
        assert_eq!(
            validate_topic_name("a/+"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("a/#"),
            Err(TopicError::WildcardInTopicName)
        );
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
    }

    #[test]
    fn filter_matches_follows_mqtt_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("+/+", "/", true),
            ("+", "/", false),
            ("/+", "/x", true),
            ("a/+/b", "a//b", true),
            ("sport/#", "sport", true),
            ("sport/#", "sport/tennis/player1", true),
            ("sport/#", "sports", false),
            ("sport/tennis/#", "sport", false),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("+/#", "a", true),
            ("+/#", "a/b/c", true),
            // `$` topics are not matched by a leading wildcard ...
            ("#", "$SYS/broker/load", false),
            ("+/broker/load", "$SYS/broker/load", false),
            ("+/#", "$SYS", false),
            // ... only by an explicit `$` level.
            ("$SYS/#", "$SYS/broker/load", true),
            ("$SYS/+/load", "$SYS/broker/load", true),
            ("$SYS/#", "$SYS", true),
            // A `$` deeper than the first level is an ordinary character.
            ("a/+", "a/$x", true),
            ("a/#", "a/$x/y", true),
            // Invalid topics and filters match nothing.
            ("#", "a/+", false),
            ("#", "", false),
            ("a/#/b", "a/x/b", false),
            ("", "", false),
            ("a/b+", "a/b+", false),
        ];
        for &(filter, topic, expected) in cases {
            assert_eq!(
                filter_matches(filter, topic),
                expected,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn add_rejects_invalid_filters_and_keeps_nothing() {
        let mut r: Router = Router::new();
        assert_eq!(r.add("a/#/b", 1), Err(TopicError::HashNotLast));
        assert_eq!(
            r.add("a/b+", 1),
            Err(TopicError::WildcardInLevel { level: "b+".into() })
        );
        assert_eq!(r.add("", 1), Err(TopicError::Empty));
        assert!(r.is_empty());
        assert!(r.route("a/x/b").is_empty());
    }

    #[test]
    fn routes_exact_and_wildcard_filters() {
        let r = router(&[
            ("vending/+/telemetry", 0),
            ("vending/#", 1),
            ("vending/m1/telemetry", 2),
            ("robots/+/pose", 3),
            ("#", 4),
        ]);
        assert_eq!(r.route("vending/m1/telemetry"), vec![0, 1, 2, 4]);
        assert_eq!(r.route("vending/m2/telemetry"), vec![0, 1, 4]);
        assert_eq!(r.route("vending"), vec![1, 4]);
        assert_eq!(r.route("robots/r1/pose"), vec![3, 4]);
        assert_eq!(r.route("robots/r1/pose/x"), vec![4]);
        assert_eq!(r.route("other"), vec![4]);
    }

    #[test]
    fn multi_level_wildcard_matches_its_parent_level() {
        let r = router(&[("sport/#", 7)]);
        assert_eq!(r.route("sport"), vec![7]);
        assert_eq!(r.route("sport/"), vec![7]);
        assert_eq!(r.route("sport/tennis/p1"), vec![7]);
        assert!(r.route("sports").is_empty());
    }

    #[test]
    fn single_level_wildcard_matches_empty_levels() {
        let r = router(&[("a/+/b", 1), ("+/+", 2), ("/+", 3)]);
        assert_eq!(r.route("a//b"), vec![1]);
        assert_eq!(r.route("/"), vec![2, 3]);
        assert_eq!(r.route("a/"), vec![2]);
        assert!(r.route("a").is_empty());
    }

    #[test]
    fn dollar_topics_need_an_explicit_dollar_filter() {
        let r = router(&[
            ("#", 1),
            ("+/broker/load", 2),
            ("$SYS/#", 3),
            ("$SYS/+/load", 4),
            ("+/#", 5),
        ]);
        assert_eq!(r.route("$SYS/broker/load"), vec![3, 4]);
        assert_eq!(r.route("$SYS"), vec![3]);
        assert_eq!(r.route("SYS/broker/load"), vec![1, 2, 5]);
        // Only the first level is special.
        assert_eq!(r.route("a/$b"), vec![1, 5]);
    }

    #[test]
    fn a_function_with_overlapping_filters_gets_the_message_once() {
        let r = router(&[
            ("vending/#", 3),
            ("vending/+/telemetry", 3),
            ("vending/m1/telemetry", 3),
            ("#", 3),
            ("vending/+/telemetry", 1),
        ]);
        assert_eq!(r.route("vending/m1/telemetry"), vec![1, 3]);
    }

    #[test]
    fn many_functions_on_one_topic_come_back_in_ascending_order() {
        let mut r = Router::new();
        for id in (0..50).rev() {
            r.add("plant/line1/temp", id).unwrap();
            r.add(
                if id % 2 == 0 {
                    "plant/+/temp"
                } else {
                    "plant/#"
                },
                id,
            )
            .unwrap();
        }
        assert_eq!(r.route("plant/line1/temp"), (0..50).collect::<Vec<_>>());
        assert_eq!(r.len(), 100);
    }

    #[test]
    fn adding_the_same_pair_twice_keeps_it_once() {
        let mut r = router(&[("a/b", 1)]);
        r.add("a/b", 1).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r.route("a/b"), vec![1]);
    }

    #[test]
    fn topics_with_wildcards_are_not_routable() {
        let r = router(&[("#", 1), ("a/+", 2), ("a/#", 3)]);
        assert!(r.route("a/+").is_empty());
        assert!(r.route("a/#").is_empty());
        assert!(r.route("").is_empty());
    }

    #[test]
    fn remove_stops_routing_and_prunes() {
        let mut r = router(&[("a/+/c", 1), ("a/+/c", 2), ("a/#", 1), ("x/y", 1)]);
        assert!(r.remove("a/+/c", 1));
        assert!(!r.remove("a/+/c", 1));
        assert!(!r.remove("a/+/zz", 1));
        assert!(!r.remove("a/#/b", 1));
        assert_eq!(r.route("a/b/c"), vec![1, 2]); // 1 still via a/#
        assert!(r.remove("a/#", 1));
        assert_eq!(r.route("a/b/c"), vec![2]);
        assert!(r.remove("a/+/c", 2));
        assert!(r.remove("x/y", 1));
        assert!(r.is_empty());
        assert!(r.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn route_into_reuses_and_clears_the_buffer() {
        let r = router(&[("a", 1)]);
        let mut buf = vec![9, 9, 9];
        r.route_into("a", &mut buf);
        assert_eq!(buf, vec![1]);
        r.route_into("b", &mut buf);
        assert!(buf.is_empty());
    }

    /// Small deterministic PRNG (xorshift64*), so the test needs no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Levels drawn from a small alphabet so that filters and topics collide often.
    const WORDS: &[&str] = &["a", "b", "c", "", "$SYS", "$x", "dev", "temp"];

    fn random_topic(rng: &mut Rng) -> String {
        let n = 1 + rng.below(5);
        (0..n)
            .map(|_| WORDS[rng.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join("/")
    }

    fn random_filter(rng: &mut Rng) -> String {
        let n = 1 + rng.below(5);
        let mut levels: Vec<&str> = (0..n)
            .map(|_| match rng.below(4) {
                0 => "+",
                _ => WORDS[rng.below(WORDS.len())],
            })
            .collect();
        if rng.below(3) == 0 {
            *levels.last_mut().unwrap() = "#";
        }
        let filter = levels.join("/");
        if filter.is_empty() {
            "a".to_owned() // MQTT forbids the empty filter
        } else {
            filter
        }
    }

    #[test]
    fn a_thousand_filters_route_like_the_naive_matcher() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut router = Router::new();
        let mut filters = Vec::new();
        for i in 0..1000 {
            let filter = random_filter(&mut rng);
            // Several filters per function, so overlaps and dedup are exercised.
            let target = i % 300;
            router.add(&filter, target).unwrap();
            filters.push((filter, target));
        }
        let mut matched_some = 0;
        for _ in 0..1000 {
            let topic = random_topic(&mut rng);
            let mut expected: Vec<usize> = filters
                .iter()
                .filter(|(f, _)| filter_matches(f, &topic))
                .map(|&(_, t)| t)
                .collect();
            expected.sort_unstable();
            expected.dedup();
            if !expected.is_empty() {
                matched_some += 1;
            }
            assert_eq!(router.route(&topic), expected, "topic {topic:?}");
        }
        assert!(matched_some > 200, "the generator should produce matches");
    }
}
