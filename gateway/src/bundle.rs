//! Signed bundles: one file with a function's module, the spec it was
//! built and tested for (triggers, limits, grants, config, retries), how it
//! rolls out, and an Ed25519 signature. A gateway with `[bundles]
//! trusted_keys` deploys a bundle only if one of those keys signed exactly
//! these bytes, and only if it is newer than the last bundle it took for
//! that function, so a copy of an old bundle (a replayed fleet job, a file
//! left on a USB stick) cannot bring back a version that was replaced.
//!
//! The layout is plain so that a bundle can be read without us:
//!
//! ```text
//! "WGBUNDLE" 0x01                      magic and format version
//! u32 LE n, n bytes                    the manifest, JSON
//! u32 LE m, m bytes                    the module
//! [ "WGSIG1" key[32] signature[64] ]   optional: Ed25519 over all bytes before it
//! ```
//!
//! The manifest holds the module's SHA-256 too, so a bundle whose module
//! was cut short or swapped is refused even before its signature is
//! checked.

use crate::config::FunctionConfig;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const MAGIC: &[u8; 9] = b"WGBUNDLE\x01";
const SIG_MAGIC: &[u8; 6] = b"WGSIG1";
const SIG_LEN: usize = SIG_MAGIC.len() + 32 + 64;
/// A manifest is a few KB of JSON; more is not one of ours.
const MAX_MANIFEST: usize = 1 << 20;

/// Whether `bytes` are a bundle (rather than a bare module).
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC[..8])
}

/// What a bundle says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function it is for, by name.
    pub function: String,
    /// Bundles of one function are taken in increasing sequence only.
    pub sequence: u64,
    /// When it was made, Unix milliseconds (shown, not judged).
    pub created_ms: u64,
    /// The module's SHA-256, hex.
    pub module_sha256: String,
    /// The function's triggers, limits, grants, config, retry and
    /// dead-letter settings, as `config show` writes them: the gateway
    /// deploys the module only where the function runs with these.
    pub spec: BTreeMap<String, serde_json::Value>,
    /// How it rolls out; all at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A bundle's rollout, as `wasmgate deploy --strategy` takes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub strategy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_traffic_hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_traffic_hook: Option<String>,
}

impl Rollout {
    /// As the deploy endpoint's query takes it.
    pub fn query(&self) -> BTreeMap<String, String> {
        let mut q = BTreeMap::from([("strategy".to_owned(), self.strategy.clone())]);
        if let Some(rate) = self.max_error_rate {
            q.insert("max_error_rate".into(), rate.to_string());
        }
        if let Some(ms) = self.max_p99_ms {
            q.insert("max_p99_ms".into(), ms.to_string());
        }
        for (key, hook) in [
            ("pre_traffic_hook", &self.pre_traffic_hook),
            ("post_traffic_hook", &self.post_traffic_hook),
        ] {
            if let Some(hook) = hook {
                q.insert(key.into(), hook.clone());
            }
        }
        q
    }
}

/// A bundle read from its bytes.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub module: Vec<u8>,
    /// The signer's key and the signature, if signed.
    signature: Option<([u8; 32], [u8; 64])>,
    /// The bytes the signature covers.
    signed: Vec<u8>,
}

/// Why a bundle is refused: each says what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BundleError {
    #[error("not a wasmgate bundle, or cut short: {0}")]
    Malformed(String),
    #[error("the module does not match the manifest's SHA-256 (damaged or tampered)")]
    ModuleMismatch,
    #[error("the bundle is not signed (`wasmgate bundle sign --key KEY`)")]
    Unsigned,
    #[error("the signature does not match the bundle's contents (tampered or damaged)")]
    BadSignature,
    #[error("signed by key {0}, which is not in [bundles] trusted_keys")]
    UntrustedKey(String),
    #[error("this gateway trusts no bundle keys: set [bundles] trusted_keys")]
    NoTrustedKeys,
    #[error("bundle {sequence} of {function} is older than the last one taken ({last}): refused as a replay")]
    Older {
        function: String,
        sequence: u64,
        last: u64,
    },
    #[error("bundle {sequence} of {function} was taken already with other contents: refused as a replay")]
    SequenceReused { function: String, sequence: u64 },
    #[error("bundle {sequence} of {function} was taken already and is not live now (rolled back or replaced); make a new one (a new sequence) to deploy it again")]
    NoLongerLive { function: String, sequence: u64 },
    #[error("the bundle is for function {bundle:?}, not {asked:?}")]
    OtherFunction { bundle: String, asked: String },
    #[error("the bundle was built for other {fields} than {function} runs with; change the config (wasmgate apply) or build the bundle from it")]
    SpecDiffers { function: String, fields: String },
    #[error("the bundle's rollout: {0}")]
    Rollout(String),
    #[error("this gateway runs no function {0:?}; add it to the config (wasmgate apply), then deploy its bundle")]
    UnknownFunction(String),
}

