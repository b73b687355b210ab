/*
 * metrics: fixed tables of series, relaxed atomic updates and a bounded text renderer.
 * No I/O, no allocation, no logging, no locks.
 */
#include "metrics.h"

#include <assert.h>
#include <inttypes.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define METRICS_PREFIX "smtp_tls_proxy_"

enum metrics_type {
    METRICS_COUNTER = 0,
    METRICS_GAUGE,
    METRICS_INFO, /* a gauge that is always 1: its labels are the information */
};

struct metrics_series {
    const char *family; /* without METRICS_PREFIX */
    const char *labels; /* "end=\"quit\"", or NULL */
    enum metrics_type type;
    const char *help; /* for the first series of a family; later ones must repeat it */
};

#define METRICS_SESSIONS_HELP "Sessions ended, by how they ended."
#define METRICS_STORE_LOOKUPS_HELP                                                                 \
    "Lookups in the shared store, by answer: found, absent, unanswered in time, or not "           \
    "asked (unavailable)."
#define METRICS_TLS_FAILURES_HELP                                                                  \
    "Recipients whose policy failed on leg 2 (refused, or reported under MTA-STS testing), by "    \
    "RFC 8460 result type."
#define METRICS_GATE_HELP                                                                          \
    "Recipients judged by the downgrade gate (MTA-STS, DANE, REQUIRETLS), by outcome."
#define METRICS_LIMITS_HELP "Clients refused over a per-client limit, by limit."
#define METRICS_BYTES_HELP "Bytes received, from clients (in) and from upstreams (out)."
#define METRICS_FRONT_STARTTLS_HELP                                                                \
    "Client-side STARTTLS: offered in EHLO, used, failed handshakes, hidden from clients "         \
    "remembered as failing."
#define METRICS_FALLBACK_HELP                                                                      \
    "Upstream TLS attempts that failed and fell back or gave up, by reason class."
#define METRICS_RELOADS_HELP                                                                       \
    "Configuration reloads (SIGHUP): applied, or refused with the old configuration kept."

