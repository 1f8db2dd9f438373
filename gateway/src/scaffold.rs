//! `wasmgate new NAME`: the files of a new function crate. Pure: the
//! command finds the SDK and writes them.
//!
//! The crate is a workspace of its own (so that it builds wherever it is
//! written, inside another workspace too), builds a `cdylib` (the module)
//! and an `rlib` (so `cargo test` runs the handler natively against the
//! SDK's fake host), with the release profile and the 64 KiB stack the
//! example functions use: an instance then holds about 192 KiB of memory
//! rather than the 1.1 MiB Rust's default 1 MiB stack costs.

use std::path::PathBuf;

/// How the new crate depends on `wasmgate-sdk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A checkout's `functions/sdk`, by path (relative to the crate when it can be).
    Path(String),
    /// Not found: a placeholder path, with a comment saying what to put there.
    Placeholder,
}

/// Why a name cannot be a function crate's.
pub fn check_name(name: &str) -> Result<(), String> {
    let first = name.chars().next();
    if !first.is_some_and(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{name:?}: a function's name starts with a letter (it names the crate and the module)"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{name:?}: {c:?} cannot be in a crate name; use letters, digits, - and _"
        ));
    }
    if name.len() > 64 {
        return Err(format!("{name:?}: at most 64 characters"));
    }
    Ok(())
}

/// The module cargo builds for crate `name`.
pub fn module_path(name: &str) -> String {
    format!(
        "target/wasm32-unknown-unknown/release/{}.wasm",
        name.replace('-', "_")
    )
}

/// Every file of the new crate, relative to its directory.
pub fn files(name: &str, sdk: &SdkSource) -> Vec<(PathBuf, String)> {
    vec![
        ("Cargo.toml".into(), cargo_toml(name, sdk)),
        (".cargo/config.toml".into(), CARGO_CONFIG.to_owned()),
        (".gitignore".into(), "/target\n".to_owned()),
        ("src/lib.rs".into(), lib_rs(name)),
        ("event.json".into(), EVENT.to_owned()),
        ("README.md".into(), readme(name)),
    ]
}

fn cargo_toml(name: &str, sdk: &SdkSource) -> String {
    let dependency = match sdk {
        SdkSource::Path(path) => format!(
            "# The SDK of the wasmgate checkout this crate was made in.\n\
             wasmgate-sdk = {{ path = {path:?} }}\n"
        ),
        SdkSource::Placeholder => "\
# wasmgate-sdk is not on crates.io. Point this at the SDK of a wasmgate
# checkout: `path = \"/path/to/wasmgate/functions/sdk\"`, or take it from the
# repository with `git = \"<wasmgate's git URL>\"` (and `rev = \"...\"` to pin
# it). Its ABI version must match the gateway's: a mismatch is refused when
# the module is deployed. `wasmgate new NAME --sdk DIR` writes the path.
wasmgate-sdk = { path = \"../wasmgate/functions/sdk\" }
"
        .to_owned(),
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the .wasm module; rlib: so `cargo test` runs the function natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
{dependency}
# A workspace of its own: it builds for wasm32, wherever it lives.
[workspace]

[profile.release]
# Speed over size: the gateway interprets every Wasm instruction, so the
# inlining opt-level 3 does pays off more than on native code.
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

[profile.dev.package."*"]
# The SDK's tests run functions natively; keep dependencies quick.
opt-level = 2
"#
    )
}

const CARGO_CONFIG: &str = r#"[target.wasm32-unknown-unknown]
# A function's stack lives in its linear memory, which every warm instance
# keeps resident: Rust's default 1 MiB stack makes each instance cost about
# 1.1 MiB, a 64 KiB one about 192 KiB. A function that overflows it traps,
# visibly; raise it if yours keeps large arrays on the stack.
rustflags = ["-C", "link-arg=-zstack-size=65536"]
"#;

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! {name}: a wasmgate function.
//!
//! Counts the MQTT messages it gets (the KV counter `count`) and sends each
//! payload on to `{name}/out` on the local broker.
#![cfg_attr(target_arch = "wasm32", no_std)]

use wasmgate_sdk::{{Ctx, Error, Event}};

pub fn handle(event: &Event<'_>, ctx: &mut Ctx<'_>) -> Result<(), Error> {{
    let Event::Mqtt(msg) = event else {{
        return Err(Error::msg("{name} handles MQTT messages"));
    }};
    let n = ctx.kv_increment("count", 1)?;
    wasmgate_sdk::info!(ctx, "message {{n}} on {{}}", msg.topic);
    ctx.emit("{name}/out", msg.payload)
}}

wasmgate_sdk::export!(handle);

#[cfg(test)]
mod tests {{
    use super::*;
    use wasmgate_sdk::testing::{{mqtt, FakeHost}};

    #[test]
    fn a_message_is_sent_on_and_counted() {{
        let mut host = FakeHost::new();
        host.call(handle, &mqtt("sensors/1/temp", "21.5")).unwrap();
        host.call(handle, &mqtt("sensors/1/temp", "21.7")).unwrap();
        let out = host.emits_to("{name}/out");
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].payload, b"21.7");
        assert_eq!(host.kv("count"), Some(&2i64.to_le_bytes()[..]));
    }}
}}
"#
    )
}

