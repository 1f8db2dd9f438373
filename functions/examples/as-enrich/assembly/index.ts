// Telemetry enrichment in AssemblyScript: telemetry-enrich (Rust) ported to
// AssemblyScript against the wasmgate ABI (imports only module "wasmgate").
//
// Devices publish a JSON object to `<kind>/<device>/telemetry`. The function
// forwards it upstream to `telemetry/<kind>/<device>` (QoS 1) with three
// fields added at the end:
// - "site": where it was received (config `site`, default "edge");
// - "received_ms": when the gateway ran the function, Unix milliseconds;
// - "temp_f": `temp_c` in Fahrenheit to one decimal, when the object has a
//   numeric `temp_c` (omitted otherwise, and beyond +-1,000,000).
//
//   {"machine":"vm-17","temp_c":6.8}
//   -> {"machine":"vm-17","temp_c":6.8,"site":"edge","received_ms":1764160000123,"temp_f":44.2}
//
// The device's bytes are forwarded as they came: the whole payload is checked
// against the JSON grammar (UTF-8, escapes, numbers, nesting up to 128) but
// not re-encoded. Return codes as the Rust version: 10 not a JSON object,
// 11 unexpected topic, 12 output over 8 KiB, 100 `site` over 128 bytes,
// 101 event over the buffer, 102 envelope does not decode.
import {
  ascii, bytesEq, config_get, emit, EMIT_UPSTREAM, event_read, failed, log, LOG_ERROR, logText,
  nextMqtt, NOT_FOUND, now_ms, payload, payload_len, startEnvelope, topic, topic_len,
} from "./wasmgate";

const BAD_TELEMETRY: i32 = 10;
const BAD_TOPIC: i32 = 11;
const TOO_LARGE: i32 = 12;
const BUFFER_TOO_SMALL: i32 = 100;
const EVENT_TOO_BIG: i32 = 101;
const BAD_ENVELOPE: i32 = 102;

/** The largest enriched object; a payload that would grow past it is refused. */
const MAX_OUTPUT: u32 = 8192;
const EVENT_CAP: u32 = 65536;
const MAX_DEPTH: i32 = 128;

const EVENT: usize = memory.data(65536);
const OUT: usize = memory.data(8192);
const TOPIC: usize = memory.data(160);
const SITE: usize = memory.data(128);
const LINE: usize = memory.data(256);
/** One byte per open container (1 = object), for the iterative scanner. */
const STACK: usize = memory.data(128);

export function wasmgate_abi_version(): i32 {
  return 1;
}

export function wasmgate_handle(event_len: i32): i32 {
  if (event_len < 0 || <u32>event_len > EVENT_CAP) {
    logText(LOG_ERROR, "function failed: the event is over its event buffer");
    return EVENT_TOO_BIG;
  }
  const n = event_read(EVENT, EVENT_CAP);
  if (n < 0 || <u32>n > EVENT_CAP) {
    logText(LOG_ERROR, "function failed: the event is over its event buffer");
    return EVENT_TOO_BIG;
  }
  if (!startEnvelope(EVENT, <u32>n)) {
    logText(LOG_ERROR, "function failed: the event envelope does not decode");
    return BAD_ENVELOPE;
  }
  while (nextMqtt()) {
    const rc = enrich(topic, topic_len, payload, payload_len);
    if (rc != 0) return rc;
  }
  if (failed) {
    logText(LOG_ERROR, "function failed: as-enrich handles MQTT messages only");
    return BAD_ENVELOPE;
  }
  return 0;
}

/** `abort` (AssemblyScript's failed assertions, bounds errors) logs and traps. */
function abort(message: usize, file: usize, line: u32, column: u32): void {
  // `message` is a UTF-16 string (length in bytes at ptr - 4): keep its ASCII.
  let n: u32 = 0;
  let o: usize = LINE;
  const prefix = "function aborted: ";
  for (let i = 0; i < prefix.length; i++) store<u8>(o++, <u8>prefix.charCodeAt(i));
  if (message != 0) {
    const chars = load<u32>(message - 4) >> 1;
    for (let i: u32 = 0; i < chars && i < 200; i++) {
      const c = load<u16>(message + (<usize>i << 1));
      store<u8>(o++, c < 0x80 ? <u8>c : <u8>0x3f);
    }
  }
  n = <u32>(o - LINE);
  log(LOG_ERROR, LINE, n);
  unreachable();
}