static const struct metrics_series metrics_series[METRICS_N_COUNTERS] = {
    [METRICS_CONNECTIONS_CURRENT] = {"connections_current", NULL, METRICS_GAUGE,
                                     "Client connections open now."},
    [METRICS_CONNECTIONS] = {"connections_total", NULL, METRICS_COUNTER,
                             "Client connections accepted."},
    [METRICS_CONNECTIONS_REFUSED] = {"connections_refused_total", NULL, METRICS_COUNTER,
                                     "Client connections refused over max_connections."},
    [METRICS_LIMIT_SESSIONS] = {"limit_refusals_total", "limit=\"sessions\"", METRICS_COUNTER,
                                METRICS_LIMITS_HELP},
    [METRICS_LIMIT_SESSION_RATE] = {"limit_refusals_total", "limit=\"session-rate\"",
                                    METRICS_COUNTER, METRICS_LIMITS_HELP},
    [METRICS_LIMIT_MESSAGE_RATE] = {"limit_refusals_total", "limit=\"message-rate\"",
                                    METRICS_COUNTER, METRICS_LIMITS_HELP},
    [METRICS_SESSIONS_QUIT] = {"sessions_total", "end=\"quit\"", METRICS_COUNTER,
                               METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_CLIENT_CLOSED] = {"sessions_total", "end=\"client-closed\"", METRICS_COUNTER,
                                        METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_CLIENT_LOST_IN_DATA] = {"sessions_total", "end=\"client-lost-in-data\"",
                                              METRICS_COUNTER, METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_TIMEOUT] = {"sessions_total", "end=\"timeout\"", METRICS_COUNTER,
                                  METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_UPSTREAM_UNREACHABLE] = {"sessions_total", "end=\"upstream-unreachable\"",
                                               METRICS_COUNTER, METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_UPSTREAM_LOST] = {"sessions_total", "end=\"upstream-lost\"", METRICS_COUNTER,
                                        METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_UPSTREAM_TIMEOUT] = {"sessions_total", "end=\"upstream-timeout\"",
                                           METRICS_COUNTER, METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_UPSTREAM_TLS_FAILED] = {"sessions_total", "end=\"upstream-tls-failed\"",
                                              METRICS_COUNTER, METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_UPSTREAM_IDENTITY_REFUSED] = {"sessions_total",
                                                    "end=\"upstream-identity-refused\"",
                                                    METRICS_COUNTER, METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_TOO_MANY_CONNECTIONS] = {"sessions_total", "end=\"too-many-connections\"",
                                               METRICS_COUNTER, METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_CLIENT_LIMIT] = {"sessions_total", "end=\"client-limit\"", METRICS_COUNTER,
                                       METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_SHUTDOWN] = {"sessions_total", "end=\"shutdown\"", METRICS_COUNTER,
                                   METRICS_SESSIONS_HELP},
    [METRICS_SESSIONS_OTHER] = {"sessions_total", "end=\"other\"", METRICS_COUNTER,
                                METRICS_SESSIONS_HELP},
    [METRICS_MESSAGES] = {"messages_total", NULL, METRICS_COUNTER,
                          "Messages relayed: the upstream accepted the end of DATA."},
    [METRICS_MESSAGES_REJECTED] = {"messages_rejected_total", NULL, METRICS_COUNTER,
                                   "Messages refused by the proxy for content an upstream "
                                   "could misread (bare CR, a \".\" line next to a bare LF, "
                                   "NUL starting a line)."},
    [METRICS_BYTES_IN] = {"bytes_total", "direction=\"in\"", METRICS_COUNTER, METRICS_BYTES_HELP},
    [METRICS_BYTES_OUT] = {"bytes_total", "direction=\"out\"", METRICS_COUNTER, METRICS_BYTES_HELP},
    [METRICS_FRONT_STARTTLS_OFFERED] = {"front_starttls_total", "result=\"offered\"",
                                        METRICS_COUNTER, METRICS_FRONT_STARTTLS_HELP},
    [METRICS_FRONT_STARTTLS_USED] = {"front_starttls_total", "result=\"used\"", METRICS_COUNTER,
                                     METRICS_FRONT_STARTTLS_HELP},
    [METRICS_FRONT_STARTTLS_FAILED] = {"front_starttls_total", "result=\"failed\"", METRICS_COUNTER,
                                       METRICS_FRONT_STARTTLS_HELP},
    [METRICS_FRONT_STARTTLS_HIDDEN] = {"front_starttls_total", "result=\"hidden\"", METRICS_COUNTER,
                                       METRICS_FRONT_STARTTLS_HELP},
    [METRICS_FRONT_LEARNED] = {"front_learned_total", NULL, METRICS_COUNTER,
                               "Clients added to the memory of failed client-side TLS."},
    [METRICS_BACK_TLS_USED] = {"back_tls_total", "result=\"used\"", METRICS_COUNTER,
                               "Upstream connections that completed TLS."},
    [METRICS_BACK_FALLBACK_STARTTLS_REFUSED] = {"back_tls_fallback_total",
                                                "reason=\"starttls-refused\"", METRICS_COUNTER,
                                                METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_STARTTLS_BAD_REPLY] = {"back_tls_fallback_total",
                                                  "reason=\"starttls-bad-reply\"", METRICS_COUNTER,
                                                  METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_TLS_ALERT] = {"back_tls_fallback_total", "reason=\"tls-alert\"",
                                         METRICS_COUNTER, METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_TLS_ERROR] = {"back_tls_fallback_total", "reason=\"tls-error\"",
                                         METRICS_COUNTER, METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_EOF] = {"back_tls_fallback_total", "reason=\"eof\"", METRICS_COUNTER,
                                   METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_HANDSHAKE_TIMEOUT] = {"back_tls_fallback_total",
                                                 "reason=\"handshake-timeout\"", METRICS_COUNTER,
                                                 METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_POST_TLS_EHLO] = {"back_tls_fallback_total", "reason=\"post-tls-ehlo\"",
                                             METRICS_COUNTER, METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_POST_TLS_EOF] = {"back_tls_fallback_total", "reason=\"post-tls-eof\"",
                                            METRICS_COUNTER, METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_CERTIFICATE] = {"back_tls_fallback_total", "reason=\"certificate\"",
                                           METRICS_COUNTER, METRICS_FALLBACK_HELP},
    [METRICS_BACK_FALLBACK_OTHER] = {"back_tls_fallback_total", "reason=\"other\"", METRICS_COUNTER,
                                     METRICS_FALLBACK_HELP},
    [METRICS_BACK_REMEMBERED_SKIPS] = {"back_tls_remembered_skips_total", NULL, METRICS_COUNTER,
                                       "Upstream connections that started at a remembered "
                                       "fallback step (skipping the better ones)."},
    [METRICS_BACK_REQUIRE_FAILURES] = {"back_tls_require_failures_total", NULL, METRICS_COUNTER,
                                       "Sessions refused because upstream TLS was required "
                                       "and failed."},
    [METRICS_FRONT_LEARNED_ENTRIES] = {"front_learned_entries", NULL, METRICS_GAUGE,
                                       "Clients remembered as failing client-side TLS."},
    [METRICS_BACK_REMEMBERED_ENTRIES] = {"back_remembered_entries", NULL, METRICS_GAUGE,
                                         "Upstreams remembered with the fallback step that "
                                         "worked."},
    [METRICS_RELOADS_OK] = {"reloads_total", "result=\"ok\"", METRICS_COUNTER,
                            METRICS_RELOADS_HELP},
    [METRICS_RELOADS_FAILED] = {"reloads_total", "result=\"failed\"", METRICS_COUNTER,
                                METRICS_RELOADS_HELP},
    /* PROXY_VERSION is the build's version, the one -V prints (CMakeLists.txt). */
    [METRICS_BUILD_INFO] = {"build_info", "version=\"" PROXY_VERSION "\"", METRICS_INFO,
                            "The proxy's version, as a label; the value is always 1."},
    [METRICS_GATE_PASSED] = {"gate_decisions_total", "result=\"passed\"", METRICS_COUNTER,
                             METRICS_GATE_HELP},
    [METRICS_GATE_TESTING_FAILURES] = {"gate_decisions_total", "result=\"testing-failure\"",
                                       METRICS_COUNTER, METRICS_GATE_HELP},
    [METRICS_GATE_REFUSED_DANE] = {"gate_decisions_total", "result=\"refused-dane\"",
                                   METRICS_COUNTER, METRICS_GATE_HELP},
    [METRICS_GATE_REFUSED_STS] = {"gate_decisions_total", "result=\"refused-mta-sts\"",
                                  METRICS_COUNTER, METRICS_GATE_HELP},
    [METRICS_GATE_REFUSED_REQUIRETLS] = {"gate_decisions_total", "result=\"refused-requiretls\"",
                                         METRICS_COUNTER, METRICS_GATE_HELP},
    [METRICS_TLSRPT_STARTTLS_NOT_SUPPORTED] = {"tls_failures_total",
                                               "result_type=\"starttls-not-supported\"",
                                               METRICS_COUNTER, METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_CERTIFICATE_HOST_MISMATCH] = {"tls_failures_total",
                                                  "result_type=\"certificate-host-mismatch\"",
                                                  METRICS_COUNTER, METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_CERTIFICATE_EXPIRED] = {"tls_failures_total",
                                            "result_type=\"certificate-expired\"", METRICS_COUNTER,
                                            METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_CERTIFICATE_NOT_TRUSTED] = {"tls_failures_total",
                                                "result_type=\"certificate-not-trusted\"",
                                                METRICS_COUNTER, METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_VALIDATION_FAILURE] = {"tls_failures_total",
                                           "result_type=\"validation-failure\"", METRICS_COUNTER,
                                           METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_TLSA_INVALID] = {"tls_failures_total", "result_type=\"tlsa-invalid\"",
                                     METRICS_COUNTER, METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_DNSSEC_INVALID] = {"tls_failures_total", "result_type=\"dnssec-invalid\"",
                                       METRICS_COUNTER, METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_DANE_REQUIRED] = {"tls_failures_total", "result_type=\"dane-required\"",
                                      METRICS_COUNTER, METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_STS_POLICY_FETCH_ERROR] = {"tls_failures_total",
                                               "result_type=\"sts-policy-fetch-error\"",
                                               METRICS_COUNTER, METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_STS_POLICY_INVALID] = {"tls_failures_total",
                                           "result_type=\"sts-policy-invalid\"", METRICS_COUNTER,
                                           METRICS_TLS_FAILURES_HELP},
    [METRICS_TLSRPT_STS_WEBPKI_INVALID] = {"tls_failures_total",
                                           "result_type=\"sts-webpki-invalid\"", METRICS_COUNTER,
                                           METRICS_TLS_FAILURES_HELP},
    [METRICS_STS_FETCHES] = {"mta_sts_fetches_total", NULL, METRICS_COUNTER,
                             "MTA-STS policy fetches started (RFC 8461)."},
    [METRICS_STS_FETCH_FAILURES] = {"mta_sts_fetch_failures_total", NULL, METRICS_COUNTER,
                                    "MTA-STS policy fetches that brought no valid policy."},
    [METRICS_STORE_UP] = {"store_up", NULL, METRICS_GAUGE,
                          "1 when every worker is connected to the [store] redis (or none is "
                          "configured), 0 when it is configured and unreachable."},
    [METRICS_STORE_OUTAGES] = {"store_outages_total", NULL, METRICS_COUNTER,
                               "Times the [store] redis became unreachable."},
    [METRICS_STORE_LOOKUPS_FOUND] = {"store_lookups_total", "result=\"found\"", METRICS_COUNTER,
                                     METRICS_STORE_LOOKUPS_HELP},
    [METRICS_STORE_LOOKUPS_ABSENT] = {"store_lookups_total", "result=\"absent\"", METRICS_COUNTER,
                                      METRICS_STORE_LOOKUPS_HELP},
    [METRICS_STORE_LOOKUPS_UNANSWERED] = {"store_lookups_total", "result=\"unanswered\"",
                                          METRICS_COUNTER, METRICS_STORE_LOOKUPS_HELP},
    [METRICS_STORE_LOOKUPS_UNAVAILABLE] = {"store_lookups_total", "result=\"unavailable\"",
                                           METRICS_COUNTER, METRICS_STORE_LOOKUPS_HELP},
};

