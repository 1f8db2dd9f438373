/*
 * wasmgate.h: the wasmgate function ABI, version 1, for C.
 *
 * One header, no libc. Everything here mirrors functions/abi/README.md (the
 * contract); read that for what each call does. This file adds only:
 *   - the host imports of module "wasmgate", as C prototypes with a wg_ prefix
 *     (wg_log, not log, so they clash with nothing when compiled natively);
 *   - the statuses, log levels, emit flags, metric kinds and event kinds;
 *   - static inline decoders of the event envelope (postcard), for every
 *     event kind, batches included.
 *
 * Build a module (no libc, no WASI: the module imports only "wasmgate"):
 *
 *   clang --target=wasm32 -O2 -nostdlib -mbulk-memory \
 *         -Wl,--no-entry -Wl,-z,stack-size=65536 -Wl,--strip-all \
 *         -I functions/c -o fn.wasm fn.c
 *
 *   -nostdlib            no libc, no crt1: nothing from WASI is linked.
 *   -Wl,--no-entry       a library-like module: no _start, only the exports.
 *   -Wl,-z,stack-size=   the C stack lives in linear memory (default 64 KiB
 *                        in wasm-ld too, but say it: it is the resident size).
 *   -mbulk-memory        struct copies and zeroing become memory.copy and
 *                        memory.fill instructions; without it the compiler
 *                        calls memcpy/memset, which nothing here defines, and
 *                        the link fails with "undefined symbol: memcpy".
 *   -Wl,--strip-all      drops the name section (smaller module).
 *
 * Note: when binaryen's wasm-opt is on PATH, the clang driver runs it on the
 * linked module by itself (at -O1 and up), so the same command gives another
 * module on another machine. For a reproducible build compile with -c and
 * link with wasm-ld yourself (what c-vending-alert/build.sh does):
 *
 *   clang --target=wasm32 -O2 -nostdlib -mbulk-memory -I functions/c -c -o fn.o fn.c
 *   wasm-ld --no-entry -z stack-size=65536 --strip-all -o fn.wasm fn.o
 *
 * wasm-ld exports the linear memory as "memory" by itself. The two required
 * function exports are written with WG_EXPORT, or all at once with
 * WG_EXPORT_ABI() below:
 *
 *   #include "wasmgate.h"
 *   WG_EXPORT_ABI()
 *
 *   static uint8_t event_buf[16384];
 *
 *   WG_EXPORT("wasmgate_handle") int32_t handle(int32_t event_len) {
 *       wg_envelope env;
 *       if (!wg_read_envelope(event_buf, sizeof event_buf, event_len, &env))
 *           return 101;                         // logged by wg_read_envelope
 *       wg_mqtt_message msg;
 *       if (env.kind != WG_EVENT_MQTT || !wg_read_mqtt(&env.fields, &msg))
 *           return 1;
 *       // The payload on to "echo/out" (not back to the trigger's topic).
 *       return wg_emit(WG_STR("echo/out"), msg.payload.ptr,
 *                      (int32_t)msg.payload.len, WG_EMIT_LOCAL);
 *   }
 *
 * Natively (cc, for tests) WG_IMPORT and WG_EXPORT expand to nothing: the
 * wg_* imports are then ordinary extern functions that a test links a fake
 * host for (see functions/examples/c-vending-alert/test/fake_host.c).
 *
 * Pointers and lengths: every host call takes offsets into this module's
 * memory; in C they are plain pointers (32-bit on wasm32). Strings are UTF-8
 * and not NUL-terminated: pass their length. WG_STR("literal") expands to
 * the pointer and the length of a string literal.
 */
#ifndef WASMGATE_H
#define WASMGATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Imports and exports                                                       */
/* ------------------------------------------------------------------------ */

