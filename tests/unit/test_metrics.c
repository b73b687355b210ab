/*
 * test_metrics: counters from many threads, histogram buckets and sums, the exposition
 * text and its buffer contract, the reason mappings, and the HTTP request parser fed
 * every prefix of good, bad and oversized requests.
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define P "smtp_tls_proxy_"

/* Counts the lines of |text| equal to |line|. */
static int count_line(const char *text, const char *line)
{
    int n = 0;
    size_t line_len = strlen(line);
    const char *p = text;
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        if (len == line_len && memcmp(p, line, len) == 0) {
            n++;
        }
        p += len + (nl != NULL ? 1 : 0);
    }
    return n;
}

static char *render_all(size_t *out_len)
{
    size_t need = metrics_render(NULL, 0);
    char *text = malloc(need + 1);
    CHECK(text != NULL);
    *out_len = metrics_render(text, need + 1);
    CHECK_INT(*out_len, need);
    return text;
}

#define N_THREADS 8
#define N_ROUNDS 100000

static void *thread_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < N_ROUNDS; i++) {
        metrics_inc(METRICS_MESSAGES);
        metrics_add(METRICS_BYTES_IN, 3);
        metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, 1);
        metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, -1);
        if (i % 100 == 0) {
            metrics_observe(METRICS_SESSION_SECONDS, 0.25);
        }
    }
    metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, -2);
    return NULL;
}

static void test_threads(void)
{
    metrics_reset();
    pthread_t threads[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        CHECK_INT(pthread_create(&threads[i], NULL, thread_main, NULL), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        CHECK_INT(pthread_join(threads[i], NULL), 0);
    }
    CHECK_INT(metrics_get(METRICS_MESSAGES), N_THREADS * N_ROUNDS);
    CHECK_INT(metrics_get(METRICS_BYTES_IN), 3 * N_THREADS * N_ROUNDS);
    CHECK_INT((int64_t)metrics_get(METRICS_CONNECTIONS_CURRENT), -2 * N_THREADS);
    size_t len;
    char *text = render_all(&len);
    CHECK_INT(count_line(text, P "messages_total 800000"), 1);
    CHECK_INT(count_line(text, P "bytes_total{direction=\"in\"} 2400000"), 1);
    CHECK_INT(count_line(text, P "connections_current -16"), 1);
    CHECK_INT(count_line(text, P "session_seconds_bucket{le=\"0.1\"} 0"), 1);
    CHECK_INT(count_line(text, P "session_seconds_bucket{le=\"0.25\"} 8000"), 1);
    CHECK_INT(count_line(text, P "session_seconds_bucket{le=\"+Inf\"} 8000"), 1);
    CHECK_INT(count_line(text, P "session_seconds_sum 2000.000000"), 1);
    CHECK_INT(count_line(text, P "session_seconds_count 8000"), 1);
    free(text);
}

static void test_histogram(void)
{
    metrics_reset();
    const double values[] = {0,   0.005,       0.0050004, 0.0050006, 0.75, 1.0,
                             300, 300.0000004, 301,       -1,        NAN};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        metrics_observe(METRICS_BACK_HANDSHAKE_SECONDS, values[i]);
    }
    size_t len;
    char *text = render_all(&len);
    /* 0, 0.005, 0.0050004 (5000 us), -1 and NaN are <= 0.005; 0.0050006 rounds to 5001 us. */
    const char *want[] = {
        P "back_handshake_seconds_bucket{le=\"0.005\"} 5",
        P "back_handshake_seconds_bucket{le=\"0.01\"} 6",
        P "back_handshake_seconds_bucket{le=\"0.025\"} 6",
        P "back_handshake_seconds_bucket{le=\"0.05\"} 6",
        P "back_handshake_seconds_bucket{le=\"0.1\"} 6",
        P "back_handshake_seconds_bucket{le=\"0.25\"} 6",
        P "back_handshake_seconds_bucket{le=\"0.5\"} 6",
        P "back_handshake_seconds_bucket{le=\"1\"} 8",
        P "back_handshake_seconds_bucket{le=\"2.5\"} 8",
        P "back_handshake_seconds_bucket{le=\"5\"} 8",
        P "back_handshake_seconds_bucket{le=\"10\"} 8",
        P "back_handshake_seconds_bucket{le=\"30\"} 8",
        P "back_handshake_seconds_bucket{le=\"60\"} 8",
        P "back_handshake_seconds_bucket{le=\"300\"} 10",
        P "back_handshake_seconds_bucket{le=\"+Inf\"} 11",
        /* 0.005 + 0.005 + 0.005001 + 0.75 + 1 + 300 + 300 + 301 */
        P "back_handshake_seconds_sum 902.765001",
        P "back_handshake_seconds_count 11",
    };
    const char *p = strstr(text, want[0]);
    CHECK(p != NULL);
    for (size_t i = 0; p != NULL && i < sizeof(want) / sizeof(want[0]); i++) {
        size_t n = strlen(want[i]);
        CHECK_MEM(p, n, want[i], n);
        CHECK_INT(p[n], '\n');
        p += n + 1;
    }
    /* The other histograms stay empty. */
    CHECK_INT(count_line(text, P "front_handshake_seconds_count 0"), 1);
    CHECK_INT(count_line(text, P "session_seconds_sum 0.000000"), 1);
    free(text);

    /* Huge values are clamped, not undefined. */
    metrics_reset();
    const double huge[] = {1e300, INFINITY, 1e13 + 1};
    for (size_t i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
        metrics_reset();
        metrics_observe(METRICS_SESSION_SECONDS, huge[i]);
        text = render_all(&len);
        CHECK_INT(count_line(text, P "session_seconds_bucket{le=\"+Inf\"} 1"), 1);
        CHECK_INT(count_line(text, P "session_seconds_bucket{le=\"300\"} 0"), 1);
        CHECK_INT(count_line(text, P "session_seconds_sum 10000000000000.000000"), 1);
        free(text);
    }
}