struct metrics_hist_info {
    const char *family;
    const char *help;
};

static const struct metrics_hist_info metrics_hists[METRICS_N_HISTOGRAMS] = {
    [METRICS_FRONT_HANDSHAKE_SECONDS] = {"front_handshake_seconds",
                                         "Client-side TLS handshake durations."},
    [METRICS_BACK_HANDSHAKE_SECONDS] = {"back_handshake_seconds",
                                        "Upstream TLS handshake durations."},
    [METRICS_SESSION_SECONDS] = {"session_seconds", "Session durations, accept to close."},
};

/* The bounds in microseconds, so that bucket choice and the integer sum agree exactly. */
static const uint64_t metrics_bounds_us[METRICS_N_BUCKETS] = {
    5000,    10000,   25000,   50000,    100000,   250000,   500000,
    1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 300000000,
};
static const char *const metrics_bounds_text[METRICS_N_BUCKETS + 1] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",  "1",
    "2.5",   "5",    "10",    "30",   "60",  "300",  "+Inf",
};

/* One cache line per value: workers on different cores bump different counters of the
 * same array all the time, and shared lines would turn each increment into a transfer. */
struct metrics_cell {
    alignas(64) _Atomic uint64_t v;
};

struct metrics_hist {
    struct metrics_cell buckets[METRICS_N_BUCKETS + 1]; /* not cumulative; last is +Inf */
    struct metrics_cell sum_us;
};

