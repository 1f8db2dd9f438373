//! Bundles the JavaScript file named by `JS_RUNTIME_SCRIPT` (default
//! `../examples/enrich.js`) into the module, as the script it runs when the
//! function's config has no `script` or `function_body`; and links the
//! module as a WASI *reactor*.
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=JS_RUNTIME_SCRIPT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let script = env::var_os("JS_RUNTIME_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../examples/enrich.js"));
    let script = if script.is_absolute() {
        script
    } else {
        manifest.join(script)
    };
    println!("cargo:rerun-if-changed={}", script.display());
    let source = fs::read_to_string(&script)
        .unwrap_or_else(|e| panic!("JS_RUNTIME_SCRIPT {}: {e}", script.display()));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("script.js");
    fs::write(out, source).unwrap();
    let name = script.file_name().unwrap().to_string_lossy().into_owned();
    println!("cargo:rustc-env=JS_RUNTIME_SCRIPT_NAME={name}");
    link_as_reactor();
}

/// Without this a wasm32-wasip1 cdylib has no `_initialize`, and wasm-ld
/// makes it a command: each export is wrapped to run libc's destructors
/// (`__stdio_exit`) after every call. Linking wasi-libc's `crt1-reactor.o`
/// (Rust ships it, self-contained, beside its wasi-libc) gives the module an
/// `_initialize` that the host runs once per instance, and plain exports.
/// (`-mexec-model=reactor` is a clang driver flag; rustc calls wasm-ld
/// itself, and `-Z wasi-exec-model=reactor` is nightly-only.)
fn link_as_reactor() {
    if env::var("TARGET").as_deref() != Ok("wasm32-wasip1") {
        return;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let sysroot = String::from_utf8(out.stdout).unwrap();
    let crt = PathBuf::from(sysroot.trim())
        .join("lib/rustlib/wasm32-wasip1/lib/self-contained/crt1-reactor.o");
    assert!(crt.exists(), "{} is missing", crt.display());
    println!("cargo:rustc-link-arg-cdylib={}", crt.display());
    println!("cargo:rustc-link-arg-cdylib=--export=_initialize");
}
