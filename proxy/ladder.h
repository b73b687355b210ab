/*
 * ladder: leg 2's fallback ladder as pure functions. An attempt is what one connection to
 * the upstream tries: TLS as configured, then (per [upstream_tls] fallback_steps) TLS
 * without our client certificate, TLS 1.2 at most, or cleartext. After a failed
 * negotiation ladder_next() picks the next attempt or says there is none; the attempt that
 * worked is what the proxy remembers per upstream (ladder_encode/ladder_decode).
 */
#ifndef PROXY_LADDER_H
#define PROXY_LADDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

struct ladder_attempt {
    bool no_client_cert; /* answer a certificate request with none */
    bool max_tls12;      /* offer TLS 1.2 at most */
    bool cleartext;      /* no STARTTLS at all */
    uint8_t next_step;   /* the configured step to consider after this attempt fails */
};

struct ladder_config {
    const enum conf_fallback_step *steps; /* [upstream_tls] fallback_steps, in order */
    size_t n_steps;
    bool fallback;        /* fallback = on and the destination's policy is may */
    bool has_client_cert; /* a client certificate is configured */
};

enum ladder_failure {
    LADDER_FAILED_HANDSHAKE = 0, /* the handshake failed: a certificate or version step may
                                    help (TLS 1.3 rejections right after it count too) */
    LADDER_FAILED_OTHER,         /* outside the handshake (the STARTTLS reply, the EHLO in
                                    TLS, a close after it): only cleartext helps */
};

/* ladder_start makes |out| the first attempt: TLS as configured. */
void ladder_start(struct ladder_attempt *out);

/* ladder_is_first tells whether |a| is the first attempt (nothing stepped down). */
bool ladder_is_first(const struct ladder_attempt *a);

/*
 * ladder_next moves |a| to the next attempt after a failure of kind |failure|: the next
 * configured step that applies (no-client-cert only with a client certificate and after a
 * handshake failure; tls12 only after a handshake failure; cleartext always). Returns
 * false when there is none (no step left, or fallback is off); |a| then keeps its flags.
 */
bool ladder_next(struct ladder_attempt *a, const struct ladder_config *c,
                 enum ladder_failure failure);

/* ladder_encode returns the attempt's flags as the small non-zero value the memory keeps
 * (0 for the first attempt, which is never stored). */
uint8_t ladder_encode(const struct ladder_attempt *a);

/*
 * ladder_decode turns a remembered value back into an attempt under configuration |c|,
 * with next_step after the last step it used. Returns false when the value is not usable
 * under |c| (fallback off, or a step it used is no longer configured): start from the
 * first attempt then.
 */
bool ladder_decode(struct ladder_attempt *out, const struct ladder_config *c, uint8_t value);

/* ladder_name returns a static name for the log: "tls", "no-client-cert", "tls12",
 * "no-client-cert+tls12" or "cleartext". */
const char *ladder_name(const struct ladder_attempt *a);

/* ladder_value_of_name is ladder_encode() of the attempt ladder_name() calls |name|:
 * how the shared store keeps a remembered step readable. 0 when |name| is none of the
 * steps ("tls" included: the first attempt is never remembered). */
uint8_t ladder_value_of_name(const char *name);

#endif