static struct metrics_cell metrics_values[METRICS_N_COUNTERS];
static struct metrics_hist metrics_hist_values[METRICS_N_HISTOGRAMS];

void metrics_inc(enum metrics_counter id)
{
    metrics_add(id, 1);
}

void metrics_add(enum metrics_counter id, uint64_t n)
{
    assert((unsigned)id < METRICS_N_COUNTERS && metrics_series[id].type == METRICS_COUNTER);
    atomic_fetch_add_explicit(&metrics_values[id].v, n, memory_order_relaxed);
}

void metrics_gauge_add(enum metrics_counter id, int64_t delta)
{
    assert((unsigned)id < METRICS_N_COUNTERS && metrics_series[id].type == METRICS_GAUGE);
    /* Two's complement: adding the uint64_t image of a negative delta subtracts. */
    atomic_fetch_add_explicit(&metrics_values[id].v, (uint64_t)delta, memory_order_relaxed);
}

void metrics_gauge_set(enum metrics_counter id, int64_t value)
{
    assert((unsigned)id < METRICS_N_COUNTERS && metrics_series[id].type == METRICS_GAUGE);
    atomic_store_explicit(&metrics_values[id].v, (uint64_t)value, memory_order_relaxed);
}

uint64_t metrics_get(enum metrics_counter id)
{
    assert((unsigned)id < METRICS_N_COUNTERS);
    if (metrics_series[id].type == METRICS_INFO) {
        return 1;
    }
    return atomic_load_explicit(&metrics_values[id].v, memory_order_relaxed);
}