// ---- Output ---------------------------------------------------------------------

let outLen: u32 = 0;
let outFull: bool = false;

function putByte(b: u8): void {
  if (outLen >= MAX_OUTPUT) {
    outFull = true;
    return;
  }
  store<u8>(OUT + <usize>outLen, b);
  outLen++;
}

function putBytes(p: usize, n: u32): void {
  if (outLen + n > MAX_OUTPUT) {
    outFull = true;
    return;
  }
  memory.copy(OUT + <usize>outLen, p, n);
  outLen += n;
}

function putAscii(s: string): void {
  for (let i = 0; i < s.length; i++) putByte(<u8>s.charCodeAt(i));
}

function putU64(v: u64): void {
  // Digits into the end of LINE, then out in order.
  let i: u32 = 20;
  do {
    i--;
    store<u8>(LINE + <usize>i, <u8>(48 + v % 10));
    v /= 10;
  } while (v != 0);
  putBytes(LINE + <usize>i, 20 - i);
}

const HEX = "0123456789abcdef";

/** `n` bytes as a JSON string: quotes, backslashes and control characters escaped. */
function putJsonString(p: usize, n: u32): void {
  putByte(0x22);
  for (let i: u32 = 0; i < n; i++) {
    const b = load<u8>(p + <usize>i);
    if (b == 0x22) putAscii("\\\"");
    else if (b == 0x5c) putAscii("\\\\");
    else if (b == 0x0a) putAscii("\\n");
    else if (b == 0x0d) putAscii("\\r");
    else if (b == 0x09) putAscii("\\t");
    else if (b < 0x20) {
      putAscii("\\u00");
      putByte(<u8>HEX.charCodeAt(b >> 4));
      putByte(<u8>HEX.charCodeAt(b & 15));
    } else putByte(b);
  }
  putByte(0x22);
}

// ---- The JSON object check (RFC 8259), as wasmgate_sdk::json::object ------------

let text: usize = 0;
let textLen: u32 = 0;
let pos: u32 = 0;
let bad: bool = false;

function peek(): i32 {
  return pos < textLen ? <i32>load<u8>(text + <usize>pos) : -1;
}

// The loops below keep the position in a local: under an interpreter a
// global costs a load and a store per byte (as in the Rust SDK's scanner).
function whitespace(): void {
  let at = pos;
  const n = textLen;
  while (at < n) {
    const c = load<u8>(text + <usize>at);
    if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) break;
    at++;
  }
  pos = at;
}

function expect(c: i32): bool {
  if (peek() == c) {
    pos++;
    return true;
  }
  bad = true;
  return false;
}

function isHex(c: i32): bool {
  return (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70);
}

function jsonString(): bool {
  if (!expect(0x22)) return false;
  let at = pos;
  const n = textLen;
  const base = text;
  while (at < n) {
    const c = load<u8>(base + <usize>at);
    if (c == 0x22) {
      pos = at + 1;
      return true;
    }
    if (c < 0x20) break;
    if (c == 0x5c) {
      at++;
      const e: i32 = at < n ? <i32>load<u8>(base + <usize>at) : -1;
      if (e == 0x75) {
        for (let k = 0; k < 4; k++) {
          at++;
          if (at >= n || !isHex(<i32>load<u8>(base + <usize>at))) {
            pos = at;
            bad = true;
            return false;
          }
        }
      } else if (!(e == 0x22 || e == 0x5c || e == 0x2f || e == 0x62 || e == 0x66 || e == 0x6e || e == 0x72 || e == 0x74)) {
        break;
      }
    }
    at++;
  }
  pos = at;
  bad = true;
  return false;
}