#if defined(__wasm__)
/* A host function of module "wasmgate" named `name`. */
#define WG_IMPORT(name) __attribute__((import_module("wasmgate"), import_name(name)))
/* Exports the function it is put on under `name` (and keeps it linked). */
#define WG_EXPORT(name) __attribute__((export_name(name)))
#else
#define WG_IMPORT(name)
#define WG_EXPORT(name)
#endif

/* A string literal as the (pointer, length) pair host calls take. */
#define WG_STR(literal) (literal), ((int32_t)(sizeof(literal) - 1))

/* The ABI this header implements: `wasmgate_abi_version` must return it. */
#define WG_ABI_VERSION 1
/* The compatible revision of ABI 1 these decoders know (the fields added at
 * the ends of ScheduleTick, HttpRequest and KvChange, and WebSocketEvent).
 * Exporting `wasmgate_abi_revision` with it lets the gateway batch KV
 * changes for this module. */
#define WG_ABI_REVISION 1

/* Defines the exports `wasmgate_abi_version` (1) and `wasmgate_abi_revision`
 * (1). Use once, at file scope, in one .c file of the module. */
#define WG_EXPORT_ABI()                                                       \
    WG_EXPORT("wasmgate_abi_version") int32_t wg_export_abi_version(void) {   \
        return WG_ABI_VERSION;                                                \
    }                                                                         \
    WG_EXPORT("wasmgate_abi_revision") int32_t wg_export_abi_revision(void) { \
        return WG_ABI_REVISION;                                               \
    }

/* ------------------------------------------------------------------------ */
/* Constants                                                                 */
/* ------------------------------------------------------------------------ */

/* Statuses: what a host call returns when it did not succeed (< 0). */
#define WG_OK 0
#define WG_NOT_FOUND (-1)        /* no such KV key, config key or secret */
#define WG_INVALID_ARGUMENT (-2) /* bad UTF-8, key, topic, flags, status... */
#define WG_DENIED (-3)           /* outside the function's grants */
#define WG_NOT_A_NUMBER (-4)     /* kv_increment on a value not 8 bytes long */
#define WG_UNAVAILABLE (-5)      /* not here (e.g. invoke in `wasmgate invoke`) */

/* Log levels (wg_log). */
#define WG_LOG_ERROR 0
#define WG_LOG_WARN 1
#define WG_LOG_INFO 2
#define WG_LOG_DEBUG 3
#define WG_LOG_TRACE 4

/* wg_emit flags: bits 0-1 QoS (3 is invalid), bit 2 retain, bit 3 upstream
 * (the cloud broker, through the durable outbox; clear: the local broker).
 * Any other bit set is INVALID_ARGUMENT. */
#define WG_QOS0 0
#define WG_QOS1 1
#define WG_QOS2 2
#define WG_RETAIN (1 << 2)
#define WG_UPSTREAM (1 << 3)
#define WG_EMIT_LOCAL (WG_QOS1)                  /* 1: the usual value */
#define WG_EMIT_UPSTREAM (WG_QOS1 | WG_UPSTREAM) /* 9 */

/* wg_metric kinds. */
#define WG_METRIC_COUNTER 0   /* adds the value (>= 0) */
#define WG_METRIC_GAUGE 1     /* sets it */
#define WG_METRIC_HISTOGRAM 2 /* records it */

/* Event kinds: the variant index of `Event` in the envelope. */
#define WG_EVENT_MQTT 0
#define WG_EVENT_SCHEDULE 1
#define WG_EVENT_HTTP 2
#define WG_EVENT_FILE 3
#define WG_EVENT_KV_CHANGE 4
#define WG_EVENT_INVOKE 5
#define WG_EVENT_BATCH 6
#define WG_EVENT_WEBSOCKET 7

/* KvChange.op */
#define WG_KV_PUT 0
#define WG_KV_DELETE 1

/* WebSocketEvent.kind */
#define WG_WS_CONNECT 0
#define WG_WS_MESSAGE 1
#define WG_WS_DISCONNECT 2

