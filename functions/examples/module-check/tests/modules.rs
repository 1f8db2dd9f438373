//! The committed `wasm/*.wasm` files, checked as the gateway will see them.
//! Rebuild them with `./build.sh` after changing a function or the SDK.

use std::collections::HashMap;
use wasmgate_abi::{
    Context, EmitOptions, Envelope, Event, HttpRequest, MqttMessage, Seq, Status, ABI_VERSION,
};
use wasmi::{Caller, Engine, ExternType, Linker, Module, Store, ValType};

/// The Rust examples, then those written in C, Zig and AssemblyScript
/// (`build-languages.sh`).
const MODULES: [&str; 12] = [
    "vending_telemetry",
    "robot_telemetry",
    "hello_http",
    "telemetry_enrich",
    "vending_heartbeat",
    "vending_sales",
    "kv_audit",
    "vending_ledger",
    "vending_live",
    "c_vending_alert",
    "zig_downsampler",
    "as_enrich",
];

#[track_caller]
fn wasm(name: &str) -> Vec<u8> {
    let path = format!("{}/../wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}; run ./build.sh"))
}

/// Each import's signature, from the ABI README.
fn abi_signature(name: &str) -> Option<(Vec<ValType>, Vec<ValType>)> {
    use ValType::{F64, I32, I64};
    Some(match name {
        "event_read" => (vec![I32; 2], vec![I32]),
        "emit" => (vec![I32; 5], vec![I32]),
        "kv_get" | "kv_put" | "config_get" | "secret_get" | "invoke" => (vec![I32; 4], vec![I32]),
        "kv_delete" => (vec![I32; 2], vec![I32]),
        "kv_increment" => (vec![I32, I32, I64, I32], vec![I32]),
        "log" => (vec![I32; 3], vec![]),
        "now_ms" => (vec![], vec![I64]),
        "respond" => (vec![I32; 3], vec![I32]),
        "respond_header" | "post_to_connection" => (vec![I32; 4], vec![I32]),
        "item_failed" => (vec![I32], vec![I32]),
        "metric" => (vec![I32, I32, I32, F64], vec![I32]),
        _ => return None,
    })
}

#[test]
fn modules_import_only_abi_functions_with_their_abi_signatures() {
    let engine = Engine::default();
    for name in MODULES {
        let module = Module::new(&engine, wasm(name)).unwrap();
        for import in module.imports() {
            assert_eq!(import.module(), "wasmgate", "{name} imports {import:?}");
            let ExternType::Func(ty) = import.ty() else {
                panic!("{name} imports a non-function: {import:?}");
            };
            let (params, results) = abi_signature(import.name())
                .unwrap_or_else(|| panic!("{name} imports unknown {}", import.name()));
            assert_eq!(ty.params(), params, "{name}: {}", import.name());
            assert_eq!(ty.results(), results, "{name}: {}", import.name());
        }
    }
}

#[test]
fn modules_export_memory_abi_version_and_handle() {
    let engine = Engine::default();
    for name in MODULES {
        let module = Module::new(&engine, wasm(name)).unwrap();
        let exports: HashMap<&str, ExternType> = module
            .exports()
            .map(|e| (e.name(), e.ty().clone()))
            .collect();
        assert!(
            matches!(exports.get("memory"), Some(ExternType::Memory(_))),
            "{name}"
        );
        for (export, params) in [("wasmgate_abi_version", 0), ("wasmgate_handle", 1)] {
            let Some(ExternType::Func(ty)) = exports.get(export) else {
                panic!("{name} does not export {export}");
            };
            assert_eq!(ty.params(), vec![ValType::I32; params], "{name}: {export}");
            assert_eq!(ty.results(), [ValType::I32], "{name}: {export}");
        }
    }
}

