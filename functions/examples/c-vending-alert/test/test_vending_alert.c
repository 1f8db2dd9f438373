/* Native tests of vending_alert.c against the fake host: the same cases as
 * the Rust vending-telemetry's tests, asserting exact output. Prints
 * "N passed, N failed" and exits non-zero on a failure. */
#include <stdio.h>
#include <string.h>

#include "fake_host.h"
#include "wasmgate.h"

int32_t vending_alert_handle(int32_t event_len);
int32_t wg_export_abi_version(void);

static int passed, failed;
static const char *current;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "FAIL %s: %s:%d: %s\n", current, __FILE__, __LINE__, #cond); \
            ok = 0;                                                              \
        }                                                                        \
    } while (0)

#define CHECK_STR(got, want)                                                              \
    do {                                                                                  \
        if (strcmp((got), (want)) != 0) {                                                 \
            fprintf(stderr, "FAIL %s: %s:%d:\n  got  %s\n  want %s\n", current, __FILE__, \
                    __LINE__, (got), (want));                                             \
            ok = 0;                                                                       \
        }                                                                                 \
    } while (0)

static const char *TOPIC = "vending/vm-17/telemetry";
static uint8_t envelope[1 << 17];

static int32_t send(const char *topic, const char *payload) {
    size_t n = fake_mqtt_envelope(envelope, topic, payload);
    return fake_call(vending_alert_handle, envelope, n);
}

/* The payloads of event-hot.json and event.json. */
static const char *HOT =
    "{\"machine\": \"vm-17\", \"ts\": 1764160060000, \"temp_c\": 9.4, \"door_open\": true, "
    "\"stock\": [{\"slot\": \"A1\", \"count\": 1}, {\"slot\": \"A2\", \"count\": 5}, "
    "{\"slot\": \"B1\", \"count\": 0}]}";
static const char *NORMAL =
    "{\"machine\": \"vm-17\", \"ts\": 1764160000000, \"temp_c\": 6.8, \"door_open\": false, "
    "\"stock\": [{\"slot\": \"A1\", \"count\": 7}, {\"slot\": \"A2\", \"count\": 5}, "
    "{\"slot\": \"B1\", \"count\": 9}], \"sale\": {\"slot\": \"A1\", \"price_cents\": 150}}";
static const char *FULL = "[{\"slot\":\"A1\",\"count\":9},{\"slot\":\"B2\",\"count\":5}]";

static const char *telemetry(const char *temp, const char *stock, int sale) {
    static char buf[1024];
    char sale_part[128] = "";
    if (sale) snprintf(sale_part, sizeof sale_part, ",\"sale\":{\"slot\":\"A1\",\"price_cents\":%d}", sale);
    snprintf(buf, sizeof buf,
             "{\"machine\":\"vm-17\",\"ts\":1764160000000,\"temp_c\":%s,\"door_open\":false,\"stock\":%s%s}",
             temp, stock, sale_part);
    return buf;
}

static int test_abi_version(void) {
    int ok = 1;
    CHECK(wg_export_abi_version() == 1);
    return ok;
}

static int test_hot_event_raises_an_alert_and_a_summary(void) {
    int ok = 1;
    const fake_emit *e = NULL;
    CHECK(send(TOPIC, HOT) == 0);
    CHECK(fake_emit_count == 2);
    CHECK(fake_emits_to("vending/vm-17/alert", &e) == 1);
    if (e) {
        CHECK(e->flags == WG_EMIT_LOCAL);
        CHECK_STR(e->payload,
                  "{\"machine\":\"vm-17\",\"ts\":1764160060000,\"temp_c\":9.4,\"max_temp_c\":8.0,"
                  "\"too_warm\":true,\"door_open\":true,\"low_stock\":[\"A1\",\"B1\"]}");
    }
    e = NULL;
    CHECK(fake_emits_to("telemetry/vending/vm-17", &e) == 1);
    if (e) {
        CHECK(e->flags == WG_EMIT_UPSTREAM);
        CHECK_STR(e->payload,
                  "{\"machine\":\"vm-17\",\"ts\":1764160060000,\"temp_c\":9.4,\"door_open\":true,"
                  "\"sales_cents\":0,\"vends\":0,\"low_slots\":2}");
    }
    CHECK(fake_metric_count == 2);
    CHECK(strcmp(fake_metrics[0].name, "temperature_c") == 0 && fake_metrics[0].kind == 2);
    CHECK(strcmp(fake_metrics[1].name, "warm_alerts") == 0 && fake_metrics[1].kind == 0 &&
          fake_metrics[1].value == 1.0);
    return ok;
}