/* Checks the text's shape: every line is HELP, TYPE or a sample; each family's HELP and
 * TYPE come once, together, before its samples; every value parses. */
static void check_shape(const char *text, size_t len, int *out_lines, int *out_families)
{
    CHECK(len > 0 && text[len - 1] == '\n');
    CHECK_INT(strlen(text), len);
    int lines = 0;
    int families = 0;
    char family[128] = "";
    const char *p = text;
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        CHECK(nl != NULL);
        if (nl == NULL) {
            break;
        }
        size_t n = (size_t)(nl - p);
        char line[512];
        CHECK(n < sizeof(line));
        if (n >= sizeof(line)) {
            break;
        }
        memcpy(line, p, n);
        line[n] = '\0';
        lines++;
        if (strncmp(line, "# HELP " P, 7 + strlen(P)) == 0) {
            families++;
            const char *name = line + 7;
            size_t name_len = strcspn(name, " ");
            CHECK(name_len < sizeof(family));
            memcpy(family, name, name_len);
            family[name_len] = '\0';
            CHECK(strchr(name, '\\') == NULL);
            /* TYPE follows at once, for the same family. */
            char want[256];
            snprintf(want, sizeof(want), "# TYPE %s ", family);
            CHECK(strncmp(nl + 1, want, strlen(want)) == 0);
            char once[256];
            snprintf(once, sizeof(once), "# HELP %s ", family);
            CHECK(strstr(nl + 1, once) == NULL);
        } else if (strncmp(line, "# TYPE ", 7) == 0) {
            const char *type = line + 7 + strlen(family) + 1;
            CHECK(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                  strcmp(type, "histogram") == 0);
        } else {
            /* A sample of the current family: name, optional labels, space, number. */
            CHECK(strncmp(line, family, strlen(family)) == 0);
            const char *sp = strrchr(line, ' ');
            CHECK(sp != NULL);
            if (sp != NULL) {
                char *end;
                strtod(sp + 1, &end);
                CHECK(*end == '\0' && end != sp + 1);
            }
        }
        p = nl + 1;
    }
    *out_lines = lines;
    *out_families = families;
}