void metrics_observe(enum metrics_histogram id, double seconds)
{
    assert((unsigned)id < METRICS_N_HISTOGRAMS);
    uint64_t us = 0;
    /* !(x > 0) also catches NaN; the clamp keeps the conversion defined. */
    if (seconds > 1e13) {
        us = UINT64_C(10000000000000000000);
    } else if (seconds > 0) {
        us = (uint64_t)(seconds * 1e6 + 0.5);
    }
    size_t b = 0;
    while (b < METRICS_N_BUCKETS && us > metrics_bounds_us[b]) {
        b++;
    }
    struct metrics_hist *h = &metrics_hist_values[id];
    atomic_fetch_add_explicit(&h->buckets[b].v, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us.v, us, memory_order_relaxed);
}

void metrics_reset(void)
{
    for (size_t i = 0; i < METRICS_N_COUNTERS; i++) {
        atomic_store_explicit(&metrics_values[i].v, 0, memory_order_relaxed);
    }
    for (size_t i = 0; i < METRICS_N_HISTOGRAMS; i++) {
        for (size_t b = 0; b <= METRICS_N_BUCKETS; b++) {
            atomic_store_explicit(&metrics_hist_values[i].buckets[b].v, 0, memory_order_relaxed);
        }
        atomic_store_explicit(&metrics_hist_values[i].sum_us.v, 0, memory_order_relaxed);
    }
}

