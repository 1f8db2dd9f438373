//! Signed bundles end to end, with the real binary: keys from `wasmgate
//! bundle keygen`, bundles made from the gateway's own config with `bundle
//! create`, signed with `bundle sign`, and deployed to a running gateway
//! that trusts one key. It takes a bundle that key signed for the spec its
//! function runs with, once (the same bundle again changes nothing); it
//! refuses an unsigned one, a tampered one, one signed by another key, an
//! older one (also after a restart) and one built for other limits, each
//! with a log line saying why. A bundle's rollout is how it deploys.

mod support;

use std::path::Path;
use std::time::Duration;
use support::gateway::{wasmgate, CommandOutput, GatewayProcess};
use support::mqtt::{free_port, unique_id, MqttClient};

const ONE: Duration = Duration::from_secs(60);

/// Emits its payload to `out/<name>` and succeeds.
fn emits(name: &str) -> Vec<u8> {
    support::guest::mqtt_guest(
        r#"(import "wasmgate" "emit" (func $emit (param i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(r#"(data (i32.const 65000) "out/{name}")"#),
        &format!(
            "(drop (call $emit (i32.const 65000) (i32.const {}) (local.get $payload) (local.get $payload_len) (i32.const 1)))
    (i32.const 0)",
            4 + name.len()
        ),
    )
}

