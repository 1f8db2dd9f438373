/*
 * Vending machine telemetry in C: vending-telemetry (Rust) ported to plain
 * C against functions/c/wasmgate.h, no libc, no WASI.
 *
 * Machines publish to `vending/<machine>/telemetry`:
 *
 *   {"machine":"vm-17","ts":1764160000000,"temp_c":6.8,"door_open":false,
 *    "stock":[{"slot":"A1","count":2}],"sale":{"slot":"A1","price_cents":150}}
 *
 * For each message (a batch item by item) the function, like the Rust one:
 * - keeps running totals per machine in KV: `<machine>/sales_cents` and
 *   `<machine>/vends` (counters), `<machine>/last_temp_c` (a JSON number);
 * - emits an alert to `vending/<machine>/alert` (local broker, QoS 1) when
 *   the temperature is over `max_temp_c` (config, default 8.0) or a slot's
 *   stock is at or below `low_stock` (config, default 2):
 *     {"machine":"vm-17","ts":..,"temp_c":9.4,"max_temp_c":8.0,
 *      "too_warm":true,"door_open":true,"low_stock":["A1","B1"]}
 * - emits a summary upstream to `telemetry/vending/<machine>` (QoS 1):
 *     {"machine":..,"ts":..,"temp_c":..,"door_open":..,"sales_cents":..,
 *      "vends":..,"low_slots":..}
 * - reports `temperature_c` (histogram) and `warm_alerts` (counter) metrics.
 *
 * Differences from the Rust version, all at the edges: slot names are copied
 * as written between their quotes (escapes kept, so still valid JSON); a
 * temperature of 1e9 degrees or more is refused as bad telemetry instead of
 * being printed in exponent form; `ts` must be an integer without exponent.
 *
 * Return codes: 0 success, 10 bad telemetry JSON, 11 unexpected topic,
 * 12 a config value that does not parse, 101 event over the buffer,
 * 102 envelope does not decode, a negative host status if a host call fails.
 */
#include "wasmgate.h"

#define BAD_TELEMETRY 10
#define BAD_TOPIC 11
#define BAD_CONFIG 12
#define EVENT_TOO_BIG 101
#define BAD_ENVELOPE 102

#define MAX_SLOTS 64
#define MAX_DEPTH 32

WG_EXPORT_ABI()

/* The envelope is read here; 64 KiB holds any telemetry message a machine
 * sends (the gateway's default max payload is bigger: a larger event fails
 * with code 101 and a log line saying so). */
static uint8_t event_buf[65536];

/* ------------------------------------------------------------------------ */
/* Output buffers                                                            */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint8_t *buf;
    uint32_t cap;
    uint32_t len;
    bool full;
} out_t;

static void put_bytes(out_t *o, const uint8_t *p, uint32_t n) {
    if (o->len + n > o->cap) {
        o->full = true;
        return;
    }
    for (uint32_t i = 0; i < n; i++) o->buf[o->len + i] = p[i];
    o->len += n;
}

static void put_str(out_t *o, const char *s) {
    uint32_t n = 0;
    while (s[n] != 0) n++;
    put_bytes(o, (const uint8_t *)s, n);
}

