//! Robot telemetry downsampler in Zig: robot-telemetry (Rust) ported to
//! Zig against the wasmgate ABI, wasm32-freestanding, no WASI.
//!
//! Robots publish to `robots/<id>/telemetry`:
//!
//!   {"robot":"r-3","ts":1764160000000,"x":1.5,"y":2.0,"battery_pct":17.5,"state":"moving"}
//!
//! - The position goes upstream to `robots/<id>/position` (QoS 1) only when
//!   the robot moved more than `min_move_m` (config, default 0.5) since the
//!   last position sent, or when `every_n` messages (config, default 10)
//!   arrived since then; the first message always goes:
//!     {"robot":"r-3","ts":1764160000000,"x":1.5,"y":2.0,"state":"moving"}
//! - A battery alert goes to `robots/<id>/alert` (local broker) when the
//!   battery drops below `battery_low_pct` (config, default 20), once per
//!   crossing:
//!     {"robot":"r-3","ts":..,"alert":"battery_low","battery_pct":17.5,"threshold_pct":20.0}
//!
//! State per robot in KV, as the Rust version keeps it (so either module
//! can take over from the other): `<id>/pos` (x, y of the last sent
//! position, two f32 little-endian), `<id>/since` (a counter),
//! `<id>/battery_low` (present while the alert is raised).
//!
//! Return codes: 10 bad telemetry, 11 unexpected topic, 12 bad config
//! value, 101 event over the buffer, 102 envelope does not decode, or the
//! negative status of a failed host call.
const std = @import("std");
const wg = @import("wasmgate.zig");
const json = @import("json.zig");

pub const BAD_TELEMETRY: i32 = 10;
pub const BAD_TOPIC: i32 = 11;
pub const BAD_CONFIG: i32 = 12;
pub const EVENT_TOO_BIG: i32 = 101;
pub const BAD_ENVELOPE: i32 = 102;

const default_min_move_m: f32 = 0.5;
const default_every_n: i64 = 10;
const default_battery_low_pct: f32 = 20.0;

/// The envelope is read here (a static buffer: nothing is allocated).
var event_buf: [65536]u8 = undefined;

comptime {
    if (wg.is_wasm) {
        @export(&abiVersion, .{ .name = "wasmgate_abi_version" });
        @export(&handle, .{ .name = "wasmgate_handle" });
    }
}

fn abiVersion() callconv(.c) i32 {
    return 1;
}

/// Ends an invocation: a code to return, after logging why.
const Fail = error{Fail};

const Call = struct {
    code: i32 = 0,

    fn fail(c: *Call, code: i32, msg: []const u8) Fail {
        wg.log(.err, msg);
        c.code = code;
        return error.Fail;
    }

    /// A host call's result, or a failure with its status.
    fn check(c: *Call, rc: i32, what: []const u8) Fail!i32 {
        if (rc < 0) return c.fail(rc, what);
        return rc;
    }
};

pub fn handle(event_len: i32) callconv(.c) i32 {
    if (event_len < 0 or event_len > event_buf.len) {
        wg.log(.err, "function failed: the event is over its event buffer");
        return EVENT_TOO_BIG;
    }
    const n = wg.eventRead(&event_buf);
    if (n < 0 or n > event_buf.len) {
        wg.log(.err, "function failed: the event is over its event buffer");
        return EVENT_TOO_BIG;
    }
    const env = wg.Envelope.decode(event_buf[0..@intCast(n)]) orelse {
        wg.log(.err, "function failed: the event envelope does not decode");
        return BAD_ENVELOPE;
    };
    var call = Call{};
    var messages = env.mqttMessages();
    while (messages.next()) |msg| {
        onTelemetry(&call, msg.topic, msg.payload) catch return call.code;
    }
    if (messages.failed) {
        wg.log(.err, "function failed: zig-downsampler handles MQTT messages only");
        return BAD_ENVELOPE;
    }
    return 0;
}

const Telemetry = struct {
    ts: u64 = 0,
    x: f32 = 0,
    y: f32 = 0,
    battery_pct: f32 = 0,
    state: []const u8 = "",
};

fn float(s: *json.Scanner) ?f32 {
    const text = s.number() orelse return null;
    const v = json.numberValue(text);
    if (!(v > -1e9 and v < 1e9)) return null;
    return @floatCast(v);
}