function isDigit(c: i32): bool {
  return c >= 48 && c <= 57;
}

function digits(): bool {
  let at = pos;
  const n = textLen;
  while (at < n && isDigit(<i32>load<u8>(text + <usize>at))) at++;
  const any = at > pos;
  pos = at;
  return any;
}

function number(): bool {
  if (peek() == 0x2d) pos++;
  const c = peek();
  if (c == 0x30) pos++;
  else if (!digits()) {
    bad = true;
    return false;
  }
  if (peek() == 0x2e) {
    pos++;
    if (!digits()) {
      bad = true;
      return false;
    }
  }
  const e = peek();
  if (e == 0x65 || e == 0x45) {
    pos++;
    const s = peek();
    if (s == 0x2b || s == 0x2d) pos++;
    if (!digits()) {
      bad = true;
      return false;
    }
  }
  return true;
}

function literal(word: string): bool {
  for (let i = 0; i < word.length; i++) {
    if (peek() != word.charCodeAt(i)) {
      bad = true;
      return false;
    }
    pos++;
  }
  return true;
}

/** `"name"` and its colon; leaves `pos` at the value; the name's end in nameEnd. */
let nameEnd: u32 = 0;
function memberName(): bool {
  if (!jsonString()) return false;
  nameEnd = pos - 1;
  whitespace();
  if (!expect(0x3a)) return false;
  whitespace();
  return true;
}

/** One value, containers included, iteratively (STACK holds the open ones). */
function value(): bool {
  let depth: i32 = 0;
  while (true) {
    const c = peek();
    if (c == 0x7b || c == 0x5b) {
      const isObject = c == 0x7b;
      if (depth == MAX_DEPTH) {
        bad = true;
        return false;
      }
      pos++;
      whitespace();
      if (peek() == (isObject ? 0x7d : 0x5d)) {
        pos++;
      } else {
        store<u8>(STACK + <usize>depth, isObject ? 1 : 0);
        depth++;
        if (isObject && !memberName()) return false;
        continue;
      }
    } else if (c == 0x22) {
      if (!jsonString()) return false;
    } else if (c == 0x2d || isDigit(c)) {
      if (!number()) return false;
    } else if (c == 0x74) {
      if (!literal("true")) return false;
    } else if (c == 0x66) {
      if (!literal("false")) return false;
    } else if (c == 0x6e) {
      if (!literal("null")) return false;
    } else {
      bad = true;
      return false;
    }
    // A value ended: close containers until one goes on.
    while (true) {
      if (depth == 0) return true;
      const inObject = load<u8>(STACK + <usize>(depth - 1)) == 1;
      whitespace();
      const d = peek();
      if (d == 0x2c) {
        pos++;
        whitespace();
        if (inObject && !memberName()) return false;
        break;
      }
      if ((inObject && d == 0x7d) || (!inObject && d == 0x5d)) {
        pos++;
        depth--;
        continue;
      }
      bad = true;
      return false;
    }
  }
  return false;
}

/** Whether the bytes are UTF-8 (as core::str::from_utf8 decides). */
function validUtf8(p: usize, n: u32): bool {
  let i: u32 = 0;
  while (i < n) {
    const b = load<u8>(p + <usize>i);
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: u32 = 0;
    let lo: u8 = 0x80;
    let hi: u8 = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b == 0xe0) { need = 2; lo = 0xa0; }
    else if ((b >= 0xe1 && b <= 0xec) || b == 0xee || b == 0xef) need = 2;
    else if (b == 0xed) { need = 2; hi = 0x9f; }
    else if (b == 0xf0) { need = 3; lo = 0x90; }
    else if (b >= 0xf1 && b <= 0xf3) need = 3;
    else if (b == 0xf4) { need = 3; hi = 0x8f; }
    else return false;
    if (i + need >= n) return false; // cut short
    const c1 = load<u8>(p + <usize>(i + 1));
    if (c1 < lo || c1 > hi) return false;
    for (let k: u32 = 2; k <= need; k++) {
      const c = load<u8>(p + <usize>(i + k));
      if (c < 0x80 || c > 0xbf) return false;
    }
    i += need + 1;
  }
  return true;
}

