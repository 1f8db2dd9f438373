/* The fake host of fake_host.h: the wg_* imports, natively. */
#include "fake_host.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasmgate.h"

typedef struct {
    char key[257];
    uint8_t value[1024];
    int32_t len;
    int used;
} kv_entry;

typedef struct {
    kv_entry entries[FAKE_MAX];
} kv_store;

fake_emit fake_emits[FAKE_MAX];
int fake_emit_count;
fake_metric fake_metrics[FAKE_MAX];
int fake_metric_count;
char fake_logs[FAKE_MAX][512];
int fake_log_count;

static kv_store committed, staged;
static fake_emit staged_emits[FAKE_MAX];
static int staged_emit_count;
static fake_metric staged_metrics[FAKE_MAX];
static int staged_metric_count;
static struct {
    char key[128];
    char value[128];
} config[16];
static int config_count;
static const uint8_t *event;
static size_t event_len;

void fake_reset(void) {
    memset(&committed, 0, sizeof committed);
    fake_emit_count = fake_metric_count = fake_log_count = config_count = 0;
}

void fake_set_config(const char *key, const char *value) {
    snprintf(config[config_count].key, sizeof config[0].key, "%s", key);
    snprintf(config[config_count].value, sizeof config[0].value, "%s", value);
    config_count++;
}

static kv_entry *find(kv_store *s, const void *key, int32_t key_len) {
    for (int i = 0; i < FAKE_MAX; i++) {
        kv_entry *e = &s->entries[i];
        if (e->used && (int32_t)strlen(e->key) == key_len && memcmp(e->key, key, (size_t)key_len) == 0)
            return e;
    }
    return NULL;
}

static kv_entry *find_or_add(kv_store *s, const void *key, int32_t key_len) {
    kv_entry *e = find(s, key, key_len);
    if (e) return e;
    for (int i = 0; i < FAKE_MAX; i++) {
        e = &s->entries[i];
        if (!e->used) {
            e->used = 1;
            memcpy(e->key, key, (size_t)key_len);
            e->key[key_len] = 0;
            e->len = 0;
            return e;
        }
    }
    fprintf(stderr, "fake host: KV full\n");
    abort();
}

static int valid_key(int32_t key_len) { return key_len >= 1 && key_len <= 256; }

int fake_kv(const char *key, const uint8_t **value) {
    kv_entry *e = find(&committed, key, (int32_t)strlen(key));
    if (!e) return -1;
    *value = e->value;
    return e->len;
}

int fake_counter(const char *key, int64_t *out) {
    const uint8_t *v;
    if (fake_kv(key, &v) != 8) return -1;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | v[i];
    *out = (int64_t)n;
    return 0;
}

/* ---- envelopes ---- */

static size_t varint(uint8_t *out, uint64_t v) {
    size_t n = 0;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        out[n++] = b | (v ? 0x80 : 0);
    } while (v);
    return n;
}

static size_t bytes(uint8_t *out, const void *p, size_t len) {
    size_t n = varint(out, len);
    memcpy(out + n, p, len);
    return n + len;
}

static size_t context(uint8_t *out) {
    size_t n = varint(out, 1);                 /* request_id */
    n += bytes(out + n, "f", 1);               /* function */
    n += bytes(out + n, "v1", 2);              /* version */
    n += varint(out + n, 1);                   /* attempt */
    n += varint(out + n, 1764160000000ull);    /* deadline_ms */
    return n;
}

static size_t mqtt_fields(uint8_t *out, const char *topic, const char *payload) {
    size_t n = bytes(out, topic, strlen(topic));
    n += bytes(out + n, payload, strlen(payload));
    out[n++] = 1; /* qos */
    out[n++] = 0; /* retain */
    out[n++] = 0; /* user_properties: empty */
    return n;
}

size_t fake_mqtt_envelope(uint8_t *out, const char *topic, const char *payload) {
    size_t n = context(out);
    n += varint(out + n, WG_EVENT_MQTT);
    return n + mqtt_fields(out + n, topic, payload);
}

size_t fake_mqtt_batch(uint8_t *out, const char *topic, const char **payloads, int count) {
    static uint8_t items[1 << 16];
    size_t m = 0;
    for (int i = 0; i < count; i++) {
        m += varint(items + m, WG_EVENT_MQTT);
        m += mqtt_fields(items + m, topic, payloads[i]);
    }
    size_t n = context(out);
    n += varint(out + n, WG_EVENT_BATCH);
    return n + bytes(out + n, items, m);
}

int32_t fake_call(int32_t (*handle)(int32_t), const uint8_t *envelope, size_t len) {
    event = envelope;
    event_len = len;
    staged = committed;
    staged_emit_count = staged_metric_count = 0;
    int32_t rc = handle((int32_t)len);
    if (rc == 0) {
        committed = staged;
        for (int i = 0; i < staged_emit_count; i++) fake_emits[fake_emit_count++] = staged_emits[i];
        for (int i = 0; i < staged_metric_count; i++)
            fake_metrics[fake_metric_count++] = staged_metrics[i];
    }
    return rc;
}

int fake_emits_to(const char *topic, const fake_emit **first) {
    int count = 0;
    for (int i = 0; i < fake_emit_count; i++) {
        if (strcmp(fake_emits[i].topic, topic) == 0) {
            if (count == 0) *first = &fake_emits[i];
            count++;
        }
    }
    return count;
}