static void put_u64(out_t *o, uint64_t v) {
    uint8_t digits[20];
    int n = 0;
    do {
        digits[n++] = (uint8_t)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    uint8_t rev[20];
    for (int i = 0; i < n; i++) rev[i] = digits[n - 1 - i];
    put_bytes(o, rev, (uint32_t)n);
}

static void put_i64(out_t *o, int64_t v) {
    if (v < 0) {
        put_str(o, "-");
        put_u64(o, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(o, (uint64_t)v);
    }
}

/* ------------------------------------------------------------------------ */
/* Numbers                                                                   */
/* ------------------------------------------------------------------------ */

/* Exact in a double up to 1e22. */
static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* The value of a JSON number token (already checked against the grammar).
 * Exact (correctly rounded) while the digits fit 19 and the exponent 22,
 * which covers anything a sensor sends. */
static double number_value(const uint8_t *p, uint32_t n) {
    uint32_t i = 0;
    bool neg = false;
    if (i < n && p[i] == '-') {
        neg = true;
        i++;
    }
    uint64_t mant = 0;
    int digits = 0, exp10 = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        if (digits < 19) {
            mant = mant * 10 + (uint64_t)(p[i] - '0');
            if (mant != 0) digits++;
        } else {
            exp10++;
        }
    }
    if (i < n && p[i] == '.') {
        for (i++; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(p[i] - '0');
                if (mant != 0) digits++;
                exp10--;
            }
        }
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        bool eneg = false;
        if (i < n && (p[i] == '+' || p[i] == '-')) eneg = p[i++] == '-';
        int e = 0;
        for (; i < n && p[i] >= '0' && p[i] <= '9'; i++)
            if (e < 10000) e = e * 10 + (p[i] - '0');
        exp10 += eneg ? -e : e;
    }
    double v = (double)mant;
    while (exp10 > 22) {
        v *= 1e22;
        exp10 -= 22;
    }
    while (exp10 < -22) {
        v /= 1e22;
        exp10 += 22;
    }
    v = exp10 >= 0 ? v * POW10[exp10] : v / POW10[-exp10];
    return neg ? -v : v;
}

/* An f32 as serde-json-core writes it for the values a thermometer gives:
 * the fewest decimals (at least one) that read back as the same f32:
 * 6.8, 8.0, -0.5. Needs |x| < 1e9. */
static void put_f32(out_t *o, float x) {
    if (x < 0) {
        put_str(o, "-");
        x = -x;
    }
    uint64_t whole = 0, frac = 0;
    int decimals = 1;
    for (; decimals <= 9; decimals++) {
        double scale = POW10[decimals];
        uint64_t scaled = (uint64_t)((double)x * scale + 0.5);
        whole = scaled / (uint64_t)scale;
        frac = scaled % (uint64_t)scale;
        if ((float)((double)scaled / scale) == x) break;
    }
    if (decimals > 9) decimals = 9;
    /* Trailing zeros of the fraction beyond the first decimal go. */
    while (decimals > 1 && frac % 10 == 0) {
        frac /= 10;
        decimals--;
    }
    put_u64(o, whole);
    put_str(o, ".");
    uint8_t d[9];
    for (int i = decimals - 1; i >= 0; i--) {
        d[i] = (uint8_t)('0' + frac % 10);
        frac /= 10;
    }
    put_bytes(o, d, (uint32_t)decimals);
}

/* ------------------------------------------------------------------------ */
/* A small JSON scanner: checks the grammar, reads the fields it is asked   */
/* for, skips the rest.                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    uint32_t n;
    uint32_t at;
    bool bad;
} json_t;

static void ws(json_t *j) {
    while (j->at < j->n) {
        uint8_t c = j->p[j->at];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
        j->at++;
    }
}

static bool peek_is(json_t *j, uint8_t c) {
    ws(j);
    return j->at < j->n && j->p[j->at] == c;
}

static bool eat(json_t *j, uint8_t c) {
    if (peek_is(j, c)) {
        j->at++;
        return true;
    }
    j->bad = true;
    return false;
}

static bool is_hex(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A string; *out is its content as written (escapes not decoded). */
static bool string(json_t *j, wg_bytes *out) {
    if (!eat(j, '"')) return false;
    uint32_t start = j->at;
    while (j->at < j->n) {
        uint8_t c = j->p[j->at];
        if (c == '"') {
            out->ptr = j->p + start;
            out->len = j->at - start;
            j->at++;
            return true;
        }
        if (c < 0x20) break;
        if (c == '\\') {
            j->at++;
            if (j->at >= j->n) break;
            c = j->p[j->at];
            if (c == 'u') {
                for (int k = 0; k < 4; k++) {
                    j->at++;
                    if (j->at >= j->n || !is_hex(j->p[j->at])) {
                        j->bad = true;
                        return false;
                    }
                }
            } else if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' &&
                       c != 'r' && c != 't') {
                break;
            }
        }
        j->at++;
    }
    j->bad = true;
    return false;
}

