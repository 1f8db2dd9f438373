//! A fake wasmgate host for native tests: the imports `wasmgate.zig`
//! declares, as plain Zig functions over in-memory state. Like the gateway,
//! `call` keeps an invocation's emits and KV writes only if it returns 0;
//! `kv_get` sees the invocation's own writes. Fixed-size tables, no allocator.
const std = @import("std");

pub const max = 64;

pub const Emit = struct {
    topic_buf: [256]u8 = undefined,
    topic_len: usize = 0,
    payload_buf: [1024]u8 = undefined,
    payload_len: usize = 0,
    flags: i32 = 0,

    pub fn topic(e: *const Emit) []const u8 {
        return e.topic_buf[0..e.topic_len];
    }
    pub fn payload(e: *const Emit) []const u8 {
        return e.payload_buf[0..e.payload_len];
    }
};

const Entry = struct {
    key_buf: [256]u8 = undefined,
    key_len: usize = 0,
    value_buf: [256]u8 = undefined,
    value_len: usize = 0,
    used: bool = false,

    fn key(e: *const Entry) []const u8 {
        return e.key_buf[0..e.key_len];
    }
};

const Store = [max]Entry;

var committed: Store = [_]Entry{.{}} ** max;
var staged: Store = [_]Entry{.{}} ** max;
pub var emits: [max]Emit = undefined;
pub var emit_count: usize = 0;
var staged_emits: [max]Emit = undefined;
var staged_emit_count: usize = 0;
var config_keys: [8][]const u8 = undefined;
var config_values: [8][]const u8 = undefined;
var config_count: usize = 0;
pub var logs: [max][256]u8 = undefined;
pub var log_lens: [max]usize = undefined;
pub var log_count: usize = 0;
var event: []const u8 = &.{};

pub fn reset() void {
    committed = [_]Entry{.{}} ** max;
    emit_count = 0;
    config_count = 0;
    log_count = 0;
}

/// `key` and `value` must outlive the test (string literals).
pub fn setConfig(key: []const u8, value: []const u8) void {
    config_keys[config_count] = key;
    config_values[config_count] = value;
    config_count += 1;
}

pub fn call(handle: *const fn (i32) callconv(.c) i32, envelope: []const u8) i32 {
    event = envelope;
    staged = committed;
    staged_emit_count = 0;
    const rc = handle(@intCast(envelope.len));
    if (rc == 0) {
        committed = staged;
        for (staged_emits[0..staged_emit_count]) |e| {
            emits[emit_count] = e;
            emit_count += 1;
        }
    }
    return rc;
}

/// The committed emits to `topic`, into `out`; how many.
pub fn emitsTo(topic: []const u8, out: []*const Emit) usize {
    var n: usize = 0;
    for (emits[0..emit_count]) |*e| {
        if (std.mem.eql(u8, e.topic(), topic)) {
            if (n < out.len) out[n] = e;
            n += 1;
        }
    }
    return n;
}

pub fn kv(key: []const u8) ?[]const u8 {
    const e = find(&committed, key) orelse return null;
    return e.value_buf[0..e.value_len];
}

pub fn counter(key: []const u8) ?i64 {
    const v = kv(key) orelse return null;
    if (v.len != 8) return null;
    return std.mem.readInt(i64, v[0..8], .little);
}

pub fn logged(needle: []const u8) bool {
    for (0..log_count) |i| {
        if (std.mem.indexOf(u8, logs[i][0..log_lens[i]], needle) != null) return true;
    }
    return false;
}

// ---- envelopes ----

fn varint(out: []u8, value: u64) usize {
    var v = value;
    var n: usize = 0;
    while (true) {
        const b: u8 = @intCast(v & 0x7f);
        v >>= 7;
        out[n] = if (v != 0) b | 0x80 else b;
        n += 1;
        if (v == 0) return n;
    }
}

fn bytes(out: []u8, b: []const u8) usize {
    const n = varint(out, b.len);
    @memcpy(out[n..][0..b.len], b);
    return n + b.len;
}

fn context(out: []u8) usize {
    var n = varint(out, 1); // request_id
    n += bytes(out[n..], "f"); // function
    n += bytes(out[n..], "v1"); // version
    n += varint(out[n..], 1); // attempt
    n += varint(out[n..], 1764160000000); // deadline_ms
    return n;
}

fn mqttFields(out: []u8, topic: []const u8, payload: []const u8) usize {
    var n = bytes(out, topic);
    n += bytes(out[n..], payload);
    out[n] = 1; // qos
    out[n + 1] = 0; // retain
    out[n + 2] = 0; // user_properties: none
    return n + 3;
}

/// The envelope of one MQTT message, in `out`.
pub fn mqttEnvelope(out: []u8, topic: []const u8, payload: []const u8) []const u8 {
    var n = context(out);
    n += varint(out[n..], 0); // Event::Mqtt
    n += mqttFields(out[n..], topic, payload);
    return out[0..n];
}