fn run(args: &[&str]) -> CommandOutput {
    let out = wasmgate(args, ONE);
    assert_eq!(out.code, Some(0), "wasmgate {args:?}: {out:?}");
    out
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// The gateway's config: `f` on `in/#`, trusting `trusted` (a `.pub` line).
fn config(dir: &Path, broker: u16, trusted: &str, fuel: u64) -> String {
    format!(
        "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{broker}\"\n\
         [bundles]\ntrusted_keys = [{trusted:?}]\n\
         [[functions]]\nname = \"f\"\nwasm = \"v1.wasm\"\ntriggers = [{{ mqtt = \"in/#\" }}]\n\
         [functions.limits]\nfuel = {fuel}\n\
         [functions.grants]\nlocal = [\"out/#\"]\n",
        data = dir.join("data").display().to_string(),
    )
}

/// Publishes to `in/x` until a message comes on `out/<name>`.
fn runs_as(device: &MqttClient, outputs: &MqttClient, name: &str) -> bool {
    for _ in 0..50 {
        device.publish("in/x", "ping");
        if let Some(m) = outputs.next_message(Duration::from_millis(200)) {
            if m.topic == format!("out/{name}") {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_gateway_takes_only_newer_bundles_its_key_signed_for_the_spec_it_runs() {
    let keys = tempfile::tempdir().unwrap();
    let ci = path(keys.path(), "ci");
    let other = path(keys.path(), "other");
    let made = run(&["bundle", "keygen", &ci]);
    assert!(
        made.stdout.contains("trusted_keys = [\"ed25519:"),
        "{made:?}"
    );
    run(&["bundle", "keygen", &other]);
    let trusted = std::fs::read_to_string(format!("{ci}.pub")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(format!("{ci}.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is readable by others");
    }
    let again = wasmgate(&["bundle", "keygen", &ci], ONE);
    assert_eq!(again.code, Some(2), "a key was overwritten: {again:?}");

    let broker = free_port();
    let trusted_line = trusted.trim().to_owned();
    let mut gateway = GatewayProcess::start_toml(|dir| {
        for name in ["v1", "v2", "v3"] {
            std::fs::write(dir.join(format!("{name}.wasm")), emits(name)).unwrap();
        }
        // The same function with other limits: a bundle made from it is
        // for a spec this gateway does not run.
        std::fs::write(
            dir.join("other-limits.toml"),
            config(dir, broker, &trusted_line, 1_000),
        )
        .unwrap();
        config(dir, broker, &trusted_line, 50_000_000)
    });
    let dir = gateway.dir().to_owned();
    let cfg = gateway.config_path().display().to_string();
    let outputs = MqttClient::connect(broker, &unique_id("outputs"));
    outputs.subscribe("out/#");
    let device = MqttClient::connect(broker, &unique_id("device"));
    assert!(runs_as(&device, &outputs, "v1"));

    let create = |file: &str, wasm: &str, sequence: &str, extra: &[&str], from: &str| {
        let mut args = vec![
            "bundle",
            "create",
            "f",
            "--config",
            from,
            "--wasm",
            wasm,
            "--sequence",
            sequence,
            "--out",
            file,
        ];
        args.extend_from_slice(extra);
        run(&args);
    };
    let deploy = |file: &str| wasmgate(&["deploy", "f", file, "--config", &cfg], ONE);
    let refused = |file: &str, why: &str| {
        let out = deploy(file);
        assert_eq!(out.code, Some(1), "{file} was not refused: {out:?}");
        assert!(
            out.stderr.contains("bundle refused") && out.stderr.contains(why),
            "{file}: {}",
            out.stderr
        );
    };
    let v2 = path(&dir, "v2.wgb");
    create(&v2, &path(&dir, "v2.wasm"), "10", &[], &cfg);

    // Unsigned.
    refused(&v2, "not signed");
    // Signed by a key the gateway does not trust.
    run(&["bundle", "sign", &v2, "--key", &format!("{other}.key")]);
    refused(&v2, "not in [bundles] trusted_keys");
    let inspected = wasmgate(
        &["bundle", "inspect", &v2, "--trusted", &format!("{ci}.pub")],
        ONE,
    );
    assert_eq!(inspected.code, Some(1), "{inspected:?}");
    // Signed by the trusted key, then tampered with: a byte of the module,
    // and (the module's digest left alone) the manifest's sequence.
    run(&["bundle", "sign", &v2, "--key", &format!("{ci}.key")]);
    let inspected = run(&["bundle", "inspect", &v2, "--trusted", &format!("{ci}.pub")]);
    assert!(inspected.stdout.contains("verified  yes"), "{inspected:?}");
    let signed = std::fs::read(&v2).unwrap();
    // The signature is the last 102 bytes; the module is just before it.
    let module_byte = signed.len() - 102 - 20;
    let mut tampered = signed.clone();
    tampered[module_byte] ^= 1;
    let tampered_module = path(&dir, "tampered-module.wgb");
    std::fs::write(&tampered_module, &tampered).unwrap();
    refused(&tampered_module, "tampered");
    let text = String::from_utf8_lossy(&signed).into_owned();
    let at = text
        .find("\"sequence\":10")
        .expect("the manifest's sequence");
    let mut tampered = signed.clone();
    tampered[at + "\"sequence\":1".len()] = b'9';
    let tampered_manifest = path(&dir, "tampered-manifest.wgb");
    std::fs::write(&tampered_manifest, &tampered).unwrap();
    refused(&tampered_manifest, "does not match the bundle's contents");
    // None of that changed anything.
    assert!(runs_as(&device, &outputs, "v1"));

    // The good one deploys; the same one again changes nothing.
    let out = deploy(&v2);
    assert_eq!(out.code, Some(0), "{out:?}\n{}", gateway.logs());
    assert!(runs_as(&device, &outputs, "v2"), "{}", gateway.logs());
    let out = deploy(&v2);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("taken already"), "{}", out.stdout);

    // Older than the one taken: refused, also after a restart.
    let old = path(&dir, "old.wgb");
    create(&old, &path(&dir, "v1.wasm"), "5", &[], &cfg);
    run(&["bundle", "sign", &old, "--key", &format!("{ci}.key")]);
    refused(&old, "older than the last one taken (10)");
    // Built for other limits than f runs with.
    let limits = path(&dir, "limits.wgb");
    create(
        &limits,
        &path(&dir, "v3.wasm"),
        "11",
        &[],
        &path(&dir, "other-limits.toml"),
    );
    run(&["bundle", "sign", &limits, "--key", &format!("{ci}.key")]);
    refused(&limits, "other limits than f runs with");
    gateway.stop();
    gateway.restart();
    refused(&old, "older than the last one taken (10)");

    // A bundle with a rollout rolls out as it says.
    let v3 = path(&dir, "v3.wgb");
    create(
        &v3,
        &path(&dir, "v3.wasm"),
        "12",
        &["--strategy", "canary50-5m"],
        &cfg,
    );
    run(&["bundle", "sign", &v3, "--key", &format!("{ci}.key")]);
    let out = deploy(&v3);
    assert_eq!(out.code, Some(0), "{out:?}\n{}", gateway.logs());
    assert!(out.stdout.contains("rollout canary50-5m"), "{}", out.stdout);
    let rollouts = run(&["deployments", "f", "--config", &cfg, "--json"]);
    let newest: serde_json::Value = serde_json::from_str(&rollouts.stdout).unwrap();
    assert_eq!(newest["deployments"][0]["strategy"], "canary50-5m");
    assert_eq!(newest["deployments"][0]["state"], "running");

    // Every refusal is in the gateway's log, with its reason.
    let lines = gateway.log_lines_with(&["bundle refused"]);
    for why in [
        "not signed",
        "not in [bundles] trusted_keys",
        "tampered",
        "older than",
        "other limits",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(why)),
            "no log line for {why:?}:\n{}",
            lines.join("\n")
        );
    }
}
