/*
 * gate: see gate.h. A lookup runs two independent branches and finishes when both have:
 *
 *   DANE:    MX (secure?) -> per MX host: its A or AAAA (does it hold the upstream's
 *            address, securely?) and its TLSA RRset -> which host, and its records
 *   MTA-STS: _mta-sts TXT (an id?) -> the cached policy, or a fetch (shared by the
 *            worker's lookups of the same domain) -> the policy
 *
 * A cached policy whose id changed, or that has lived half its max_age, is used at once
 * and refreshed in the background (RFC 8461 section 5.1), so a RCPT waits for a fetch
 * only the first time a domain is seen.
 */
#include "gate.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "dns.h"
#include "dns_wire.h"
#include "log.h"
#include "metrics.h"
#include "sts_cache.h"
#include "sts_fetch.h"

/* MX hosts examined per domain, the most preferred first: each costs two queries and about
 * 600 bytes while the lookup lives. A domain with more, whose upstream is not among these,
 * has an undetermined DANE status (gate_decide_dane()). */
#define GATE_MX_MAX 32
#define GATE_TXT_MAX 8 /* TXT records of _mta-sts looked at */

struct gate_fetch;

struct gate {
    uv_loop_t *loop;
    struct dns *dns;
    struct sts_cache *sts;
    struct gate_fetch *fetches; /* running, at most one per domain */
    bool draining;              /* gate_unref(): a fetch lives while someone waits for it */
};

/* One MX host of the domain. */
struct gate_host {
    struct gate_lookup *q;
    char name[DNSNAME_BUF];
    uint16_t preference;
    struct dns_query *addr_q;
    struct dns_query *tlsa_q;
    bool addr_secure_match; /* a secure A/AAAA RRset holding the upstream's address */
    bool addr_failed;
    bool tlsa_failed;
    bool tlsa_bogus;
    size_t n_tlsa;
    uint8_t *tlsa_rdata[GATE_TLSA_MAX];
    size_t tlsa_len[GATE_TLSA_MAX];
};

struct gate_lookup {
    struct gate *g;
    gate_facts_fn *fn;
    void *arg;
    bool done;
    unsigned pending; /* outstanding queries and fetches */
    union addr upstream;
    struct gate_facts facts;
    struct sts_cached *sts; /* the policy facts.sts points into, referenced */
    struct dns_query *mx_q;
    struct dns_query *txt_q;
    struct gate_host *hosts; /* n_hosts of them, allocated for the MX answer */
    size_t n_hosts;
    size_t n_mx; /* usable MX records: more than n_hosts when some were not examined */
    bool relay;  /* forward mode: the upstream is a relay, not one of the domain's MX hosts */
    bool dane_failed;
    bool dane_bogus;
    char id[MTASTS_ID_MAX + 1];
    struct tlsio_ctx *webpki;
    uint64_t fetch_timeout_ms;
    size_t max_policy_size;
    struct gate_lookup *next_waiter; /* in a gate_fetch's list */
    struct gate_fetch *waiting_on;
};

/* A policy fetch, shared by the lookups of one domain on one loop. */
struct gate_fetch {
    struct gate *g;
    struct gate_fetch *next;
    char domain[DNSNAME_BUF];
    char id[MTASTS_ID_MAX + 1];
    struct sts_fetch *f;
    struct gate_lookup *waiters;
};

static uint64_t gate_now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* ---- finishing ---------------------------------------------------------------------------- */

static void gate_decide_dane(struct gate_lookup *q);

static void gate_maybe_finish(struct gate_lookup *q)
{
    if (q->pending > 0 || q->done) {
        return;
    }
    gate_decide_dane(q);
    q->done = true;
    if (q->fn != NULL) {
        q->fn(q->arg, q);
    }
}

/* ---- DANE --------------------------------------------------------------------------------- */