enum metrics_counter metrics_session_end(enum reason_end reason)
{
    switch (reason) {
    case REASON_END_QUIT:
        return METRICS_SESSIONS_QUIT;
    case REASON_END_CLIENT_CLOSED:
    case REASON_END_CLIENT_ERROR:
    case REASON_END_CLIENT_WRITE_ERROR:
    case REASON_END_CLIENT_TLS_FAILED:
    case REASON_END_CLIENT_TLS_ERROR:
        return METRICS_SESSIONS_CLIENT_CLOSED;
    case REASON_END_CLIENT_LOST_IN_DATA:
        return METRICS_SESSIONS_CLIENT_LOST_IN_DATA;
    case REASON_END_TIMEOUT:
        return METRICS_SESSIONS_TIMEOUT;
    case REASON_END_UPSTREAM_UNREACHABLE:
        return METRICS_SESSIONS_UPSTREAM_UNREACHABLE;
    case REASON_END_UPSTREAM_CLOSED:
    case REASON_END_UPSTREAM_ERROR:
    case REASON_END_UPSTREAM_WRITE_ERROR:
    case REASON_END_UPSTREAM_TLS_ERROR:
    case REASON_END_UPSTREAM_421:
    case REASON_END_UPSTREAM_PROTOCOL_ERROR:
    case REASON_END_UPSTREAM_REPLAY_FAILED:
        return METRICS_SESSIONS_UPSTREAM_LOST;
    case REASON_END_UPSTREAM_TIMEOUT:
        return METRICS_SESSIONS_UPSTREAM_TIMEOUT;
    case REASON_END_UPSTREAM_TLS_FAILED:
        return METRICS_SESSIONS_UPSTREAM_TLS_FAILED;
    case REASON_END_UPSTREAM_IDENTITY_REFUSED:
        return METRICS_SESSIONS_UPSTREAM_IDENTITY_REFUSED;
    case REASON_END_TOO_MANY_CONNECTIONS:
        return METRICS_SESSIONS_TOO_MANY_CONNECTIONS;
    case REASON_END_LIMIT:
        return METRICS_SESSIONS_CLIENT_LIMIT;
    case REASON_END_SHUTDOWN:
        return METRICS_SESSIONS_SHUTDOWN;
    case REASON_END_UNKNOWN:
    case REASON_END_BAD_PROXY_HEADER:
    case REASON_END_LOOP_REFUSED:
    case REASON_END_OUT_OF_MEMORY:
    case REASON_END_INTERNAL_ERROR:
    case REASON_END_COUNT:
        break;
    }
    return METRICS_SESSIONS_OTHER;
}

enum metrics_counter metrics_back_fallback(enum reason_back_tls reason)
{
    switch (reason) {
    case REASON_BACK_TLS_STARTTLS_REFUSED:
        return METRICS_BACK_FALLBACK_STARTTLS_REFUSED;
    case REASON_BACK_TLS_STARTTLS_BAD_REPLY:
        return METRICS_BACK_FALLBACK_STARTTLS_BAD_REPLY;
    case REASON_BACK_TLS_ALERT:
        return METRICS_BACK_FALLBACK_TLS_ALERT;
    case REASON_BACK_TLS_ERROR:
        return METRICS_BACK_FALLBACK_TLS_ERROR;
    case REASON_BACK_TLS_EOF:
        return METRICS_BACK_FALLBACK_EOF;
    case REASON_BACK_TLS_TIMEOUT:
        return METRICS_BACK_FALLBACK_HANDSHAKE_TIMEOUT;
    case REASON_BACK_TLS_POST_TLS_EHLO:
        return METRICS_BACK_FALLBACK_POST_TLS_EHLO;
    case REASON_BACK_TLS_POST_TLS_EOF:
        return METRICS_BACK_FALLBACK_POST_TLS_EOF;
    case REASON_BACK_TLS_CERTIFICATE:
        return METRICS_BACK_FALLBACK_CERTIFICATE;
    case REASON_BACK_TLS_COUNT:
        break;
    }
    return METRICS_BACK_FALLBACK_OTHER;
}

/* The renderer's output: counts every byte, stores those that fit (snprintf style). With
 * |widest|, every number is written at its widest, to measure the bound. */
struct metrics_out {
    char *p;
    size_t cap;
    size_t len;
    bool widest;
};

