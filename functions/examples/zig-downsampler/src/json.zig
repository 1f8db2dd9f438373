//! A small JSON scanner for telemetry: checks the grammar (RFC 8259 tokens,
//! nesting up to `max_depth`), reads the fields it is asked for, skips the
//! rest. Strings come back as written between their quotes (escapes not
//! decoded). Plus the number conversions the function needs, without
//! std.fmt's float tables (they would triple the module).
const std = @import("std");

pub const max_depth = 32;

pub const Scanner = struct {
    text: []const u8,
    at: usize = 0,
    bad: bool = false,

    pub fn ws(s: *Scanner) void {
        while (s.at < s.text.len) : (s.at += 1) {
            switch (s.text[s.at]) {
                ' ', '\n', '\r', '\t' => {},
                else => return,
            }
        }
    }

    pub fn peekIs(s: *Scanner, c: u8) bool {
        s.ws();
        return s.at < s.text.len and s.text[s.at] == c;
    }

    pub fn eat(s: *Scanner, c: u8) bool {
        if (s.peekIs(c)) {
            s.at += 1;
            return true;
        }
        s.bad = true;
        return false;
    }

    /// `,` then true, or false (the end of a list).
    pub fn comma(s: *Scanner) bool {
        if (s.peekIs(',')) {
            s.at += 1;
            return true;
        }
        return false;
    }

    fn fail(s: *Scanner) ?[]const u8 {
        s.bad = true;
        return null;
    }

    pub fn string(s: *Scanner) ?[]const u8 {
        if (!s.eat('"')) return null;
        const start = s.at;
        while (s.at < s.text.len) : (s.at += 1) {
            const c = s.text[s.at];
            if (c == '"') {
                s.at += 1;
                return s.text[start .. s.at - 1];
            }
            if (c < 0x20) return s.fail();
            if (c == '\\') {
                s.at += 1;
                if (s.at >= s.text.len) return s.fail();
                switch (s.text[s.at]) {
                    '"', '\\', '/', 'b', 'f', 'n', 'r', 't' => {},
                    'u' => {
                        for (0..4) |_| {
                            s.at += 1;
                            if (s.at >= s.text.len or !std.ascii.isHex(s.text[s.at])) return s.fail();
                        }
                    },
                    else => return s.fail(),
                }
            }
        }
        return s.fail();
    }

    fn digit(s: *Scanner) bool {
        return s.at < s.text.len and s.text[s.at] >= '0' and s.text[s.at] <= '9';
    }

    fn digits(s: *Scanner) bool {
        if (!s.digit()) return false;
        while (s.digit()) s.at += 1;
        return true;
    }

    /// A number token, as written.
    pub fn number(s: *Scanner) ?[]const u8 {
        s.ws();
        const start = s.at;
        if (s.at < s.text.len and s.text[s.at] == '-') s.at += 1;
        if (!s.digit()) return s.fail();
        if (s.text[s.at] == '0') s.at += 1 else _ = s.digits();
        if (s.at < s.text.len and s.text[s.at] == '.') {
            s.at += 1;
            if (!s.digits()) return s.fail();
        }
        if (s.at < s.text.len and (s.text[s.at] == 'e' or s.text[s.at] == 'E')) {
            s.at += 1;
            if (s.at < s.text.len and (s.text[s.at] == '+' or s.text[s.at] == '-')) s.at += 1;
            if (!s.digits()) return s.fail();
        }
        return s.text[start..s.at];
    }

    pub fn literal(s: *Scanner, comptime word: []const u8) bool {
        s.ws();
        if (s.text.len - s.at >= word.len and std.mem.eql(u8, s.text[s.at..][0..word.len], word)) {
            s.at += word.len;
            return true;
        }
        s.bad = true;
        return false;
    }

    /// Any value, checked and skipped.
    pub fn skip(s: *Scanner, depth: u32) bool {
        s.ws();
        if (s.at >= s.text.len or depth > max_depth) {
            s.bad = true;
            return false;
        }
        switch (s.text[s.at]) {
            '"' => return s.string() != null,
            't' => return s.literal("true"),
            'f' => return s.literal("false"),
            'n' => return s.literal("null"),
            '[' => {
                s.at += 1;
                if (s.peekIs(']')) {
                    s.at += 1;
                    return true;
                }
                while (true) {
                    if (!s.skip(depth + 1)) return false;
                    if (!s.comma()) break;
                }
                return s.eat(']');
            },
            '{' => {
                s.at += 1;
                if (s.peekIs('}')) {
                    s.at += 1;
                    return true;
                }
                while (true) {
                    if (s.string() == null or !s.eat(':') or !s.skip(depth + 1)) return false;
                    if (!s.comma()) break;
                }
                return s.eat('}');
            },
            else => return s.number() != null,
        }
    }

    /// Only whitespace left.
    pub fn atEnd(s: *Scanner) bool {
        s.ws();
        return !s.bad and s.at == s.text.len;
    }
};

const pow10 = [_]f64{ 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22 };