static int test_normal_event_sends_only_the_summary_and_counts_the_sale(void) {
    int ok = 1;
    const fake_emit *e = NULL;
    CHECK(send(TOPIC, NORMAL) == 0);
    CHECK(fake_emit_count == 1);
    CHECK(fake_emits_to("vending/vm-17/alert", &e) == 0);
    CHECK(fake_emits_to("telemetry/vending/vm-17", &e) == 1);
    if (e)
        CHECK_STR(e->payload,
                  "{\"machine\":\"vm-17\",\"ts\":1764160000000,\"temp_c\":6.8,\"door_open\":false,"
                  "\"sales_cents\":150,\"vends\":1,\"low_slots\":0}");
    int64_t n = 0;
    CHECK(fake_counter("vm-17/sales_cents", &n) == 0 && n == 150);
    CHECK(fake_counter("vm-17/vends", &n) == 0 && n == 1);
    const uint8_t *v;
    CHECK(fake_kv("vm-17/last_temp_c", &v) == 3 && memcmp(v, "6.8", 3) == 0);
    CHECK(fake_metric_count == 1);
    return ok;
}

static int test_sales_accumulate_per_machine(void) {
    int ok = 1;
    CHECK(send(TOPIC, telemetry("5.0", FULL, 150)) == 0);
    CHECK(send(TOPIC, telemetry("5.0", FULL, 0)) == 0);
    CHECK(send(TOPIC, telemetry("5.0", FULL, 200)) == 0);
    CHECK(send("vending/vm-9/telemetry", telemetry("5.0", FULL, 99)) == 0);
    int64_t n = 0;
    CHECK(fake_counter("vm-17/sales_cents", &n) == 0 && n == 350);
    CHECK(fake_counter("vm-17/vends", &n) == 0 && n == 2);
    CHECK(fake_counter("vm-9/sales_cents", &n) == 0 && n == 99);
    CHECK_STR(fake_emits[1].payload,
              "{\"machine\":\"vm-17\",\"ts\":1764160000000,\"temp_c\":5.0,\"door_open\":false,"
              "\"sales_cents\":150,\"vends\":1,\"low_slots\":0}");
    return ok;
}

static int test_no_alert_at_the_threshold(void) {
    int ok = 1;
    const fake_emit *e;
    CHECK(send(TOPIC, telemetry("8.0", FULL, 150)) == 0);
    CHECK(fake_emits_to("vending/vm-17/alert", &e) == 0);
    return ok;
}

static int test_warm_alert_matches_the_rust_one(void) {
    int ok = 1;
    const fake_emit *e = NULL;
    CHECK(send(TOPIC, telemetry("9.5", FULL, 0)) == 0);
    CHECK(fake_emits_to("vending/vm-17/alert", &e) == 1);
    if (e)
        CHECK_STR(e->payload,
                  "{\"machine\":\"vm-17\",\"ts\":1764160000000,\"temp_c\":9.5,\"max_temp_c\":8.0,"
                  "\"too_warm\":true,\"door_open\":false,\"low_stock\":[]}");
    return ok;
}

static int test_low_slots_are_listed(void) {
    int ok = 1;
    const fake_emit *e = NULL;
    const char *stock = "[{\"slot\":\"A1\",\"count\":2},{\"slot\":\"A2\",\"count\":3},{\"slot\":\"B1\",\"count\":0}]";
    CHECK(send(TOPIC, telemetry("5.0", stock, 0)) == 0);
    CHECK(fake_emits_to("vending/vm-17/alert", &e) == 1);
    if (e) {
        CHECK(strstr(e->payload, "\"too_warm\":false") != NULL);
        CHECK(strstr(e->payload, "\"low_stock\":[\"A1\",\"B1\"]") != NULL);
    }
    CHECK(fake_emits_to("telemetry/vending/vm-17", &e) == 1);
    CHECK(strstr(e->payload, "\"low_slots\":2") != NULL);
    return ok;
}

static int test_thresholds_come_from_the_config(void) {
    int ok = 1;
    const fake_emit *e = NULL;
    fake_set_config("max_temp_c", "4.5");
    fake_set_config("low_stock", " 5 ");
    CHECK(send(TOPIC, telemetry("5.0", FULL, 0)) == 0);
    CHECK(fake_emits_to("vending/vm-17/alert", &e) == 1);
    if (e)
        CHECK_STR(e->payload,
                  "{\"machine\":\"vm-17\",\"ts\":1764160000000,\"temp_c\":5.0,\"max_temp_c\":4.5,"
                  "\"too_warm\":true,\"door_open\":false,\"low_stock\":[\"B2\"]}");
    return ok;
}

static int test_a_bad_threshold_fails_loudly(void) {
    int ok = 1;
    fake_set_config("max_temp_c", "warm");
    CHECK(send(TOPIC, telemetry("5.0", FULL, 0)) == 12);
    CHECK(fake_logged("max_temp_c"));
    CHECK(fake_emit_count == 0);
    return ok;
}