/* ------------------------------------------------------------------------ */
/* Host functions (module "wasmgate")                                        */
/* ------------------------------------------------------------------------ */
/* "Copy-out" calls (event_read, kv_get, config_get, secret_get): if the value
 * fits in `cap` bytes it is copied to `dst` and its length returned; if not,
 * NOTHING is copied and its length is still returned (so compare the result
 * with `cap` before using `dst`). A negative result is a status. */

/* Copies the current event's envelope (copy-out). */
WG_IMPORT("event_read") int32_t wg_event_read(void *dst, int32_t cap);
/* Publishes when the invocation commits: OK, INVALID_ARGUMENT, DENIED. */
WG_IMPORT("emit")
int32_t wg_emit(const void *topic, int32_t topic_len, const void *payload, int32_t payload_len,
                int32_t flags);
/* Reads from the function's KV namespace (copy-out); NOT_FOUND. Sees this
 * invocation's own writes. A counter reads as 8 bytes little-endian. */
WG_IMPORT("kv_get") int32_t wg_kv_get(const void *key, int32_t key_len, void *dst, int32_t cap);
/* Writes at commit: OK, INVALID_ARGUMENT. */
WG_IMPORT("kv_put")
int32_t wg_kv_put(const void *key, int32_t key_len, const void *value, int32_t value_len);
/* Deletes at commit (a missing key is OK). */
WG_IMPORT("kv_delete") int32_t wg_kv_delete(const void *key, int32_t key_len);
/* Adds `delta` (a missing key counts as 0); writes the new value, 8 bytes
 * little-endian, at `dst` (which needs 8 bytes, any alignment); NOT_A_NUMBER. */
WG_IMPORT("kv_increment")
int32_t wg_kv_increment(const void *key, int32_t key_len, int64_t delta, void *dst);
/* A log line at a WG_LOG_* level. Returns nothing. */
WG_IMPORT("log") void wg_log(int32_t level, const void *msg, int32_t msg_len);
/* Wall-clock time, Unix milliseconds. */
WG_IMPORT("now_ms") int64_t wg_now_ms(void);
/* A value of the function's `config` table, UTF-8 text (copy-out); NOT_FOUND. */
WG_IMPORT("config_get")
int32_t wg_config_get(const void *key, int32_t key_len, void *dst, int32_t cap);
/* One of the function's secrets named in grants.secrets (copy-out); DENIED, NOT_FOUND. */
WG_IMPORT("secret_get")
int32_t wg_secret_get(const void *name, int32_t name_len, void *dst, int32_t cap);
/* Runs another function with an Invoke event after commit; OK, DENIED, UNAVAILABLE. */
WG_IMPORT("invoke")
int32_t wg_invoke(const void *function, int32_t function_len, const void *payload,
                  int32_t payload_len);
/* The reply to a request/response trigger (HTTP status 100-599). */
WG_IMPORT("respond") int32_t wg_respond(int32_t status, const void *body, int32_t body_len);
/* A header of the reply; INVALID_ARGUMENT for a reserved or malformed one. */
WG_IMPORT("respond_header")
int32_t wg_respond_header(const void *name, int32_t name_len, const void *value, int32_t value_len);
/* Sends `data` to a WebSocket connection after commit (text if UTF-8). */
WG_IMPORT("post_to_connection")
int32_t wg_post_to_connection(const void *connection, int32_t connection_len, const void *data,
                              int32_t data_len);
/* A custom metric: `kind` WG_METRIC_*; `name` may carry labels: a{b="c"}. */
WG_IMPORT("metric") int32_t wg_metric(const void *name, int32_t name_len, int32_t kind, double value);
/* Item `index` (from 0) of the current batch failed (only it is retried). */
WG_IMPORT("item_failed") int32_t wg_item_failed(int32_t index);

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* A byte string inside the event buffer (or anywhere): not NUL-terminated. */
typedef struct {
    const uint8_t *ptr;
    uint32_t len;
} wg_bytes;