fn take<'a>(bytes: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], BundleError> {
    if bytes.len() < n {
        return Err(BundleError::Malformed(format!("{what} is cut short")));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn take_u32(bytes: &mut &[u8], what: &str) -> Result<usize, BundleError> {
    let raw = take(bytes, 4, what)?;
    Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
}

/// A hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Bundle {
    /// A bundle of `module` with `manifest` (whose SHA-256 is set here), unsigned.
    pub fn new(mut manifest: Manifest, module: Vec<u8>) -> Bundle {
        manifest.module_sha256 = sha256_hex(&module);
        let json = serde_json::to_vec(&manifest).unwrap_or_default();
        let mut signed = Vec::with_capacity(MAGIC.len() + 8 + json.len() + module.len());
        signed.extend_from_slice(MAGIC);
        signed.extend_from_slice(&(json.len() as u32).to_le_bytes());
        signed.extend_from_slice(&json);
        signed.extend_from_slice(&(module.len() as u32).to_le_bytes());
        signed.extend_from_slice(&module);
        Bundle {
            manifest,
            module,
            signature: None,
            signed,
        }
    }

    /// Reads a bundle; checks its form and its module's digest, not its
    /// signature ([`Bundle::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Bundle, BundleError> {
        let mut rest = bytes;
        if take(&mut rest, MAGIC.len(), "the header")? != MAGIC {
            return Err(BundleError::Malformed(
                "no WGBUNDLE header of format 1".into(),
            ));
        }
        let n = take_u32(&mut rest, "the manifest's length")?;
        if n > MAX_MANIFEST {
            return Err(BundleError::Malformed(format!(
                "a manifest of {n} bytes (at most {MAX_MANIFEST})"
            )));
        }
        let manifest: Manifest = serde_json::from_slice(take(&mut rest, n, "the manifest")?)
            .map_err(|e| BundleError::Malformed(format!("the manifest: {e}")))?;
        let m = take_u32(&mut rest, "the module's length")?;
        let module = take(&mut rest, m, "the module")?.to_vec();
        let signed = bytes[..bytes.len() - rest.len()].to_vec();
        let signature = match rest.len() {
            0 => None,
            SIG_LEN if rest.starts_with(SIG_MAGIC) => {
                let mut key = [0u8; 32];
                let mut sig = [0u8; 64];
                key.copy_from_slice(&rest[SIG_MAGIC.len()..SIG_MAGIC.len() + 32]);
                sig.copy_from_slice(&rest[SIG_MAGIC.len() + 32..]);
                Some((key, sig))
            }
            n => {
                return Err(BundleError::Malformed(format!(
                    "{n} bytes after the module that are not a signature"
                )))
            }
        };
        if i64::try_from(manifest.sequence).is_err() {
            return Err(BundleError::Malformed(format!(
                "sequence {} is past 2^63 - 1",
                manifest.sequence
            )));
        }
        if sha256_hex(&module) != manifest.module_sha256 {
            return Err(BundleError::ModuleMismatch);
        }
        Ok(Bundle {
            manifest,
            module,
            signature,
            signed,
        })
    }

    /// The bundle's bytes, with its signature if it has one.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.signed.clone();
        if let Some((key, sig)) = &self.signature {
            bytes.extend_from_slice(SIG_MAGIC);
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(sig);
        }
        bytes
    }

    /// Signs it with `key`, replacing any signature it had.
    pub fn sign(&mut self, key: &SigningKey) {
        let sig = key.sign(&self.signed);
        self.signature = Some((key.verifying_key().to_bytes(), sig.to_bytes()));
    }

    /// The signer's key, as `trusted_keys` writes it, if signed.
    pub fn signer(&self) -> Option<String> {
        self.signature.as_ref().map(|(key, _)| public_key_text(key))
    }

    /// What identifies these contents: a replay of them is the same bundle.
    pub fn digest(&self) -> String {
        sha256_hex(&self.signed)
    }

    /// Checks that a key in `trusted` signed exactly these bytes.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<(), BundleError> {
        if trusted.is_empty() {
            return Err(BundleError::NoTrustedKeys);
        }
        let (key, sig) = self.signature.as_ref().ok_or(BundleError::Unsigned)?;
        let Some(trusted) = trusted.iter().find(|k| k.as_bytes() == key) else {
            return Err(BundleError::UntrustedKey(public_key_text(key)));
        };
        trusted
            .verify(&self.signed, &Signature::from_bytes(sig))
            .map_err(|_| BundleError::BadSignature)
    }
}

