//! The example functions, compiled into the binary: a fresh machine runs
//! them with nothing to build or download. `wasmgate demo` deploys them from
//! memory; `wasmgate config init` writes the one its config names beside
//! the config, so that the config checks and runs in any directory. Their
//! sources are in the repository's `functions/examples/`.

use std::path::{Path, PathBuf};

/// An example module: its file name and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    pub file: &'static str,
    pub bytes: &'static [u8],
}

/// Vending-machine telemetry: running totals in KV, a local alert when too
/// warm or low on stock, a summary upstream.
pub const VENDING: Example = Example {
    file: "vending_telemetry.wasm",
    bytes: include_bytes!("../../functions/examples/wasm/vending_telemetry.wasm"),
};

/// Robot telemetry: pose downsampling and battery alerts.
pub const ROBOT: Example = Example {
    file: "robot_telemetry.wasm",
    bytes: include_bytes!("../../functions/examples/wasm/robot_telemetry.wasm"),
};

/// An HTTP route: a JSON greeting and a hit counter.
pub const HELLO: Example = Example {
    file: "hello_http.wasm",
    bytes: include_bytes!("../../functions/examples/wasm/hello_http.wasm"),
};

/// A schedule: a heartbeat upstream on each tick.
pub const HEARTBEAT: Example = Example {
    file: "vending_heartbeat.wasm",
    bytes: include_bytes!("../../functions/examples/wasm/vending_heartbeat.wasm"),
};

/// Where `config init` puts the example module, relative to the config.
pub const DIR: &str = "functions";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} exists; use --force to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What `config init` wrote.
#[derive(Debug)]
pub struct Written {
    pub config: PathBuf,
    /// The example module, when it was not there yet.
    pub module: Option<PathBuf>,
}

/// Writes the default config to `path` and the example module it names
/// beside it (`functions/vending_telemetry.wasm`, unless a file is there
/// already: a module a user put there is theirs).
pub fn init_config(path: &Path, text: &str, force: bool) -> Result<Written, InitError> {
    if path.exists() && !force {
        return Err(InitError::Exists(path.to_owned()));
    }
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|error| InitError::Write {
            path: path.to_owned(),
            error,
        })
    };
    write(path, text.as_bytes())?;
    let dir = path.parent().unwrap_or(Path::new("")).join(DIR);
    let module = dir.join(VENDING.file);
    if module.exists() {
        return Ok(Written {
            config: path.to_owned(),
            module: None,
        });
    }
    std::fs::create_dir_all(&dir).map_err(|error| InitError::Write {
        path: dir.clone(),
        error,
    })?;
    write(&module, VENDING.bytes)?;
    Ok(Written {
        config: path.to_owned(),
        module: Some(module),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_the_config_and_its_module_and_keeps_a_users_module() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        let written = init_config(&config, "x = 1\n", false).unwrap();
        let module = dir.path().join("functions/vending_telemetry.wasm");
        assert_eq!(written.module.as_deref(), Some(module.as_path()));
        assert_eq!(std::fs::read(&module).unwrap(), VENDING.bytes);
        assert!(matches!(
            init_config(&config, "", false),
            Err(InitError::Exists(_))
        ));
        std::fs::write(&module, b"mine").unwrap();
        let again = init_config(&config, "y = 2\n", true).unwrap();
        assert!(again.module.is_none());
        assert_eq!(std::fs::read(&module).unwrap(), b"mine");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "y = 2\n");
    }
}
