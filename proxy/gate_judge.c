/* gate_judge: see gate_judge.h. */
#include "gate_judge.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define GATE_TLS12 0x0303

const char *gate_policy_name(enum gate_policy policy)
{
    switch (policy) {
    case GATE_POLICY_DANE:
        return "dane";
    case GATE_POLICY_STS:
        return "mta-sts";
    case GATE_POLICY_REQUIRETLS:
        return "requiretls";
    case GATE_POLICY_NONE:
        break;
    }
    return "none";
}

void gate_format(char *out, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, size, fmt, ap);
    va_end(ap);
}

static void gate_refuse(struct gate_verdict *out, enum gate_policy policy, const char *reply,
                        const char *result_type)
{
    out->pass = false;
    out->policy = policy;
    out->reply = reply;
    out->result_type = result_type;
}

/* gate_dane judges a host with a secure TLSA RRset (RFC 7672 section 2.2): TLS is
 * required; usable records must authenticate the chain. */
static void gate_dane(struct gate_verdict *out, const struct gate_facts *f,
                      const struct gate_leg *leg)
{
    out->policy = GATE_POLICY_DANE;
    out->mode = "dane";
    if (!leg->tls) {
        gate_refuse(out, GATE_POLICY_DANE, "450 4.7.10", "starttls-not-supported");
        gate_format(out->why, sizeof(out->why),
                    "%s publishes DANE TLSA records for %s: TLS is required", f->domain,
                    f->mx_host);
        return;
    }
    struct dane_result m;
    const char *refs[] = {f->mx_host};
    dane_match(&m, f->tlsa, f->n_tlsa, leg->chain, leg->chain_lens, leg->n_chain, refs, 1,
               leg->now);
    switch (m.verdict) {
    case DANE_MATCHED_EE:
    case DANE_MATCHED_TA:
        out->pass = true;
        out->authenticated = true;
        return;
    case DANE_NO_USABLE_RECORDS:
        out->pass = true; /* unusable records: TLS without authentication */
        return;
    case DANE_NO_MATCH:
        break;
    }
    char detail[GATE_WHY_MAX];
    gate_format(detail, sizeof(detail), "%s%s%s", m.reason, m.detail[0] != '\0' ? ": " : "",
                m.detail);
    gate_refuse(out, GATE_POLICY_DANE, "450 4.7.5", "validation-failure");
    gate_format(out->why, sizeof(out->why),
                "the server's certificate does not match the DANE TLSA records of %s (%s)",
                f->mx_host, detail);
}

/* gate_sts_failure names what an MTA-STS policy finds wrong with the leg, or NULL
 * (RFC 8461 section 4.2: TLS 1.2 or newer, a WebPKI-valid certificate for an allowed MX). */
static const char *gate_sts_failure(const struct gate_facts *f, const struct gate_leg *leg,
                                    char *why, size_t why_size)
{
    if (!leg->tls) {
        gate_format(why, why_size, "the connection is not encrypted (%s)",
                    leg->cleartext_reason != NULL ? leg->cleartext_reason : "no TLS");
        return "starttls-not-supported";
    }
    if (leg->protocol < GATE_TLS12) {
        gate_format(why, why_size, "TLS older than 1.2 was negotiated");
        return "validation-failure";
    }
    if (!leg->webpki_ok) {
        gate_format(why, why_size, "the certificate is not trusted: %s",
                    leg->webpki_why != NULL ? leg->webpki_why : "?");
        bool expired = leg->webpki_why != NULL && strstr(leg->webpki_why, "expired") != NULL;
        return expired ? "certificate-expired" : "certificate-not-trusted";
    }
    if (!mtasts_cert_name_matches(f->sts, leg->names, leg->name_lens, leg->n_names)) {
        gate_format(why, why_size, "the certificate names no host the policy allows");
        return "certificate-host-mismatch";
    }
    return NULL;
}

static void gate_sts(struct gate_verdict *out, const struct gate_facts *f,
                     const struct gate_leg *leg)
{
    out->policy = GATE_POLICY_STS;
    out->mode = mtasts_mode_name(f->sts->mode);
    if (f->sts->mode == MTASTS_MODE_NONE) {
        out->pass = true;
        return;
    }
    char why[GATE_WHY_MAX];
    const char *failure = gate_sts_failure(f, leg, why, sizeof(why));
    if (failure == NULL) {
        out->pass = true;
        out->authenticated = true;
        return;
    }
    if (f->sts->mode == MTASTS_MODE_TESTING) {
        /* Report only (RFC 8461 section 5): the mail goes, the failure is counted. */
        out->pass = true;
        out->report_failure = true;
        out->result_type = failure;
        gate_format(out->why, sizeof(out->why), "MTA-STS testing policy of %s: %s", f->domain, why);
        return;
    }
    gate_refuse(out, GATE_POLICY_STS, leg->tls ? "450 4.7.5" : "450 4.7.10", failure);
    gate_format(out->why, sizeof(out->why), "%s has an MTA-STS enforce policy: %s", f->domain, why);
}