static void gate_dane_failed(struct gate_lookup *q, const struct dns_answer *a, const char *what)
{
    q->dane_failed = true;
    q->dane_bogus |= a->security == DNS_BOGUS;
    gate_format(q->facts.dane_why, sizeof(q->facts.dane_why), "%s: %s%s%s", what,
                dns_security_name(a->security), a->why != NULL ? ", " : "",
                a->why != NULL ? a->why : "");
}

/* gate_decide_dane turns the hosts' answers into facts (RFC 7672 section 2.2). */
static void gate_decide_dane(struct gate_lookup *q)
{
    struct gate_facts *f = &q->facts;
    if (q->dane_failed) {
        f->dane = GATE_DANE_FAILED;
        f->dane_bogus = q->dane_bogus;
        return;
    }
    bool any_tlsa = false;
    bool any_failed = false;
    for (size_t i = 0; i < q->n_hosts; i++) {
        struct gate_host *h = &q->hosts[i];
        any_tlsa |= h->n_tlsa > 0;
        any_failed |= h->addr_failed || h->tlsa_failed;
        if (!h->addr_secure_match) {
            continue;
        }
        if (h->tlsa_failed) {
            f->dane = GATE_DANE_FAILED;
            f->dane_bogus = h->tlsa_bogus;
            return;
        }
        if (h->n_tlsa == 0) {
            f->dane = GATE_DANE_NONE; /* this host has no TLSA: DANE does not apply to it */
            return;
        }
        f->dane = GATE_DANE_TLSA;
        memcpy(f->mx_host, h->name, sizeof(f->mx_host));
        f->n_tlsa = h->n_tlsa;
        for (size_t j = 0; j < h->n_tlsa; j++) {
            dane_tlsa_parse(&f->tlsa[j], h->tlsa_rdata[j], h->tlsa_len[j]);
        }
        return;
    }
    /* Hosts left unexamined (more than GATE_MX_MAX) may include the upstream, with or
     * without TLSA records: whether DANE applies to it is unknown, never "no DANE". Towards
     * the domain's MX that refuses, like a failed lookup; towards a relay, which is no MX
     * anyway, it requires the relay authenticated, as for a domain that uses DANE. */
    bool unexamined = q->n_mx > q->n_hosts;
    if (any_tlsa && (q->relay || !unexamined)) {
        f->dane = GATE_DANE_NOT_MX;
        gate_format(f->dane_why, sizeof(f->dane_why), "%zu MX host(s) checked", q->n_hosts);
    } else if (any_failed) {
        f->dane = GATE_DANE_FAILED;
        gate_format(f->dane_why, sizeof(f->dane_why), "an MX host's address or TLSA lookup failed");
    } else if (unexamined) {
        f->dane = q->relay ? GATE_DANE_NOT_MX : GATE_DANE_FAILED;
        gate_format(f->dane_why, sizeof(f->dane_why),
                    "%zu MX hosts, the upstream not among the %zu most preferred examined", q->n_mx,
                    q->n_hosts);
    } else {
        f->dane = GATE_DANE_NONE;
    }
}

static bool gate_answer_holds(const struct dns_answer *a, const union addr *upstream)
{
    const uint8_t *want;
    size_t want_len;
    if (upstream->sa.sa_family == AF_INET) {
        want = (const uint8_t *)&upstream->in.sin_addr;
        want_len = 4;
    } else {
        want = (const uint8_t *)&upstream->in6.sin6_addr;
        want_len = 16;
    }
    for (size_t i = 0; i < a->n; i++) {
        if (a->rdata_len[i] == want_len && memcmp(a->rdata[i], want, want_len) == 0) {
            return true;
        }
    }
    return false;
}

static void gate_on_addr(void *arg, const struct dns_answer *a)
{
    struct gate_host *h = arg;
    struct gate_lookup *q = h->q;
    h->addr_q = NULL;
    q->pending--;
    if (a->security == DNS_FAILED || a->security == DNS_BOGUS) {
        h->addr_failed = true;
    } else if (a->security == DNS_SECURE) {
        h->addr_secure_match = gate_answer_holds(a, &q->upstream);
    }
    gate_maybe_finish(q);
}