/// The value of a number token (checked by `Scanner.number`); correctly
/// rounded while it has at most 19 significant digits and a decimal
/// exponent within 22, which covers what sensors send.
pub fn numberValue(t: []const u8) f64 {
    var i: usize = 0;
    var neg = false;
    if (i < t.len and t[i] == '-') {
        neg = true;
        i += 1;
    }
    var mant: u64 = 0;
    var ndigits: u32 = 0;
    var exp10: i32 = 0;
    while (i < t.len and std.ascii.isDigit(t[i])) : (i += 1) {
        if (ndigits < 19) {
            mant = mant * 10 + (t[i] - '0');
            if (mant != 0) ndigits += 1;
        } else exp10 += 1;
    }
    if (i < t.len and t[i] == '.') {
        i += 1;
        while (i < t.len and std.ascii.isDigit(t[i])) : (i += 1) {
            if (ndigits < 19) {
                mant = mant * 10 + (t[i] - '0');
                if (mant != 0) ndigits += 1;
                exp10 -= 1;
            }
        }
    }
    if (i < t.len and (t[i] == 'e' or t[i] == 'E')) {
        i += 1;
        var eneg = false;
        if (i < t.len and (t[i] == '+' or t[i] == '-')) {
            eneg = t[i] == '-';
            i += 1;
        }
        var e: i32 = 0;
        while (i < t.len and std.ascii.isDigit(t[i])) : (i += 1) {
            if (e < 10000) e = e * 10 + (t[i] - '0');
        }
        exp10 += if (eneg) -e else e;
    }
    var v: f64 = @floatFromInt(mant);
    while (exp10 > 22) : (exp10 -= 22) v *= 1e22;
    while (exp10 < -22) : (exp10 += 22) v /= 1e22;
    v = if (exp10 >= 0) v * pow10[@intCast(exp10)] else v / pow10[@intCast(-exp10)];
    return if (neg) -v else v;
}

/// Text into a fixed buffer; `full` once something did not fit.
pub const Out = struct {
    buf: []u8,
    len: usize = 0,
    full: bool = false,

    pub fn bytes(o: *Out, s: []const u8) void {
        if (o.len + s.len > o.buf.len) {
            o.full = true;
            return;
        }
        @memcpy(o.buf[o.len..][0..s.len], s);
        o.len += s.len;
    }

    pub fn int(o: *Out, v: i64) void {
        if (v < 0) o.bytes("-");
        o.uint(@abs(v));
    }

    pub fn uint(o: *Out, value: u64) void {
        var n = value;
        var d: [20]u8 = undefined;
        var i: usize = d.len;
        while (true) {
            i -= 1;
            d[i] = @intCast('0' + n % 10);
            n /= 10;
            if (n == 0) break;
        }
        o.bytes(d[i..]);
    }

    /// An f32 as serde-json-core writes it for everyday values: the fewest
    /// decimals (at least one) that read back as the same f32: 1.5, 2.0,
    /// -0.3. Needs |x| < 1e9 (checked by the caller).
    pub fn float(o: *Out, value: f32) void {
        var x = value;
        if (x < 0) {
            o.bytes("-");
            x = -x;
        }
        var decimals: usize = 1;
        var scaled: u64 = 0;
        while (decimals <= 9) : (decimals += 1) {
            scaled = @intFromFloat(@as(f64, x) * pow10[decimals] + 0.5);
            const back: f32 = @floatCast(@as(f64, @floatFromInt(scaled)) / pow10[decimals]);
            if (back == x) break;
        }
        if (decimals > 9) decimals = 9;
        const unit: u64 = @intFromFloat(pow10[decimals]);
        const whole = scaled / unit;
        var frac = scaled % unit;
        while (decimals > 1 and frac % 10 == 0) {
            frac /= 10;
            decimals -= 1;
        }
        o.uint(whole);
        o.bytes(".");
        var d: [9]u8 = undefined;
        var i = decimals;
        while (i > 0) {
            i -= 1;
            d[i] = @intCast('0' + frac % 10);
            frac /= 10;
        }
        o.bytes(d[0..decimals]);
    }

    pub fn slice(o: *const Out) []const u8 {
        return o.buf[0..o.len];
    }
};

test "numbers read and print like serde-json-core's f32" {
    var buf: [32]u8 = undefined;
    for ([_][]const u8{ "1.5", "2.0", "0.3", "17.5", "-4.25", "0.5", "20.0", "6.8", "123456.7" }) |text| {
        var o = Out{ .buf = &buf };
        o.float(@floatCast(numberValue(text)));
        try std.testing.expectEqualStrings(text, o.slice());
    }
    var o = Out{ .buf = &buf };
    o.float(@floatCast(numberValue("2")));
    try std.testing.expectEqualStrings("2.0", o.slice());
    o = Out{ .buf = &buf };
    o.float(@floatCast(numberValue("1.50e1")));
    try std.testing.expectEqualStrings("15.0", o.slice());
}

test "the scanner checks the grammar while skipping" {
    for ([_][]const u8{ "{\"a\":[1,2.5e3,\"x\\\"y\",null,true,{}]}", " [] ", "\"\\u00e9\"" }) |good| {
        var s = Scanner{ .text = good };
        try std.testing.expect(s.skip(0) and s.atEnd());
    }
    for ([_][]const u8{ "{\"a\":}", "[1,]", "01", "\"\\x\"", "tru", "{\"a\" 1}", "1." }) |bad| {
        var s = Scanner{ .text = bad };
        try std.testing.expect(!(s.skip(0) and s.atEnd()));
    }
}