static bool digit_at(json_t *j) { return j->at < j->n && j->p[j->at] >= '0' && j->p[j->at] <= '9'; }

/* A number token; *out is its text. */
static bool number(json_t *j, wg_bytes *out) {
    ws(j);
    uint32_t start = j->at;
    if (j->at < j->n && j->p[j->at] == '-') j->at++;
    if (!digit_at(j)) goto bad;
    if (j->p[j->at] == '0') {
        j->at++;
    } else {
        while (digit_at(j)) j->at++;
    }
    if (j->at < j->n && j->p[j->at] == '.') {
        j->at++;
        if (!digit_at(j)) goto bad;
        while (digit_at(j)) j->at++;
    }
    if (j->at < j->n && (j->p[j->at] == 'e' || j->p[j->at] == 'E')) {
        j->at++;
        if (j->at < j->n && (j->p[j->at] == '+' || j->p[j->at] == '-')) j->at++;
        if (!digit_at(j)) goto bad;
        while (digit_at(j)) j->at++;
    }
    out->ptr = j->p + start;
    out->len = j->at - start;
    return true;
bad:
    j->bad = true;
    return false;
}

static bool literal(json_t *j, const char *word) {
    ws(j);
    for (uint32_t i = 0; word[i] != 0; i++) {
        if (j->at >= j->n || j->p[j->at] != (uint8_t)word[i]) {
            j->bad = true;
            return false;
        }
        j->at++;
    }
    return true;
}

/* Any value, checked and skipped; containers nest at most MAX_DEPTH. */
static bool skip_value(json_t *j, int depth) {
    wg_bytes ignored;
    ws(j);
    if (j->at >= j->n || depth > MAX_DEPTH) {
        j->bad = true;
        return false;
    }
    switch (j->p[j->at]) {
        case '"': return string(j, &ignored);
        case 't': return literal(j, "true");
        case 'f': return literal(j, "false");
        case 'n': return literal(j, "null");
        case '[':
            j->at++;
            if (peek_is(j, ']')) {
                j->at++;
                return true;
            }
            do {
                if (!skip_value(j, depth + 1)) return false;
            } while (peek_is(j, ',') && (j->at++, true));
            return eat(j, ']');
        case '{':
            j->at++;
            if (peek_is(j, '}')) {
                j->at++;
                return true;
            }
            do {
                if (!string(j, &ignored) || !eat(j, ':') || !skip_value(j, depth + 1)) return false;
            } while (peek_is(j, ',') && (j->at++, true));
            return eat(j, '}');
        default: return number(j, &ignored);
    }
}

/* Walks an object: calls `member` with each name, the scanner at its value
 * (which `member` must consume). */
typedef bool (*member_fn)(json_t *j, wg_bytes name, void *state);

static bool object(json_t *j, member_fn member, void *state) {
    if (!eat(j, '{')) return false;
    if (peek_is(j, '}')) {
        j->at++;
        return true;
    }
    do {
        wg_bytes name;
        if (!string(j, &name) || !eat(j, ':') || !member(j, name, state)) {
            j->bad = true;
            return false;
        }
    } while (peek_is(j, ',') && (j->at++, true));
    return eat(j, '}');
}

/* An unsigned integer that fits `max` (serde's u32/u64: no sign, fraction
 * or exponent). */
