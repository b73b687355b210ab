/*
 * test_metrics: counters from many threads, histogram buckets and sums, the exposition
 * text and its buffer contract, and the reason mappings.
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
    metrics_inc(metrics_session_end(REASON_END_QUIT));
    metrics_inc(metrics_session_end(REASON_END_UPSTREAM_421));
    metrics_add(METRICS_BYTES_OUT, 1234);
    metrics_inc(METRICS_FRONT_STARTTLS_HIDDEN);
    metrics_inc(METRICS_BACK_TLS_USED);
    metrics_inc(metrics_back_fallback(REASON_BACK_TLS_ALERT));
    metrics_gauge_set(METRICS_BACK_REMEMBERED_ENTRIES, 7);
    metrics_gauge_set(METRICS_FRONT_LEARNED_ENTRIES, 5);
    metrics_gauge_set(METRICS_FRONT_LEARNED_ENTRIES, 4);
    metrics_observe(METRICS_FRONT_HANDSHAKE_SECONDS, 0.02);
    metrics_inc(METRICS_RELOADS_FAILED);

    size_t len;
    char *text = render_all(&len);
    int lines;
    int families;
    check_shape(text, len, &lines, &families);
    CHECK_INT(families, 28);
    CHECK_INT(lines, METRICS_N_COUNTERS + 2 * 28 + METRICS_N_HISTOGRAMS * (METRICS_N_BUCKETS + 3));

    /* The start of the text, exactly. */
    const char *head =
        "# HELP " P "connections_current Client connections open now.\n"
        "# TYPE " P "connections_current gauge\n" P "connections_current 2\n"
        "# HELP " P "connections_total Client connections accepted.\n"
        "# TYPE " P "connections_total counter\n" P "connections_total 2\n"
        "# HELP " P "connections_refused_total Client connections refused over "
        "max_connections.\n"
        "# TYPE " P "connections_refused_total counter\n" P "connections_refused_total 1\n"
        "# HELP " P "limit_refusals_total Clients refused over a per-client limit, by limit.\n"
        "# TYPE " P "limit_refusals_total counter\n" P
        "limit_refusals_total{limit=\"sessions\"} 0\n" P
        "limit_refusals_total{limit=\"session-rate\"} 0\n" P
        "limit_refusals_total{limit=\"message-rate\"} 0\n"
        "# HELP " P "sessions_total Sessions ended, by how they ended.\n"
        "# TYPE " P "sessions_total counter\n" P "sessions_total{end=\"quit\"} 1\n" P
        "sessions_total{end=\"client-closed\"} 0\n";
    CHECK_MEM(text, strlen(head), head, strlen(head));

    /* The last counter families, exactly, ending where the histograms start. build_info
     * carries the version -V prints and is 1 whatever was reset. */
    const char *tail =
        "# HELP " P "reloads_total Configuration reloads (SIGHUP): applied, or refused with the "
        "old configuration kept.\n"
        "# TYPE " P "reloads_total counter\n" P "reloads_total{result=\"ok\"} 0\n" P
        "reloads_total{result=\"failed\"} 1\n"
        "# HELP " P "build_info The proxy's version, as a label; the value is always 1.\n"
        "# TYPE " P "build_info gauge\n" P "build_info{version=\"" PROXY_VERSION "\"} 1\n"
        "# HELP " P "front_handshake_seconds ";
    CHECK(strstr(text, tail) != NULL);
    CHECK_INT(metrics_get(METRICS_BUILD_INFO), 1);

    const char *want[] = {
        P "store_up 0",
        P "store_outages_total 0",
        P "store_lookups_total{result=\"found\"} 0",
        P "store_lookups_total{result=\"unavailable\"} 0",
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
        fprintf(stderr,
                "metrics_render_max() is %zu: set METRICS_RENDER_MAX to "
                "(%zu + sizeof(PROXY_VERSION) - 1)\n",
                max, max - (sizeof(PROXY_VERSION) - 1));
    }
    CHECK_INT(max, METRICS_RENDER_MAX);
    metrics_reset();
    for (int i = 0; i < METRICS_N_COUNTERS; i++) {
        if (i == METRICS_CONNECTIONS_CURRENT || i == METRICS_FRONT_LEARNED_ENTRIES ||
            i == METRICS_BACK_REMEMBERED_ENTRIES || i == METRICS_STORE_UP) {
            metrics_gauge_set((enum metrics_counter)i, INT64_MIN);
        } else if (i != METRICS_BUILD_INFO) {
            metrics_add((enum metrics_counter)i, UINT64_MAX);
        }
    }
    for (int i = 0; i < METRICS_N_HISTOGRAMS; i++) {
        metrics_observe((enum metrics_histogram)i, 1e300);
    }
    CHECK(metrics_render(NULL, 0) < METRICS_RENDER_MAX);
    metrics_reset();
}

/* Every end reason and every failure class maps to a series of its own family, and the
 * series names what the reason's name says. */