fn parseTelemetry(payload: []const u8) ?Telemetry {
    var s = json.Scanner{ .text = payload };
    var t = Telemetry{};
    var seen = [_]bool{false} ** 4;
    if (!s.eat('{')) return null;
    if (!s.peekIs('}')) while (true) {
        const name = s.string() orelse return null;
        if (!s.eat(':')) return null;
        if (std.mem.eql(u8, name, "ts")) {
            const text = s.number() orelse return null;
            t.ts = std.fmt.parseInt(u64, text, 10) catch return null;
            seen[0] = true;
        } else if (std.mem.eql(u8, name, "x")) {
            t.x = float(&s) orelse return null;
            seen[1] = true;
        } else if (std.mem.eql(u8, name, "y")) {
            t.y = float(&s) orelse return null;
            seen[2] = true;
        } else if (std.mem.eql(u8, name, "battery_pct")) {
            t.battery_pct = float(&s) orelse return null;
            seen[3] = true;
        } else if (std.mem.eql(u8, name, "state")) {
            t.state = s.string() orelse return null;
        } else if (!s.skip(1)) return null;
        if (!s.comma()) break;
    };
    if (!s.eat('}') or !s.atEnd()) return null;
    for (seen) |ok| if (!ok) return null;
    return t;
}

/// `robots/<id>/telemetry` -> `<id>`.
fn robotOf(topic: []const u8) ?[]const u8 {
    const prefix = "robots/";
    const suffix = "/telemetry";
    if (!std.mem.startsWith(u8, topic, prefix) or !std.mem.endsWith(u8, topic, suffix)) return null;
    if (topic.len <= prefix.len + suffix.len) return null;
    const robot = topic[prefix.len .. topic.len - suffix.len];
    if (std.mem.indexOfScalar(u8, robot, '/') != null) return null;
    return robot;
}

/// A config value with surrounding spaces trimmed, or null if unset.
fn configText(c: *Call, key: []const u8, buf: []u8) Fail!?[]const u8 {
    const n = wg.configGet(key, buf);
    if (n == wg.NOT_FOUND) return null;
    if (n < 0) return c.fail(n, "function failed: config_get");
    if (n > buf.len) return c.fail(BAD_CONFIG, key);
    return std.mem.trim(u8, buf[0..@intCast(n)], " ");
}

fn configF32(c: *Call, key: []const u8, default: f32) Fail!f32 {
    var buf: [64]u8 = undefined;
    const text = try configText(c, key, &buf) orelse return default;
    var s = json.Scanner{ .text = text };
    const num = s.number() orelse return c.fail(BAD_CONFIG, key);
    if (s.at != text.len) return c.fail(BAD_CONFIG, key);
    return @floatCast(json.numberValue(num));
}

fn configI64(c: *Call, key: []const u8, default: i64) Fail!i64 {
    var buf: [64]u8 = undefined;
    const text = try configText(c, key, &buf) orelse return default;
    // Digits with an optional sign, as Rust's `i64::from_str` takes them.
    if (std.mem.indexOfScalar(u8, text, '_') != null) return c.fail(BAD_CONFIG, key);
    return std.fmt.parseInt(i64, text, 10) catch c.fail(BAD_CONFIG, key);
}

/// `parts` joined into `buf` (128 bytes, as the Rust version allows).
fn join(c: *Call, buf: *[128]u8, parts: []const []const u8) Fail![]const u8 {
    var o = json.Out{ .buf = buf };
    for (parts) |p| o.bytes(p);
    if (o.full) return c.fail(1, "function failed: robot id too long");
    return o.slice();
}

fn logParts(a: []const u8, b: []const u8) void {
    var buf: [256]u8 = undefined;
    var o = json.Out{ .buf = &buf };
    o.bytes(a);
    o.bytes(b[0..@min(b.len, 200)]);
    wg.log(.err, o.slice());
}

fn onTelemetry(c: *Call, topic: []const u8, payload: []const u8) Fail!void {
    const robot = robotOf(topic) orelse {
        logParts("not a robots/<id>/telemetry topic: ", topic);
        return c.fail(BAD_TOPIC, "function failed: unexpected topic (code 11)");
    };
    const t = parseTelemetry(payload) orelse {
        logParts("invalid telemetry JSON on ", topic);
        return c.fail(BAD_TELEMETRY, "function failed: telemetry is not valid JSON (code 10)");
    };
    try downsamplePosition(c, robot, t);
    try batteryAlert(c, robot, t);
}