/* Whether `b` holds exactly the NUL-terminated `text`. */
static inline bool wg_bytes_eq(wg_bytes b, const char *text) {
    uint32_t i = 0;
    for (; text[i] != 0; i++) {
        if (i >= b.len || b.ptr[i] != (uint8_t)text[i]) return false;
    }
    return i == b.len;
}

/* Logs a NUL-terminated message. */
static inline void wg_log_cstr(int32_t level, const char *msg) {
    int32_t n = 0;
    while (msg[n] != 0) n++;
    wg_log(level, msg, n);
}

/* Reads a counter (8 bytes little-endian); returns WG_OK and sets *out, or
 * WG_NOT_FOUND, WG_NOT_A_NUMBER (a value of another length) or a status. */
static inline int32_t wg_kv_get_i64(const void *key, int32_t key_len, int64_t *out) {
    uint8_t b[8];
    int32_t n = wg_kv_get(key, key_len, b, 8);
    if (n < 0) return n;
    if (n != 8) return WG_NOT_A_NUMBER;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
    *out = (int64_t)v;
    return WG_OK;
}

/* kv_increment returning the new value in *out. */
static inline int32_t wg_kv_increment_i64(const void *key, int32_t key_len, int64_t delta,
                                          int64_t *out) {
    uint8_t b[8];
    int32_t rc = wg_kv_increment(key, key_len, delta, b);
    if (rc < 0) return rc;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
    *out = (int64_t)v;
    return WG_OK;
}

/* ------------------------------------------------------------------------ */
/* The event envelope (postcard)                                             */
/* ------------------------------------------------------------------------ */
/* u8/bool: 1 byte; u32/u64: unsigned LEB128; str/bytes: varint length then
 * the bytes; Option<T>: 0 or 1 then T; struct: fields in order; enum:
 * varint variant index then its fields; Seq<T>: a `bytes` holding T's back
 * to back. Decoding never copies: every wg_bytes points into the buffer
 * the envelope was read into, so keep that buffer alive (a static one).
 *
 * A wg_reader walks a region. Reading past its end sets `failed` and yields
 * zeros; check wg_reader_ok() (or the decoders' bool result) once at the end. */

typedef struct {
    const uint8_t *at;
    const uint8_t *end;
    bool failed;
} wg_reader;

static inline wg_reader wg_reader_of(const void *ptr, uint32_t len) {
    wg_reader r;
    r.at = (const uint8_t *)ptr;
    r.end = r.at + len;
    r.failed = false;
    return r;
}

static inline bool wg_reader_ok(const wg_reader *r) { return !r->failed; }
static inline bool wg_reader_done(const wg_reader *r) { return r->failed || r->at >= r->end; }

static inline uint8_t wg_read_u8(wg_reader *r) {
    if (r->failed || r->at >= r->end) {
        r->failed = true;
        return 0;
    }
    return *r->at++;
}

static inline bool wg_read_bool(wg_reader *r) {
    uint8_t b = wg_read_u8(r);
    if (b > 1) r->failed = true;
    return b == 1;
}

/* An unsigned LEB128 varint (u32 or u64); at most 10 bytes. */
static inline uint64_t wg_read_varint(wg_reader *r) {
    uint64_t value = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        uint8_t b = wg_read_u8(r);
        if (r->failed) return 0;
        value |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) return value;
    }
    r->failed = true;
    return 0;
}

/* A `str` or `bytes`: the length, then the bytes (pointed at, not copied). */
static inline wg_bytes wg_read_bytes(wg_reader *r) {
    wg_bytes b = {0, 0};
    uint64_t len = wg_read_varint(r);
    if (r->failed) return b;
    if (len > (uint64_t)(r->end - r->at)) {
        r->failed = true;
        return b;
    }
    b.ptr = r->at;
    b.len = (uint32_t)len;
    r->at += len;
    return b;
}