static void gate_on_tlsa(void *arg, const struct dns_answer *a)
{
    struct gate_host *h = arg;
    struct gate_lookup *q = h->q;
    h->tlsa_q = NULL;
    q->pending--;
    if (a->security == DNS_FAILED || a->security == DNS_BOGUS) {
        h->tlsa_failed = true;
        h->tlsa_bogus = a->security == DNS_BOGUS;
        gate_format(q->facts.dane_why, sizeof(q->facts.dane_why), "TLSA of %s: %s%s%s", h->name,
                    dns_security_name(a->security), a->why != NULL ? ", " : "",
                    a->why != NULL ? a->why : "");
    } else if (a->security == DNS_SECURE) {
        /* Insecure TLSA records do not count (RFC 7672 section 2.2). */
        for (size_t i = 0; i < a->n && h->n_tlsa < GATE_TLSA_MAX; i++) {
            uint8_t *copy = malloc(a->rdata_len[i] > 0 ? a->rdata_len[i] : 1);
            if (copy == NULL) {
                h->tlsa_failed = true;
                break;
            }
            memcpy(copy, a->rdata[i], a->rdata_len[i]);
            h->tlsa_rdata[h->n_tlsa] = copy;
            h->tlsa_len[h->n_tlsa++] = a->rdata_len[i];
        }
    }
    gate_maybe_finish(q);
}

static void gate_ask_host(struct gate_lookup *q, const char *name, uint16_t preference)
{
    struct gate_host *h = &q->hosts[q->n_hosts++];
    h->q = q;
    snprintf(h->name, sizeof(h->name), "%s", name);
    h->preference = preference;
    int type = q->upstream.sa.sa_family == AF_INET6 ? DNS_TYPE_AAAA : DNS_TYPE_A;
    h->addr_q = dns_resolve(q->g->dns, name, type, gate_on_addr, h);
    char tlsa_name[DNSNAME_BUF + 16];
    snprintf(tlsa_name, sizeof(tlsa_name), "_25._tcp.%s", name);
    h->tlsa_q = dns_resolve(q->g->dns, tlsa_name, DNS_TYPE_TLSA, gate_on_tlsa, h);
    h->addr_failed = h->addr_q == NULL;
    h->tlsa_failed = h->tlsa_q == NULL;
    q->pending += (h->addr_q != NULL) + (h->tlsa_q != NULL);
}

/* gate_ask_hosts looks up the MX hosts of a secure answer: all of them, or the GATE_MX_MAX
 * most preferred (those a sender tries first, RFC 5321 section 5.1; answer order among
 * equals) when there are more. */
static void gate_ask_hosts(struct gate_lookup *q, const struct dns_answer *a)
{
    size_t best[GATE_MX_MAX];
    uint16_t best_pref[GATE_MX_MAX];
    size_t n_best = 0;
    uint16_t preference;
    char name[DNS_NAME_MAX + 1];
    for (size_t i = 0; i < a->n; i++) {
        if (!dns_wire_mx(&preference, name, a->rdata[i], a->rdata_len[i]) || name[0] == '\0') {
            continue; /* malformed, or a null MX (RFC 7505): no host to judge */
        }
        q->n_mx++;
        if (n_best == GATE_MX_MAX && preference >= best_pref[n_best - 1]) {
            continue;
        }
        size_t j = n_best < GATE_MX_MAX ? n_best++ : n_best - 1;
        for (; j > 0 && best_pref[j - 1] > preference; j--) {
            best[j] = best[j - 1];
            best_pref[j] = best_pref[j - 1];
        }
        best[j] = i;
        best_pref[j] = preference;
    }
    if (a->n == 0) {
        q->n_mx = 1; /* no MX: the implicit MX, the domain (RFC 5321 section 5.1) */
    }
    if (q->n_mx == 0) {
        return;
    }
    q->hosts = calloc(q->n_mx < GATE_MX_MAX ? q->n_mx : GATE_MX_MAX, sizeof(*q->hosts));
    if (q->hosts == NULL) {
        q->dane_failed = true;
        gate_format(q->facts.dane_why, sizeof(q->facts.dane_why), "MX hosts: out of memory");
        return;
    }
    if (a->n == 0) {
        gate_ask_host(q, q->facts.domain, 0);
        return;
    }
    for (size_t k = 0; k < n_best; k++) {
        size_t i = best[k];
        dns_wire_mx(&preference, name, a->rdata[i], a->rdata_len[i]);
        gate_ask_host(q, name, preference);
    }
}