static int test_invalid_json_fails_and_changes_nothing(void) {
    int ok = 1;
    CHECK(send(TOPIC, telemetry("5.0", FULL, 150)) == 0);
    const char *bad[] = {"{\"ts\":1,\"temp_c\":", "not json", "{\"temp_c\":5.0}", "{\"ts\":-1,\"temp_c\":5}",
                         "{\"ts\":1,\"temp_c\":5,\"stock\":[{\"slot\":\"A1\"}]}", "{\"ts\":1,\"temp_c\":5} x",
                         "{\"ts\":1,\"temp_c\":5,\"x\":[1,}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (send(TOPIC, bad[i]) != 10) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            ok = 0;
        }
    }
    CHECK(fake_logged("invalid telemetry JSON on vending/vm-17/telemetry"));
    CHECK(fake_emit_count == 1);
    int64_t n = 0;
    CHECK(fake_counter("vm-17/sales_cents", &n) == 0 && n == 150);
    return ok;
}

static int test_unexpected_topics_are_refused(void) {
    int ok = 1;
    CHECK(send("vending/a/b/telemetry", telemetry("5.0", FULL, 0)) == 11);
    CHECK(send("vending//telemetry", telemetry("5.0", FULL, 0)) == 11);
    CHECK(send("robots/r-1/telemetry", telemetry("5.0", FULL, 0)) == 11);
    CHECK(fake_emit_count == 0);
    return ok;
}

static int test_stock_and_sale_are_optional_and_unknown_fields_skipped(void) {
    int ok = 1;
    CHECK(send(TOPIC, "{\"ts\":1,\"temp_c\":4.0}") == 0);
    CHECK(send(TOPIC, " {\"fw\":{\"v\":[1,2.5e3,\"x\\\"y\",null,true]},\"ts\":2,\"temp_c\":-4,\"sale\":null} ") == 0);
    CHECK(fake_emit_count == 2);
    CHECK_STR(fake_emits[1].payload,
              "{\"machine\":\"vm-17\",\"ts\":2,\"temp_c\":-4.0,\"door_open\":false,"
              "\"sales_cents\":0,\"vends\":0,\"low_slots\":0}");
    return ok;
}

static int test_a_batch_is_handled_item_by_item(void) {
    int ok = 1;
    const char *items[] = {telemetry("5.0", FULL, 150), NULL};
    char second[1024];
    snprintf(second, sizeof second, "%s", telemetry("9.5", FULL, 100));
    items[0] = "{\"ts\":1,\"temp_c\":5.0,\"sale\":{\"slot\":\"A1\",\"price_cents\":150}}";
    items[1] = second;
    size_t n = fake_mqtt_batch(envelope, TOPIC, items, 2);
    CHECK(fake_call(vending_alert_handle, envelope, n) == 0);
    const fake_emit *e;
    CHECK(fake_emits_to("telemetry/vending/vm-17", &e) == 2);
    CHECK(fake_emits_to("vending/vm-17/alert", &e) == 1);
    int64_t v = 0;
    CHECK(fake_counter("vm-17/sales_cents", &v) == 0 && v == 250);
    return ok;
}

static int test_an_event_over_the_buffer_fails_with_a_log_line(void) {
    int ok = 1;
    static char big[70000];
    memset(big, ' ', sizeof big - 1);
    big[0] = '{';
    big[sizeof big - 2] = '}';
    big[sizeof big - 1] = 0;
    CHECK(send(TOPIC, big) == 101);
    CHECK(fake_logged("over its event buffer"));
    return ok;
}

int main(void) {
    struct {
        const char *name;
        int (*run)(void);
    } tests[] = {
#define T(f) {#f, f}
        T(test_abi_version),
        T(test_hot_event_raises_an_alert_and_a_summary),
        T(test_normal_event_sends_only_the_summary_and_counts_the_sale),
        T(test_sales_accumulate_per_machine),
        T(test_no_alert_at_the_threshold),
        T(test_warm_alert_matches_the_rust_one),
        T(test_low_slots_are_listed),
        T(test_thresholds_come_from_the_config),
        T(test_a_bad_threshold_fails_loudly),
        T(test_invalid_json_fails_and_changes_nothing),
        T(test_unexpected_topics_are_refused),
        T(test_stock_and_sale_are_optional_and_unknown_fields_skipped),
        T(test_a_batch_is_handled_item_by_item),
        T(test_an_event_over_the_buffer_fails_with_a_log_line),
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        current = tests[i].name;
        fake_reset();
        if (tests[i].run()) {
            passed++;
            printf("ok   %s\n", current);
        } else {
            failed++;
            printf("FAIL %s\n", current);
        }
    }
    printf("c-vending-alert: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