static void metrics_put(struct metrics_out *o, const char *s, size_t n)
{
    if (o->len < o->cap) {
        size_t room = o->cap - o->len;
        memcpy(o->p + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

static void metrics_puts(struct metrics_out *o, const char *s)
{
    metrics_put(o, s, strlen(s));
}

static void metrics_put_u64(struct metrics_out *o, uint64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, o->widest ? UINT64_MAX : v);
    metrics_put(o, tmp, (size_t)n);
}

static void metrics_put_i64(struct metrics_out *o, int64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%" PRId64, o->widest ? INT64_MIN : v);
    metrics_put(o, tmp, (size_t)n);
}

/* Microseconds as seconds with six decimals: exact, and no locale or float formatting. */
static void metrics_put_us(struct metrics_out *o, uint64_t us)
{
    if (o->widest) {
        us = UINT64_MAX;
    }
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%" PRIu64 ".%06" PRIu64, us / 1000000, us % 1000000);
    metrics_put(o, tmp, (size_t)n);
}

static void metrics_put_family(struct metrics_out *o, const char *family, const char *help,
                               const char *type)
{
    metrics_puts(o, "# HELP " METRICS_PREFIX);
    metrics_puts(o, family);
    metrics_puts(o, " ");
    metrics_puts(o, help);
    metrics_puts(o, "\n# TYPE " METRICS_PREFIX);
    metrics_puts(o, family);
    metrics_puts(o, " ");
    metrics_puts(o, type);
    metrics_puts(o, "\n");
}

static size_t metrics_render_to(struct metrics_out *o)
{
    for (size_t i = 0; i < METRICS_N_COUNTERS; i++) {
        const struct metrics_series *m = &metrics_series[i];
        if (i == 0 || strcmp(metrics_series[i - 1].family, m->family) != 0) {
            metrics_put_family(o, m->family, m->help,
                               m->type == METRICS_COUNTER ? "counter" : "gauge");
        }
        metrics_puts(o, METRICS_PREFIX);
        metrics_puts(o, m->family);
        if (m->labels != NULL) {
            metrics_puts(o, "{");
            metrics_puts(o, m->labels);
            metrics_puts(o, "}");
        }
        metrics_puts(o, " ");
        uint64_t v = atomic_load_explicit(&metrics_values[i].v, memory_order_relaxed);
        if (m->type == METRICS_INFO) {
            metrics_puts(o, "1");
        } else if (m->type == METRICS_GAUGE) {
            metrics_put_i64(o, (int64_t)v);
        } else {
            metrics_put_u64(o, v);
        }
        metrics_puts(o, "\n");
    }
    for (size_t i = 0; i < METRICS_N_HISTOGRAMS; i++) {
        const char *family = metrics_hists[i].family;
        struct metrics_hist *h = &metrics_hist_values[i];
        metrics_put_family(o, family, metrics_hists[i].help, "histogram");
        /* Read each bucket once and derive _count from them, so the text is consistent. */
        uint64_t cumulative = 0;
        for (size_t b = 0; b <= METRICS_N_BUCKETS; b++) {
            cumulative += atomic_load_explicit(&h->buckets[b].v, memory_order_relaxed);
            metrics_puts(o, METRICS_PREFIX);
            metrics_puts(o, family);
            metrics_puts(o, "_bucket{le=\"");
            metrics_puts(o, metrics_bounds_text[b]);
            metrics_puts(o, "\"} ");
            metrics_put_u64(o, cumulative);
            metrics_puts(o, "\n");
        }
        metrics_puts(o, METRICS_PREFIX);
        metrics_puts(o, family);
        metrics_puts(o, "_sum ");
        metrics_put_us(o, atomic_load_explicit(&h->sum_us.v, memory_order_relaxed));
        metrics_puts(o, "\n" METRICS_PREFIX);
        metrics_puts(o, family);
        metrics_puts(o, "_count ");
        metrics_put_u64(o, cumulative);
        metrics_puts(o, "\n");
    }
    if (o->cap > 0) {
        o->p[o->len < o->cap ? o->len : o->cap - 1] = '\0';
    }
    return o->len;
}

size_t metrics_render(char *out, size_t out_cap)
{
    struct metrics_out o = {out, out_cap, 0, false};
    return metrics_render_to(&o);
}

size_t metrics_render_max(void)
{
    struct metrics_out o = {NULL, 0, 0, true};
    return metrics_render_to(&o) + 1;
}

enum metrics_counter metrics_tls_failure(const char *result_type)
{
    for (int i = METRICS_TLSRPT_STARTTLS_NOT_SUPPORTED; i <= METRICS_TLSRPT_STS_WEBPKI_INVALID;
         i++) {
        const char *labels = metrics_series[i].labels;
        size_t len = strlen(result_type);
        /* labels is result_type="<type>" */
        if (strncmp(labels + 13, result_type, len) == 0 && labels[13 + len] == '"') {
            return (enum metrics_counter)i;
        }
    }
    return METRICS_N_COUNTERS;
}
