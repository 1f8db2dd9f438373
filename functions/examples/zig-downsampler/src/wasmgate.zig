//! The wasmgate function ABI, version 1, for Zig (functions/abi/README.md).
//!
//! On wasm32 the host functions are imports of module "wasmgate"
//! (`extern "wasmgate" fn`); anywhere else (`zig test` natively) the same
//! names resolve to `fake_host.zig`, chosen at comptime, so a function is
//! tested natively without changing a line. Also here: statuses, flags,
//! and a decoder of the event envelope (postcard) for MQTT messages and
//! batches of them.
const std = @import("std");
const builtin = @import("builtin");

pub const is_wasm = builtin.target.cpu.arch.isWasm();

/// The raw imports: pointers are i32 offsets in wasm32 memory.
pub const raw = if (is_wasm) struct {
    pub extern "wasmgate" fn event_read(dst: [*]u8, cap: i32) i32;
    pub extern "wasmgate" fn emit(topic: [*]const u8, topic_len: i32, payload: [*]const u8, payload_len: i32, flags: i32) i32;
    pub extern "wasmgate" fn kv_get(key: [*]const u8, key_len: i32, dst: [*]u8, cap: i32) i32;
    pub extern "wasmgate" fn kv_put(key: [*]const u8, key_len: i32, value: [*]const u8, value_len: i32) i32;
    pub extern "wasmgate" fn kv_delete(key: [*]const u8, key_len: i32) i32;
    pub extern "wasmgate" fn kv_increment(key: [*]const u8, key_len: i32, delta: i64, dst: [*]u8) i32;
    pub extern "wasmgate" fn log(level: i32, msg: [*]const u8, msg_len: i32) void;
    pub extern "wasmgate" fn now_ms() i64;
    pub extern "wasmgate" fn config_get(key: [*]const u8, key_len: i32, dst: [*]u8, cap: i32) i32;
    pub extern "wasmgate" fn metric(name: [*]const u8, name_len: i32, kind: i32, value: f64) i32;
} else @import("fake_host.zig");

// Statuses (negative host-call results).
pub const OK: i32 = 0;
pub const NOT_FOUND: i32 = -1;
pub const INVALID_ARGUMENT: i32 = -2;
pub const DENIED: i32 = -3;
pub const NOT_A_NUMBER: i32 = -4;
pub const UNAVAILABLE: i32 = -5;

// emit flags: bits 0-1 QoS, bit 2 retain, bit 3 upstream.
pub const RETAIN: i32 = 1 << 2;
pub const UPSTREAM: i32 = 1 << 3;
pub const EMIT_LOCAL: i32 = 1; // QoS 1, local broker
pub const EMIT_UPSTREAM: i32 = 1 | UPSTREAM; // 9: QoS 1, through the outbox

pub const LogLevel = enum(i32) { err = 0, warn = 1, info = 2, debug = 3, trace = 4 };
pub const MetricKind = enum(i32) { counter = 0, gauge = 1, histogram = 2 };

/// Event kinds: the variant index of `Event`.
pub const EventKind = enum(u32) { mqtt = 0, schedule = 1, http = 2, file = 3, kv_change = 4, invoke = 5, batch = 6, websocket = 7, _ };

/// A host call that returned a status; its code is the status.
pub const HostError = error{HostCall};

fn len32(s: []const u8) i32 {
    return @intCast(s.len);
}

// ---- Typed wrappers ------------------------------------------------------

pub fn eventRead(buf: []u8) i32 {
    return raw.event_read(buf.ptr, len32(buf));
}

pub fn emit(topic: []const u8, payload: []const u8, flags: i32) i32 {
    return raw.emit(topic.ptr, len32(topic), payload.ptr, len32(payload), flags);
}

/// Copy-out: the value's length (copied only if it fits `buf`), or a status.
pub fn kvGet(key: []const u8, buf: []u8) i32 {
    return raw.kv_get(key.ptr, len32(key), buf.ptr, len32(buf));
}

pub fn kvPut(key: []const u8, value: []const u8) i32 {
    return raw.kv_put(key.ptr, len32(key), value.ptr, len32(value));
}

pub fn kvDelete(key: []const u8) i32 {
    return raw.kv_delete(key.ptr, len32(key));
}

/// Adds `delta` to a counter; the new value, or a status as the error.
pub fn kvIncrement(key: []const u8, delta: i64, status: *i32) ?i64 {
    var out: [8]u8 = undefined;
    const rc = raw.kv_increment(key.ptr, len32(key), delta, &out);
    if (rc < 0) {
        status.* = rc;
        return null;
    }
    return std.mem.readInt(i64, &out, .little);
}

pub fn log(level: LogLevel, msg: []const u8) void {
    raw.log(@intFromEnum(level), msg.ptr, len32(msg));
}

