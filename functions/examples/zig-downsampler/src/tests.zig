//! Native tests of the downsampler against the fake host (`zig test
//! src/tests.zig`): robot-telemetry's tests, with exact outputs.
const std = @import("std");
const fake = @import("fake_host.zig");
const ds = @import("downsampler.zig");
const expect = std.testing.expect;
const expectEqual = std.testing.expectEqual;
const expectEqualStrings = std.testing.expectEqualStrings;

test {
    _ = @import("json.zig");
}

const topic = "robots/r-3/telemetry";
var envelope_buf: [16384]u8 = undefined;

fn sendTo(t: []const u8, payload: []const u8) i32 {
    return fake.call(&ds.handle, fake.mqttEnvelope(&envelope_buf, t, payload));
}

fn send(x: f32, y: f32, battery_pct: f32) !void {
    var buf: [256]u8 = undefined;
    const payload = try std.fmt.bufPrint(&buf, "{{\"robot\":\"r-3\",\"ts\":1764160000000,\"x\":{d},\"y\":{d},\"battery_pct\":{d},\"state\":\"moving\"}}", .{ x, y, battery_pct });
    try expectEqual(@as(i32, 0), sendTo(topic, payload));
}

fn count(t: []const u8) usize {
    var out: [0]*const fake.Emit = .{};
    return fake.emitsTo(t, &out);
}

fn positions() usize {
    return count("robots/r-3/position");
}

fn alerts() usize {
    return count("robots/r-3/alert");
}

fn first(t: []const u8) !*const fake.Emit {
    var out: [1]*const fake.Emit = undefined;
    try expect(fake.emitsTo(t, &out) >= 1);
    return out[0];
}

test "the first position is sent upstream" {
    fake.reset();
    try send(1.5, 2.0, 80.0);
    try expectEqual(@as(usize, 1), positions());
    const e = try first("robots/r-3/position");
    try expectEqual(@as(i32, 9), e.flags);
    try expectEqualStrings("{\"robot\":\"r-3\",\"ts\":1764160000000,\"x\":1.5,\"y\":2.0,\"state\":\"moving\"}", e.payload());
    const pos = fake.kv("r-3/pos").?;
    try expectEqual(@as(usize, 8), pos.len);
    try expectEqual(@as(f32, 1.5), @as(f32, @bitCast(std.mem.readInt(u32, pos[0..4], .little))));
    try expectEqual(@as(?i64, 0), fake.counter("r-3/since"));
}

test "the example event sends its position and a battery alert" {
    fake.reset();
    const payload = "{\"robot\": \"r-3\", \"ts\": 1764160000000, \"x\": 1.5, \"y\": 2.0, \"battery_pct\": 17.5, \"state\": \"moving\"}";
    try expectEqual(@as(i32, 0), sendTo(topic, payload));
    try expectEqual(@as(usize, 2), fake.emit_count);
    const alert = try first("robots/r-3/alert");
    try expectEqual(@as(i32, 1), alert.flags);
    try expectEqualStrings("{\"robot\":\"r-3\",\"ts\":1764160000000,\"alert\":\"battery_low\",\"battery_pct\":17.5,\"threshold_pct\":20.0}", alert.payload());
    try expect(fake.kv("r-3/battery_low") != null);
}

test "small moves are not sent" {
    fake.reset();
    try send(0.0, 0.0, 80.0);
    try send(0.3, 0.0, 80.0);
    try send(0.3, 0.3, 80.0);
    try expectEqual(@as(usize, 1), positions());
    try expectEqual(@as(?i64, 2), fake.counter("r-3/since"));
}

test "a move beyond the minimum since the last sent position is sent" {
    fake.reset();
    try send(0.0, 0.0, 80.0);
    try send(0.3, 0.0, 80.0);
    // 0.6 m from the last *sent* position, though only 0.3 m from the last message.
    try send(0.6, 0.0, 80.0);
    try expectEqual(@as(usize, 2), positions());
    try send(0.9, 0.0, 80.0);
    try expectEqual(@as(usize, 2), positions());
}

test "a parked robot still reports every n messages" {
    fake.reset();
    for (0..21) |_| try send(4.0, 4.0, 80.0);
    // Message 1, then the 10th after it (11), then the 10th after that (21).
    try expectEqual(@as(usize, 3), positions());
}

test "downsampling follows the config" {
    fake.reset();
    fake.setConfig("min_move_m", "5");
    fake.setConfig("every_n", " 3 ");
    try send(0.0, 0.0, 80.0);
    try send(3.0, 0.0, 80.0);
    try send(3.0, 3.0, 80.0);
    try expectEqual(@as(usize, 1), positions()); // 4.2 m is under 5 m
    try send(3.0, 3.0, 80.0);
    try expectEqual(@as(usize, 2), positions()); // third message since the last sent one
}