/* gate_requiretls: RFC 8689 section 4.2.1: the server must be authenticated, by DANE,
 * MTA-STS or (towards a relay) a certificate verified against the configured CA. */
static void gate_requiretls(struct gate_verdict *out, const struct gate_facts *f,
                            const struct gate_leg *leg)
{
    if (leg->tls && (out->authenticated || leg->verified_ca)) {
        return;
    }
    bool has_policy =
        f->dane == GATE_DANE_TLSA || (f->sts != NULL && f->sts->mode != MTASTS_MODE_NONE);
    /* With a policy the server might authenticate another time; without, it never will. */
    gate_refuse(out, GATE_POLICY_REQUIRETLS, has_policy ? "450 4.7.30" : "550 5.7.30",
                has_policy ? "validation-failure" : "dane-required");
    gate_format(out->why, sizeof(out->why),
                "REQUIRETLS support required: %s's server is not authenticated%s", f->domain,
                has_policy ? " over this connection" : " (no DANE or MTA-STS policy)");
    out->mode = "requiretls";
}

/*
 * gate_relay judges a leg to a relay (forward mode with recipient_policies = on): the
 * relay is not the domain's MX, so its certificate cannot match the domain's TLSA records
 * or MX patterns. A protected domain's mail may take this hop only encrypted, to the relay
 * authenticated (verify = ca, or a WebPKI certificate for the configured upstream name);
 * the relay applies the domain's policy on its own hop.
 */
static void gate_relay(struct gate_verdict *out, const struct gate_facts *f,
                       const struct gate_leg *leg, bool requiretls)
{
    bool dane = f->dane == GATE_DANE_TLSA || f->dane == GATE_DANE_NOT_MX;
    bool enforce = f->sts != NULL && f->sts->mode == MTASTS_MODE_ENFORCE;
    bool testing = f->sts != NULL && f->sts->mode == MTASTS_MODE_TESTING;
    out->policy = dane ? GATE_POLICY_DANE : f->sts != NULL ? GATE_POLICY_STS : GATE_POLICY_NONE;
    out->mode = dane ? "dane" : f->sts != NULL ? mtasts_mode_name(f->sts->mode) : "none";
    bool ok = leg->tls && leg->relay_authenticated;
    out->pass = true;
    out->authenticated = ok;
    if (ok || (!dane && !enforce && !testing && !requiretls)) {
        return;
    }
    const char *type = leg->tls ? "validation-failure" : "starttls-not-supported";
    const char *why = leg->tls ? "the relay's certificate is not verified"
                               : "the connection to the relay is not encrypted";
    if (testing && !dane && !requiretls) {
        out->report_failure = true;
        out->result_type = type;
        gate_format(out->why, sizeof(out->why), "MTA-STS testing policy of %s: %s", f->domain, why);
        return;
    }
    if (!dane && !enforce) {
        gate_refuse(out, GATE_POLICY_REQUIRETLS, "450 4.7.30", type);
        out->mode = "requiretls";
    } else {
        gate_refuse(out, out->policy, leg->tls ? "450 4.7.5" : "450 4.7.10", type);
    }
    gate_format(out->why, sizeof(out->why), "%s requires TLS to an authenticated server: %s",
                f->domain, why);
}

void gate_judge(struct gate_verdict *out, const struct gate_facts *f, const struct gate_leg *leg,
                bool requiretls)
{
    memset(out, 0, sizeof(*out));
    out->mode = "none";
    if (leg->relay && f->dane != GATE_DANE_FAILED) {
        gate_relay(out, f, leg, requiretls);
        return;
    }
    switch (f->dane) {
    case GATE_DANE_FAILED:
        gate_refuse(out, GATE_POLICY_DANE, f->dane_bogus ? "450 4.7.5" : "450 4.4.3",
                    f->dane_bogus ? "dnssec-invalid" : "validation-failure");
        gate_format(out->why, sizeof(out->why), "the DNSSEC lookups for %s failed (%s)", f->domain,
                    f->dane_why);
        out->mode = "dane";
        return;
    case GATE_DANE_NOT_MX:
        gate_refuse(out, GATE_POLICY_DANE, "450 4.7.5", "dane-required");
        gate_format(out->why, sizeof(out->why),
                    "%s uses DANE and this server is not one of its MX hosts (%s)", f->domain,
                    f->dane_why);
        out->mode = "dane";
        return;
    case GATE_DANE_TLSA:
        /* RFC 8461 section 2: where DANE applies it takes precedence over MTA-STS. */
        gate_dane(out, f, leg);
        break;
    case GATE_DANE_NONE:
        if (f->sts != NULL) {
            gate_sts(out, f, leg);
        } else {
            out->pass = true;
            if (f->sts_fetch_failed) {
                out->report_failure = true;
                out->result_type = f->sts_fetch_result;
                gate_format(out->why, sizeof(out->why), "MTA-STS policy of %s unavailable: %s",
                            f->domain, f->sts_why);
            }
        }
        break;
    }
    if (out->pass && requiretls) {
        gate_requiretls(out, f, leg);
    }
}
