/*
 * metrics: the process-wide counters, gauges and histograms and their Prometheus text
 * exposition (format 0.0.4). The HTTP the endpoint speaks is in http.h.
 *
 * Nothing here does I/O, allocates memory or logs. Updates are relaxed C11 atomics, safe
 * from any worker thread without locks; the set of series is fixed at compile time.
 */
#ifndef PROXY_METRICS_H
#define PROXY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "reason.h"

/*
 * Every counter and gauge series, in exposition order. A labelled family is a run of ids,
 * one per label value. Names below are Prometheus names without the "smtp_tls_proxy_"
 * prefix (Prometheus forbids the dotted names STYLE.md suggests).
 */
enum metrics_counter {
    METRICS_CONNECTIONS_CURRENT = 0, /* gauge connections_current: open front connections */
    METRICS_CONNECTIONS,             /* connections_total: accepted front connections */
    METRICS_CONNECTIONS_REFUSED,     /* connections_refused_total: over max_connections */
    /* limit_refusals_total{limit=...}: clients over a per-client limit ([limits]) */
    METRICS_LIMIT_SESSIONS,
    METRICS_LIMIT_SESSION_RATE,
    METRICS_LIMIT_MESSAGE_RATE,
    /* sessions_total{end=...}: sessions by how they ended (metrics_session_end()) */
    METRICS_SESSIONS_QUIT,
    METRICS_SESSIONS_CLIENT_CLOSED,
    METRICS_SESSIONS_CLIENT_LOST_IN_DATA,
    METRICS_SESSIONS_TIMEOUT,
    METRICS_SESSIONS_UPSTREAM_UNREACHABLE,
    METRICS_SESSIONS_UPSTREAM_LOST,
    METRICS_SESSIONS_UPSTREAM_TIMEOUT,
    METRICS_SESSIONS_UPSTREAM_TLS_FAILED,
    METRICS_SESSIONS_UPSTREAM_IDENTITY_REFUSED,
    METRICS_SESSIONS_TOO_MANY_CONNECTIONS,
    METRICS_SESSIONS_CLIENT_LIMIT,
    METRICS_SESSIONS_SHUTDOWN,
    METRICS_SESSIONS_OTHER,
    METRICS_MESSAGES,          /* messages_total: upstream answered 2xx to the end of DATA */
    METRICS_MESSAGES_REJECTED, /* messages_rejected_total: content refused (smuggling) */
    METRICS_BYTES_IN,          /* bytes_total{direction="in"}: received from clients */
    METRICS_BYTES_OUT,         /* bytes_total{direction="out"}: received from upstreams */
    /* front_starttls_total{result=...}: leg 1 STARTTLS */
    METRICS_FRONT_STARTTLS_OFFERED,
    METRICS_FRONT_STARTTLS_USED,
    METRICS_FRONT_STARTTLS_FAILED,
    METRICS_FRONT_STARTTLS_HIDDEN, /* not offered: the client is remembered as failing */
    METRICS_FRONT_LEARNED,         /* front_learned_total: clients added to the memory */
    METRICS_BACK_TLS_USED,         /* back_tls_total{result="used"}: leg 2 in TLS */
    /* back_tls_fallback_total{reason=...}: leg 2 TLS failed (metrics_back_fallback_reason()) */
    METRICS_BACK_FALLBACK_STARTTLS_REFUSED,
    METRICS_BACK_FALLBACK_STARTTLS_BAD_REPLY,
    METRICS_BACK_FALLBACK_TLS_ALERT,
    METRICS_BACK_FALLBACK_TLS_ERROR,
    METRICS_BACK_FALLBACK_EOF,
    METRICS_BACK_FALLBACK_HANDSHAKE_TIMEOUT,
    METRICS_BACK_FALLBACK_POST_TLS_EHLO,
    METRICS_BACK_FALLBACK_POST_TLS_EOF,
    METRICS_BACK_FALLBACK_CERTIFICATE,
    METRICS_BACK_FALLBACK_OTHER,
    METRICS_BACK_REMEMBERED_SKIPS,   /* back_tls_remembered_skips_total: STARTTLS skipped */
    METRICS_BACK_REQUIRE_FAILURES,   /* back_tls_require_failures_total: require, no TLS */
    METRICS_FRONT_LEARNED_ENTRIES,   /* gauge front_learned_entries */
    METRICS_BACK_REMEMBERED_ENTRIES, /* gauge back_remembered_entries */
    METRICS_STORE_UP,      /* gauge store_up: 1 unless [store] redis is configured and down */
    METRICS_STORE_OUTAGES, /* store_outages_total: the store became unreachable */
    /* store_lookups_total{result=...}: what the shared store answered sessions */
    METRICS_STORE_LOOKUPS_FOUND,
    METRICS_STORE_LOOKUPS_ABSENT,
    METRICS_STORE_LOOKUPS_UNANSWERED,  /* not within [store] timeout, or the connection broke */
    METRICS_STORE_LOOKUPS_UNAVAILABLE, /* not asked: not connected, or too busy */
    /* gate_decisions_total{result=...}: recipients judged by the downgrade gate */
    METRICS_GATE_PASSED,
    METRICS_GATE_TESTING_FAILURES, /* passed, but an MTA-STS testing policy failed */
    METRICS_GATE_REFUSED_DANE,
    METRICS_GATE_REFUSED_STS,
    METRICS_GATE_REFUSED_REQUIRETLS,
    /* tls_failures_total{result_type=...}: gate failures by RFC 8460 result type, in
     * metrics_tls_failure()'s order */
    METRICS_TLSRPT_STARTTLS_NOT_SUPPORTED,
    METRICS_TLSRPT_CERTIFICATE_HOST_MISMATCH,
    METRICS_TLSRPT_CERTIFICATE_EXPIRED,
    METRICS_TLSRPT_CERTIFICATE_NOT_TRUSTED,
    METRICS_TLSRPT_VALIDATION_FAILURE,
    METRICS_TLSRPT_TLSA_INVALID,
    METRICS_TLSRPT_DNSSEC_INVALID,
    METRICS_TLSRPT_DANE_REQUIRED,
    METRICS_TLSRPT_STS_POLICY_FETCH_ERROR,
    METRICS_TLSRPT_STS_POLICY_INVALID,
    METRICS_TLSRPT_STS_WEBPKI_INVALID,
    METRICS_STS_FETCHES,        /* mta_sts_fetches_total: policy fetches started */
    METRICS_STS_FETCH_FAILURES, /* mta_sts_fetch_failures_total */
    /* reloads_total{result=...}: SIGHUP reloads applied ("ok") or refused ("failed") */
    METRICS_RELOADS_OK,
    METRICS_RELOADS_FAILED,
    METRICS_BUILD_INFO, /* gauge build_info{version=PROXY_VERSION}: always 1, set by nobody */
    METRICS_N_COUNTERS,
};