static bool unsigned_int(json_t *j, uint64_t max, uint64_t *out) {
    wg_bytes t;
    if (!number(j, &t)) return false;
    uint64_t v = 0;
    for (uint32_t i = 0; i < t.len; i++) {
        uint8_t c = t.ptr[i];
        if (c < '0' || c > '9') goto bad;
        uint64_t d = (uint64_t)(c - '0');
        if (v > (max - d) / 10) goto bad;
        v = v * 10 + d;
    }
    *out = v;
    return true;
bad:
    j->bad = true;
    return false;
}

/* ------------------------------------------------------------------------ */
/* The telemetry message                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    wg_bytes slot;
    uint32_t count;
} slot_t;

typedef struct {
    bool has_ts, has_temp;
    uint64_t ts;
    float temp_c;
    bool door_open;
    slot_t stock[MAX_SLOTS];
    uint32_t slots;
    bool has_sale;
    uint32_t price_cents;
} telemetry_t;

typedef struct {
    bool has_slot, has_count;
    slot_t *slot;
} slot_state_t;

static bool slot_member(json_t *j, wg_bytes name, void *state) {
    slot_state_t *s = (slot_state_t *)state;
    if (wg_bytes_eq(name, "slot")) {
        s->has_slot = true;
        return string(j, &s->slot->slot);
    }
    if (wg_bytes_eq(name, "count")) {
        uint64_t v;
        s->has_count = true;
        if (!unsigned_int(j, 0xffffffffu, &v)) return false;
        s->slot->count = (uint32_t)v;
        return true;
    }
    return skip_value(j, 2);
}

typedef struct {
    bool has_slot, has_price;
    uint32_t price_cents;
} sale_state_t;

static bool sale_member(json_t *j, wg_bytes name, void *state) {
    sale_state_t *s = (sale_state_t *)state;
    if (wg_bytes_eq(name, "slot")) {
        wg_bytes slot;
        s->has_slot = true;
        return string(j, &slot);
    }
    if (wg_bytes_eq(name, "price_cents")) {
        uint64_t v;
        s->has_price = true;
        if (!unsigned_int(j, 0xffffffffu, &v)) return false;
        s->price_cents = (uint32_t)v;
        return true;
    }
    return skip_value(j, 1);
}

static bool telemetry_member(json_t *j, wg_bytes name, void *state) {
    telemetry_t *t = (telemetry_t *)state;
    if (wg_bytes_eq(name, "ts")) {
        t->has_ts = true;
        return unsigned_int(j, UINT64_MAX, &t->ts);
    }
    if (wg_bytes_eq(name, "temp_c")) {
        wg_bytes text;
        if (!number(j, &text)) return false;
        double v = number_value(text.ptr, text.len);
        if (!(v > -1e9 && v < 1e9)) return false;
        t->temp_c = (float)v;
        t->has_temp = true;
        return true;
    }
    if (wg_bytes_eq(name, "door_open")) {
        if (peek_is(j, 't')) return (t->door_open = true, literal(j, "true"));
        return (t->door_open = false, literal(j, "false"));
    }
    if (wg_bytes_eq(name, "stock")) {
        t->slots = 0;
        if (!eat(j, '[')) return false;
        if (peek_is(j, ']')) {
            j->at++;
            return true;
        }
        do {
            if (t->slots == MAX_SLOTS) return false;
            slot_state_t s = {false, false, &t->stock[t->slots]};
            if (!object(j, slot_member, &s) || !s.has_slot || !s.has_count) return false;
            t->slots++;
        } while (peek_is(j, ',') && (j->at++, true));
        return eat(j, ']');
    }
    if (wg_bytes_eq(name, "sale")) {
        if (peek_is(j, 'n')) {
            t->has_sale = false;
            return literal(j, "null");
        }
        sale_state_t s = {false, false, 0};
        if (!object(j, sale_member, &s) || !s.has_slot || !s.has_price) return false;
        t->has_sale = true;
        t->price_cents = s.price_cents;
        return true;
    }
    return skip_value(j, 1);
}

static bool parse_telemetry(wg_bytes payload, telemetry_t *t) {
    json_t j = {payload.ptr, payload.len, 0, false};
    t->has_ts = t->has_temp = t->door_open = t->has_sale = false;
    t->slots = 0;
    if (!object(&j, telemetry_member, t)) return false;
    ws(&j);
    /* serde-json-core allows trailing whitespace only. */
    return !j.bad && j.at == j.n && t->has_ts && t->has_temp;
}