static void test_render(void)
{
    metrics_reset();
    metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, 3);
    metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, -1);
    metrics_inc(METRICS_CONNECTIONS);
    metrics_inc(METRICS_CONNECTIONS);
    metrics_inc(METRICS_CONNECTIONS_REFUSED);
    metrics_inc(metrics_session_end("quit"));
    metrics_inc(metrics_session_end("upstream-421"));
    metrics_add(METRICS_BYTES_OUT, 1234);
    metrics_inc(METRICS_FRONT_STARTTLS_HIDDEN);
    metrics_inc(METRICS_BACK_TLS_USED);
    metrics_inc(metrics_back_fallback_reason("tls-alert:handshake failure"));
    metrics_gauge_set(METRICS_BACK_REMEMBERED_ENTRIES, 7);
    metrics_gauge_set(METRICS_FRONT_LEARNED_ENTRIES, 5);
    metrics_gauge_set(METRICS_FRONT_LEARNED_ENTRIES, 4);
    metrics_observe(METRICS_FRONT_HANDSHAKE_SECONDS, 0.02);

    size_t len;
    char *text = render_all(&len);
    int lines;
    int families;
    check_shape(text, len, &lines, &families);
    CHECK_INT(families, 17);
    CHECK_INT(lines, METRICS_N_COUNTERS + 2 * 17 + METRICS_N_HISTOGRAMS * (METRICS_N_BUCKETS + 3));

    /* The start of the text, exactly. */
    const char *head =
        "# HELP " P "connections_current Client connections open now.\n"
        "# TYPE " P "connections_current gauge\n" P "connections_current 2\n"
        "# HELP " P "connections_total Client connections accepted.\n"
        "# TYPE " P "connections_total counter\n" P "connections_total 2\n"
        "# HELP " P "connections_refused_total Client connections refused over "
        "max_connections.\n"
        "# TYPE " P "connections_refused_total counter\n" P "connections_refused_total 1\n"
        "# HELP " P "sessions_total Sessions ended, by how they ended.\n"
        "# TYPE " P "sessions_total counter\n" P "sessions_total{end=\"quit\"} 1\n" P
        "sessions_total{end=\"client-closed\"} 0\n";
    CHECK_MEM(text, strlen(head), head, strlen(head));

    const char *want[] = {
        P "sessions_total{end=\"upstream-lost\"} 1",
        P "sessions_total{end=\"other\"} 0",
        P "bytes_total{direction=\"in\"} 0",
        P "bytes_total{direction=\"out\"} 1234",
        P "front_starttls_total{result=\"hidden\"} 1",
        P "front_starttls_total{result=\"used\"} 0",
        P "back_tls_total{result=\"used\"} 1",
        P "back_tls_fallback_total{reason=\"tls-alert\"} 1",
        P "back_tls_fallback_total{reason=\"starttls-refused\"} 0",
        P "back_tls_fallback_total{reason=\"certificate\"} 0",
        P "back_tls_remembered_skips_total 0",
        P "back_tls_require_failures_total 0",
        P "front_learned_entries 4",
        P "back_remembered_entries 7",
        "# TYPE " P "front_handshake_seconds histogram",
        P "front_handshake_seconds_bucket{le=\"0.01\"} 0",
        P "front_handshake_seconds_bucket{le=\"0.025\"} 1",
        P "front_handshake_seconds_bucket{le=\"+Inf\"} 1",
        P "front_handshake_seconds_sum 0.020000",
        P "front_handshake_seconds_count 1",
        "# TYPE " P "session_seconds histogram",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int n = count_line(text, want[i]);
        if (n != 1) {
            fprintf(stderr, "missing line: %s\n", want[i]);
        }
        CHECK_INT(n, 1);
    }
    /* Deterministic: the same state renders the same text. */
    size_t len2;
    char *text2 = render_all(&len2);
    CHECK_MEM(text2, len2, text, len);
    free(text2);

    /* The too-small contract: the length needed, a NUL-terminated prefix. */
    CHECK_INT(metrics_render(NULL, 0), len);
    char *small = malloc(len + 1);
    CHECK(small != NULL);
    memset(small, 'x', len + 1);
    CHECK_INT(metrics_render(small, 1), len);
    CHECK_INT(small[0], '\0');
    CHECK_INT(small[1], 'x');
    for (size_t cap = 2; cap <= len + 1; cap += cap < 64 ? 1 : 97) {
        memset(small, 'x', len + 1);
        CHECK_INT(metrics_render(small, cap), len);
        CHECK_INT(strlen(small), cap - 1);
        CHECK_MEM(small, cap - 1, text, cap - 1);
    }
    memset(small, 'x', len + 1);
    CHECK_INT(metrics_render(small, len), len); /* one short: the NUL does not fit */
    CHECK_INT(strlen(small), len - 1);
    CHECK_INT(metrics_render(small, len + 1), len);
    CHECK_MEM(small, len + 1, text, len + 1);
    free(small);
    free(text);

    /* The documented bound: exact, and never exceeded by real values. */
    size_t max = metrics_render_max();
    if (max != METRICS_RENDER_MAX) {
        fprintf(stderr, "metrics_render_max() is %zu: update METRICS_RENDER_MAX\n", max);
    }
    CHECK_INT(max, METRICS_RENDER_MAX);
    metrics_reset();
    for (int i = 0; i < METRICS_N_COUNTERS; i++) {
        if (i == METRICS_CONNECTIONS_CURRENT || i == METRICS_FRONT_LEARNED_ENTRIES ||
            i == METRICS_BACK_REMEMBERED_ENTRIES) {
            metrics_gauge_set((enum metrics_counter)i, INT64_MIN);
        } else {
            metrics_add((enum metrics_counter)i, UINT64_MAX);
        }
    }
    for (int i = 0; i < METRICS_N_HISTOGRAMS; i++) {
        metrics_observe((enum metrics_histogram)i, 1e300);
    }
    CHECK(metrics_render(NULL, 0) < METRICS_RENDER_MAX);
    metrics_reset();
}

