/*
 * gate_judge: the downgrade gate's rule, as a pure function. Leg 2 was negotiated before
 * any recipient was known; each RCPT's domain is judged against the leg that was actually
 * established: may this recipient's mail go over it? DANE (RFC 7672) first, MTA-STS
 * (RFC 8461) when DANE does not apply, then REQUIRETLS (RFC 8689) for messages that ask
 * for it. The lookups (gate.c) gather the facts; this decides, and says why in the words
 * of RFC 8460 (TLS-RPT result types).
 */
#ifndef PROXY_GATE_JUDGE_H
#define PROXY_GATE_JUDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dane.h"
#include "dnsname.h"
#include "mtasts.h"

#define GATE_TLSA_MAX 16
#define GATE_WHY_MAX 160

/* What DNSSEC says about the recipient domain and the upstream's address. */
enum gate_dane {
    GATE_DANE_NONE = 0, /* DANE does not apply: unsigned MX, or no secure TLSA for the host */
    GATE_DANE_TLSA,     /* the host has a secure, non-empty TLSA RRset: it must be used */
    GATE_DANE_NOT_MX,   /* the domain uses DANE, but the upstream's address is not one of
                         * its (securely resolved) MX hosts */
    GATE_DANE_FAILED,   /* a lookup was bogus or failed: nothing can be decided */
};

/* The facts about one recipient domain. */
struct gate_facts {
    char domain[DNSNAME_BUF];
    enum gate_dane dane;
    char mx_host[DNSNAME_BUF];            /* GATE_DANE_TLSA: the MX host the upstream belongs to */
    struct dane_tlsa tlsa[GATE_TLSA_MAX]; /* their data borrowed from the facts' owner */
    size_t n_tlsa;
    bool dane_bogus; /* GATE_DANE_FAILED: validation failed (not a timeout) */
    char dane_why[GATE_WHY_MAX];
    const struct mtasts_policy *sts; /* the domain's MTA-STS policy, or NULL */
    bool sts_fetch_failed;           /* a policy is announced but none could be fetched or parsed */
    const char *sts_fetch_result;    /* then the RFC 8460 type: sts-policy-fetch-error, ... */
    char sts_why[GATE_WHY_MAX];
};

/* Leg 2 as it was negotiated. */
struct gate_leg {
    bool tls;
    int protocol; /* BoringSSL's number: 0x0303 for TLS 1.2 */
    const uint8_t *const *chain;
    const size_t *chain_lens;
    size_t n_chain;
    bool webpki_ok; /* the chain is valid under the WebPKI roots (no name checked) */
    const char *webpki_why;
    const char *const *names; /* the leaf's SAN dNSNames */
    const size_t *name_lens;
    size_t n_names;
    bool verified_ca;             /* [upstream_tls] verify = ca, and it verified */
    bool relay;                   /* forward mode: the upstream is a relay, not the domain's MX */
    bool relay_authenticated;     /* verify = ca passed, or a WebPKI-valid certificate for the
                                     configured upstream name */
    int64_t now;                  /* seconds since the epoch, for DANE-TA validity */
    const char *cleartext_reason; /* why leg 2 is in cleartext ("step=cleartext", ...) */
};

enum gate_policy {
    GATE_POLICY_NONE = 0,
    GATE_POLICY_DANE,
    GATE_POLICY_STS,
    GATE_POLICY_REQUIRETLS,
};

struct gate_verdict {
    bool pass;               /* the recipient may go over this leg */
    bool authenticated;      /* the leg's server is authenticated for this domain (DANE, STS) */
    bool report_failure;     /* a failure to report although it passes (MTA-STS testing) */
    enum gate_policy policy; /* what decided (or, passing, what applied) */
    const char *mode;        /* "dane", "enforce", "testing", "none", "requiretls" */
    const char *result_type; /* RFC 8460 result type of a failure, NULL for success */
    const char *reply;       /* a refusal's code and enhanced code, "450 4.7.10" */
    char why[GATE_WHY_MAX * 2];
};

/* gate_judge decides for one recipient domain; |requiretls| when the transaction's MAIL
 * carried REQUIRETLS. */
void gate_judge(struct gate_verdict *out, const struct gate_facts *facts,
                const struct gate_leg *leg, bool requiretls);

/* gate_policy_name: "none", "dane", "mta-sts", "requiretls". */
const char *gate_policy_name(enum gate_policy policy);

/* gate_format writes a reason into |out|, cut short if it must be (domain and host names
 * may be long): snprintf without the truncation warnings. */
void gate_format(char *out, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
