/* A fake wasmgate host for native tests of C functions: implements every
 * wg_* import of wasmgate.h in plain C, records what the function did, and
 * builds envelopes (postcard) the way the gateway does. Like the gateway,
 * fake_call() keeps the emits, KV writes and metrics of an invocation only
 * if it returns 0. */
#ifndef FAKE_HOST_H
#define FAKE_HOST_H

#include <stddef.h>
#include <stdint.h>

#define FAKE_MAX 64

typedef struct {
    char topic[256];
    char payload[2048];
    int32_t flags;
} fake_emit;

typedef struct {
    char name[128];
    int32_t kind;
    double value;
} fake_metric;

/* What the last successful invocations left (cleared by fake_reset). */
extern fake_emit fake_emits[FAKE_MAX];
extern int fake_emit_count;
extern fake_metric fake_metrics[FAKE_MAX];
extern int fake_metric_count;
extern char fake_logs[FAKE_MAX][512];
extern int fake_log_count;

void fake_reset(void);
void fake_set_config(const char *key, const char *value);
/* A committed KV value (NUL-terminated copy in *out); -1 if absent. */
int fake_kv(const char *key, const uint8_t **value);
/* A committed counter; returns 0 and sets *out, -1 if absent. */
int fake_counter(const char *key, int64_t *out);

/* The envelope of one MQTT message (request 1, function "f", attempt 1). */
size_t fake_mqtt_envelope(uint8_t *out, const char *topic, const char *payload);
/* A batch of MQTT messages on one topic. */
size_t fake_mqtt_batch(uint8_t *out, const char *topic, const char **payloads, int n);

/* Runs `handle` on an envelope; commits its effects if it returns 0. */
int32_t fake_call(int32_t (*handle)(int32_t), const uint8_t *envelope, size_t len);

/* Emits to `topic` among the committed ones. */
int fake_emits_to(const char *topic, const fake_emit **first);
/* Whether a log line contains `needle`. */
int fake_logged(const char *needle);

#endif