static void test_mappings(void)
{
    static const struct {
        const char *reason;
        enum metrics_counter want;
    } ends[] = {
        {"quit", METRICS_SESSIONS_QUIT},
        {"client-closed", METRICS_SESSIONS_CLIENT_CLOSED},
        {"client-error", METRICS_SESSIONS_CLIENT_CLOSED},
        {"client-write-error", METRICS_SESSIONS_CLIENT_CLOSED},
        {"client-tls-error", METRICS_SESSIONS_CLIENT_CLOSED},
        {"client-tls-failed", METRICS_SESSIONS_CLIENT_CLOSED},
        {"client-lost-in-data", METRICS_SESSIONS_CLIENT_LOST_IN_DATA},
        {"timeout", METRICS_SESSIONS_TIMEOUT},
        {"upstream-unreachable", METRICS_SESSIONS_UPSTREAM_UNREACHABLE},
        {"upstream-closed", METRICS_SESSIONS_UPSTREAM_LOST},
        {"upstream-error", METRICS_SESSIONS_UPSTREAM_LOST},
        {"upstream-write-error", METRICS_SESSIONS_UPSTREAM_LOST},
        {"upstream-tls-error", METRICS_SESSIONS_UPSTREAM_LOST},
        {"upstream-421", METRICS_SESSIONS_UPSTREAM_LOST},
        {"upstream-protocol-error", METRICS_SESSIONS_UPSTREAM_LOST},
        {"upstream-replay-failed", METRICS_SESSIONS_UPSTREAM_LOST},
        {"bad-ehlo-reply", METRICS_SESSIONS_UPSTREAM_LOST},
        {"reply-line-too-long", METRICS_SESSIONS_UPSTREAM_LOST},
        {"tls-alert:decode error", METRICS_SESSIONS_UPSTREAM_LOST},
        {"upstream-timeout", METRICS_SESSIONS_UPSTREAM_TIMEOUT},
        {"upstream-tls-failed", METRICS_SESSIONS_UPSTREAM_TLS_FAILED},
        {"message-rejected", METRICS_SESSIONS_MESSAGE_REJECTED},
        {"too-many-connections", METRICS_SESSIONS_TOO_MANY_CONNECTIONS},
        {"shutdown", METRICS_SESSIONS_SHUTDOWN},
        {"out-of-memory", METRICS_SESSIONS_OTHER},
        {"internal-error", METRICS_SESSIONS_OTHER},
        {"accept-failed", METRICS_SESSIONS_OTHER},
        {"", METRICS_SESSIONS_OTHER},
        {"quitx", METRICS_SESSIONS_OTHER},
        {"QUIT", METRICS_SESSIONS_OTHER},
    };
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        enum metrics_counter got = metrics_session_end(ends[i].reason);
        if (got != ends[i].want) {
            fprintf(stderr, "end reason \"%s\"\n", ends[i].reason);
        }
        CHECK_INT(got, ends[i].want);
    }
    CHECK_INT(metrics_session_end(NULL), METRICS_SESSIONS_OTHER);

    static const struct {
        const char *reason;
        enum metrics_counter want;
    } fallbacks[] = {
        {"starttls-refused-454", METRICS_BACK_FALLBACK_STARTTLS_REFUSED},
        {"starttls-refused-502", METRICS_BACK_FALLBACK_STARTTLS_REFUSED},
        {"starttls-bad-reply", METRICS_BACK_FALLBACK_STARTTLS_BAD_REPLY},
        {"tls-alert:handshake failure", METRICS_BACK_FALLBACK_TLS_ALERT},
        {"tls-error:handshake failed", METRICS_BACK_FALLBACK_TLS_ERROR},
        {"upstream-tls-error", METRICS_BACK_FALLBACK_TLS_ERROR},
        {"eof-after-220", METRICS_BACK_FALLBACK_EOF},
        {"eof-during-handshake", METRICS_BACK_FALLBACK_EOF},
        {"eof-after-starttls", METRICS_BACK_FALLBACK_EOF},
        {"upstream-closed", METRICS_BACK_FALLBACK_EOF},
        {"handshake-timeout", METRICS_BACK_FALLBACK_HANDSHAKE_TIMEOUT},
        {"starttls-reply-timeout", METRICS_BACK_FALLBACK_HANDSHAKE_TIMEOUT},
        {"post-tls-ehlo-403", METRICS_BACK_FALLBACK_POST_TLS_EHLO},
        {"post-tls-ehlo-timeout", METRICS_BACK_FALLBACK_POST_TLS_EHLO},
        {"post-tls-eof", METRICS_BACK_FALLBACK_POST_TLS_EOF},
        {"certificate-host-mismatch", METRICS_BACK_FALLBACK_CERTIFICATE},
        {"certificate-expired", METRICS_BACK_FALLBACK_CERTIFICATE},
        {"validation-failure", METRICS_BACK_FALLBACK_CERTIFICATE},
        {"upstream-error", METRICS_BACK_FALLBACK_OTHER},
        {"upstream-protocol-error", METRICS_BACK_FALLBACK_OTHER},
        {"starttls-not-supported", METRICS_BACK_FALLBACK_OTHER},
        {"", METRICS_BACK_FALLBACK_OTHER},
        {"tls", METRICS_BACK_FALLBACK_OTHER},
    };
    for (size_t i = 0; i < sizeof(fallbacks) / sizeof(fallbacks[0]); i++) {
        enum metrics_counter got = metrics_back_fallback_reason(fallbacks[i].reason);
        if (got != fallbacks[i].want) {
            fprintf(stderr, "fallback reason \"%s\"\n", fallbacks[i].reason);
        }
        CHECK_INT(got, fallbacks[i].want);
    }
    CHECK_INT(metrics_back_fallback_reason(NULL), METRICS_BACK_FALLBACK_OTHER);
}