pub fn nowMs() i64 {
    return raw.now_ms();
}

pub fn configGet(key: []const u8, buf: []u8) i32 {
    return raw.config_get(key.ptr, len32(key), buf.ptr, len32(buf));
}

pub fn metric(name: []const u8, kind: MetricKind, value: f64) i32 {
    return raw.metric(name.ptr, len32(name), @intFromEnum(kind), value);
}

// ---- The envelope (postcard) --------------------------------------------

/// Walks postcard bytes; a read past the end sets `failed` and yields zeros.
pub const Reader = struct {
    bytes: []const u8,
    at: usize = 0,
    failed: bool = false,

    pub fn done(r: *const Reader) bool {
        return r.failed or r.at >= r.bytes.len;
    }

    pub fn byte(r: *Reader) u8 {
        if (r.failed or r.at >= r.bytes.len) {
            r.failed = true;
            return 0;
        }
        r.at += 1;
        return r.bytes[r.at - 1];
    }

    pub fn boolean(r: *Reader) bool {
        const b = r.byte();
        if (b > 1) r.failed = true;
        return b == 1;
    }

    /// Unsigned LEB128 (u32, u64).
    pub fn varint(r: *Reader) u64 {
        var value: u64 = 0;
        var shift: u7 = 0;
        while (shift < 70) : (shift += 7) {
            const b = r.byte();
            if (r.failed) return 0;
            if (shift == 63 and b > 1) break;
            value |= @as(u64, b & 0x7f) << @intCast(shift);
            if (b & 0x80 == 0) return value;
        }
        r.failed = true;
        return 0;
    }

    /// `str` / `bytes`: a length, then the bytes (borrowed, not copied).
    pub fn bytesField(r: *Reader) []const u8 {
        const len = r.varint();
        if (r.failed) return &.{};
        if (len > r.bytes.len - r.at) {
            r.failed = true;
            return &.{};
        }
        const start = r.at;
        r.at += @intCast(len);
        return r.bytes[start..r.at];
    }
};

pub const Context = struct {
    request_id: u64,
    function: []const u8,
    version: []const u8,
    attempt: u32,
    deadline_ms: u64,
};

/// MqttMessage = topic:str payload:bytes qos:u8 retain:bool user_properties:Seq<Pair>
pub const MqttMessage = struct {
    topic: []const u8,
    payload: []const u8,
    qos: u8,
    retain: bool,
    user_properties: []const u8,

    pub fn read(r: *Reader) ?MqttMessage {
        const m = MqttMessage{
            .topic = r.bytesField(),
            .payload = r.bytesField(),
            .qos = r.byte(),
            .retain = r.boolean(),
            .user_properties = r.bytesField(),
        };
        return if (r.failed) null else m;
    }
};

pub const Envelope = struct {
    context: Context,
    kind: EventKind,
    /// At the event's fields; for a batch, over its items.
    fields: Reader,

    pub fn decode(bytes: []const u8) ?Envelope {
        var r = Reader{ .bytes = bytes };
        const context = Context{
            .request_id = r.varint(),
            .function = r.bytesField(),
            .version = r.bytesField(),
            .attempt = @truncate(r.varint()),
            .deadline_ms = r.varint(),
        };
        const kind: EventKind = @enumFromInt(@as(u32, @truncate(r.varint())));
        if (r.failed) return null;
        if (kind == .batch) {
            const items = r.bytesField();
            if (r.failed) return null;
            return .{ .context = context, .kind = kind, .fields = .{ .bytes = items } };
        }
        return .{ .context = context, .kind = kind, .fields = r };
    }

    /// The MQTT messages of this envelope: one, or a batch's items in
    /// order. Any other kind of event ends the walk with `failed`.
    pub fn mqttMessages(env: Envelope) MqttIterator {
        return .{ .items = env.fields, .batch = env.kind == .batch, .kind = env.kind };
    }
};

pub const MqttIterator = struct {
    items: Reader,
    batch: bool,
    kind: EventKind,
    single_done: bool = false,
    failed: bool = false,

    pub fn next(it: *MqttIterator) ?MqttMessage {
        if (it.failed) return null;
        if (!it.batch) {
            if (it.single_done) return null;
            it.single_done = true;
            if (it.kind != .mqtt) {
                it.failed = true;
                return null;
            }
            return MqttMessage.read(&it.items) orelse {
                it.failed = true;
                return null;
            };
        }
        if (it.items.done()) return null;
        if (it.items.varint() != @intFromEnum(EventKind.mqtt)) {
            it.failed = true;
            return null;
        }
        return MqttMessage.read(&it.items) orelse {
            it.failed = true;
            return null;
        };
    }
};