// Found by `object()`: the closing brace, whether it has members, and the
// raw text of the last top-level `temp_c` value (start, end).
let close: u32 = 0;
let empty: bool = false;
let tempStart: u32 = 0;
let tempEnd: u32 = 0;
let hasTemp: bool = false;

/** Checks that the payload is exactly one JSON object (whitespace around it). */
function object(p: usize, n: u32): bool {
  text = p;
  textLen = n;
  pos = 0;
  bad = false;
  hasTemp = false;
  if (!validUtf8(p, n)) return false;
  whitespace();
  if (!expect(0x7b)) return false;
  whitespace();
  empty = peek() == 0x7d;
  if (!empty) {
    while (true) {
      const nameStart = pos + 1;
      if (!memberName()) return false;
      const valueStart = pos;
      if (!value()) return false;
      if (bytesEq(text + <usize>nameStart, nameEnd - nameStart, "temp_c")) {
        hasTemp = true;
        tempStart = valueStart;
        tempEnd = pos;
      }
      whitespace();
      const c = peek();
      if (c == 0x2c) {
        pos++;
        whitespace();
      } else if (c == 0x7d) {
        break;
      } else {
        return false;
      }
    }
  }
  close = pos;
  pos++;
  whitespace();
  return pos == textLen;
}

// ---- Fahrenheit ----------------------------------------------------------------------

const POW10: StaticArray<f64> = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22];

/**
 * A checked JSON number's value: correctly rounded while its digits fit 2^53
 * and its decimal exponent 22 (Clinger's fast path), which a thermometer
 * never leaves; beyond that a close approximation.
 */
function numberValue(p: usize, n: u32): f64 {
  let i: u32 = 0;
  let neg = false;
  if (load<u8>(p) == 0x2d) {
    neg = true;
    i++;
  }
  let mant: u64 = 0;
  let ndigits = 0;
  let exp10: i32 = 0;
  while (i < n && isDigit(load<u8>(p + <usize>i))) {
    if (ndigits < 19) {
      mant = mant * 10 + <u64>(load<u8>(p + <usize>i) - 48);
      if (mant != 0) ndigits++;
    } else exp10++;
    i++;
  }
  if (i < n && load<u8>(p + <usize>i) == 0x2e) {
    i++;
    while (i < n && isDigit(load<u8>(p + <usize>i))) {
      if (ndigits < 19) {
        mant = mant * 10 + <u64>(load<u8>(p + <usize>i) - 48);
        if (mant != 0) ndigits++;
        exp10--;
      }
      i++;
    }
  }
  if (i < n) {
    // e or E
    i++;
    let eneg = false;
    const s = load<u8>(p + <usize>i);
    if (s == 0x2b || s == 0x2d) {
      eneg = s == 0x2d;
      i++;
    }
    let e: i32 = 0;
    while (i < n) {
      if (e < 10000) e = e * 10 + <i32>(load<u8>(p + <usize>i) - 48);
      i++;
    }
    exp10 += eneg ? -e : e;
  }
  let v = <f64>mant;
  while (exp10 > 22) {
    v *= 1e22;
    exp10 -= 22;
  }
  while (exp10 < -22) {
    v /= 1e22;
    exp10 += 22;
  }
  v = exp10 >= 0 ? v * unchecked(POW10[exp10]) : v / unchecked(POW10[-exp10]);
  return neg ? -v : v;
}

/** Celsius to tenths of a degree Fahrenheit, rounded half away from zero; or none. */
let tenths: i64 = 0;
function fahrenheitTenths(celsius: f64): bool {
  if (!(celsius >= -1e6 && celsius <= 1e6)) return false;
  const t = celsius * 18.0 + 320.0;
  tenths = t < 0.0 ? <i64>(t - 0.5) : <i64>(t + 0.5);
  return true;
}