/* Parses a heap copy of exactly |len| bytes, so ASan sees any read past them. */
static enum metrics_http_result parse_copy(size_t *out_consumed, bool *out_head, const char *data,
                                           size_t len)
{
    char *copy = malloc(len == 0 ? 1 : len);
    CHECK(copy != NULL);
    if (len > 0) {
        memcpy(copy, data, len);
    }
    enum metrics_http_result r = metrics_http_parse(out_consumed, out_head, copy, len);
    free(copy);
    return r;
}

/*
 * Checks the result for |data| whole, then for every prefix (the same bytes split at any
 * point, the parser being stateless): NEED_MORE before the head ends, the same answer
 * from there on. |want_consumed| is the head's length, 0 when none.
 */
static void check_http(int line, const char *data, size_t len, enum metrics_http_result want,
                       size_t want_consumed, bool want_head)
{
    size_t consumed;
    bool head;
    enum metrics_http_result r = parse_copy(&consumed, &head, data, len);
    if (r != want || consumed != want_consumed || head != want_head) {
        fprintf(stderr, "line %d: request \"%.*s\": got %d/%zu/%d\n", line,
                (int)(len < 80 ? len : 80), data, (int)r, consumed, (int)head);
    }
    CHECK_INT(r, want);
    CHECK_INT(consumed, want_consumed);
    CHECK_INT(head, want_head);
    size_t decided = want == METRICS_HTTP_TOO_LARGE ? METRICS_HTTP_HEAD_MAX : want_consumed;
    int bad = 0;
    for (size_t k = 0; k < len; k++) {
        r = parse_copy(&consumed, &head, data, k);
        if (k < decided || want == METRICS_HTTP_NEED_MORE) {
            bad += r != METRICS_HTTP_NEED_MORE || consumed != 0 || head;
        } else {
            bad += r != want || consumed != want_consumed || head != want_head;
        }
    }
    if (bad != 0) {
        fprintf(stderr, "line %d: %d prefixes disagree\n", line, bad);
    }
    CHECK_INT(bad, 0);
}