const EVENT: &str = r#"{"mqtt": {"topic": "sensors/1/temp", "payload": "21.5", "qos": 1}}
"#;

fn readme(name: &str) -> String {
    let module = module_path(name);
    format!(
        r#"# {name}

A [wasmgate](https://example.invalid/wasmgate) function, written by `wasmgate new {name}`.

```sh
cargo test                                              # natively, against the SDK's fake host
cargo build --release --target wasm32-unknown-unknown   # the module
wasmgate invoke {module} --event event.json
```

`rustup target add wasm32-unknown-unknown` once. `event.json` is the event
it runs on (`wasmgate invoke --help` has the format); `wasmgate dlq show ID`
prints one that failed in a gateway, which `--event` takes as it is.

## Deploy it

In the gateway's config:

```toml
[[functions]]
name = "{name}"
wasm = "/path/to/{name}/{module}"
triggers = [{{ mqtt = "sensors/+/temp" }}]

[functions.grants]
local = ["{name}/out"]
```

`wasmgate invoke --gateway-config gateway.toml --function {name} --event event.json`
runs it with those grants and limits; `wasmgate functions --config gateway.toml`
lists what is deployed.
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_a_crate_name() {
        assert!(check_name("hello").is_ok());
        assert!(check_name("vending-2_b").is_ok());
        for bad in ["", "2fast", "-x", "a b", "a/b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_module_is_named_as_cargo_names_it() {
        assert_eq!(
            module_path("my-fn"),
            "target/wasm32-unknown-unknown/release/my_fn.wasm"
        );
    }

    #[test]
    fn the_crate_links_a_small_stack_and_says_where_the_sdk_is() {
        let written = files("hello", &SdkSource::Path("../functions/sdk".into()));
        let get = |name: &str| {
            written
                .iter()
                .find(|(path, _)| path == &PathBuf::from(name))
                .map(|(_, text)| text.clone())
                .unwrap()
        };
        let cargo = get("Cargo.toml");
        assert!(
            cargo.contains("wasmgate-sdk = { path = \"../functions/sdk\" }"),
            "{cargo}"
        );
        assert!(cargo.contains("crate-type = [\"cdylib\", \"rlib\"]"));
        assert!(get(".cargo/config.toml").contains("-zstack-size=65536"));
        assert!(get("src/lib.rs").contains("emit(\"hello/out\""));
        let placeholder = files("hello", &SdkSource::Placeholder);
        assert!(placeholder[0].1.contains("is not on crates.io"));
        // The file cargo reads is TOML.
        for (path, text) in [&written[0], &written[1], &placeholder[0]] {
            text.parse::<toml::Table>()
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
        }
    }
}