/* ------------------------------------------------------------------------ */
/* Config                                                                    */
/* ------------------------------------------------------------------------ */

static bool trim_config(const char *key, uint8_t *buf, int32_t cap, wg_bytes *out, int32_t *rc) {
    int32_t n = 0;
    while (key[n] != 0) n++;
    int32_t len = wg_config_get(key, n, buf, cap);
    if (len == WG_NOT_FOUND) return false;
    if (len < 0 || len > cap) {
        *rc = len < 0 ? len : BAD_CONFIG;
        return false;
    }
    uint32_t s = 0, e = (uint32_t)len;
    while (s < e && buf[s] == ' ') s++;
    while (e > s && buf[e - 1] == ' ') e--;
    out->ptr = buf + s;
    out->len = e - s;
    return true;
}

/* A float config value, `def` if unset; *rc set if present but bad. */
static float config_f32(const char *key, float def, int32_t *rc) {
    uint8_t buf[64];
    wg_bytes text;
    if (!trim_config(key, buf, sizeof buf, &text, rc)) return def;
    json_t j = {text.ptr, text.len, 0, false};
    wg_bytes num;
    if (text.len == 0 || !number(&j, &num) || j.at != j.n) {
        wg_log_cstr(WG_LOG_ERROR, key);
        *rc = BAD_CONFIG;
        return def;
    }
    return (float)number_value(num.ptr, num.len);
}

static uint32_t config_u32(const char *key, uint32_t def, int32_t *rc) {
    uint8_t buf[64];
    wg_bytes text;
    if (!trim_config(key, buf, sizeof buf, &text, rc)) return def;
    uint64_t v = 0;
    bool ok = text.len > 0;
    for (uint32_t i = 0; ok && i < text.len; i++) {
        uint8_t c = text.ptr[i];
        ok = c >= '0' && c <= '9' && (v = v * 10 + (uint64_t)(c - '0')) <= 0xffffffffu;
    }
    if (!ok) {
        wg_log_cstr(WG_LOG_ERROR, key);
        *rc = BAD_CONFIG;
        return def;
    }
    return (uint32_t)v;
}

/* ------------------------------------------------------------------------ */
/* The handler                                                               */
/* ------------------------------------------------------------------------ */

static void log_parts(int32_t level, const char *a, wg_bytes b) {
    uint8_t line[256];
    out_t o = {line, sizeof line, 0, false};
    put_str(&o, a);
    put_bytes(&o, b.ptr, b.len < 200 ? b.len : 200);
    wg_log(level, line, (int32_t)o.len);
}

/* `vending/<machine>/telemetry` -> `<machine>`. */
static bool machine_of(wg_bytes topic, wg_bytes *machine) {
    static const char prefix[] = "vending/", suffix[] = "/telemetry";
    const uint32_t pn = sizeof prefix - 1, sn = sizeof suffix - 1;
    if (topic.len <= pn + sn) return false;
    for (uint32_t i = 0; i < pn; i++)
        if (topic.ptr[i] != (uint8_t)prefix[i]) return false;
    for (uint32_t i = 0; i < sn; i++)
        if (topic.ptr[topic.len - sn + i] != (uint8_t)suffix[i]) return false;
    machine->ptr = topic.ptr + pn;
    machine->len = topic.len - pn - sn;
    for (uint32_t i = 0; i < machine->len; i++)
        if (machine->ptr[i] == '/') return false;
    return true;
}