// ---- The handler -----------------------------------------------------------------------

function logWithTopic(prefix: string, t: usize, n: u32): void {
  let o: usize = LINE;
  for (let i = 0; i < prefix.length; i++) store<u8>(o++, <u8>prefix.charCodeAt(i));
  const m = n < 200 ? n : 200;
  memory.copy(o, t, m);
  log(LOG_ERROR, LINE, <i32>(<u32>(o - LINE) + m));
}

function enrich(t: usize, tn: u32, p: usize, pn: u32): i32 {
  // `<kind>/<device>/telemetry`: split at the first '/', then the suffix.
  const suffix = "/telemetry";
  const sn = <u32>suffix.length;
  let ok = tn > sn && bytesEq(t + <usize>(tn - sn), sn, suffix);
  const rest = tn - sn;
  let slash: u32 = 0;
  if (ok) {
    while (slash < rest && load<u8>(t + <usize>slash) != 0x2f) slash++;
    ok = slash > 0 && slash < rest - 1;
    for (let i = slash + 1; ok && i < rest; i++) {
      if (load<u8>(t + <usize>i) == 0x2f) ok = false;
    }
  }
  if (!ok) {
    logWithTopic("not a <kind>/<device>/telemetry topic: ", t, tn);
    logText(LOG_ERROR, "function failed: unexpected topic (code 11)");
    return BAD_TOPIC;
  }
  if (!object(p, pn)) {
    logWithTopic("telemetry is not a JSON object on ", t, tn);
    logText(LOG_ERROR, "function failed: telemetry is not a JSON object (code 10)");
    return BAD_TELEMETRY;
  }

  let site = SITE;
  let siteLen: i32 = config_get(ascii("site"), 4, SITE, 128);
  if (siteLen == NOT_FOUND) {
    site = ascii("edge");
    siteLen = 4;
  } else if (siteLen < 0) {
    logText(LOG_ERROR, "function failed: config_get failed");
    return siteLen;
  } else if (siteLen > 128) {
    logText(LOG_ERROR, "function failed: config_get: the value is over its 128-byte buffer");
    return BUFFER_TOO_SMALL;
  }

  // temp_f: a number's text only (a string, null, an array... is no temperature).
  let withTemp = false;
  if (hasTemp) {
    const c = load<u8>(p + <usize>tempStart);
    if (c == 0x2d || isDigit(c)) withTemp = fahrenheitTenths(numberValue(p + <usize>tempStart, tempEnd - tempStart));
  }

  outLen = 0;
  outFull = false;
  putBytes(p, close);
  if (!empty) putByte(0x2c);
  putAscii("\"site\":");
  putJsonString(site, <u32>siteLen);
  putAscii(",\"received_ms\":");
  putU64(<u64>now_ms());
  if (withTemp) {
    putAscii(",\"temp_f\":");
    let v = tenths;
    if (v < 0) {
      putByte(0x2d);
      v = -v;
    }
    putU64(<u64>(v / 10));
    putByte(0x2e);
    putByte(<u8>(48 + v % 10));
  }
  putByte(0x7d);
  if (outFull) {
    logText(LOG_ERROR, "function failed: enriched telemetry over 8 KiB (code 12)");
    return TOO_LARGE;
  }

  // telemetry/<kind>/<device>, at most 160 bytes.
  const prefix = "telemetry/";
  const total = <u32>prefix.length + rest;
  if (total > 160) {
    logText(LOG_ERROR, "function failed: device id too long (code 11)");
    return BAD_TOPIC;
  }
  for (let i = 0; i < prefix.length; i++) store<u8>(TOPIC + <usize>i, <u8>prefix.charCodeAt(i));
  memory.copy(TOPIC + <usize>prefix.length, t, rest);
  const rc = emit(TOPIC, <i32>total, OUT, <i32>outLen, EMIT_UPSTREAM);
  if (rc < 0) {
    logText(LOG_ERROR, "function failed: emit failed");
    return rc;
  }
  return 0;
}