test "a low battery alerts once per crossing" {
    fake.reset();
    try send(0.0, 0.0, 25.0);
    try expectEqual(@as(usize, 0), alerts());
    try send(0.0, 0.0, 19.5);
    try send(0.0, 0.0, 18.0);
    try send(0.0, 0.0, 17.0);
    try expectEqual(@as(usize, 1), alerts());
    try expectEqualStrings("{\"robot\":\"r-3\",\"ts\":1764160000000,\"alert\":\"battery_low\",\"battery_pct\":19.5,\"threshold_pct\":20.0}", (try first("robots/r-3/alert")).payload());
    // Charged, then low again: a new crossing.
    try send(0.0, 0.0, 60.0);
    try expect(fake.kv("r-3/battery_low") == null);
    try send(0.0, 0.0, 15.0);
    try expectEqual(@as(usize, 2), alerts());
}

test "the battery threshold comes from the config" {
    fake.reset();
    fake.setConfig("battery_low_pct", "50");
    try send(0.0, 0.0, 45.0);
    try expectEqual(@as(usize, 1), alerts());
    try expect(std.mem.endsWith(u8, (try first("robots/r-3/alert")).payload(), "\"threshold_pct\":50.0}"));
}

test "robots are tracked separately" {
    fake.reset();
    try send(0.0, 0.0, 10.0);
    try expectEqual(@as(i32, 0), sendTo("robots/r-4/telemetry", "{\"ts\":1,\"x\":0.0,\"y\":0.0,\"battery_pct\":10.0}"));
    try expectEqual(@as(usize, 1), count("robots/r-4/position"));
    try expectEqual(@as(usize, 1), count("robots/r-4/alert"));
    try expectEqual(@as(usize, 1), alerts());
    try expectEqualStrings("{\"robot\":\"r-4\",\"ts\":1,\"x\":0.0,\"y\":0.0,\"state\":\"\"}", (try first("robots/r-4/position")).payload());
}

test "bad json fails the invocation and keeps no state" {
    fake.reset();
    for ([_][]const u8{ "{\"x\":1.0,\"y\":", "{\"ts\":1,\"x\":1,\"y\":2}", "{\"ts\":1.5,\"x\":1,\"y\":2,\"battery_pct\":3}", "{\"ts\":1,\"x\":1,\"y\":2,\"battery_pct\":3} x", "[]" }) |bad| {
        try expectEqual(ds.BAD_TELEMETRY, sendTo(topic, bad));
    }
    try expect(fake.logged("invalid telemetry JSON on robots/r-3/telemetry"));
    try expectEqual(@as(?i64, null), fake.counter("r-3/since"));
    try expectEqual(@as(usize, 0), fake.emit_count);
}

test "unknown fields are skipped and checked" {
    fake.reset();
    try expectEqual(@as(i32, 0), sendTo(topic, " {\"fw\":{\"v\":[1,2e3,null,true,\"a\\\"b\"]},\"ts\":7,\"x\":-1.25,\"y\":0,\"battery_pct\":99} "));
    try expectEqualStrings("{\"robot\":\"r-3\",\"ts\":7,\"x\":-1.25,\"y\":0.0,\"state\":\"\"}", (try first("robots/r-3/position")).payload());
    try expectEqual(ds.BAD_TELEMETRY, sendTo(topic, "{\"fw\":[1,],\"ts\":7,\"x\":1,\"y\":0,\"battery_pct\":99}"));
}

test "unexpected topics and config values are refused" {
    fake.reset();
    const ok = "{\"ts\":1,\"x\":0,\"y\":0,\"battery_pct\":50}";
    try expectEqual(ds.BAD_TOPIC, sendTo("robots/a/b/telemetry", ok));
    try expectEqual(ds.BAD_TOPIC, sendTo("robots//telemetry", ok));
    try expectEqual(ds.BAD_TOPIC, sendTo("vending/r-3/telemetry", ok));
    fake.setConfig("every_n", "ten");
    try expectEqual(ds.BAD_CONFIG, sendTo(topic, ok));
    try expect(fake.logged("every_n"));
    try expectEqual(@as(usize, 0), fake.emit_count);
}

test "a batch is handled message by message" {
    fake.reset();
    const items = [_][]const u8{
        "{\"ts\":1,\"x\":0,\"y\":0,\"battery_pct\":50}",
        "{\"ts\":2,\"x\":0.1,\"y\":0,\"battery_pct\":50}",
        "{\"ts\":3,\"x\":5,\"y\":0,\"battery_pct\":10}",
    };
    try expectEqual(@as(i32, 0), fake.call(&ds.handle, fake.mqttBatch(&envelope_buf, topic, &items)));
    try expectEqual(@as(usize, 2), positions());
    try expectEqual(@as(usize, 1), alerts());
}
