//! Config errors: each names where the problem is (file, line, field path)
//! and what it is; [`ConfigErrors`] carries all of them at once.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::router::TopicError;

/// One step of a [`FieldPath`]: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// A key in a table, as in `broker.listen`.
    Key(String),
    /// An index in an array, as in `functions[1]`.
    Index(usize),
}

/// Where a value lives in the config, displayed like `functions[1].triggers[0].mqtt`.
/// The root (the whole file) displays as the empty string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<PathSegment>);

impl FieldPath {
    /// The whole config.
    pub fn root() -> Self {
        Self::default()
    }

    /// Changes the index after the top-level key `key` (as in
    /// `functions[2]`) by `map`, if it maps it.
    pub(crate) fn remap_index(&mut self, key: &str, map: impl Fn(usize) -> Option<usize>) {
        if let [PathSegment::Key(first), PathSegment::Index(i), ..] = self.0.as_mut_slice() {
            if first == key {
                if let Some(to) = map(*i) {
                    *i = to;
                }
            }
        }
    }

    /// This path extended by a table key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut path = self.clone();
        path.0.push(PathSegment::Key(key.into()));
        path
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(PathSegment::Index(index));
        path
    }

    /// The steps from the root.
    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    /// Whether this is the whole config.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => write!(f, "{key}")?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// What is wrong with a config value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The config file could not be read.
    #[error("cannot read the config file: {0}")]
    Read(#[source] std::io::Error),
    /// The text is not valid TOML.
    #[error("{0}")]
    Syntax(String),
    /// The TOML does not fit the schema: unknown field, wrong type, missing field.
    #[error("{0}")]
    Schema(String),
    /// A topic filter is not valid MQTT.
    #[error("invalid topic filter {filter:?}: {source}")]
    InvalidFilter {
        /// The filter as written.
        filter: String,
        /// Why it is invalid.
        source: TopicError,
    },
    /// A value does not have the required form.
    #[error("invalid value {value:?}: expected {expected}")]
    InvalidValue {
        /// The value as written.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A number outside its allowed range.
    #[error("{value} is out of range: {}", range_text(*.min, *.max))]
    OutOfRange {
        /// The value as written.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value; `u64::MAX` means no upper bound.
        max: u64,
    },
    /// Two functions share a name.
    #[error("duplicate function name {name:?}, already used by {first}")]
    DuplicateName {
        /// The shared name.
        name: String,
        /// Where it was first used.
        first: FieldPath,
    },
    /// A function with no trigger would never run.
    #[error("a function needs at least one trigger")]
    NoTriggers,
    /// A trigger that says neither what nor when.
    #[error("a trigger needs a kind: `mqtt = \"topic/filter\"`, `schedule = \"rate(5 minutes)\"`, `http = \"GET /path\"`, `websocket = \"/path\"`, `file = \"/dir/*.csv\"` or `kv_change = \"function\"`")]
    EmptyTrigger,
    /// A schedule expression that does not parse, or never fires.
    #[error("invalid schedule {value:?}: {message}")]
    InvalidSchedule {
        /// The expression as written.
        value: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file trigger's pattern that does not parse.
    #[error("invalid file pattern {value:?}: {message}")]
    InvalidFilePattern {
        /// The pattern as written.
        value: String,
        /// What is wrong with it.
        message: String,
    },
    /// A watched directory that is not there.
    #[error("the watched directory {} does not exist (create it, or fix the path)", path.display())]
    NoSuchDirectory {
        /// The directory, resolved against the config file's directory.
        path: PathBuf,
    },
    /// An HTTP route that does not parse.
    #[error("invalid route {value:?}: {message}")]
    InvalidRoute {
        /// The route as written.
        value: String,
        /// What is wrong with it.
        message: String,
    },
    /// Two routes one request could match.
    #[error("route {value:?} clashes with {other}: one request would match both")]
    RouteClash {
        /// The route as written.
        value: String,
        /// The route it clashes with, and its function.
        other: String,
    },
    /// An `invoke` grant names a function that is not configured.
    #[error("no function named {name:?} is configured")]
    UnknownFunction {
        /// The name in the grant.
        name: String,
    },
    /// `invoke` grants that lead back to where they started: a function
    /// could invoke itself (directly or through others) without end, each
    /// invocation committing the next, and nothing would ever stop it.
    #[error("invoke grants form a loop ({cycle}); an invocation chain along it would never end")]
    InvokeCycle {
        /// The functions along the loop, `a -> b -> a`.
        cycle: String,
    },
    /// A field that the rest of the config makes necessary is missing.
    #[error("`{field}` is required {when}")]
    Missing {
        /// The missing field.
        field: &'static str,
        /// The condition that requires it.
        when: &'static str,
    },
    /// A field that would be silently ignored, which is almost always a mistake.
    #[error("`{field}` has no effect {when}")]
    Unused {
        /// The ignored field.
        field: &'static str,
        /// Why it is ignored.
        when: &'static str,
    },
    /// A field that the rest of the config rules out.
    #[error("`{field}` cannot be used {with}: {hint}")]
    Conflict {
        /// The field that has to go (or change).
        field: &'static str,
        /// What it conflicts with, as in `with \`dedup_key\``.
        with: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// `broker.listen` is not an `ip:port` socket address.
    #[error(
        "invalid listen address {value:?}: {message} (expected ip:port, like \"0.0.0.0:1883\")"
    )]
    InvalidListen {
        /// The address as written.
        value: String,
        /// The parser's complaint.
        message: String,
    },
    /// A file the config refers to cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file, resolved against the config file's directory.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// A path that should name a file names something else (a directory...).
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path, resolved against the config file's directory.
        path: PathBuf,
    },
    /// A secret referenced by file, environment variable or systemd
    /// credential could not be read (the message names where, never a byte
    /// of the secret).
    #[error("{0}")]
    Secret(#[from] super::SecretError),
}

fn range_text(min: u64, max: u64) -> String {
    if max == u64::MAX {
        format!("must be at least {min}")
    } else {
        format!("must be between {min} and {max}")
    }
}

/// One problem in a config, with where it is.
///
/// Displays as `source:line: path: problem`, for example
/// `gateway.toml:14: functions[1].triggers[0].mqtt: invalid topic filter "a/#/b": '#' must be the last level`;
/// the parts that are unknown are left out.
#[derive(Debug)]
pub struct ConfigError {
    /// The file (or other source) the config came from, if known.
    pub source_name: Option<Arc<str>>,
    /// 1-based line in the source, if known.
    pub line: Option<usize>,
    /// The field concerned; the root for problems with the file as a whole.
    pub path: FieldPath,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

impl ConfigError {
    /// An error at `path`, not yet located in a source.
    pub fn new(path: FieldPath, kind: ConfigErrorKind) -> Self {
        Self {
            source_name: None,
            line: None,
            path,
            kind,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source_name, self.line) {
            (Some(source), Some(line)) => write!(f, "{source}:{line}: ")?,
            (Some(source), None) => write!(f, "{source}: ")?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if !self.path.is_root() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

/// Every problem found in a config, in file order where lines are known.
/// Displays one problem per line. Never empty when returned as an error.
#[derive(Debug)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Wraps a list of problems, sorting them by line (unlocated ones last,
    /// in their original order).
    pub fn new(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Self(errors)
    }

    /// The problems.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// Iterates over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no problem.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, owned.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(errors: Vec<ConfigError>) -> Self {
        Self::new(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_like_toml_accessors() {
        let path = FieldPath::root()
            .key("functions")
            .index(1)
            .key("triggers")
            .index(0)
            .key("mqtt");
        assert_eq!(path.to_string(), "functions[1].triggers[0].mqtt");
        assert_eq!(FieldPath::root().to_string(), "");
    }

    #[test]
    fn an_error_displays_source_line_path_and_problem() {
        let mut error = ConfigError::new(
            FieldPath::root()
                .key("functions")
                .index(1)
                .key("triggers")
                .index(0)
                .key("mqtt"),
            ConfigErrorKind::InvalidFilter {
                filter: "a/#/b".into(),
                source: TopicError::HashNotLast,
            },
        );
        error.source_name = Some("gateway.toml".into());
        error.line = Some(14);
        assert_eq!(
            error.to_string(),
            r#"gateway.toml:14: functions[1].triggers[0].mqtt: invalid topic filter "a/#/b": '#' must be the last level"#
        );
        error.line = None;
        error.path = FieldPath::root();
        assert!(error
            .to_string()
            .starts_with("gateway.toml: invalid topic filter"));
    }

    #[test]
    fn ranges_say_what_is_allowed() {
        let bounded = ConfigErrorKind::OutOfRange {
            value: 0,
            min: 1,
            max: 4096,
        };
        assert_eq!(
            bounded.to_string(),
            "0 is out of range: must be between 1 and 4096"
        );
        let open = ConfigErrorKind::OutOfRange {
            value: 0,
            min: 1,
            max: u64::MAX,
        };
        assert_eq!(open.to_string(), "0 is out of range: must be at least 1");
    }

    #[test]
    fn errors_sort_by_line_and_display_one_per_line() {
        let at = |line| {
            let mut e = ConfigError::new(FieldPath::root(), ConfigErrorKind::NoTriggers);
            e.line = line;
            e
        };
        let errors = ConfigErrors::new(vec![at(None), at(Some(9)), at(Some(2))]);
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(2), Some(9), None]);
        assert_eq!(errors.to_string().lines().count(), 3);
    }
}
