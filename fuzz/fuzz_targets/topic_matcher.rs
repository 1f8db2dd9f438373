//! The topic matcher, differentially: the [`Router`] trie must route every
//! topic exactly to the targets whose filters [`filter_matches`] (the plain
//! reference matcher) says match, after any sequence of adds and removes.
//! Also checks that topic and filter validation agree with each other and
//! with the ABI's publish check, which guards what functions may emit.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use wasmgate::router::{filter_matches, validate_filter, validate_topic_name, Router};

/// Levels that exercise the MQTT rules; raw strings cover everything else.
const LEVELS: [&str; 12] = [
    "a", "b", "", "+", "#", "$SYS", "$x", "a+", "#b", "sport", "a\0", "ü",
];

/// A topic or filter: mostly built from interesting levels, sometimes raw.
#[derive(Debug)]
struct Name(String);

impl<'a> Arbitrary<'a> for Name {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.ratio(1, 8)? {
            return Ok(Name(String::arbitrary(u)?));
        }
        let n = u.int_in_range(1..=6)?;
        let mut levels = Vec::with_capacity(n);
        for _ in 0..n {
            levels.push(*u.choose(&LEVELS)?);
        }
        Ok(Name(levels.join("/")))
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Add(Name, u8),
    Remove(Name, u8),
    Route(Name),
}

fuzz_target!(|ops: Vec<Op>| {
    let mut router: Router<u8> = Router::new();
    // The reference: the (filter, target) pairs currently added.
    let mut pairs: BTreeSet<(String, u8)> = BTreeSet::new();
    for op in ops {
        match op {
            Op::Add(Name(filter), target) => {
                let target = target % 8;
                let added = router.add(&filter, target);
                assert_eq!(
                    added.is_ok(),
                    validate_filter(&filter).is_ok(),
                    "{filter:?}"
                );
                if added.is_ok() {
                    pairs.insert((filter, target));
                }
            }
            Op::Remove(Name(filter), target) => {
                let target = target % 8;
                let was = pairs.remove(&(filter.clone(), target));
                assert_eq!(
                    router.remove(&filter, target),
                    was,
                    "remove {filter:?} {target}"
                );
            }
            Op::Route(Name(topic)) => check_topic(&router, &pairs, &topic),
        }
        assert_eq!(router.len(), pairs.len());
    }
    // Every filter also as a topic: a literal filter matches itself.
    let filters: Vec<String> = pairs.iter().map(|(f, _)| f.clone()).collect();
    for filter in filters {
        check_topic(&router, &pairs, &filter);
    }
});

fn check_topic(router: &Router<u8>, pairs: &BTreeSet<(String, u8)>, topic: &str) {
    let expected: Vec<u8> = pairs
        .iter()
        .filter(|(filter, _)| filter_matches(filter, topic))
        .map(|&(_, target)| target)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(router.route(topic), expected, "topic {topic:?}");

    let valid = validate_topic_name(topic).is_ok();
    if valid {
        // A valid topic name is also a valid filter, and matches itself.
        assert!(validate_filter(topic).is_ok(), "{topic:?}");
        assert!(filter_matches(topic, topic), "{topic:?}");
        assert_eq!(
            filter_matches("#", topic),
            !topic.starts_with('$'),
            "{topic:?}"
        );
    } else {
        assert!(router.route(topic).is_empty());
    }
    // What a function may emit to: a valid topic name outside `$`.
    assert_eq!(
        wasmgate_abi::is_valid_publish_topic(topic),
        valid && !topic.starts_with('$'),
        "{topic:?}"
    );
}