static void gate_on_mx(void *arg, const struct dns_answer *a)
{
    struct gate_lookup *q = arg;
    q->mx_q = NULL;
    q->pending--;
    if (a->security == DNS_FAILED || a->security == DNS_BOGUS) {
        gate_dane_failed(q, a, "MX");
    } else if (a->security == DNS_SECURE && !a->nxdomain) {
        gate_ask_hosts(q, a);
    }
    gate_maybe_finish(q);
}

/* ---- MTA-STS ------------------------------------------------------------------------------ */

static void gate_use_policy(struct gate_lookup *q, struct sts_cached *cached)
{
    sts_cached_unref(q->sts);
    q->sts = cached;
    q->facts.sts = cached != NULL ? cached->policy : NULL;
}

static void gate_fetch_done(void *arg, const struct sts_fetch_result *r);

/* gate_fetch_policy joins (or starts) this loop's fetch of the domain's policy; with
 * |q| NULL, a background refresh nobody waits for. */
static void gate_fetch_policy(struct gate *g, struct gate_lookup *q, const char *domain,
                              const char *id, struct tlsio_ctx *webpki, uint64_t timeout_ms,
                              size_t max_size)
{
    struct gate_fetch *fe = g->fetches;
    while (fe != NULL && strcmp(fe->domain, domain) != 0) {
        fe = fe->next;
    }
    if (fe == NULL && q == NULL && g->draining) {
        return; /* a refresh would only hold the exit up */
    }
    if (fe == NULL) {
        fe = calloc(1, sizeof(*fe));
        if (fe == NULL) {
            return;
        }
        fe->g = g;
        snprintf(fe->domain, sizeof(fe->domain), "%s", domain);
        snprintf(fe->id, sizeof(fe->id), "%s", id);
        fe->f = sts_fetch_start(g->loop, g->dns, webpki, domain, timeout_ms, max_size,
                                gate_fetch_done, fe);
        if (fe->f == NULL) {
            free(fe);
            return;
        }
        fe->next = g->fetches;
        g->fetches = fe;
        metrics_inc(METRICS_STS_FETCHES);
    }
    if (q != NULL) {
        q->next_waiter = fe->waiters;
        fe->waiters = q;
        q->waiting_on = fe;
        q->pending++;
    }
}

static void gate_fetch_unlink(struct gate_fetch *fe)
{
    struct gate_fetch **p = &fe->g->fetches;
    while (*p != fe) {
        p = &(*p)->next;
    }
    *p = fe->next;
}

/* gate_fetch_cancel stops |fe| without a word to its waiters, if any, and frees it. */
static void gate_fetch_cancel(struct gate_fetch *fe)
{
    gate_fetch_unlink(fe);
    sts_fetch_cancel(fe->f);
    while (fe->waiters != NULL) {
        fe->waiters->waiting_on = NULL;
        fe->waiters = fe->waiters->next_waiter;
    }
    free(fe);
}

