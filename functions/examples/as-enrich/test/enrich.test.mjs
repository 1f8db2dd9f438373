// Native test of build/as_enrich.wasm: node instantiates the module with a
// fake wasmgate host (the only import module it may have), hands it
// envelopes encoded as the gateway encodes them (postcard), and checks what
// it emits. The cases are telemetry-enrich's (Rust) tests.
//   node --test test/enrich.test.mjs   (after `npm run build`)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

const wasm = readFileSync(new URL("../build/as_enrich.wasm", import.meta.url));
const module = new WebAssembly.Module(wasm);
const NOW = 1764160000123n;
const TOPIC = "vending/vm-17/telemetry";

// ---- envelopes (postcard) ----

function varint(n) {
  n = BigInt(n);
  const out = [];
  do {
    let b = Number(n & 0x7fn);
    n >>= 7n;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

const utf8 = (s) => [...Buffer.from(s, "utf8")];
const bytes = (b) => [...varint(b.length), ...b];
const context = () => [...varint(5), ...bytes(utf8("f")), ...bytes(utf8("v1")), ...varint(1), ...varint(1000)];
const mqttFields = (topic, payload) => [...bytes(utf8(topic)), ...bytes(utf8(payload)), 1, 0, ...bytes([])];

function mqttEnvelope(topic, payload) {
  return Uint8Array.from([...context(), ...varint(0), ...mqttFields(topic, payload)]);
}

function batchEnvelope(topic, payloads) {
  const items = payloads.flatMap((p) => [...varint(0), ...mqttFields(topic, p)]);
  return Uint8Array.from([...context(), ...varint(6), ...bytes(items)]);
}

// ---- the fake host ----

class FakeHost {
  constructor(config = {}) {
    this.config = config;
    this.emits = [];
    this.logs = [];
    this.imported = [];
    const host = this;
    const mem = () => new Uint8Array(host.memory.buffer);
    const text = (ptr, len) => Buffer.from(mem().subarray(ptr, ptr + len)).toString("utf8");
    const copyOut = (value, dst, cap) => {
      if (value.length <= cap) mem().set(value, dst);
      return value.length;
    };
    const wasmgate = {
      event_read: (dst, cap) => copyOut(host.event, dst, cap),
      emit: (topic, topicLen, payload, payloadLen, flags) => {
        host.staged.push({ topic: text(topic, topicLen), payload: text(payload, payloadLen), flags });
        return 0;
      },
      log: (level, ptr, len) => {
        host.logs.push({ level, line: text(ptr, len) });
      },
      now_ms: () => NOW,
      config_get: (key, keyLen, dst, cap) => {
        const value = host.config[text(key, keyLen)];
        return value === undefined ? -1 : copyOut(Buffer.from(value, "utf8"), dst, cap);
      },
    };
    // Refuse what the gateway refuses: any import outside "wasmgate", or
    // a name it does not know.
    for (const imp of WebAssembly.Module.imports(module)) {
      assert.equal(imp.module, "wasmgate", `imports ${imp.module}.${imp.name}`);
      assert.ok(imp.name in wasmgate, `unknown import wasmgate.${imp.name}`);
      this.imported.push(imp.name);
    }
    this.instance = new WebAssembly.Instance(module, { wasmgate });
    this.memory = this.instance.exports.memory;
  }

  /** One invocation; its emits are kept only if it returns 0, as the gateway does. */
  call(envelope) {
    this.event = envelope;
    this.staged = [];
    const rc = this.instance.exports.wasmgate_handle(envelope.length);
    if (rc === 0) this.emits.push(...this.staged);
    return rc;
  }

  enriched(topic, payload) {
    const before = this.emits.length;
    assert.equal(this.call(mqttEnvelope(topic, payload)), 0, JSON.stringify(this.logs));
    assert.equal(this.emits.length - before, 1, "one output per message");
    return this.emits.at(-1).payload;
  }
}

// ---- tests ----

test("imports only from wasmgate and exports the ABI", () => {
  const host = new FakeHost();
  assert.deepEqual(host.imported.sort(), ["config_get", "emit", "event_read", "log", "now_ms"]);
  const exports = WebAssembly.Module.exports(module).map((e) => e.name).sort();
  assert.deepEqual(exports, ["memory", "wasmgate_abi_version", "wasmgate_handle"]);
  assert.equal(host.instance.exports.wasmgate_abi_version(), 1);
});

test("the device json goes upstream with three fields added", () => {
  const host = new FakeHost();
  const out = host.enriched(TOPIC, '{"machine":"vm-17","seq":4,"temp_c":6.8,"stock":[{"slot":"A1","count":2}]}');
  assert.equal(
    out,
    '{"machine":"vm-17","seq":4,"temp_c":6.8,"stock":[{"slot":"A1","count":2}],"site":"edge","received_ms":1764160000123,"temp_f":44.2}',
  );
  assert.equal(host.emits[0].topic, "telemetry/vending/vm-17");
  assert.equal(host.emits[0].flags, 9, "QoS 1 upstream");
});

test("the event file's payload", () => {
  const event = JSON.parse(readFileSync(new URL("../event.json", import.meta.url), "utf8"));
  const host = new FakeHost();
  const out = host.enriched(event.mqtt.topic, JSON.stringify(event.mqtt.payload));
  assert.deepEqual(JSON.parse(out), { ...event.mqtt.payload, site: "edge", received_ms: 1764160000123, temp_f: 44.2 });
});

test("the device bytes are kept as sent", () => {
  const host = new FakeHost();
  const payload = '{ "temp_c" : 5.50 , "note": "a \\"quoted\\" \\u00e9", "x": [1e3, null, true] }\n';
  assert.equal(
    host.enriched(TOPIC, payload),
    '{ "temp_c" : 5.50 , "note": "a \\"quoted\\" \\u00e9", "x": [1e3, null, true] ,"site":"edge","received_ms":1764160000123,"temp_f":41.9}',
  );
});

test("without a temperature only site and time are added", () => {
  const host = new FakeHost();
  assert.equal(
    host.enriched("robots/r2/telemetry", '{"battery":0.8}'),
    '{"battery":0.8,"site":"edge","received_ms":1764160000123}',
  );
  assert.equal(host.emits[0].topic, "telemetry/robots/r2");
  for (const notANumber of ["null", '"hot"', "[5]", "true"]) {
    assert.equal(
      host.enriched(TOPIC, `{"temp_c":${notANumber}}`),
      `{"temp_c":${notANumber},"site":"edge","received_ms":1764160000123}`,
    );
  }
});

test("an empty object gets no leading comma", () => {
  assert.equal(new FakeHost().enriched(TOPIC, " { } "), ' { "site":"edge","received_ms":1764160000123}');
});

test("fahrenheit rounds half away from zero on both sides of zero", () => {
  const host = new FakeHost();
  const cases = [["0", "32.0"], ["100", "212.0"], ["-40", "-40.0"], ["-17.8", "0.0"], ["-18", "-0.4"], ["36.6", "97.9"], ["1e2", "212.0"]];
  for (const [c, f] of cases) {
    const out = host.enriched(TOPIC, `{"temp_c":${c}}`);
    assert.ok(out.endsWith(`,"temp_f":${f}}`), `${c} C: ${out}`);
  }
  assert.ok(!host.enriched(TOPIC, '{"temp_c":2e6}').includes("temp_f"));
});

test("the site comes from the config and is escaped", () => {
  const host = new FakeHost({ site: 'plant "7" \\ é\n\u0001' });
  const out = host.enriched(TOPIC, '{"a":1}');
  assert.equal(out, '{"a":1,"site":"plant \\"7\\" \\\\ é\\n\\u0001","received_ms":1764160000123}');
  assert.equal(JSON.parse(out).site, 'plant "7" \\ é\n\u0001');
});

function refused(payload, topic, code) {
  const host = new FakeHost();
  assert.equal(host.call(mqttEnvelope(topic, payload)), code, `${payload} on ${topic}`);
  assert.equal(host.emits.length, 0, `nothing sent for ${payload}`);
  return host;
}

test("what is not a json object is refused and nothing is sent", () => {
  for (const payload of ["", "[1,2]", "42", '{"temp_c": 5', '{"temp_c": tru}', '{"a":1} {"b":2}', '{"a":1}x', '{"a":[1,]}', '{"a":"\x01"}', '{"a":01}']) {
    refused(payload, TOPIC, 10);
  }
  const host = refused("[]", TOPIC, 10);
  assert.ok(host.logs.some((l) => l.level === 0 && l.line === `telemetry is not a JSON object on ${TOPIC}`));
});

test("invalid utf-8 is refused", () => {
  const host = new FakeHost();
  const envelope = mqttEnvelope(TOPIC, '{"a":"xx"}');
  const at = envelope.indexOf(0x78); // the first x
  envelope[at] = 0xc0;
  envelope[at + 1] = 0xaf; // an overlong '/'
  assert.equal(host.call(envelope), 10);
});

test("deep nesting is followed up to its limit", () => {
  const host = new FakeHost();
  const deep = (n) => `{"a":${"[".repeat(n)}${"]".repeat(n)}}`;
  assert.equal(host.call(mqttEnvelope(TOPIC, deep(128))), 0);
  assert.equal(host.call(mqttEnvelope(TOPIC, deep(129))), 10);
});

test("topics of another shape are refused", () => {
  for (const topic of ["vending/telemetry", "vending//telemetry", "/vm-17/telemetry", "a/b/c/telemetry", "vending/vm-17/status"]) {
    refused("{}", topic, 11);
  }
});

test("an object that would outgrow the buffer is refused", () => {
  refused(`{"pad":"${"x".repeat(8192 - 20)}"}`, TOPIC, 12);
});

test("a batch is enriched message by message", () => {
  const host = new FakeHost();
  assert.equal(host.call(batchEnvelope(TOPIC, ['{"temp_c":0}', '{"temp_c":100}'])), 0);
  assert.deepEqual(host.emits.map((e) => JSON.parse(e.payload).temp_f), [32, 212]);
});

test("a warm instance gives the same answer every time", () => {
  const host = new FakeHost();
  for (let i = 0; i < 50; i++) host.enriched(TOPIC, '{"temp_c":6.8}');
  assert.ok(host.emits.every((e) => e.payload === host.emits[0].payload));
  assert.equal(host.memory.buffer.byteLength, 2 * 65536, "no memory growth: nothing is allocated");
});