int fake_logged(const char *needle) {
    for (int i = 0; i < fake_log_count; i++)
        if (strstr(fake_logs[i], needle)) return 1;
    return 0;
}

/* ---- the imports ---- */

static int32_t copy_out(const void *value, int32_t len, void *dst, int32_t cap) {
    if (len <= cap) memcpy(dst, value, (size_t)len);
    return len;
}

int32_t wg_event_read(void *dst, int32_t cap) { return copy_out(event, (int32_t)event_len, dst, cap); }

int32_t wg_emit(const void *topic, int32_t topic_len, const void *payload, int32_t payload_len,
                int32_t flags) {
    if ((flags & ~15) != 0 || (flags & 3) == 3 || topic_len < 1) return WG_INVALID_ARGUMENT;
    if (staged_emit_count == FAKE_MAX || topic_len >= 256 || payload_len >= 2048) {
        fprintf(stderr, "fake host: emit over its limits\n");
        abort();
    }
    fake_emit *e = &staged_emits[staged_emit_count++];
    memcpy(e->topic, topic, (size_t)topic_len);
    e->topic[topic_len] = 0;
    memcpy(e->payload, payload, (size_t)payload_len);
    e->payload[payload_len] = 0;
    e->flags = flags;
    return WG_OK;
}

int32_t wg_kv_get(const void *key, int32_t key_len, void *dst, int32_t cap) {
    if (!valid_key(key_len)) return WG_INVALID_ARGUMENT;
    kv_entry *e = find(&staged, key, key_len);
    return e ? copy_out(e->value, e->len, dst, cap) : WG_NOT_FOUND;
}

int32_t wg_kv_put(const void *key, int32_t key_len, const void *value, int32_t value_len) {
    if (!valid_key(key_len) || value_len > 1024) return WG_INVALID_ARGUMENT;
    kv_entry *e = find_or_add(&staged, key, key_len);
    memcpy(e->value, value, (size_t)value_len);
    e->len = value_len;
    return WG_OK;
}

int32_t wg_kv_delete(const void *key, int32_t key_len) {
    if (!valid_key(key_len)) return WG_INVALID_ARGUMENT;
    kv_entry *e = find(&staged, key, key_len);
    if (e) e->used = 0;
    return WG_OK;
}

int32_t wg_kv_increment(const void *key, int32_t key_len, int64_t delta, void *dst) {
    if (!valid_key(key_len)) return WG_INVALID_ARGUMENT;
    kv_entry *e = find(&staged, key, key_len);
    uint64_t n = 0;
    if (e) {
        if (e->len != 8) return WG_NOT_A_NUMBER;
        for (int i = 7; i >= 0; i--) n = (n << 8) | e->value[i];
    } else {
        e = find_or_add(&staged, key, key_len);
        e->len = 8;
    }
    n += (uint64_t)delta;
    for (int i = 0; i < 8; i++) e->value[i] = ((uint8_t *)dst)[i] = (uint8_t)(n >> (8 * i));
    return WG_OK;
}

void wg_log(int32_t level, const void *msg, int32_t msg_len) {
    (void)level;
    if (fake_log_count == FAKE_MAX) return;
    snprintf(fake_logs[fake_log_count++], sizeof fake_logs[0], "%.*s", (int)msg_len, (const char *)msg);
}

int64_t wg_now_ms(void) { return 1764160000123; }

int32_t wg_config_get(const void *key, int32_t key_len, void *dst, int32_t cap) {
    for (int i = 0; i < config_count; i++) {
        if ((int32_t)strlen(config[i].key) == key_len && memcmp(config[i].key, key, (size_t)key_len) == 0)
            return copy_out(config[i].value, (int32_t)strlen(config[i].value), dst, cap);
    }
    return WG_NOT_FOUND;
}

int32_t wg_secret_get(const void *name, int32_t name_len, void *dst, int32_t cap) {
    (void)name, (void)name_len, (void)dst, (void)cap;
    return WG_DENIED;
}

int32_t wg_invoke(const void *function, int32_t function_len, const void *payload, int32_t payload_len) {
    (void)function, (void)function_len, (void)payload, (void)payload_len;
    return WG_UNAVAILABLE;
}

int32_t wg_respond(int32_t status, const void *body, int32_t body_len) {
    (void)body, (void)body_len;
    return status >= 100 && status <= 599 ? WG_OK : WG_INVALID_ARGUMENT;
}

int32_t wg_respond_header(const void *name, int32_t name_len, const void *value, int32_t value_len) {
    (void)name, (void)name_len, (void)value, (void)value_len;
    return WG_OK;
}

int32_t wg_post_to_connection(const void *connection, int32_t connection_len, const void *data,
                              int32_t data_len) {
    (void)connection, (void)connection_len, (void)data, (void)data_len;
    return WG_OK;
}

int32_t wg_metric(const void *name, int32_t name_len, int32_t kind, double value) {
    if (kind < 0 || kind > 2 || name_len < 1 || name_len >= 128) return WG_INVALID_ARGUMENT;
    fake_metric *m = &staged_metrics[staged_metric_count++];
    memcpy(m->name, name, (size_t)name_len);
    m->name[name_len] = 0;
    m->kind = kind;
    m->value = value;
    return WG_OK;
}

int32_t wg_item_failed(int32_t index) {
    (void)index;
    return WG_INVALID_ARGUMENT;
}