/// A host written from the ABI README, just big enough to run the examples.
#[derive(Default)]
struct Host {
    event: Vec<u8>,
    emits: Vec<(String, Vec<u8>, i32)>,
    kv: HashMap<String, Vec<u8>>,
    config: HashMap<String, String>,
    logs: Vec<(i32, String)>,
    response: Option<(i32, Vec<u8>)>,
    headers: Vec<(String, String)>,
}

type Cx<'a> = Caller<'a, Host>;

fn read(caller: &Cx<'_>, ptr: i32, len: i32) -> Vec<u8> {
    let memory = caller.get_export("memory").unwrap().into_memory().unwrap();
    let mut out = vec![0; len as usize];
    memory
        .read(caller, ptr as usize, &mut out)
        .expect("region inside memory");
    out
}

fn text(caller: &Cx<'_>, ptr: i32, len: i32) -> String {
    String::from_utf8(read(caller, ptr, len)).expect("UTF-8")
}

fn write(caller: &mut Cx<'_>, ptr: i32, bytes: &[u8]) {
    let memory = caller.get_export("memory").unwrap().into_memory().unwrap();
    memory
        .write(caller, ptr as usize, bytes)
        .expect("region inside memory");
}

/// The copy-out rule: copy only if it fits, return the length either way.
fn copy_out(caller: &mut Cx<'_>, value: Option<Vec<u8>>, dst: i32, cap: i32) -> i32 {
    let Some(value) = value else {
        return Status::NotFound.code();
    };
    if value.len() <= cap as usize {
        write(caller, dst, &value);
    }
    value.len() as i32
}

struct Instance {
    store: Store<Host>,
    instance: wasmi::Instance,
}