/// Whether a bundle is one to deploy: for `asked`, signed by a key of
/// `config`'s, for a function `config` runs as the bundle's spec says,
/// with a rollout that reads. (Replays are [`replay`]'s.)
pub fn check(
    bundle: &Bundle,
    asked: &str,
    config: &crate::config::Config,
) -> Result<(), BundleError> {
    let manifest = &bundle.manifest;
    if manifest.function != asked {
        return Err(BundleError::OtherFunction {
            bundle: manifest.function.clone(),
            asked: asked.to_owned(),
        });
    }
    let trusted: Vec<VerifyingKey> = config
        .bundles
        .trusted_keys
        .iter()
        .filter_map(|k| parse_public_key(k).ok())
        .collect();
    bundle.verify(&trusted)?;
    let Some(running) = config.functions.iter().find(|f| f.name == asked) else {
        return Err(BundleError::UnknownFunction(asked.to_owned()));
    };
    let fields = spec_differences(manifest, running);
    if !fields.is_empty() {
        return Err(BundleError::SpecDiffers {
            function: asked.to_owned(),
            fields: fields.join(", "),
        });
    }
    if let Some(rollout) = &manifest.rollout {
        crate::rollout::Strategy::parse(&rollout.strategy).map_err(BundleError::Rollout)?;
    }
    Ok(())
}

/// What a bundle is against the newest one taken for its function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Newer: deploy it.
    New,
    /// That one again (a job delivered twice): nothing to do.
    Again,
}

/// Refuses an older bundle, or another one under a sequence taken already.
pub fn replay(bundle: &Bundle, last: Option<&(u64, String)>) -> Result<Freshness, BundleError> {
    let (function, sequence) = (&bundle.manifest.function, bundle.manifest.sequence);
    match last {
        None => Ok(Freshness::New),
        Some((last, _)) if sequence > *last => Ok(Freshness::New),
        Some((last, digest)) if sequence == *last => {
            if *digest == bundle.digest() {
                Ok(Freshness::Again)
            } else {
                Err(BundleError::SequenceReused {
                    function: function.clone(),
                    sequence,
                })
            }
        }
        Some((last, _)) => Err(BundleError::Older {
            function: function.clone(),
            sequence,
            last: *last,
        }),
    }
}

/// The spec a bundle carries of `f`: what its module was built and tested
/// with. Its secrets stay out: a bundle travels, and the names it may read
/// are in its grants.
pub fn spec_of(f: &FunctionConfig) -> BTreeMap<String, serde_json::Value> {
    let value = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
    BTreeMap::from([
        ("triggers".into(), value(serde_json::to_value(&f.triggers))),
        ("limits".into(), value(serde_json::to_value(f.limits))),
        ("grants".into(), value(serde_json::to_value(&f.grants))),
        ("config".into(), value(serde_json::to_value(&f.config))),
        ("retry".into(), value(serde_json::to_value(&f.retry))),
        (
            "dead_letters".into(),
            value(serde_json::to_value(&f.dead_letters)),
        ),
    ])
}

