/*
 * sts_fetch: fetching an MTA-STS policy (RFC 8461 section 3.3): "GET
 * https://mta-sts.<domain>/.well-known/mta-sts.txt" over TLS 1.2+ with the server's
 * certificate verified against the WebPKI roots for the name mta-sts.<domain>; a 200
 * answer only (no redirect is followed), bounded in size and time. The name is resolved
 * through the gate's resolver (dns.c), so the test world's DNS and a stub zone work alike.
 */
#ifndef PROXY_STS_FETCH_H
#define PROXY_STS_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct dns;
struct tlsio_ctx;
struct sts_fetch;

/* How a fetch ended; |body| valid only during the callback. */
struct sts_fetch_result {
    bool ok;                 /* a 200 with a body of at most the size limit */
    const char *result_type; /* on failure, RFC 8460's: sts-policy-fetch-error, or
                              * sts-webpki-invalid when the certificate failed */
    const char *why;         /* on failure, for the log */
    const char *body;
    size_t body_len;
};

typedef void sts_fetch_fn(void *arg, const struct sts_fetch_result *result);

/* sts_fetch_start fetches |domain|'s policy; |fn| runs exactly once later, unless
 * sts_fetch_cancel() comes first. NULL when it could not start (out of memory). */
struct sts_fetch *sts_fetch_start(uv_loop_t *loop, struct dns *dns, struct tlsio_ctx *webpki,
                                  const char *domain, uint64_t timeout_ms, size_t max_size,
                                  sts_fetch_fn *fn, void *arg);

void sts_fetch_cancel(struct sts_fetch *f);

#endif
