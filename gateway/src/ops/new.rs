//! `wasmgate new NAME`: write a function crate that builds and invokes.

use anyhow::Context as _;
use clap::Args;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use wasmgate::scaffold::{self, SdkSource};

#[derive(Debug, Args)]
#[command(after_help = "\
Then:
  cd NAME && cargo build --release --target wasm32-unknown-unknown
  wasmgate invoke target/wasm32-unknown-unknown/release/NAME.wasm --event event.json

The crate depends on wasmgate-sdk by path: the SDK of the wasmgate checkout it
is written in (found in a parent directory), or --sdk DIR. Elsewhere its
Cargo.toml has a placeholder path, with a comment saying what to put there.")]
pub struct NewArgs {
    /// The function's name: the crate's, the module's (`-` becomes `_`),
    /// and the directory's unless --dir says otherwise.
    name: String,
    /// Where to write the crate [default: ./NAME]; must not exist, or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The SDK to depend on: a wasmgate checkout's `functions/sdk` directory.
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    scaffold::check_name(&args.name).map_err(anyhow::Error::msg)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!("{} exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let crate_dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let sdk = match &args.sdk {
        Some(given) => {
            let sdk = given
                .canonicalize()
                .with_context(|| format!("--sdk {}", given.display()))?;
            if !is_sdk(&sdk) {
                anyhow::bail!(
                    "--sdk {}: not wasmgate-sdk (a wasmgate checkout's functions/sdk)",
                    given.display()
                );
            }
            SdkSource::Path(relative(&crate_dir, &sdk))
        }
        None => match find_sdk(&crate_dir) {
            Some(sdk) => SdkSource::Path(relative(&crate_dir, &sdk)),
            None => SdkSource::Placeholder,
        },
    };
    for (path, text) in scaffold::files(&args.name, &sdk) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match &sdk {
        SdkSource::Path(path) => eprintln!(
            "wrote {} (a function crate; wasmgate-sdk from {path})",
            dir.display()
        ),
        SdkSource::Placeholder => eprintln!(
            "wrote {}; no wasmgate checkout around it: set the wasmgate-sdk path in {} (see its comment), or run `wasmgate new {} --sdk DIR`",
            dir.display(),
            dir.join("Cargo.toml").display(),
            args.name
        ),
    }
    eprintln!(
        "next: cd {} && cargo build --release --target wasm32-unknown-unknown && wasmgate invoke {} --event event.json",
        dir.display(),
        scaffold::module_path(&args.name)
    );
    Ok(ExitCode::SUCCESS)
}

/// `dir` holds the wasmgate-sdk crate.
fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("package")?
                .get("name")?
                .as_str()
                .map(|n| n == "wasmgate-sdk")
        })
        .unwrap_or(false)
}

/// The SDK of the wasmgate checkout `dir` is in, if any.
fn find_sdk(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|a| a.join("functions/sdk"))
        .find(|candidate| is_sdk(candidate))
}

/// `to` as a path relative to `from` (both absolute), with `/` separators.
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    // Only the root in common: an absolute path says more than ../../..
    if common <= 1 {
        return to_slashes(&to.iter().collect::<PathBuf>());
    }
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    to_slashes(&path)
}

fn to_slashes(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}