/// The fields of the bundle's spec that `running` does not run with.
pub fn spec_differences(manifest: &Manifest, running: &FunctionConfig) -> Vec<String> {
    let now = spec_of(running);
    let mut fields: Vec<String> = now
        .iter()
        .filter(|(field, value)| manifest.spec.get(*field) != Some(value))
        .map(|(field, _)| field.clone())
        .collect();
    fields.extend(
        manifest
            .spec
            .keys()
            .filter(|field| !now.contains_key(*field))
            .cloned(),
    );
    fields
}

/// `ed25519:<hex>`, as `trusted_keys` and `bundle keygen` write a public key.
pub fn public_key_text(key: &[u8; 32]) -> String {
    format!("ed25519:{}", hex(key))
}

/// Reads a public key as [`public_key_text`] writes it.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = text
        .trim()
        .strip_prefix("ed25519:")
        .and_then(unhex)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            "expected ed25519: and 64 hex digits, as `wasmgate bundle keygen` writes".to_owned()
        })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_owned())
}

/// A signing key's file: `ed25519-secret:<hex of the 32-byte seed>`.
pub fn secret_key_text(key: &SigningKey) -> String {
    format!("ed25519-secret:{}\n", hex(&key.to_bytes()))
}

/// Reads a signing key's file.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    let seed = text
        .trim()
        .strip_prefix("ed25519-secret:")
        .and_then(unhex)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            "not a signing key: expected ed25519-secret: and 64 hex digits, as `wasmgate bundle keygen` writes"
                .to_owned()
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A new signing key from the system's random source.
pub fn generate_key() -> Result<SigningKey, String> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| format!("no random source: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn manifest() -> Manifest {
        Manifest {
            function: "enrich".into(),
            sequence: 7,
            created_ms: 1,
            module_sha256: String::new(),
            spec: BTreeMap::from([("limits".into(), serde_json::json!({ "fuel": 5 }))]),
            rollout: Some(Rollout {
                strategy: "canary10-5m".into(),
                max_error_rate: Some(0.05),
                max_p99_ms: None,
                pre_traffic_hook: None,
                post_traffic_hook: None,
            }),
        }
    }

    fn signed() -> Vec<u8> {
        let mut bundle = Bundle::new(manifest(), b"\0asm\x01\0\0\0".to_vec());
        bundle.sign(&key(1));
        bundle.to_bytes()
    }

    #[test]
    fn a_signed_bundle_reads_back_and_verifies_with_its_key_only() {
        let bytes = signed();
        assert!(is_bundle(&bytes));
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.manifest.function, "enrich");
        assert_eq!(bundle.module, b"\0asm\x01\0\0\0");
        let trusted = [key(2).verifying_key(), key(1).verifying_key()];
        assert_eq!(bundle.verify(&trusted), Ok(()));
        assert_eq!(
            bundle.verify(&trusted[..1]),
            Err(BundleError::UntrustedKey(public_key_text(
                key(1).verifying_key().as_bytes()
            )))
        );
        assert_eq!(bundle.verify(&[]), Err(BundleError::NoTrustedKeys));
        assert_eq!(
            Bundle::parse(&bundle.to_bytes()).unwrap().digest(),
            bundle.digest()
        );
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let bytes = signed();
        let trusted = [key(1).verifying_key()];
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x20;
            let verdict = Bundle::parse(&tampered).and_then(|b| b.verify(&trusted));
            assert!(verdict.is_err(), "byte {i} changed and still accepted");
        }
        // A module swapped together with its digest: only the signature
        // tells.
        let mut swapped = Bundle::new(manifest(), b"\0asm\x01\0\0\0evil".to_vec());
        swapped.signature = Bundle::parse(&bytes).unwrap().signature;
        let swapped = Bundle::parse(&swapped.to_bytes()).unwrap();
        assert_eq!(swapped.verify(&trusted), Err(BundleError::BadSignature));
    }

    #[test]
    fn unsigned_cut_short_and_foreign_input_are_refused_without_a_panic() {
        let unsigned = Bundle::new(manifest(), b"\0asm".to_vec()).to_bytes();
        assert_eq!(
            Bundle::parse(&unsigned)
                .unwrap()
                .verify(&[key(1).verifying_key()]),
            Err(BundleError::Unsigned)
        );
        let bytes = signed();
        // Cut anywhere but where the signature starts: refused.
        for n in (0..bytes.len()).filter(|&n| n != bytes.len() - SIG_LEN) {
            assert!(
                Bundle::parse(&bytes[..n]).is_err(),
                "{n} bytes read as a bundle"
            );
        }
        assert!(Bundle::parse(b"\0asm\x01\0\0\0").is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Bundle::parse(&huge),
            Err(BundleError::Malformed(_))
        ));
    }

    #[test]
    fn only_a_newer_bundle_or_the_same_one_again_passes() {
        let bundle = Bundle::parse(&signed()).unwrap();
        let digest = bundle.digest();
        assert_eq!(replay(&bundle, None), Ok(Freshness::New));
        assert_eq!(replay(&bundle, Some(&(6, "x".into()))), Ok(Freshness::New));
        assert_eq!(replay(&bundle, Some(&(7, digest))), Ok(Freshness::Again));
        assert!(matches!(
            replay(&bundle, Some(&(7, "other".into()))),
            Err(BundleError::SequenceReused { sequence: 7, .. })
        ));
        assert!(matches!(
            replay(&bundle, Some(&(8, "x".into()))),
            Err(BundleError::Older {
                sequence: 7,
                last: 8,
                ..
            })
        ));
    }

    #[test]
    fn a_bundle_deploys_only_where_its_function_runs_as_its_spec_says() {
        let k = key(4);
        let toml = format!(
            "[bundles]\ntrusted_keys = [{:?}]\n[[functions]]\nname = \"enrich\"\nwasm = \"e.wasm\"\n\
             triggers = [{{ mqtt = \"a/#\" }}]\n[functions.limits]\nfuel = 5000\n",
            public_key_text(k.verifying_key().as_bytes())
        );
        let config = crate::config::Config::parse(&toml, "gateway.toml").unwrap();
        let made = |f: &crate::config::FunctionConfig, signer: &SigningKey| {
            let manifest = Manifest {
                function: f.name.clone(),
                sequence: 1,
                created_ms: 0,
                module_sha256: String::new(),
                spec: spec_of(f),
                rollout: None,
            };
            let mut bundle = Bundle::new(manifest, b"\0asm\x01\0\0\0".to_vec());
            bundle.sign(signer);
            Bundle::parse(&bundle.to_bytes()).unwrap()
        };
        let ok = made(&config.functions[0], &k);
        assert_eq!(check(&ok, "enrich", &config), Ok(()));
        assert!(matches!(
            check(&ok, "other", &config),
            Err(BundleError::OtherFunction { .. })
        ));
        assert!(matches!(
            check(&made(&config.functions[0], &key(5)), "enrich", &config),
            Err(BundleError::UntrustedKey(_))
        ));
        let mut other = config.functions[0].clone();
        other.limits.fuel = 1;
        other.config.insert("site".into(), "b".into());
        match check(&made(&other, &k), "enrich", &config) {
            Err(BundleError::SpecDiffers { fields, .. }) => assert_eq!(fields, "config, limits"),
            verdict => panic!("{verdict:?}"),
        }
        other = config.functions[0].clone();
        other.name = "new".into();
        assert_eq!(
            check(&made(&other, &k), "new", &config),
            Err(BundleError::UnknownFunction("new".into()))
        );
    }

    #[test]
    fn keys_read_back_as_written_and_bad_ones_say_what_is_expected() {
        let k = key(3);
        let public = public_key_text(k.verifying_key().as_bytes());
        assert_eq!(parse_public_key(&public).unwrap(), k.verifying_key());
        assert_eq!(
            parse_secret_key(&secret_key_text(&k)).unwrap().to_bytes(),
            k.to_bytes()
        );
        for bad in [
            "",
            "ed25519:",
            "ed25519:zz",
            "rsa:00",
            &public[..public.len() - 2],
        ] {
            assert!(
                parse_public_key(bad).unwrap_err().contains("ed25519:"),
                "{bad}"
            );
        }
        assert!(parse_secret_key(&public).is_err());
    }
}