fn downsamplePosition(c: *Call, robot: []const u8, t: Telemetry) Fail!void {
    const min_move_m = try configF32(c, "min_move_m", default_min_move_m);
    const every_n = try configI64(c, "every_n", default_every_n);
    var pos_buf: [128]u8 = undefined;
    var since_buf: [128]u8 = undefined;
    const pos_key = try join(c, &pos_buf, &.{ robot, "/pos" });
    const since_key = try join(c, &since_buf, &.{ robot, "/since" });

    var status: i32 = 0;
    const since = wg.kvIncrement(since_key, 1, &status) orelse return c.fail(status, "function failed: kv_increment");
    var last: [8]u8 = undefined;
    const got = wg.kvGet(pos_key, &last);
    if (got < 0 and got != wg.NOT_FOUND) return c.fail(got, "function failed: kv_get");
    const moved = if (got == 8) blk: {
        const dx = t.x - @as(f32, @bitCast(std.mem.readInt(u32, last[0..4], .little)));
        const dy = t.y - @as(f32, @bitCast(std.mem.readInt(u32, last[4..8], .little)));
        break :blk dx * dx + dy * dy > min_move_m * min_move_m;
    } else true; // never sent (or unreadable): send this one
    if (!moved and since < every_n) return;

    var out_buf: [256]u8 = undefined;
    var o = json.Out{ .buf = &out_buf };
    o.bytes("{\"robot\":\"");
    o.bytes(robot);
    o.bytes("\",\"ts\":");
    o.uint(t.ts);
    o.bytes(",\"x\":");
    o.float(t.x);
    o.bytes(",\"y\":");
    o.float(t.y);
    o.bytes(",\"state\":\"");
    o.bytes(t.state);
    o.bytes("\"}");
    if (o.full) return c.fail(1, "function failed: position JSON over its buffer");
    var topic_buf: [128]u8 = undefined;
    const to = try join(c, &topic_buf, &.{ "robots/", robot, "/position" });
    _ = try c.check(wg.emit(to, o.slice(), wg.EMIT_UPSTREAM), "function failed: emit");

    var pos: [8]u8 = undefined;
    std.mem.writeInt(u32, pos[0..4], @bitCast(t.x), .little);
    std.mem.writeInt(u32, pos[4..8], @bitCast(t.y), .little);
    _ = try c.check(wg.kvPut(pos_key, &pos), "function failed: kv_put");
    // Back to zero, as an increment so that it composes with concurrent ones.
    _ = wg.kvIncrement(since_key, -since, &status) orelse return c.fail(status, "function failed: kv_increment");
}

fn batteryAlert(c: *Call, robot: []const u8, t: Telemetry) Fail!void {
    const threshold_pct = try configF32(c, "battery_low_pct", default_battery_low_pct);
    var flag_buf: [128]u8 = undefined;
    const flag_key = try join(c, &flag_buf, &.{ robot, "/battery_low" });
    var flag: [1]u8 = undefined;
    const got = wg.kvGet(flag_key, &flag);
    if (got < 0 and got != wg.NOT_FOUND) return c.fail(got, "function failed: kv_get");
    const raised = got >= 0;
    const low = t.battery_pct < threshold_pct;

    if (low and !raised) {
        var out_buf: [256]u8 = undefined;
        var o = json.Out{ .buf = &out_buf };
        o.bytes("{\"robot\":\"");
        o.bytes(robot);
        o.bytes("\",\"ts\":");
        o.uint(t.ts);
        o.bytes(",\"alert\":\"battery_low\",\"battery_pct\":");
        o.float(t.battery_pct);
        o.bytes(",\"threshold_pct\":");
        o.float(threshold_pct);
        o.bytes("}");
        if (o.full) return c.fail(1, "function failed: alert JSON over its buffer");
        var topic_buf: [128]u8 = undefined;
        const to = try join(c, &topic_buf, &.{ "robots/", robot, "/alert" });
        _ = try c.check(wg.emit(to, o.slice(), wg.EMIT_LOCAL), "function failed: emit");
        _ = try c.check(wg.kvPut(flag_key, &[_]u8{1}), "function failed: kv_put");
    } else if (!low and raised) {
        _ = try c.check(wg.kvDelete(flag_key), "function failed: kv_delete");
    }
}
