//! Where a file trigger looks, and what happens to a file after: pure, for
//! `config check` and for the trigger that watches the directory.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What happens to a file once its invocation is committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum After {
    /// To `done/` beside it.
    #[default]
    Move,
    /// Deleted.
    Delete,
}

/// A watched directory and the names in it to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub dir: PathBuf,
    /// The last component: a name with `*` (any run) and `?` (one character).
    pub name: String,
}

impl Pattern {
    /// Splits `/var/spool/in/*.csv`; the error is for `config check`.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let path = Path::new(text);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(
                "expected a directory and a file name pattern, as in /var/spool/wasmgate/in/*.csv"
                    .into(),
            );
        };
        if dir.to_str().is_some_and(|d| d.contains(['*', '?'])) {
            return Err("only the file name may have * or ?, not the directory".into());
        }
        if dir.as_os_str().is_empty() {
            return Err("expected a directory before the file name pattern".into());
        }
        Ok(Pattern {
            dir: dir.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Whether a file name is one to take.
    pub fn matches(&self, name: &str) -> bool {
        !name.starts_with('.')
            && !name.ends_with(".tmp")
            && !name.ends_with(".part")
            && glob(self.name.as_bytes(), name.as_bytes())
    }
}

/// `*` matches any run of bytes, `?` one byte, anything else itself.
pub fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_split_into_a_directory_and_a_name() {
        let p = Pattern::parse("/var/spool/in/*.csv").unwrap();
        assert_eq!(p.dir, Path::new("/var/spool/in"));
        assert_eq!(p.name, "*.csv");
        assert!(Pattern::parse("/var/*/in/a.csv")
            .unwrap_err()
            .contains("only the file name"));
        assert!(Pattern::parse("*.csv").unwrap_err().contains("directory"));
    }

    #[test]
    fn names_match_the_glob_and_partial_files_are_left_alone() {
        let p = Pattern::parse("/in/sales-*.csv").unwrap();
        assert!(p.matches("sales-2026-12-02.csv"));
        assert!(!p.matches("sales-2026-12-02.csv.part"));
        assert!(!p.matches(".sales-1.csv"));
        assert!(!p.matches("stock-1.csv"));
        let any = Pattern::parse("/in/*").unwrap();
        assert!(any.matches("x"));
        assert!(!any.matches("x.tmp"));
        let one = Pattern::parse("/in/vm-??.json").unwrap();
        assert!(one.matches("vm-17.json"));
        assert!(!one.matches("vm-7.json"));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
    }
}