/* An Option<bytes>: *present says whether it was Some. */
static inline wg_bytes wg_read_option_bytes(wg_reader *r, bool *present) {
    wg_bytes none = {0, 0};
    *present = wg_read_bool(r);
    return *present ? wg_read_bytes(r) : none;
}

/* The next name/value pair of a Seq<Pair> (user properties, HTTP headers,
 * path parameters): false at its end or on a malformed one. Start with
 * `wg_reader seq = wg_reader_of(headers.ptr, headers.len);`. */
static inline bool wg_next_pair(wg_reader *seq, wg_bytes *name, wg_bytes *value) {
    if (wg_reader_done(seq)) return false;
    *name = wg_read_bytes(seq);
    *value = wg_read_bytes(seq);
    return wg_reader_ok(seq);
}

/* Looks a pair up by name in a Seq<Pair> (the first match); false if none.
 * HTTP header names arrive lower-case. */
static inline bool wg_find_pair(wg_bytes seq_bytes, const char *name, wg_bytes *value) {
    wg_reader seq = wg_reader_of(seq_bytes.ptr, seq_bytes.len);
    wg_bytes n, v;
    while (wg_next_pair(&seq, &n, &v)) {
        if (wg_bytes_eq(n, name)) {
            *value = v;
            return true;
        }
    }
    return false;
}

/* Context = request_id:u64 function:str version:str attempt:u32 deadline_ms:u64 */
typedef struct {
    uint64_t request_id; /* the same on every retry of one event */
    wg_bytes function;
    wg_bytes version;
    uint32_t attempt; /* 1 on the first try */
    uint64_t deadline_ms;
} wg_context;

/* MqttMessage = topic:str payload:bytes qos:u8 retain:bool user_properties:Seq<Pair> */
typedef struct {
    wg_bytes topic;
    wg_bytes payload;
    uint8_t qos;
    bool retain;
    wg_bytes user_properties; /* a Seq<Pair>: walk it with wg_next_pair */
} wg_mqtt_message;

/* ScheduleTick = schedule:str scheduled_ms:u64 fired_ms:u64 catch_up:bool */
typedef struct {
    wg_bytes schedule;
    uint64_t scheduled_ms;
    uint64_t fired_ms;
    bool catch_up;
} wg_schedule_tick;

/* HttpRequest = method:str path:str query:str headers:Seq<Pair> body:bytes params:Seq<Pair> */
typedef struct {
    wg_bytes method;
    wg_bytes path;
    wg_bytes query;   /* without the '?' */
    wg_bytes headers; /* Seq<Pair> */
    wg_bytes body;
    wg_bytes params; /* Seq<Pair>: the path parameters, `{machine}` */
} wg_http_request;

/* FileArrival = path:str size:u64 modified_ms:u64 contents:bytes */
typedef struct {
    wg_bytes path;
    uint64_t size;
    uint64_t modified_ms;
    wg_bytes contents;
} wg_file_arrival;

/* KvChange = namespace:str key:str op:KvOp value:Option<bytes> old:Option<bytes> */
typedef struct {
    wg_bytes ns;
    wg_bytes key;
    uint32_t op; /* WG_KV_PUT or WG_KV_DELETE */
    bool has_value;
    wg_bytes value;
    bool has_old;
    wg_bytes old;
} wg_kv_change;

/* InvokeRequest = from:str payload:bytes */
typedef struct {
    wg_bytes from;
    wg_bytes payload;
} wg_invoke_request;

/* WebSocketEvent = route:str connection_id:str kind:WebSocketKind data:bytes
 *                  text:bool query:str headers:Seq<Pair> */
typedef struct {
    wg_bytes route;
    wg_bytes connection_id;
    uint32_t kind; /* WG_WS_* */
    wg_bytes data;
    bool text;
    wg_bytes query;
    wg_bytes headers;
} wg_websocket_event;

/* Each decoder reads one event's fields from `r` (positioned after the
 * variant index) and returns whether they decoded. */