/* `<machine><suffix>` into `key` (128 bytes, as the Rust version allows). */
static bool key_of(uint8_t key[128], wg_bytes machine, const char *suffix, int32_t *len) {
    out_t o = {key, 128, 0, false};
    put_bytes(&o, machine.ptr, machine.len);
    put_str(&o, suffix);
    *len = (int32_t)o.len;
    return !o.full;
}

#define TRY(call)                                                           \
    do {                                                                    \
        int32_t rc_ = (call);                                               \
        if (rc_ < 0) {                                                      \
            wg_log_cstr(WG_LOG_ERROR, "function failed: host call " #call); \
            return rc_;                                                     \
        }                                                                   \
    } while (0)

static int32_t too_long(void) {
    wg_log_cstr(WG_LOG_ERROR, "function failed: machine id too long");
    return 1;
}

static int32_t on_telemetry(wg_bytes topic, wg_bytes payload) {
    wg_bytes machine;
    if (!machine_of(topic, &machine)) {
        log_parts(WG_LOG_ERROR, "not a vending/<machine>/telemetry topic: ", topic);
        wg_log_cstr(WG_LOG_ERROR, "function failed: unexpected topic (code 11)");
        return BAD_TOPIC;
    }
    static telemetry_t t; /* 64 slots: kept off the 64 KiB stack */
    if (!parse_telemetry(payload, &t)) {
        log_parts(WG_LOG_ERROR, "invalid telemetry JSON on ", topic);
        wg_log_cstr(WG_LOG_ERROR, "function failed: telemetry is not valid JSON (code 10)");
        return BAD_TELEMETRY;
    }
    int32_t rc = 0;
    float max_temp_c = config_f32("max_temp_c", 8.0f, &rc);
    if (rc != 0) return rc;
    uint32_t low_stock = config_u32("low_stock", 2, &rc);
    if (rc != 0) return rc;

    uint8_t sales_key[128], vends_key[128], temp_key[128];
    int32_t sales_len, vends_len, temp_len;
    if (!key_of(sales_key, machine, "/sales_cents", &sales_len) ||
        !key_of(vends_key, machine, "/vends", &vends_len) ||
        !key_of(temp_key, machine, "/last_temp_c", &temp_len))
        return too_long();

    /* Increments add up at commit: concurrent invocations lose no sale. */
    int64_t sales_cents = 0, vends = 0;
    if (t.has_sale) {
        TRY(wg_kv_increment_i64(sales_key, sales_len, (int64_t)t.price_cents, &sales_cents));
        TRY(wg_kv_increment_i64(vends_key, vends_len, 1, &vends));
    } else {
        int32_t r = wg_kv_get_i64(sales_key, sales_len, &sales_cents);
        if (r != WG_OK && r != WG_NOT_FOUND) TRY(r);
        r = wg_kv_get_i64(vends_key, vends_len, &vends);
        if (r != WG_OK && r != WG_NOT_FOUND) TRY(r);
    }
    uint8_t num[24];
    out_t n = {num, sizeof num, 0, false};
    put_f32(&n, t.temp_c);
    TRY(wg_kv_put(temp_key, temp_len, num, (int32_t)n.len));

    uint32_t low_slots = 0;
    for (uint32_t i = 0; i < t.slots; i++)
        if (t.stock[i].count <= low_stock) low_slots++;
    bool too_warm = t.temp_c > max_temp_c;

    TRY(wg_metric(WG_STR("temperature_c"), WG_METRIC_HISTOGRAM, (double)t.temp_c));
    if (too_warm) TRY(wg_metric(WG_STR("warm_alerts"), WG_METRIC_COUNTER, 1.0));

    if (too_warm || low_slots > 0) {
        uint8_t buf[1024], topic_buf[160];
        out_t a = {buf, sizeof buf, 0, false};
        put_str(&a, "{\"machine\":\"");
        put_bytes(&a, machine.ptr, machine.len);
        put_str(&a, "\",\"ts\":");
        put_u64(&a, t.ts);
        put_str(&a, ",\"temp_c\":");
        put_f32(&a, t.temp_c);
        put_str(&a, ",\"max_temp_c\":");
        put_f32(&a, max_temp_c);
        put_str(&a, too_warm ? ",\"too_warm\":true" : ",\"too_warm\":false");
        put_str(&a, t.door_open ? ",\"door_open\":true" : ",\"door_open\":false");
        put_str(&a, ",\"low_stock\":[");
        bool first = true;
        for (uint32_t i = 0; i < t.slots; i++) {
            if (t.stock[i].count > low_stock) continue;
            put_str(&a, first ? "\"" : ",\"");
            put_bytes(&a, t.stock[i].slot.ptr, t.stock[i].slot.len);
            put_str(&a, "\"");
            first = false;
        }
        put_str(&a, "]}");
        if (a.full) {
            wg_log_cstr(WG_LOG_ERROR, "function failed: output JSON over its buffer");
            return 1;
        }
        out_t to = {topic_buf, 128, 0, false};
        put_str(&to, "vending/");
        put_bytes(&to, machine.ptr, machine.len);
        put_str(&to, "/alert");
        if (to.full) return too_long();
        TRY(wg_emit(topic_buf, (int32_t)to.len, buf, (int32_t)a.len, WG_EMIT_LOCAL));
    }

    uint8_t buf[256], topic_buf[160];
    out_t s = {buf, sizeof buf, 0, false};
    put_str(&s, "{\"machine\":\"");
    put_bytes(&s, machine.ptr, machine.len);
    put_str(&s, "\",\"ts\":");
    put_u64(&s, t.ts);
    put_str(&s, ",\"temp_c\":");
    put_f32(&s, t.temp_c);
    put_str(&s, t.door_open ? ",\"door_open\":true" : ",\"door_open\":false");
    put_str(&s, ",\"sales_cents\":");
    put_i64(&s, sales_cents);
    put_str(&s, ",\"vends\":");
    put_i64(&s, vends);
    put_str(&s, ",\"low_slots\":");
    put_u64(&s, low_slots);
    put_str(&s, "}");
    if (s.full) {
        wg_log_cstr(WG_LOG_ERROR, "function failed: output JSON over its buffer");
        return 1;
    }
    out_t to = {topic_buf, 128, 0, false};
    put_str(&to, "telemetry/vending/");
    put_bytes(&to, machine.ptr, machine.len);
    if (to.full) return too_long();
    TRY(wg_emit(topic_buf, (int32_t)to.len, buf, (int32_t)s.len, WG_EMIT_UPSTREAM));
    return 0;
}

WG_EXPORT("wasmgate_handle") int32_t vending_alert_handle(int32_t event_len) {
    wg_envelope env;
    if (!wg_read_envelope(event_buf, sizeof event_buf, event_len, &env)) {
        return event_len < 0 || (uint32_t)event_len > sizeof event_buf ? EVENT_TOO_BIG
                                                                       : BAD_ENVELOPE;
    }
    wg_events events = wg_events_of(&env);
    uint32_t kind;
    wg_reader fields;
    while (wg_next_event(&events, &kind, &fields)) {
        wg_mqtt_message msg;
        if (kind != WG_EVENT_MQTT) {
            wg_log_cstr(WG_LOG_ERROR, "function failed: c-vending-alert handles MQTT messages only");
            return 1;
        }
        if (!wg_read_mqtt(&fields, &msg)) {
            wg_log_cstr(WG_LOG_ERROR, "function failed: the event envelope does not decode");
            return BAD_ENVELOPE;
        }
        int32_t rc = on_telemetry(msg.topic, msg.payload);
        if (rc != 0) return rc;
    }
    if (events.failed) {
        wg_log_cstr(WG_LOG_ERROR, "function failed: a batch item does not decode");
        return BAD_ENVELOPE;
    }
    return 0;
}