#define HTTP(s, want, consumed, head) check_http(__LINE__, s, sizeof(s) - 1, want, consumed, head)
#define HTTP_WHOLE(s, want, head) HTTP(s, want, sizeof(s) - 1, head)

static void test_http_parse(void)
{
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\nHost: localhost:9100\r\nAccept: */*\r\n\r\n",
               METRICS_HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics HTTP/1.0\r\n\r\n", METRICS_HTTP_METRICS, false);
    HTTP_WHOLE("HEAD /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_METRICS, true);
    HTTP_WHOLE("GET /metrics HTTP/1.1\n\n", METRICS_HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\nHost: x\r\n\n", METRICS_HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\nHost: x\n\r\n", METRICS_HTTP_METRICS, false);
    /* Bytes after the head (a body, a pipelined request) are not consumed. */
    HTTP("GET /metrics HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", METRICS_HTTP_METRICS, 25, false);
    /* Decided: a query is ignored, as Prometheus client libraries do. */
    HTTP_WHOLE("GET /metrics?x HTTP/1.1\r\n\r\n", METRICS_HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics? HTTP/1.1\r\n\r\n", METRICS_HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics?name[]=a&b=/x HTTP/1.1\r\n\r\n", METRICS_HTTP_METRICS, false);
    /* Decided: absolute-form is accepted (RFC 9112 section 3.2.2), http scheme only. */
    HTTP_WHOLE("GET http://localhost:9100/metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_METRICS, false);
    HTTP_WHOLE("HEAD HTTP://[::1]/metrics?a HTTP/1.1\r\n\r\n", METRICS_HTTP_METRICS, true);
    HTTP_WHOLE("GET http://localhost HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET http://h/ HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET http:///metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET https://h/metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET http:/ HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("OPTIONS * HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);

    HTTP_WHOLE("GET / HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);
    HTTP_WHOLE("HEAD /x HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, true);
    HTTP_WHOLE("GET /metrics/ HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET /metricsx HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET /Metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET /%6detrics HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET //metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET /metrics#x HTTP/1.1\r\n\r\n", METRICS_HTTP_NOT_FOUND, false);

    /* Methods are case-sensitive (RFC 9110 section 9.1): "get" is another method. */
    HTTP_WHOLE("get /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_METHOD, false);
    HTTP_WHOLE("Head /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_METHOD, false);
    HTTP_WHOLE("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n", METRICS_HTTP_BAD_METHOD,
               false);
    HTTP_WHOLE("GETS /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_METHOD, false);
    HTTP_WHOLE("DELETE /x HTTP/1.0\r\n\r\n", METRICS_HTTP_BAD_METHOD, false);

    HTTP_WHOLE("\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("\n", METRICS_HTTP_BAD_REQUEST, false);
    /* A blank first line is a whole (empty) head. */
    HTTP("\r\nGET /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, 2, false);
    HTTP_WHOLE("GET  /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE(" GET /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics  HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1 \r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET\t/metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/2.0\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.10\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics http/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("G@T /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metr\x7fics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /m\xc3\xa9trics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\rX: y\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    /* NUL anywhere in the head. */
    HTTP_WHOLE("GET /metrics\0 HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("\0GET /metrics HTTP/1.1\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\nX: \0\r\n\r\n", METRICS_HTTP_BAD_REQUEST, false);
    /* ... but not after it: those bytes are not ours to judge. */
    HTTP("GET /metrics HTTP/1.1\r\n\r\n\0\r", METRICS_HTTP_METRICS, 25, false);

    /* Incomplete heads. */
    HTTP("", METRICS_HTTP_NEED_MORE, 0, false);
    HTTP("GET /metrics HTTP/1.1\r\n", METRICS_HTTP_NEED_MORE, 0, false);
    HTTP("GET /metrics HTTP/1.1\r\nHost: x\r\n\r", METRICS_HTTP_NEED_MORE, 0, false);
    HTTP("garbage without end", METRICS_HTTP_NEED_MORE, 0, false);
}

static void test_http_sizes(void)
{
    static const char start[] = "GET /metrics HTTP/1.1\r\nX: ";
    char *big = malloc(2 * METRICS_HTTP_HEAD_MAX);
    CHECK(big != NULL);

    /* A head of exactly the maximum, then one byte longer. */
    memset(big, 'a', 2 * METRICS_HTTP_HEAD_MAX);
    memcpy(big, start, sizeof(start) - 1);
    memcpy(big + METRICS_HTTP_HEAD_MAX - 4, "\r\n\r\n", 4);
    check_http(__LINE__, big, METRICS_HTTP_HEAD_MAX, METRICS_HTTP_METRICS, METRICS_HTTP_HEAD_MAX,
               false);
    check_http(__LINE__, big, METRICS_HTTP_HEAD_MAX + 10, METRICS_HTTP_METRICS,
               METRICS_HTTP_HEAD_MAX, false);
    memset(big, 'a', 2 * METRICS_HTTP_HEAD_MAX);
    memcpy(big, start, sizeof(start) - 1);
    memcpy(big + METRICS_HTTP_HEAD_MAX - 3, "\r\n\r\n", 4);
    check_http(__LINE__, big, METRICS_HTTP_HEAD_MAX + 1, METRICS_HTTP_TOO_LARGE, 0, false);
    /* With "\n\n", the same limit. */
    memcpy(big + METRICS_HTTP_HEAD_MAX - 2, "\n\n", 2);
    check_http(__LINE__, big, METRICS_HTTP_HEAD_MAX, METRICS_HTTP_METRICS, METRICS_HTTP_HEAD_MAX,
               false);

    /* No end at all: NEED_MORE up to the limit, TOO_LARGE from there, however long. */
    memset(big, 'a', 2 * METRICS_HTTP_HEAD_MAX);
    check_http(__LINE__, big, METRICS_HTTP_HEAD_MAX - 1, METRICS_HTTP_NEED_MORE, 0, false);
    check_http(__LINE__, big, 2 * METRICS_HTTP_HEAD_MAX, METRICS_HTTP_TOO_LARGE, 0, false);
    /* Many short header lines count too. */
    for (size_t i = 0; i + 3 <= 2 * METRICS_HTTP_HEAD_MAX; i += 3) {
        memcpy(big + i, "a:\n", 3);
    }
    check_http(__LINE__, big, 2 * METRICS_HTTP_HEAD_MAX, METRICS_HTTP_TOO_LARGE, 0, false);
    free(big);

    CHECK_INT(metrics_http_status(METRICS_HTTP_METRICS), 200);
    CHECK_INT(metrics_http_status(METRICS_HTTP_NOT_FOUND), 404);
    CHECK_INT(metrics_http_status(METRICS_HTTP_BAD_METHOD), 405);
    CHECK_INT(metrics_http_status(METRICS_HTTP_BAD_REQUEST), 400);
    CHECK_INT(metrics_http_status(METRICS_HTTP_TOO_LARGE), 431);
    CHECK_INT(metrics_http_status(METRICS_HTTP_NEED_MORE), 500);
}

static void test_http_response(void)
{
    char out[METRICS_HTTP_RESPONSE_MAX];
    static const char ok[] = "HTTP/1.1 200 OK\r\n"
                             "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                             "Content-Length: 1234\r\n"
                             "Connection: close\r\n"
                             "\r\n";
    CHECK_INT(metrics_http_response(out, sizeof(out), 200, 1234), sizeof(ok) - 1);
    CHECK_STR(out, ok);
    static const char not_found[] = "HTTP/1.1 404 Not Found\r\n"
                                    "Content-Type: text/plain; charset=utf-8\r\n"
                                    "Content-Length: 10\r\n"
                                    "Connection: close\r\n"
                                    "\r\n";
    CHECK_INT(metrics_http_response(out, sizeof(out), 404, 10), sizeof(not_found) - 1);
    CHECK_STR(out, not_found);
    static const char bad_method[] = "HTTP/1.1 405 Method Not Allowed\r\n"
                                     "Content-Type: text/plain; charset=utf-8\r\n"
                                     "Content-Length: 0\r\n"
                                     "Allow: GET, HEAD\r\n"
                                     "Connection: close\r\n"
                                     "\r\n";
    CHECK_INT(metrics_http_response(out, sizeof(out), 405, 0), sizeof(bad_method) - 1);
    CHECK_STR(out, bad_method);
    CHECK_INT(metrics_http_response(out, sizeof(out), 400, 0),
              strlen("HTTP/1.1 400 Bad Request\r\n") + strlen(not_found) -
                  strlen("HTTP/1.1 404 Not Found\r\n") - 1);
    CHECK(strncmp(out, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
    metrics_http_response(out, sizeof(out), 431, 0);
    CHECK(strncmp(out, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 46) == 0);
    metrics_http_response(out, sizeof(out), 418, 0);
    CHECK(strncmp(out, "HTTP/1.1 418 Error\r\n", 20) == 0);

    /* The widest head fits the documented bound. */
    const int statuses[] = {200, 400, 404, 405, 408, 431, 500, 503, 999};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        CHECK(metrics_http_response(NULL, 0, statuses[i], SIZE_MAX) < METRICS_HTTP_RESPONSE_MAX);
    }

    /* Too small: the length needed, a NUL-terminated prefix. */
    char small[20];
    CHECK_INT(metrics_http_response(small, sizeof(small), 200, 1234), sizeof(ok) - 1);
    CHECK_INT(strlen(small), sizeof(small) - 1);
    CHECK_MEM(small, sizeof(small) - 1, ok, sizeof(small) - 1);
}

int main(void)
{
    test_threads();
    test_histogram();
    test_render();
    test_mappings();
    test_http_parse();
    test_http_sizes();
    test_http_response();
    return check_exit("test_metrics");
}