static inline bool wg_read_mqtt(wg_reader *r, wg_mqtt_message *m) {
    m->topic = wg_read_bytes(r);
    m->payload = wg_read_bytes(r);
    m->qos = wg_read_u8(r);
    m->retain = wg_read_bool(r);
    m->user_properties = wg_read_bytes(r);
    return wg_reader_ok(r);
}

static inline bool wg_read_schedule(wg_reader *r, wg_schedule_tick *s) {
    s->schedule = wg_read_bytes(r);
    s->scheduled_ms = wg_read_varint(r);
    s->fired_ms = wg_read_varint(r);
    s->catch_up = wg_read_bool(r);
    return wg_reader_ok(r);
}

static inline bool wg_read_http(wg_reader *r, wg_http_request *h) {
    h->method = wg_read_bytes(r);
    h->path = wg_read_bytes(r);
    h->query = wg_read_bytes(r);
    h->headers = wg_read_bytes(r);
    h->body = wg_read_bytes(r);
    h->params = wg_read_bytes(r);
    return wg_reader_ok(r);
}

static inline bool wg_read_file(wg_reader *r, wg_file_arrival *f) {
    f->path = wg_read_bytes(r);
    f->size = wg_read_varint(r);
    f->modified_ms = wg_read_varint(r);
    f->contents = wg_read_bytes(r);
    return wg_reader_ok(r);
}

static inline bool wg_read_kv_change(wg_reader *r, wg_kv_change *k) {
    k->ns = wg_read_bytes(r);
    k->key = wg_read_bytes(r);
    k->op = (uint32_t)wg_read_varint(r);
    if (k->op > WG_KV_DELETE) r->failed = true;
    k->value = wg_read_option_bytes(r, &k->has_value);
    k->old = wg_read_option_bytes(r, &k->has_old);
    return wg_reader_ok(r);
}

static inline bool wg_read_invoke(wg_reader *r, wg_invoke_request *i) {
    i->from = wg_read_bytes(r);
    i->payload = wg_read_bytes(r);
    return wg_reader_ok(r);
}

static inline bool wg_read_websocket(wg_reader *r, wg_websocket_event *w) {
    w->route = wg_read_bytes(r);
    w->connection_id = wg_read_bytes(r);
    w->kind = (uint32_t)wg_read_varint(r);
    if (w->kind > WG_WS_DISCONNECT) r->failed = true;
    w->data = wg_read_bytes(r);
    w->text = wg_read_bool(r);
    w->query = wg_read_bytes(r);
    w->headers = wg_read_bytes(r);
    return wg_reader_ok(r);
}

/* Reads past one event's fields of kind `kind` (not a batch); false if they
 * do not decode or the kind is unknown. What makes batches walkable. */
static inline bool wg_skip_event(wg_reader *r, uint32_t kind) {
    union {
        wg_mqtt_message mqtt;
        wg_schedule_tick schedule;
        wg_http_request http;
        wg_file_arrival file;
        wg_kv_change kv;
        wg_invoke_request invoke;
        wg_websocket_event ws;
    } u;
    switch (kind) {
        case WG_EVENT_MQTT: return wg_read_mqtt(r, &u.mqtt);
        case WG_EVENT_SCHEDULE: return wg_read_schedule(r, &u.schedule);
        case WG_EVENT_HTTP: return wg_read_http(r, &u.http);
        case WG_EVENT_FILE: return wg_read_file(r, &u.file);
        case WG_EVENT_KV_CHANGE: return wg_read_kv_change(r, &u.kv);
        case WG_EVENT_INVOKE: return wg_read_invoke(r, &u.invoke);
        case WG_EVENT_WEBSOCKET: return wg_read_websocket(r, &u.ws);
        default: r->failed = true; return false;
    }
}

/* A decoded envelope: the context, and the event's kind with a reader at its
 * fields (decode them with the wg_read_<kind> for that kind, or walk a
 * batch with wg_next_event). */