/* Histograms, in exposition order, all in seconds. */
enum metrics_histogram {
    METRICS_FRONT_HANDSHAKE_SECONDS = 0, /* leg 1 TLS handshake, STARTTLS reply to done */
    METRICS_BACK_HANDSHAKE_SECONDS,      /* leg 2 TLS handshake, successful ones */
    METRICS_SESSION_SECONDS,             /* accept to close */
    METRICS_N_HISTOGRAMS,
};

/* The finite buckets' upper bounds (le), in seconds: 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
 * 0.5, 1, 2.5, 5, 10, 30, 60, 300; a last bucket, +Inf, catches the rest. */
#define METRICS_N_BUCKETS 14

/*
 * The most bytes metrics_render() ever needs, its terminating NUL included: every value at
 * its widest (20 digits, or "-9223372036854775808" for a gauge), plus the length of the
 * version in build_info, so that a new version number needs no edit here. A buffer this
 * size always holds the whole text; test_metrics checks that it matches metrics_render_max().
 */
#define METRICS_RENDER_MAX (13253 + sizeof(PROXY_VERSION) - 1)

/* metrics_inc adds 1 to the counter |id|. */
void metrics_inc(enum metrics_counter id);

/* metrics_add adds |n| to the counter |id| (wraps at 2^64, as Prometheus expects resets). */
void metrics_add(enum metrics_counter id, uint64_t n);

/* metrics_gauge_add adds |delta| (possibly negative) to the gauge |id|. Pair each +1 with
 * its -1 in matching functions. */
void metrics_gauge_add(enum metrics_counter id, int64_t delta);

/* metrics_gauge_set sets the gauge |id| to |value| (sizes sampled just before rendering,
 * like the learned-failure memories). */
void metrics_gauge_set(enum metrics_counter id, int64_t value);

/* metrics_get returns the current value of the counter or gauge |id| (a gauge's int64_t
 * bits as uint64_t; always 1 for METRICS_BUILD_INFO). */
uint64_t metrics_get(enum metrics_counter id);

/*
 * metrics_observe records one duration of |seconds| in histogram |id|. The value is
 * rounded to whole microseconds (the sum is kept as an atomic integer of microseconds);
 * negative values and NaN count as 0, and values above 10^13 s are clamped.
 */
void metrics_observe(enum metrics_histogram id, double seconds);

/* metrics_reset sets every series back to 0. For tests only: not atomic as a whole. */
void metrics_reset(void);

/* metrics_session_end maps a session's end reason to its sessions_total series. */
enum metrics_counter metrics_session_end(enum reason_end reason);

/* metrics_back_fallback maps the class of a failed leg-2 negotiation to its
 * back_tls_fallback_total series. */
enum metrics_counter metrics_back_fallback(enum reason_back_tls reason);

/*
 * metrics_render writes the exposition text (Prometheus text format 0.0.4: "# HELP" and
 * "# TYPE" once per family, then its series; histograms as cumulative _bucket{le=...},
 * _sum and _count) into |out|, in a fixed order. Like snprintf: returns the length of the
 * whole text (without its NUL); the text is complete and NUL-terminated iff the return is
 * < |out_cap|, else |out| holds a NUL-terminated prefix (nothing if out_cap is 0, when out
 * may be NULL) and the caller may retry with return + 1 bytes. Never more than
 * METRICS_RENDER_MAX - 1. Values are read one by one, so concurrent updates may show in
 * some series and not others; a histogram's _count always equals its +Inf bucket.
 */
size_t metrics_render(char *out, size_t out_cap);

/* metrics_render_max returns the buffer size that always suffices for metrics_render()
 * (computed from the fixed text with every value at its widest). */
size_t metrics_render_max(void);

/* metrics_tls_failure returns the tls_failures_total series of an RFC 8460 result type, or
 * METRICS_N_COUNTERS for an unknown one. */
enum metrics_counter metrics_tls_failure(const char *result_type);

#endif