static void gate_fetch_done(void *arg, const struct sts_fetch_result *r)
{
    struct gate_fetch *fe = arg;
    gate_fetch_unlink(fe);
    struct sts_cached *cached = NULL;
    const char *result_type = r->result_type;
    char why[GATE_WHY_MAX];
    gate_format(why, sizeof(why), "%s", r->ok ? "" : r->why);
    if (r->ok) {
        struct mtasts_policy *policy = NULL;
        char error[MTASTS_ERROR_MAX];
        if (mtasts_policy_parse(&policy, error, r->body, r->body_len) == MTASTS_POLICY_OK) {
            cached = sts_cache_put(fe->g->sts, fe->domain, fe->id, policy, gate_now_ms());
            log_info(0, "mta-sts-policy", "domain=%s id=%s mode=%s max_age=%u mx=%zu", fe->domain,
                     fe->id, mtasts_mode_name(policy->mode), policy->max_age, policy->n_mx);
        } else {
            result_type = "sts-policy-invalid";
            gate_format(why, sizeof(why), "invalid policy: %s", error);
        }
    }
    if (cached == NULL) {
        metrics_inc(METRICS_STS_FETCH_FAILURES);
        log_warn(0, "mta-sts-fetch-failed", "domain=%s result=%s reason=\"%s\"", fe->domain,
                 result_type != NULL ? result_type : "sts-policy-fetch-error", why);
    }
    while (fe->waiters != NULL) {
        struct gate_lookup *q = fe->waiters;
        fe->waiters = q->next_waiter;
        q->waiting_on = NULL;
        q->pending--;
        if (cached != NULL) {
            gate_use_policy(q, sts_cached_ref(cached));
        } else if (q->sts == NULL) {
            q->facts.sts_fetch_failed = true;
            q->facts.sts_fetch_result =
                result_type != NULL ? result_type : "sts-policy-fetch-error";
            gate_format(q->facts.sts_why, sizeof(q->facts.sts_why), "%s", why);
        }
        gate_maybe_finish(q);
    }
    sts_cached_unref(cached);
    free(fe);
}

static void gate_on_txt(void *arg, const struct dns_answer *a)
{
    struct gate_lookup *q = arg;
    q->txt_q = NULL;
    q->pending--;
    char texts[GATE_TXT_MAX][512];
    const char *records[GATE_TXT_MAX];
    size_t lens[GATE_TXT_MAX];
    size_t n = 0;
    for (size_t i = 0; i < a->n && n < GATE_TXT_MAX; i++) {
        if (mtasts_txt_from_rdata(texts[n], sizeof(texts[n]), &lens[n], a->rdata[i],
                                  a->rdata_len[i])) {
            records[n] = texts[n];
            n++;
        }
    }
    enum mtasts_txt_result txt = a->security == DNS_BOGUS || a->security == DNS_FAILED
                                     ? MTASTS_TXT_NONE
                                     : mtasts_txt_parse(q->id, records, lens, n);
    struct sts_cached *cached = sts_cache_get(q->g->sts, q->facts.domain, gate_now_ms());
    /* Without a valid record a cached, unexpired policy stays in force (section 5.1). */
    gate_use_policy(q, cached);
    if (txt == MTASTS_TXT_OK) {
        bool stale = cached == NULL || strcmp(cached->id, q->id) != 0 ||
                     gate_now_ms() > cached->fetched_ms + (uint64_t)cached->policy->max_age * 500;
        if (stale) {
            /* First sight: wait for it. A known domain: refresh behind the mail's back. */
            gate_fetch_policy(q->g, cached == NULL ? q : NULL, q->facts.domain, q->id, q->webpki,
                              q->fetch_timeout_ms, q->max_policy_size);
        }
    }
    gate_maybe_finish(q);
}

/* ---- the API ------------------------------------------------------------------------------ */

struct gate *gate_new(uv_loop_t *loop, const struct conf *conf, struct sts_cache *sts, char *err,
                      size_t err_len)
{
    struct gate *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    g->loop = loop;
    g->sts = sts;
    g->dns = dns_new(loop, conf->recipients.unbound_config, CONF_ROOT_TRUST_ANCHOR,
                     conf->recipients.dns_timeout_ms, err, err_len);
    if (g->dns == NULL) {
        free(g);
        return NULL;
    }
    return g;
}