typedef struct {
    wg_context context;
    uint32_t kind;     /* WG_EVENT_* */
    wg_reader fields;  /* the event's fields; for a batch, its items */
} wg_envelope;

/* Decodes an envelope already in memory. */
static inline bool wg_decode_envelope(const void *buf, uint32_t len, wg_envelope *env) {
    wg_reader r = wg_reader_of(buf, len);
    env->context.request_id = wg_read_varint(&r);
    env->context.function = wg_read_bytes(&r);
    env->context.version = wg_read_bytes(&r);
    env->context.attempt = (uint32_t)wg_read_varint(&r);
    env->context.deadline_ms = wg_read_varint(&r);
    env->kind = (uint32_t)wg_read_varint(&r);
    if (env->kind == WG_EVENT_BATCH) {
        /* Batch = Seq<Event>: a bytes holding the items back to back. */
        wg_bytes items = wg_read_bytes(&r);
        env->fields = wg_reader_of(items.ptr, items.len);
    } else {
        env->fields = r;
    }
    return wg_reader_ok(&r) && env->kind <= WG_EVENT_WEBSOCKET;
}

/* What wasmgate_handle does first: reads the envelope of `event_len` bytes
 * into `buf` (of `cap` bytes) with event_read and decodes it. On failure it
 * logs why at error level and returns false; return non-zero then. */
static inline bool wg_read_envelope(void *buf, uint32_t cap, int32_t event_len, wg_envelope *env) {
    if (event_len < 0 || (uint32_t)event_len > cap) {
        wg_log_cstr(WG_LOG_ERROR, "function failed: the event is over its event buffer");
        return false;
    }
    int32_t n = wg_event_read(buf, (int32_t)cap);
    if (n < 0 || (uint32_t)n > cap) {
        wg_log_cstr(WG_LOG_ERROR, "function failed: the event is over its event buffer");
        return false;
    }
    if (!wg_decode_envelope(buf, (uint32_t)n, env)) {
        wg_log_cstr(WG_LOG_ERROR, "function failed: the event envelope does not decode");
        return false;
    }
    return true;
}

/* Walks the events of an envelope, a batch's items one by one and any other
 * event once, like the Rust SDK's `events()`:
 *
 *   wg_events it = wg_events_of(&env);
 *   uint32_t kind; wg_reader fields;
 *   while (wg_next_event(&it, &kind, &fields)) {
 *       wg_mqtt_message m;
 *       if (kind != WG_EVENT_MQTT || !wg_read_mqtt(&fields, &m)) return 1;
 *       ...  // it.index is this item's number, for wg_item_failed
 *   }
 *   if (it.failed) return 102;   // a batch item did not decode
 */
typedef struct {
    wg_reader items;
    bool batch;
    bool single_done;
    bool failed;
    int32_t index; /* of the event last returned: 0, 1, ... */
    uint32_t single_kind;
} wg_events;

static inline wg_events wg_events_of(const wg_envelope *env) {
    wg_events it;
    it.items = env->fields;
    it.batch = env->kind == WG_EVENT_BATCH;
    it.single_done = false;
    it.failed = false;
    it.index = -1;
    it.single_kind = env->kind;
    return it;
}

static inline bool wg_next_event(wg_events *it, uint32_t *kind, wg_reader *fields) {
    if (it->failed) return false;
    if (!it->batch) {
        if (it->single_done) return false;
        it->single_done = true;
        it->index = 0;
        *kind = it->single_kind;
        *fields = it->items;
        return true;
    }
    if (wg_reader_done(&it->items)) return false;
    uint32_t k = (uint32_t)wg_read_varint(&it->items);
    wg_reader at = it->items;
    if (k == WG_EVENT_BATCH || !wg_skip_event(&it->items, k)) {
        it->failed = true; /* batches never nest */
        return false;
    }
    it->index++;
    *kind = k;
    *fields = at;
    return true;
}

#ifdef __cplusplus
}
#endif

#endif /* WASMGATE_H */
