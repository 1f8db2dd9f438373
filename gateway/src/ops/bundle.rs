//! `wasmgate bundle keygen|create|sign|inspect`: signed bundles, made on
//! the developer's machine or in CI, deployed with `wasmgate deploy` or by
//! a fleet job. Nothing here talks to a gateway.

use crate::{load_config_for, Needs};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmgate::bundle::{self, Bundle, Manifest, Rollout};

#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    command: BundleCommand,
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Make a signing key: NAME.key (secret, mode 0600: keep it in CI's
    /// secrets) and NAME.pub (the line for gateways' [bundles] trusted_keys).
    Keygen {
        /// Where to write NAME.key and NAME.pub.
        name: PathBuf,
        /// Replace key files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Pack a function into one file: its module and the spec it runs with
    /// (triggers, limits, grants, config, retries, dead letters), taken
    /// from the config file it was tested with, and how it rolls out. A
    /// gateway deploys it only where the function runs with that spec.
    Create(CreateArgs),
    /// Sign a bundle (in place, replacing any signature) with a key from
    /// `bundle keygen`.
    Sign {
        /// The bundle file (signed in place).
        bundle: PathBuf,
        /// The signing key file (NAME.key).
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the AWS IoT Jobs job document that deploys a bundle to a
    /// fleet (`[fleet] jobs = true`): the bundle deflated and base64'd
    /// inline, or, with --stream, naming an AWS IoT stream whose file 0 is
    /// --stream-file (for a bundle past the 32 KB document limit: create
    /// the stream with that file, then the job with this document).
    JobDocument {
        /// The signed bundle file.
        bundle: PathBuf,
        /// The AWS IoT stream id the bundle is delivered by.
        #[arg(long, requires = "stream_file")]
        stream: Option<String>,
        /// Where to write the stream's file (the bundle, deflated).
        #[arg(long, requires = "stream")]
        stream_file: Option<PathBuf>,
    },
    /// Show what a bundle holds and who signed it; with --trusted, whether
    /// a gateway trusting that key would take it (exit 1 if not).
    Inspect {
        /// The bundle file.
        bundle: PathBuf,
        /// A public key (`ed25519:...`, or a NAME.pub file) to check the
        /// signature against.
        #[arg(long)]
        trusted: Option<String>,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The function, as named in the config.
    function: String,
    /// The gateway config (TOML) whose entry for the function the bundle
    /// carries.
    #[arg(long, short, default_value = "gateway.toml")]
    config: PathBuf,
    /// Another module than the config's `wasm` for it.
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Bundles of a function are taken in increasing sequence only; the
    /// default is the time now in milliseconds, which grows by itself.
    #[arg(long)]
    sequence: Option<u64>,
    /// How it rolls out, as `wasmgate deploy --strategy` takes it
    /// (`canary10-5m`, `Linear10PercentEvery1Minute`); all at once if none.
    #[arg(long, value_name = "STRATEGY")]
    strategy: Option<String>,
    /// With --strategy: the failed share that rolls it back.
    #[arg(long, value_name = "SHARE", requires = "strategy")]
    max_error_rate: Option<f64>,
    /// With --strategy: the p99 in milliseconds that rolls it back.
    #[arg(long, value_name = "MS", requires = "strategy")]
    max_p99_ms: Option<u64>,
    /// With --strategy: a function run before traffic shifts.
    #[arg(long, value_name = "FUNCTION", requires = "strategy")]
    pre_traffic_hook: Option<String>,
    /// With --strategy: a function run once the new version takes all.
    #[arg(long, value_name = "FUNCTION", requires = "strategy")]
    post_traffic_hook: Option<String>,
    /// The bundle file to write (default NAME.wgb).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

pub fn bundle(args: BundleArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BundleCommand::Keygen { name, force } => keygen(&name, force),
        BundleCommand::Create(args) => create(args),
        BundleCommand::Sign { bundle, key } => sign(&bundle, &key),
        BundleCommand::Inspect { bundle, trusted } => inspect(&bundle, trusted.as_deref()),
        BundleCommand::JobDocument {
            bundle,
            stream,
            stream_file,
        } => job_document(&bundle, stream.as_deref().zip(stream_file.as_deref())),
    }
}

fn with_extension(name: &Path, ext: &str) -> PathBuf {
    let mut path = name.as_os_str().to_owned();
    path.push(ext);
    PathBuf::from(path)
}

fn keygen(name: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let (secret, public) = (with_extension(name, ".key"), with_extension(name, ".pub"));
    for path in [&secret, &public] {
        if path.exists() && !force {
            anyhow::bail!("{} exists (--force replaces it)", path.display());
        }
    }
    let key = bundle::generate_key().map_err(anyhow::Error::msg)?;
    write_private(&secret, bundle::secret_key_text(&key).as_bytes())?;
    let line = bundle::public_key_text(key.verifying_key().as_bytes());
    std::fs::write(&public, format!("{line}\n"))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", public.display()))?;
    println!(
        "{} (secret) and {} written; a gateway takes bundles it signs with\n\n[bundles]\ntrusted_keys = [\"{line}\"]",
        secret.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a secret's file readable by its owner only, from the start.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config_for(&args.config, None, Needs::DATABASE) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let Some(f) = config.functions.iter().find(|f| f.name == args.function) else {
        eprintln!(
            "{} has no function {:?} (it has: {})",
            args.config.display(),
            args.function,
            config
                .functions
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::from(2));
    };
    let wasm_path = args.wasm.as_ref().unwrap_or(&f.wasm);
    let module =
        wasmgate::files::read_limited(wasm_path, wasmgate::files::MAX_MODULE_BYTES, "module")
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", wasm_path.display()))?;
    let rollout = match &args.strategy {
        Some(strategy) => {
            if let Err(e) = wasmgate::rollout::Strategy::parse(strategy) {
                eprintln!("--strategy: {e}");
                return Ok(ExitCode::from(2));
            }
            Some(Rollout {
                strategy: strategy.clone(),
                max_error_rate: args.max_error_rate,
                max_p99_ms: args.max_p99_ms,
                pre_traffic_hook: args.pre_traffic_hook.clone(),
                post_traffic_hook: args.post_traffic_hook.clone(),
            })
        }
        None => None,
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let manifest = Manifest {
        function: f.name.clone(),
        sequence: args.sequence.unwrap_or(now_ms),
        created_ms: now_ms,
        module_sha256: String::new(),
        spec: bundle::spec_of(f),
        rollout,
    };
    let made = Bundle::new(manifest, module);
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.wgb", f.name)));
    std::fs::write(&out, made.to_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    println!(
        "{}: {} {} (sequence {}, module {} bytes); unsigned: `wasmgate bundle sign {} --key KEY`",
        out.display(),
        made.manifest.function,
        wasmgate::runtime::module_version(&made.module),
        made.manifest.sequence,
        made.module.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_bundle(path: &Path) -> anyhow::Result<Bundle> {
    let bytes = wasmgate::files::read_limited(
        path,
        wasmgate::files::MAX_MODULE_BYTES + (1 << 20),
        "bundle",
    )
    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Bundle::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn sign(path: &Path, key: &Path) -> anyhow::Result<ExitCode> {
    let mut made = read_bundle(path)?;
    let text = std::fs::read_to_string(key)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key.display()))?;
    let key =
        bundle::parse_secret_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    made.sign(&key);
    std::fs::write(path, made.to_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    println!(
        "{}: signed by {}",
        path.display(),
        made.signer().unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(path: &Path, trusted: Option<&str>) -> anyhow::Result<ExitCode> {
    let made = read_bundle(path)?;
    let m = &made.manifest;
    println!("function  {}", m.function);
    println!(
        "module    {} ({} bytes, sha256 {})",
        wasmgate::runtime::module_version(&made.module),
        made.module.len(),
        m.module_sha256
    );
    println!("sequence  {}", m.sequence);
    println!(
        "created   {}",
        wasmgate::dlq::utc(i64::try_from(m.created_ms).unwrap_or(0))
    );
    match &m.rollout {
        Some(r) => println!("rollout   {}", r.strategy),
        None => println!("rollout   all-at-once"),
    }
    println!(
        "spec      {}",
        m.spec.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    println!(
        "signed by {}",
        made.signer().unwrap_or_else(|| "nobody (unsigned)".into())
    );
    let Some(trusted) = trusted else {
        return Ok(ExitCode::SUCCESS);
    };
    let text = match std::fs::read_to_string(trusted) {
        Ok(text) => text,
        Err(_) => trusted.to_owned(),
    };
    let key = bundle::parse_public_key(&text).map_err(|e| anyhow::anyhow!("--trusted: {e}"))?;
    match made.verify(&[key]) {
        Ok(()) => {
            println!("verified  yes");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("verified  no: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The largest job document AWS IoT Jobs takes (its quota when this was
/// written); a larger one is still printed, with a warning.
const AWS_DOCUMENT_LIMIT: usize = 32 * 1024;

fn job_document(path: &Path, stream: Option<(&str, &Path)>) -> anyhow::Result<ExitCode> {
    let made = read_bundle(path)?;
    if made.signer().is_none() {
        eprintln!(
            "warning: {} is not signed; every gateway will refuse it",
            path.display()
        );
    }
    let bytes = made.to_bytes();
    let document = match stream {
        None => wasmgate::fleet::document(&made.manifest.function, &bytes),
        Some((id, file)) => {
            let (contents, document) =
                wasmgate::fleet::stream_document(&made.manifest.function, &bytes, id);
            std::fs::write(file, &contents)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
            eprintln!(
                "{}: the stream's file 0, {} bytes",
                file.display(),
                contents.len()
            );
            document
        }
    };
    let text = document.to_string();
    println!("{text}");
    eprintln!("{} bytes (bundle {} bytes)", text.len(), bytes.len());
    if text.len() > AWS_DOCUMENT_LIMIT {
        eprintln!(
            "warning: over AWS IoT Jobs' {AWS_DOCUMENT_LIMIT}-byte job document limit; a smaller module (wasm-opt -Oz, strip) fits"
        );
    }
    Ok(ExitCode::SUCCESS)
}