/* gate_unref, at the start of a drain: the resolver no longer keeps the loop alive, nor do
 * the policy fetches, which hold a timer, a socket and maybe a connect request. Those
 * nobody waits for are stopped now, the others when their last waiter leaves. */
void gate_unref(struct gate *g)
{
    g->draining = true;
    dns_unref(g->dns);
    struct gate_fetch *fe = g->fetches;
    while (fe != NULL) {
        struct gate_fetch *next = fe->next;
        if (fe->waiters == NULL) {
            gate_fetch_cancel(fe);
        }
        fe = next;
    }
}

void gate_close(struct gate *g)
{
    while (g->fetches != NULL) {
        gate_fetch_cancel(g->fetches);
    }
    dns_close(g->dns);
}

void gate_free(struct gate *g)
{
    if (g != NULL) {
        dns_free(g->dns);
        free(g);
    }
}

struct gate_lookup *gate_lookup(struct gate *g, const struct conf *conf, struct tlsio_ctx *webpki,
                                const char *domain, const struct sockaddr *upstream,
                                gate_facts_fn *fn, void *arg)
{
    struct gate_lookup *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return NULL;
    }
    q->g = g;
    q->fn = fn;
    q->arg = arg;
    q->webpki = webpki;
    q->fetch_timeout_ms = conf->recipients.fetch_timeout_ms;
    q->max_policy_size = conf->recipients.max_policy_size;
    q->relay = conf->mode == CONF_MODE_FORWARD;
    addr_set(&q->upstream, upstream);
    snprintf(q->facts.domain, sizeof(q->facts.domain), "%s", domain);
    if (conf->recipients.dane) {
        q->mx_q = dns_resolve(g->dns, domain, DNS_TYPE_MX, gate_on_mx, q);
        if (q->mx_q == NULL) {
            q->dane_failed = true;
            gate_format(q->facts.dane_why, sizeof(q->facts.dane_why), "MX: cannot ask");
        }
        q->pending += q->mx_q != NULL;
    }
    if (conf->recipients.mta_sts && webpki != NULL) {
        char name[DNSNAME_BUF + 16];
        snprintf(name, sizeof(name), "_mta-sts.%s", domain);
        q->txt_q = dns_resolve(g->dns, name, DNS_TYPE_TXT, gate_on_txt, q);
        q->pending += q->txt_q != NULL;
        if (q->txt_q == NULL) {
            gate_use_policy(q, sts_cache_get(g->sts, domain, gate_now_ms()));
        }
    }
    if (q->pending == 0) {
        gate_decide_dane(q);
        q->done = true;
    }
    return q;
}

bool gate_lookup_done(const struct gate_lookup *q)
{
    return q->done;
}

const struct gate_facts *gate_lookup_facts(const struct gate_lookup *q)
{
    return &q->facts;
}

void gate_lookup_free(struct gate_lookup *q)
{
    if (q == NULL) {
        return;
    }
    dns_cancel(q->mx_q);
    dns_cancel(q->txt_q);
    for (size_t i = 0; i < q->n_hosts; i++) {
        struct gate_host *h = &q->hosts[i];
        dns_cancel(h->addr_q);
        dns_cancel(h->tlsa_q);
        for (size_t j = 0; j < h->n_tlsa; j++) {
            free(h->tlsa_rdata[j]);
        }
    }
    free(q->hosts);
    if (q->waiting_on != NULL) {
        struct gate_lookup **p = &q->waiting_on->waiters;
        while (*p != q) {
            p = &(*p)->next_waiter;
        }
        *p = q->next_waiter;
        if (q->g->draining && q->waiting_on->waiters == NULL) {
            gate_fetch_cancel(q->waiting_on);
        }
    }
    sts_cached_unref(q->sts);
    free(q);
}