/// A batch of MQTT messages on one topic, in `out`.
pub fn mqttBatch(out: []u8, topic: []const u8, payloads: []const []const u8) []const u8 {
    var items: [8192]u8 = undefined;
    var m: usize = 0;
    for (payloads) |p| {
        m += varint(items[m..], 0);
        m += mqttFields(items[m..], topic, p);
    }
    var n = context(out);
    n += varint(out[n..], 6); // Event::Batch
    n += bytes(out[n..], items[0..m]);
    return out[0..n];
}

// ---- the imports (signatures as in wasmgate.zig's `raw`) ----

fn find(s: *Store, key: []const u8) ?*Entry {
    for (s) |*e| {
        if (e.used and std.mem.eql(u8, e.key(), key)) return e;
    }
    return null;
}

fn findOrAdd(s: *Store, key: []const u8) *Entry {
    if (find(s, key)) |e| return e;
    for (s) |*e| {
        if (!e.used) {
            e.* = .{ .used = true, .key_len = key.len };
            @memcpy(e.key_buf[0..key.len], key);
            return e;
        }
    }
    @panic("fake host: KV full");
}

fn copyOut(value: []const u8, dst: [*]u8, cap: i32) i32 {
    if (value.len <= cap) @memcpy(dst[0..value.len], value);
    return @intCast(value.len);
}

fn validKey(len: i32) bool {
    return len >= 1 and len <= 256;
}

pub fn event_read(dst: [*]u8, cap: i32) i32 {
    return copyOut(event, dst, cap);
}

pub fn emit(topic: [*]const u8, topic_len: i32, payload: [*]const u8, payload_len: i32, flags: i32) i32 {
    if (flags & ~@as(i32, 15) != 0 or flags & 3 == 3 or topic_len < 1) return -2;
    const t = topic[0..@intCast(topic_len)];
    const p = payload[0..@intCast(payload_len)];
    var e = &staged_emits[staged_emit_count];
    staged_emit_count += 1;
    e.* = .{ .topic_len = t.len, .payload_len = p.len, .flags = flags };
    @memcpy(e.topic_buf[0..t.len], t);
    @memcpy(e.payload_buf[0..p.len], p);
    return 0;
}

pub fn kv_get(key: [*]const u8, key_len: i32, dst: [*]u8, cap: i32) i32 {
    if (!validKey(key_len)) return -2;
    const e = find(&staged, key[0..@intCast(key_len)]) orelse return -1;
    return copyOut(e.value_buf[0..e.value_len], dst, cap);
}

pub fn kv_put(key: [*]const u8, key_len: i32, value: [*]const u8, value_len: i32) i32 {
    if (!validKey(key_len)) return -2;
    const e = findOrAdd(&staged, key[0..@intCast(key_len)]);
    const v = value[0..@intCast(value_len)];
    @memcpy(e.value_buf[0..v.len], v);
    e.value_len = v.len;
    return 0;
}

pub fn kv_delete(key: [*]const u8, key_len: i32) i32 {
    if (!validKey(key_len)) return -2;
    if (find(&staged, key[0..@intCast(key_len)])) |e| e.used = false;
    return 0;
}

pub fn kv_increment(key: [*]const u8, key_len: i32, delta: i64, dst: [*]u8) i32 {
    if (!validKey(key_len)) return -2;
    const k = key[0..@intCast(key_len)];
    var n: i64 = 0;
    if (find(&staged, k)) |e| {
        if (e.value_len != 8) return -4;
        n = std.mem.readInt(i64, e.value_buf[0..8], .little);
    }
    n +%= delta;
    const e = findOrAdd(&staged, k);
    std.mem.writeInt(i64, e.value_buf[0..8], n, .little);
    e.value_len = 8;
    @memcpy(dst[0..8], e.value_buf[0..8]);
    return 0;
}

pub fn log(level: i32, msg: [*]const u8, msg_len: i32) void {
    _ = level;
    if (log_count == max) return;
    const m = msg[0..@min(@as(usize, @intCast(msg_len)), 256)];
    @memcpy(logs[log_count][0..m.len], m);
    log_lens[log_count] = m.len;
    log_count += 1;
}

pub fn now_ms() i64 {
    return 1764160000123;
}

pub fn config_get(key: [*]const u8, key_len: i32, dst: [*]u8, cap: i32) i32 {
    const k = key[0..@intCast(key_len)];
    for (0..config_count) |i| {
        if (std.mem.eql(u8, config_keys[i], k)) return copyOut(config_values[i], dst, cap);
    }
    return -1;
}

pub fn metric(name: [*]const u8, name_len: i32, kind: i32, value: f64) i32 {
    _ = name;
    _ = value;
    return if (kind >= 0 and kind <= 2 and name_len > 0) 0 else -2;
}
