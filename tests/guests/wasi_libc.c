// A function written against wasi-libc, as any C program is: printf,
// getenv, time, malloc, getentropy, fopen, exit. Built for wasm32-wasi as a
// reactor (build.sh); tests/wasi.rs runs it through `wasmgate invoke` and a
// gateway to check the WASI subset the host gives such modules.
//
// What it does with an event, by a word in its payload:
//   "exit:N"  exit(N) after emitting (0 a success with the emit kept, else
//             a failure that keeps nothing)
//   "spin"    loops until the fuel or the deadline ends it
//   "files"   tries to read /etc/passwd and to list "/" (both must fail)
//   anything else: emits {"site":..,"year_ok":..,"entropy":..,"args":..}
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define IMPORT(name) __attribute__((import_module("wasmgate"), import_name(name)))
IMPORT("event_read") int event_read(void *dst, int cap);
IMPORT("emit") int emit(const char *topic, int topic_len, const char *payload, int payload_len, int flags);

static char event[8192];

static int contains(const char *haystack, int len, const char *needle) {
    int n = (int)strlen(needle);
    for (int i = 0; i + n <= len; i++) {
        if (memcmp(haystack + i, needle, n) == 0) return i;
    }
    return -1;
}

static void send(const char *body) {
    const char *topic = "wasi/out";
    emit(topic, (int)strlen(topic), body, (int)strlen(body), 1);
}

__attribute__((export_name("wasmgate_abi_version"))) int abi_version(void) { return 1; }

__attribute__((export_name("wasmgate_handle"))) int handle(int event_len) {
    int len = event_read(event, sizeof event);
    if (len != event_len || len > (int)sizeof event) {
        fprintf(stderr, "event of %d bytes does not fit\n", event_len);
        return 1;
    }
    int at = contains(event, len, "exit:");
    if (at >= 0) {
        int code = atoi(event + at + 5);
        send("{\"before_exit\":true}");
        printf("exiting with %d", code);  // no newline: flushed by exit
        exit(code);
    }
    if (contains(event, len, "spin") >= 0) {
        volatile unsigned long n = 0;
        for (;;) n++;
    }
    if (contains(event, len, "files") >= 0) {
        FILE *f = fopen("/etc/passwd", "r");
        DIR *d = opendir("/");
        printf("fopen: %s, errno %d\n", f ? "opened" : "refused", f ? 0 : errno);
        printf("opendir: %s\n", d ? "opened" : "refused");
        char body[128];
        snprintf(body, sizeof body, "{\"fopen\":%s,\"opendir\":%s}", f ? "true" : "false",
                 d ? "true" : "false");
        send(body);
        return 0;
    }
    const char *site = getenv("site");
    time_t now = time(NULL);
    struct tm *utc = gmtime(&now);
    unsigned char entropy[16] = {0};
    int entropy_ok = getentropy(entropy, sizeof entropy) == 0;
    int nonzero = 0;
    for (unsigned i = 0; i < sizeof entropy; i++) nonzero |= entropy[i];
    char *copy = malloc(len);
    if (!copy) return 2;
    memcpy(copy, event, len);
    free(copy);
    printf("handled %d bytes at site %s\n", len, site ? site : "(none)");
    fprintf(stderr, "this goes to stderr\n");
    char body[256];
    snprintf(body, sizeof body,
             "{\"site\":\"%s\",\"year_ok\":%s,\"entropy\":%s}",
             site ? site : "", utc && utc->tm_year + 1900 >= 2025 ? "true" : "false",
             entropy_ok && nonzero ? "true" : "false");
    send(body);
    return 0;
}
