//! Reading the files a user names (modules, event files, configs) without
//! trusting them to end: `/dev/zero`, a FIFO or a file still growing would
//! otherwise be read until memory runs out.

use std::io::Read;
use std::path::Path;

/// The largest module the gateway reads: a JavaScript engine compiled to
/// Wasm is a few MB; this leaves room and keeps a bad path from eating RAM.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;
/// The largest event file `wasmgate invoke` reads (events are at most a
/// broker's 2 MiB message in the daemon; files may carry more).
pub const MAX_EVENT_FILE_BYTES: u64 = 16 << 20;
/// The largest config file.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path} is not a regular file")]
    NotAFile { path: String },
    #[error("{path} is {size} bytes; a {what} may be at most {max} bytes")]
    TooLarge {
        path: String,
        what: &'static str,
        size: u64,
        max: u64,
    },
}

impl From<ReadError> for std::io::Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io { error, .. } => error,
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

impl ReadError {
    /// The I/O error, when that is what it was (a missing file, say).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            ReadError::Io { error, .. } => Some(error.kind()),
            _ => None,
        }
    }
}

/// The whole of `path`, which must be a regular file (symlinks followed) of
/// at most `max` bytes; `what` names it in the error ("module", "event file").
pub fn read_limited(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    let shown = || path.display().to_string();
    let io = |error| ReadError::Io {
        path: shown(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err(ReadError::NotAFile { path: shown() });
    }
    let too_large = |size| ReadError::TooLarge {
        path: shown(),
        what,
        size,
        max,
    };
    if metadata.len() > max {
        return Err(too_large(metadata.len()));
    }
    // The file may grow between the look and the read: read one byte more
    // than allowed, at most, to notice.
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text(path: &Path, max: u64, what: &'static str) -> Result<String, ReadError> {
    let bytes = read_limited(path, max, what)?;
    String::from_utf8(bytes).map_err(|e| ReadError::Io {
        path: path.display().to_string(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

/// Whether `path` can be opened as a module: exists, a regular file, not
/// too large. For the checks before a start, which read nothing yet.
pub fn check_module(path: &Path) -> Result<(), ReadError> {
    let shown = || path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|error| ReadError::Io {
        path: shown(),
        error,
    })?;
    if !metadata.is_file() {
        return Err(ReadError::NotAFile { path: shown() });
    }
    if metadata.len() > MAX_MODULE_BYTES {
        return Err(ReadError::TooLarge {
            path: shown(),
            what: "module",
            size: metadata.len(),
            max: MAX_MODULE_BYTES,
        });
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|error| ReadError::Io {
            path: shown(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_file_is_refused_without_reading_it() {
        let err = read_limited(Path::new("/dev/zero"), 1 << 20, "module").unwrap_err();
        assert!(matches!(err, ReadError::NotAFile { .. }), "{err}");
        assert!(check_module(Path::new("/dev/zero")).is_err());
    }

    #[test]
    fn a_file_over_the_limit_is_refused_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        std::fs::write(&path, vec![b' '; 2_000]).unwrap();
        let err = read_limited(&path, 1_000, "event file").unwrap_err();
        assert!(
            err.to_string().contains("2000 bytes") && err.to_string().contains("event file"),
            "{err}"
        );
        assert_eq!(
            read_limited(&path, 2_000, "event file").unwrap().len(),
            2_000
        );
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let err = read_limited(Path::new("/nonexistent/x.wasm"), 10, "module").unwrap_err();
        assert_eq!(err.io_kind(), Some(std::io::ErrorKind::NotFound));
    }
}