static void test_mappings(void)
{
    static const struct {
        enum reason_end reason;
        enum metrics_counter want;
    } ends[] = {
        {REASON_END_QUIT, METRICS_SESSIONS_QUIT},
        {REASON_END_CLIENT_CLOSED, METRICS_SESSIONS_CLIENT_CLOSED},
        {REASON_END_CLIENT_ERROR, METRICS_SESSIONS_CLIENT_CLOSED},
        {REASON_END_CLIENT_WRITE_ERROR, METRICS_SESSIONS_CLIENT_CLOSED},
        {REASON_END_CLIENT_TLS_ERROR, METRICS_SESSIONS_CLIENT_CLOSED},
        {REASON_END_CLIENT_TLS_FAILED, METRICS_SESSIONS_CLIENT_CLOSED},
        {REASON_END_CLIENT_LOST_IN_DATA, METRICS_SESSIONS_CLIENT_LOST_IN_DATA},
        {REASON_END_TIMEOUT, METRICS_SESSIONS_TIMEOUT},
        {REASON_END_UPSTREAM_UNREACHABLE, METRICS_SESSIONS_UPSTREAM_UNREACHABLE},
        {REASON_END_UPSTREAM_CLOSED, METRICS_SESSIONS_UPSTREAM_LOST},
        {REASON_END_UPSTREAM_ERROR, METRICS_SESSIONS_UPSTREAM_LOST},
        {REASON_END_UPSTREAM_WRITE_ERROR, METRICS_SESSIONS_UPSTREAM_LOST},
        {REASON_END_UPSTREAM_TLS_ERROR, METRICS_SESSIONS_UPSTREAM_LOST},
        {REASON_END_UPSTREAM_421, METRICS_SESSIONS_UPSTREAM_LOST},
        {REASON_END_UPSTREAM_PROTOCOL_ERROR, METRICS_SESSIONS_UPSTREAM_LOST},
        {REASON_END_UPSTREAM_REPLAY_FAILED, METRICS_SESSIONS_UPSTREAM_LOST},
        {REASON_END_UPSTREAM_TIMEOUT, METRICS_SESSIONS_UPSTREAM_TIMEOUT},
        {REASON_END_UPSTREAM_TLS_FAILED, METRICS_SESSIONS_UPSTREAM_TLS_FAILED},
        {REASON_END_UPSTREAM_IDENTITY_REFUSED, METRICS_SESSIONS_UPSTREAM_IDENTITY_REFUSED},
        {REASON_END_TOO_MANY_CONNECTIONS, METRICS_SESSIONS_TOO_MANY_CONNECTIONS},
        {REASON_END_LIMIT, METRICS_SESSIONS_CLIENT_LIMIT},
        {REASON_END_SHUTDOWN, METRICS_SESSIONS_SHUTDOWN},
        {REASON_END_BAD_PROXY_HEADER, METRICS_SESSIONS_OTHER},
        {REASON_END_LOOP_REFUSED, METRICS_SESSIONS_OTHER},
        {REASON_END_OUT_OF_MEMORY, METRICS_SESSIONS_OTHER},
        {REASON_END_INTERNAL_ERROR, METRICS_SESSIONS_OTHER},
        {REASON_END_UNKNOWN, METRICS_SESSIONS_OTHER},
    };
    CHECK_INT(sizeof(ends) / sizeof(ends[0]), REASON_END_COUNT);
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        enum metrics_counter got = metrics_session_end(ends[i].reason);
        if (got != ends[i].want) {
            fprintf(stderr, "end reason \"%s\"\n", reason_end_name(ends[i].reason));
        }
        CHECK_INT(got, ends[i].want);
    }
    CHECK_INT(metrics_session_end(REASON_END_COUNT), METRICS_SESSIONS_OTHER);
    CHECK_STR(reason_end_name(REASON_END_COUNT), "unknown");
    /* RFC 8460 result types name their tls_failures_total series. */
    CHECK_INT(metrics_tls_failure("starttls-not-supported"), METRICS_TLSRPT_STARTTLS_NOT_SUPPORTED);
    CHECK_INT(metrics_tls_failure("sts-webpki-invalid"), METRICS_TLSRPT_STS_WEBPKI_INVALID);
    CHECK_INT(metrics_tls_failure("dnssec-invalid"), METRICS_TLSRPT_DNSSEC_INVALID);
    CHECK_INT(metrics_tls_failure("dnssec"), METRICS_N_COUNTERS);
    CHECK_INT(metrics_tls_failure("dnssec-invalid-x"), METRICS_N_COUNTERS);
    CHECK_INT(metrics_tls_failure(""), METRICS_N_COUNTERS);
    CHECK_STR(reason_end_name(REASON_END_UPSTREAM_421), "upstream-421");

    /* The failure classes' names are their series' labels. */
    for (int i = 0; i < REASON_BACK_TLS_COUNT; i++) {
        enum metrics_counter id = metrics_back_fallback((enum reason_back_tls)i);
        CHECK(id >= METRICS_BACK_FALLBACK_STARTTLS_REFUSED && id < METRICS_BACK_FALLBACK_OTHER);
        for (int j = 0; j < i; j++) {
            CHECK(metrics_back_fallback((enum reason_back_tls)j) != id);
        }
        metrics_reset();
        metrics_inc(id);
        size_t len;
        char *text = render_all(&len);
        char want[96];
        snprintf(want, sizeof(want), "back_tls_fallback_total{reason=\"%s\"} 1\n",
                 reason_back_tls_name((enum reason_back_tls)i));
        if (strstr(text, want) == NULL) {
            fprintf(stderr, "missing %s", want);
        }
        CHECK(strstr(text, want) != NULL);
        free(text);
    }
    CHECK_INT(metrics_back_fallback(REASON_BACK_TLS_COUNT), METRICS_BACK_FALLBACK_OTHER);
    metrics_reset();
}

int main(void)
{
    test_threads();
    test_histogram();
    test_render();
    test_mappings();
    return check_exit("test_metrics");
}