impl Instance {
    fn new(name: &str) -> Instance {
        let engine = Engine::default();
        let module = Module::new(&engine, wasm(name)).unwrap();
        let mut linker = Linker::<Host>::new(&engine);
        let m = "wasmgate";
        linker
            .func_wrap(m, "event_read", |mut c: Cx<'_>, dst: i32, cap: i32| {
                let event = c.data().event.clone();
                copy_out(&mut c, Some(event), dst, cap)
            })
            .unwrap()
            .func_wrap(
                m,
                "emit",
                |mut c: Cx<'_>, t: i32, tl: i32, p: i32, pl: i32, flags: i32| {
                    let (topic, payload) = (text(&c, t, tl), read(&c, p, pl));
                    if EmitOptions::from_flags(flags).is_none()
                        || !wasmgate_abi::is_valid_publish_topic(&topic)
                    {
                        return Status::InvalidArgument.code();
                    }
                    c.data_mut().emits.push((topic, payload, flags));
                    0
                },
            )
            .unwrap()
            .func_wrap(
                m,
                "kv_get",
                |mut c: Cx<'_>, k: i32, kl: i32, dst: i32, cap: i32| {
                    let value = c.data().kv.get(&text(&c, k, kl)).cloned();
                    copy_out(&mut c, value, dst, cap)
                },
            )
            .unwrap()
            .func_wrap(
                m,
                "kv_put",
                |mut c: Cx<'_>, k: i32, kl: i32, v: i32, vl: i32| {
                    let (key, value) = (text(&c, k, kl), read(&c, v, vl));
                    c.data_mut().kv.insert(key, value);
                    0
                },
            )
            .unwrap()
            .func_wrap(m, "kv_delete", |mut c: Cx<'_>, k: i32, kl: i32| {
                let key = text(&c, k, kl);
                c.data_mut().kv.remove(&key);
                0
            })
            .unwrap()
            .func_wrap(
                m,
                "kv_increment",
                |mut c: Cx<'_>, k: i32, kl: i32, delta: i64, dst: i32| {
                    let key = text(&c, k, kl);
                    let old = match c.data().kv.get(&key) {
                        None => 0,
                        Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                            Ok(bytes) => i64::from_le_bytes(bytes),
                            Err(_) => return Status::NotANumber.code(),
                        },
                    };
                    let new = (old + delta).to_le_bytes();
                    c.data_mut().kv.insert(key, new.to_vec());
                    write(&mut c, dst, &new);
                    0
                },
            )
            .unwrap()
            .func_wrap(m, "log", |mut c: Cx<'_>, level: i32, p: i32, l: i32| {
                let line = text(&c, p, l);
                c.data_mut().logs.push((level, line));
            })
            .unwrap()
            .func_wrap(m, "now_ms", |_: Cx<'_>| 1_764_160_000_000i64)
            .unwrap()
            .func_wrap(
                m,
                "config_get",
                |mut c: Cx<'_>, k: i32, kl: i32, dst: i32, cap: i32| {
                    let value = c
                        .data()
                        .config
                        .get(&text(&c, k, kl))
                        .map(|v| v.clone().into_bytes());
                    copy_out(&mut c, value, dst, cap)
                },
            )
            .unwrap()
            .func_wrap(m, "invoke", |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32| {
                Status::Unavailable.code()
            })
            .unwrap()
            .func_wrap(
                m,
                "respond",
                |mut c: Cx<'_>, status: i32, b: i32, bl: i32| {
                    let body = read(&c, b, bl);
                    c.data_mut().response = Some((status, body));
                    0
                },
            )
            .unwrap()
            .func_wrap(
                m,
                "respond_header",
                |mut c: Cx<'_>, n: i32, nl: i32, v: i32, vl: i32| {
                    let header = (text(&c, n, nl), text(&c, v, vl));
                    c.data_mut().headers.push(header);
                    0
                },
            )
            .unwrap()
            .func_wrap(m, "item_failed", |_: Cx<'_>, _: i32| {
                Status::InvalidArgument.code()
            })
            .unwrap()
            .func_wrap(
                m,
                "post_to_connection",
                |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32| 0,
            )
            .unwrap()
            .func_wrap(m, "metric", |_: Cx<'_>, _: i32, _: i32, _: i32, _: f64| 0)
            .unwrap();
        let mut store = Store::new(&engine, Host::default());
        let instance = linker.instantiate_and_start(&mut store, &module).unwrap();
        Instance { store, instance }
    }

    fn abi_version(&mut self) -> i32 {
        let f = self
            .instance
            .get_typed_func::<(), i32>(&self.store, "wasmgate_abi_version")
            .unwrap();
        f.call(&mut self.store, ()).unwrap()
    }

    fn handle(&mut self, event: Event<'_>) -> i32 {
        let context = Context {
            request_id: 1,
            function: "example",
            version: "test",
            attempt: 1,
            deadline_ms: 1_764_160_001_000,
        };
        let bytes = Envelope { context, event }.encode().unwrap();
        let len = bytes.len() as i32;
        self.store.data_mut().event = bytes;
        let f = self
            .instance
            .get_typed_func::<i32, i32>(&self.store, "wasmgate_handle")
            .unwrap();
        f.call(&mut self.store, len).unwrap()
    }

    fn host(&self) -> &Host {
        self.store.data()
    }
}

fn mqtt<'a>(topic: &'a str, payload: &'a [u8]) -> Event<'a> {
    Event::Mqtt(MqttMessage {
        topic,
        payload,
        qos: 1,
        retain: false,
        user_properties: Seq::empty(),
    })
}

#[test]
fn every_module_reports_the_abi_version() {
    for name in MODULES {
        assert_eq!(
            Instance::new(name).abi_version(),
            ABI_VERSION as i32,
            "{name}"
        );
    }
}

