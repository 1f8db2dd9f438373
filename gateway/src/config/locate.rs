//! Finding lines for config errors.
//!
//! The config types are plain (no `Spanned` fields) so the rest of the
//! gateway reads them without ceremony. Locations come from a second,
//! span-keeping parse of the same text with [`toml::de::DeTable`]: validation
//! reports a [`FieldPath`], and [`SourceMap::span_of`] turns it into a byte
//! range; for serde's errors, which carry a span but no path,
//! [`SourceMap::path_at`] finds the path.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{FieldPath, PathSegment};

/// The span-annotated tree of a config text.
pub(crate) struct SourceMap<'i> {
    text: &'i str,
    root: Spanned<DeValue<'i>>,
}

impl<'i> SourceMap<'i> {
    /// Wraps an already parsed tree of `text`.
    pub(crate) fn new(text: &'i str, root: Spanned<DeTable<'i>>) -> Self {
        let span = root.span();
        Self {
            text,
            root: Spanned::new(span, DeValue::Table(root.into_inner())),
        }
    }

    /// Parses `text`; `None` if it is not valid TOML.
    pub(crate) fn parse(text: &'i str) -> Option<Self> {
        DeTable::parse(text).ok().map(|root| Self::new(text, root))
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    /// The span of the value at `path`, or of its deepest ancestor present in
    /// the text when the value itself is not written (a defaulted field).
    /// `None` when not even the first step is written.
    pub(crate) fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let mut value = &self.root;
        let mut found = None;
        for segment in path.segments() {
            let next = match (segment, value.get_ref()) {
                (PathSegment::Key(key), DeValue::Table(table)) => table.get(key.as_str()),
                (PathSegment::Index(index), DeValue::Array(array)) => array.get(*index),
                _ => None,
            };
            match next {
                Some(next) => {
                    value = next;
                    found = Some(next.span());
                }
                None => break,
            }
        }
        found
    }

    /// The 1-based line of the value at `path` (see [`SourceMap::span_of`]).
    pub(crate) fn line_of_path(&self, path: &FieldPath) -> Option<usize> {
        self.span_of(path).map(|span| self.line_of(span.start))
    }

    /// The path of the most deeply nested key or value written at `offset`.
    pub(crate) fn path_at(&self, offset: usize) -> FieldPath {
        find(&self.root, offset, FieldPath::root()).unwrap_or_default()
    }
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    1 + text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    // An empty span (a point) still marks its position.
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// Depth first, because a table's own span may cover only its `[header]`
/// while its keys follow on later lines.
fn find(value: &Spanned<DeValue<'_>>, offset: usize, path: FieldPath) -> Option<FieldPath> {
    match value.get_ref() {
        DeValue::Table(table) => table.iter().find_map(|(key, child)| {
            let child_path = path.key(key.get_ref().as_ref());
            if contains(&key.span(), offset) {
                return Some(child_path);
            }
            find(child, offset, child_path.clone())
                .or_else(|| contains(&child.span(), offset).then_some(child_path))
        }),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(i, child)| {
            let child_path = path.index(i);
            find(child, offset, child_path.clone())
                .or_else(|| contains(&child.span(), offset).then_some(child_path))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"gateway_id = "gw"

[broker]
mode = "external"

[[functions]]
name = "a"
triggers = [
  { mqtt = "x" },
  { mqtt = "y", qos = 3 },
]

[functions.limits]
fuel = 0

[[functions]]
name = "b"
"#;

    fn path(text: &str) -> FieldPath {
        let mut path = FieldPath::root();
        for part in text.split('.') {
            match part.split_once('[') {
                Some((key, index)) => {
                    path = path
                        .key(key)
                        .index(index.trim_end_matches(']').parse().unwrap())
                }
                None => path = path.key(part),
            }
        }
        path
    }

    #[test]
    fn written_values_are_found_on_their_line() {
        let map = SourceMap::parse(TEXT).unwrap();
        assert_eq!(map.line_of_path(&path("gateway_id")), Some(1));
        assert_eq!(map.line_of_path(&path("broker.mode")), Some(4));
        assert_eq!(map.line_of_path(&path("functions[0].name")), Some(7));
        assert_eq!(
            map.line_of_path(&path("functions[0].triggers[1].qos")),
            Some(10)
        );
        assert_eq!(
            map.line_of_path(&path("functions[0].limits.fuel")),
            Some(14)
        );
        assert_eq!(map.line_of_path(&path("functions[1].name")), Some(17));
    }

    #[test]
    fn defaulted_values_fall_back_to_the_nearest_written_ancestor() {
        let map = SourceMap::parse(TEXT).unwrap();
        assert_eq!(map.line_of_path(&path("broker.host")), Some(3));
        assert_eq!(map.line_of_path(&path("functions[1].triggers")), Some(16));
        assert_eq!(
            map.line_of_path(&path("functions[0].limits.memory_mb")),
            Some(13)
        );
        assert_eq!(map.line_of_path(&path("data_dir")), None);
    }

    #[test]
    fn offsets_map_back_to_paths() {
        let map = SourceMap::parse(TEXT).unwrap();
        let at = |needle: &str| map.path_at(TEXT.find(needle).unwrap()).to_string();
        assert_eq!(at("qos = 3"), "functions[0].triggers[1].qos");
        assert_eq!(at("fuel"), "functions[0].limits.fuel");
        assert_eq!(at("\"external\""), "broker.mode");
        assert_eq!(at("name = \"b\""), "functions[1].name");
    }
}
