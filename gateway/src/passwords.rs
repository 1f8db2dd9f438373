//! Device passwords for the embedded broker, in a file of their own (not in
//! gateway.toml), in mosquitto_passwd's format, so a file made with either
//! tool works with both: one `user:hash` line each, where the hash is
//! `$7$iterations$salt$hash` (PBKDF2-HMAC-SHA512, mosquitto 2) or
//! `$6$salt$hash` (salted SHA-512, mosquitto 1.x), salt and hash in base64.
//! Nothing in the file is the password itself.

use base64::Engine as _;
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Iterations `wasmgate passwd` writes. mosquitto_passwd writes 101; more
/// make a stolen file slower to attack, and a device logs in rarely (about
/// 2 ms per login on a Raspberry Pi 4 at this count).
pub const ITERATIONS: u32 = 1_000;
const SALT_BYTES: usize = 12;
const HASH_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PasswordsError {
    #[error("{path}: {error}")]
    Read { path: String, error: String },
    #[error("{path}:{line}: {what} (expected `user:$7$iterations$salt$hash`, as mosquitto_passwd or `wasmgate passwd` write)")]
    Line {
        path: String,
        line: usize,
        what: &'static str,
    },
}

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hash::Pbkdf2 { .. } => "Pbkdf2(..)",
            Hash::Sha512 { .. } => "Sha512(..)",
        })
    }
}

impl Hash {
    fn parse(text: &str) -> Option<Hash> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
        let mut parts = text.split('$');
        if !parts.next()?.is_empty() {
            return None;
        }
        match parts.next()? {
            "7" => {
                let iterations = parts.next()?.parse().ok().filter(|&n| n > 0)?;
                let (salt, hash) = (b64(parts.next()?)?, b64(parts.next()?)?);
                parts.next().is_none().then_some(Hash::Pbkdf2 {
                    iterations,
                    salt,
                    hash,
                })
            }
            "6" => {
                let (salt, hash) = (b64(parts.next()?)?, b64(parts.next()?)?);
                parts
                    .next()
                    .is_none()
                    .then_some(Hash::Sha512 { salt, hash })
            }
            _ => None,
        }
    }

    fn matches(&self, password: &str) -> bool {
        let computed = match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                if pbkdf2::pbkdf2::<hmac::Hmac<Sha512>>(
                    password.as_bytes(),
                    salt,
                    *iterations,
                    &mut out,
                )
                .is_err()
                {
                    return false;
                }
                out
            }
            Hash::Sha512 { salt, .. } => {
                let mut digest = Sha512::new();
                digest.update(password.as_bytes());
                digest.update(salt);
                digest.finalize().to_vec()
            }
        };
        let stored = match self {
            Hash::Pbkdf2 { hash, .. } | Hash::Sha512 { hash, .. } => hash,
        };
        constant_time_eq(&computed, stored)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The users of a passwords file.
#[derive(Debug, Clone, Default)]
pub struct Passwords {
    users: HashMap<String, Hash>,
}

impl Passwords {
    /// Reads and checks a passwords file (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Passwords, PasswordsError> {
        let shown = path.display().to_string();
        let text = crate::files::read_text(path, 1 << 20, "passwords file").map_err(|e| {
            PasswordsError::Read {
                path: shown.clone(),
                error: e.to_string(),
            }
        })?;
        Self::parse(&text, &shown)
    }

    fn parse(text: &str, path: &str) -> Result<Passwords, PasswordsError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what| PasswordsError::Line {
                path: path.to_owned(),
                line: i + 1,
                what,
            };
            let (user, hash) = line.split_once(':').ok_or_else(|| bad("no `:`"))?;
            if user.is_empty() {
                return Err(bad("no user name"));
            }
            let hash = Hash::parse(hash).ok_or_else(|| bad("not a hash wasmgate knows"))?;
            users.insert(user.to_owned(), hash);
        }
        Ok(Passwords { users })
    }

    /// Whether `user` may log in with `password`. Unknown users cost the
    /// same work as known ones, so timing does not tell which exist.
    pub fn check(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.matches(password),
            None => {
                let decoy = Hash::Pbkdf2 {
                    iterations: ITERATIONS,
                    salt: vec![0; SALT_BYTES],
                    hash: vec![0; HASH_BYTES],
                };
                let _ = decoy.matches(password);
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// A `user:$7$...` line for `password`, with a fresh salt.
pub fn hash_line(user: &str, password: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .is_err()
    {
        // Without the kernel's randomness: the time, which is unique enough
        // for a salt (a salt need not be secret).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        salt.copy_from_slice(&now.to_le_bytes()[..SALT_BYTES]);
    }
    let mut hash = [0u8; HASH_BYTES];
    // Only an output length hmac cannot take fails, and 64 bytes is fine.
    let _ = pbkdf2::pbkdf2::<hmac::Hmac<Sha512>>(password.as_bytes(), &salt, ITERATIONS, &mut hash);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "{user}:$7${ITERATIONS}${}${}",
        b64.encode(salt),
        b64.encode(hash)
    )
}

/// `wasmgate passwd`: sets `user`'s password in `path` (creating the file
/// with mode 0600), keeping the other lines as they are.
pub fn set(path: &Path, user: &str, password: &str) -> std::io::Result<()> {
    let existing = if path.exists() {
        crate::files::read_text(path, 1 << 20, "passwords file")?
    } else {
        String::new()
    };
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| l.split_once(':').map(|(u, _)| u) != Some(user))
        .map(str::to_owned)
        .collect();
    lines.push(hash_line(user, password));
    let text = lines.join("\n") + "\n";
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_written_here_checks_and_a_wrong_password_does_not() {
        let line = hash_line("vm-17", "s3cret");
        assert!(line.starts_with("vm-17:$7$1000$"), "{line}");
        assert!(!line.contains("s3cret"));
        let passwords = Passwords::parse(&line, "p").unwrap();
        assert!(passwords.check("vm-17", "s3cret"));
        assert!(!passwords.check("vm-17", "s3cret "));
        assert!(!passwords.check("vm-18", "s3cret"));
    }

    /// Made with mosquitto_passwd 2.0.11 (`mosquitto_passwd -c -b f dev pw`).
    #[test]
    fn mosquitto_passwd_files_work_as_they_are() {
        let line = "dev:$7$101$Z8wghu05phWAcEFH$68OJx2tVWbBZvYGvmCs5X723wV15FFWuZzpuADt4qQsq/KdA2DwYeeY8lSLRhtB7RyJte4ysl5pEgOqqKRnK6w==";
        let passwords = Passwords::parse(line, "p").unwrap();
        assert!(passwords.check("dev", "pw"));
        assert!(!passwords.check("dev", "pW"));
    }

    #[test]
    fn a_bad_line_is_named_with_its_number() {
        let error = Passwords::parse("# users\nok:$7$1$AAAA$AAAA\nbroken line\n", "/etc/p")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("/etc/p:3: no `:`"), "{error}");
        let error = Passwords::parse("a:plaintext\n", "p")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a hash"), "{error}");
    }

    #[test]
    fn set_replaces_a_users_line_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords");
        set(&path, "a", "one").unwrap();
        set(&path, "b", "two").unwrap();
        set(&path, "a", "three").unwrap();
        let passwords = Passwords::load(&path).unwrap();
        assert_eq!(passwords.len(), 2);
        assert!(passwords.check("a", "three") && !passwords.check("a", "one"));
        assert!(passwords.check("b", "two"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