#[test]
fn vending_module_alerts_and_keeps_totals_under_wasmi() {
    let mut vm = Instance::new("vending_telemetry");
    let hot = br#"{"machine":"vm-17","ts":1764160000000,"temp_c":9.4,"door_open":false,"stock":[{"slot":"A1","count":1}],"sale":{"slot":"A1","price_cents":150}}"#;
    assert_eq!(vm.handle(mqtt("vending/vm-17/telemetry", hot)), 0);
    assert_eq!(vm.handle(mqtt("vending/vm-17/telemetry", hot)), 0);
    let host = vm.host();
    assert_eq!(host.kv["vm-17/sales_cents"], 300i64.to_le_bytes());
    let alert = host
        .emits
        .iter()
        .find(|e| e.0 == "vending/vm-17/alert")
        .unwrap();
    assert_eq!(alert.2, EmitOptions::default().to_flags());
    let alert = String::from_utf8(alert.1.clone()).unwrap();
    assert!(
        alert.contains(r#""too_warm":true"#) && alert.contains(r#"["A1"]"#),
        "{alert}"
    );
    let summary = host
        .emits
        .iter()
        .find(|e| e.0 == "telemetry/vending/vm-17")
        .unwrap();
    assert_eq!(summary.2, EmitOptions::upstream().to_flags());
}

#[test]
fn vending_module_fails_visibly_on_bad_json() {
    let mut vm = Instance::new("vending_telemetry");
    assert_ne!(vm.handle(mqtt("vending/vm-17/telemetry", b"{nope")), 0);
    let errors: Vec<_> = vm.host().logs.iter().filter(|l| l.0 == 0).collect();
    assert!(
        errors
            .iter()
            .any(|l| l.1.contains("telemetry is not valid JSON")),
        "{errors:?}"
    );
}

#[test]
fn enrich_module_forwards_the_object_with_fields_added_under_wasmi() {
    let mut vm = Instance::new("telemetry_enrich");
    vm.store
        .data_mut()
        .config
        .insert("site".into(), "plant-7".into());
    let telemetry = br#"{"machine":"vm-17","seq":3,"temp_c":6.8}"#;
    assert_eq!(vm.handle(mqtt("vending/vm-17/telemetry", telemetry)), 0);
    let host = vm.host();
    assert_eq!(host.emits.len(), 1);
    let (topic, payload, flags) = &host.emits[0];
    assert_eq!(topic, "telemetry/vending/vm-17");
    assert_eq!(*flags, EmitOptions::upstream().to_flags());
    assert_eq!(
        std::str::from_utf8(payload).unwrap(),
        r#"{"machine":"vm-17","seq":3,"temp_c":6.8,"site":"plant-7","received_ms":1764160000000,"temp_f":44.2}"#
    );
    assert_ne!(vm.handle(mqtt("vending/vm-17/telemetry", b"[1,2]")), 0);
    assert_eq!(vm.host().emits.len(), 1, "nothing sent for a non-object");
}

#[test]
fn an_event_over_the_default_buffer_fails_with_a_log_line_not_a_trap() {
    let mut vm = Instance::new("robot_telemetry");
    let big = vec![b' '; 70_000];
    assert_ne!(vm.handle(mqtt("robots/r-1/telemetry", &big)), 0);
    assert!(
        vm.host()
            .logs
            .iter()
            .any(|l| l.1.contains("over its event buffer of 65536 bytes")),
        "{:?}",
        vm.host().logs
    );
    // The instance is still usable afterwards.
    let ok = br#"{"ts":1,"x":0.0,"y":0.0,"battery_pct":90.0}"#;
    assert_eq!(vm.handle(mqtt("robots/r-1/telemetry", ok)), 0);
    assert_eq!(vm.host().emits.len(), 1);
}

#[test]
fn hello_module_responds_over_http_under_wasmi() {
    let mut vm = Instance::new("hello_http");
    vm.store
        .data_mut()
        .config
        .insert("unused".into(), "x".into());
    let request = Event::Http(HttpRequest {
        method: "GET",
        path: "/hello",
        query: "name=Ada",
        headers: Seq::empty(),
        body: b"",
        params: Seq::empty(),
    });
    assert_eq!(vm.handle(request), 0);
    let (status, body) = vm.host().response.clone().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, br#"{"greeting":"Hello, Ada!","hits":1}"#);
    assert_eq!(
        vm.host().headers,
        [("cache-control".to_owned(), "no-store".to_owned())]
    );
}
