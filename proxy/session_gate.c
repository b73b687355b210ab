/*
 * session_gate: the downgrade gate in a session. Leg 2's TLS was settled at EHLO, before
 * any recipient was known; each RCPT's domain is judged against the leg actually
 * established (gate_judge.c), with the facts the lookups gathered (gate.c). A recipient
 * whose policy that leg does not satisfy gets a temporary refusal naming the policy, and
 * its RCPT never reaches the upstream: nothing is ever sent in clear, or to an
 * unauthenticated server, for a domain that forbids it. Other recipients are unaffected.
 *
 * While a RCPT waits for its domain's lookups, the client's later commands wait in the
 * input buffer (the session's pump holds them), so replies stay in order. REQUIRETLS
 * (RFC 8689) is advertised only when both legs can honour it; a MAIL that asks for it
 * makes every recipient need an authenticated server.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gate.h"
#include "log.h"
#include "metrics.h"
#include "runtime.h"
#include "session_impl.h"
#include "tlsio.h"
#include "tlsrpt.h"

#define SESSION_GATE_DOMAINS 16 /* domains remembered per session */
#define SESSION_GATE_CHAIN_MAX 16
#define SESSION_GATE_NAMES_MAX 32
#define SESSION_GATE_TLSRPT_STRINGS 24 /* policy strings reported (version, mode, mx, ...) */

struct session_gate_domain {
    char name[DNSNAME_BUF];
    struct gate_lookup *q;
    bool in_transaction; /* a recipient of the current transaction is in it */
    bool reported;       /* counted for TLS-RPT in this session */
};

/* A session's gate state, allocated at its first RCPT under the gate. */
struct session_gate {
    struct session_gate_domain domains[SESSION_GATE_DOMAINS];
    size_t n_domains;
    size_t next_evict;
    struct session_gate_domain *waiting; /* the domain the held RCPT waits for */
    struct buf held;                     /* that RCPT line */
    /* Leg 2 as the gate sees it, computed once per negotiated connection. */
    unsigned leg_generation;
    bool leg_ready;
    struct gate_leg leg;
    const uint8_t *chain[SESSION_GATE_CHAIN_MAX];
    size_t chain_lens[SESSION_GATE_CHAIN_MAX];
    char names[SESSION_GATE_NAMES_MAX][TLSIO_DNS_NAME_MAX];
    const char *name_ptrs[SESSION_GATE_NAMES_MAX];
    size_t name_lens[SESSION_GATE_NAMES_MAX];
};

/* ---- when the gate applies --------------------------------------------------------------- */

bool session_gate_on(const struct session *s)
{
    return s->conf->recipients.enabled && s->env->gate != NULL;
}

bool session_gate_waiting(const struct session *s)
{
    return s->gate != NULL && s->gate->waiting != NULL;
}

static struct session_gate *session_gate_state(struct session *s)
{
    if (s->gate == NULL) {
        s->gate = calloc(1, sizeof(*s->gate));
    }
    return s->gate;
}

/* ---- leg 2 -------------------------------------------------------------------------------- */

/* session_gate_names_cover says whether a certificate name covers the relay's name. */
static bool session_gate_names_cover(const struct gate_leg *leg, const char *host)
{
    char want[DNSNAME_BUF];
    char name[DNSNAME_BUF];
    if (dnsname_parse(want, NULL, host, strlen(host), DNSNAME_ALLOW_TRAILING_DOT) != DNSNAME_HOST) {
        return false; /* an address: only verify = ca can authenticate it */
    }
    for (size_t i = 0; i < leg->n_names; i++) {
        if (dnsname_parse(name, NULL, leg->names[i], leg->name_lens[i],
                          DNSNAME_ALLOW_WILDCARD | DNSNAME_CERT_WILDCARD) != DNSNAME_INVALID &&
            dnsname_covers(name, want)) {
            return true;
        }
    }
    return false;
}

static const struct gate_leg *session_gate_leg(struct session *s)
{
    struct session_gate *sg = s->gate;
    if (sg->leg_ready && sg->leg_generation == s->back_generation) {
        return &sg->leg;
    }
    struct gate_leg *leg = &sg->leg;
    memset(leg, 0, sizeof(*leg));
    leg->tls = s->back.tls_active;
    leg->now = (int64_t)time(NULL);
    leg->cleartext_reason = s->back_tls_reason[0] != '\0' ? s->back_tls_reason : "no TLS";
    const char *verify_text = NULL;
    leg->verified_ca = s->back.tls_active && s->conf->back_tls.verify == CONF_VERIFY_CA &&
                       tlsio_verify_result(&s->back.tls, &verify_text) == TLSIO_VERIFY_OK;
    leg->relay = s->conf->mode == CONF_MODE_FORWARD;
    if (leg->tls) {
        leg->protocol = tlsio_protocol(&s->back.tls);
        leg->n_chain =
            tlsio_peer_chain(&s->back.tls, sg->chain, sg->chain_lens, SESSION_GATE_CHAIN_MAX);
        leg->chain = sg->chain;
        leg->chain_lens = sg->chain_lens;
        if (s->runtime->webpki_ctx != NULL) {
            leg->webpki_ok =
                tlsio_peer_webpki(&s->back.tls, s->runtime->webpki_ctx, &leg->webpki_why);
        } else {
            leg->webpki_why = "no WebPKI roots (mta_sts = off)";
        }
        leg->n_names = tlsio_peer_dns_names(&s->back.tls, sg->names, SESSION_GATE_NAMES_MAX);
        for (size_t i = 0; i < leg->n_names; i++) {
            sg->name_ptrs[i] = sg->names[i];
            sg->name_lens[i] = strlen(sg->names[i]);
        }
        leg->names = sg->name_ptrs;
        leg->name_lens = sg->name_lens;
        leg->relay_authenticated =
            leg->verified_ca ||
            (leg->webpki_ok && session_gate_names_cover(leg, s->conf->upstream.host));
    }
    sg->leg_ready = true;
    sg->leg_generation = s->back_generation;
    return leg;
}

/* ---- recipients --------------------------------------------------------------------------- */

/* The refusal a client sees: one text per kind, naming the policy; the log says more. */
static enum session_local_reply session_gate_reply(const struct gate_verdict *v)
{
    const char *type = v->result_type != NULL ? v->result_type : "";
    switch (v->policy) {
    case GATE_POLICY_REQUIRETLS:
        return v->reply[0] == '5' ? SESSION_LOCAL_GATE_REQUIRETLS_PERM
                                  : SESSION_LOCAL_GATE_REQUIRETLS_TEMP;
    case GATE_POLICY_DANE:
        if (strcmp(type, "dane-required") == 0) {
            return SESSION_LOCAL_GATE_DANE_NOT_MX;
        }
        if (strcmp(v->reply, "450 4.4.3") == 0) {
            return SESSION_LOCAL_GATE_DNS_FAILED;
        }
        if (strcmp(type, "dnssec-invalid") == 0) {
            return SESSION_LOCAL_GATE_DNSSEC;
        }
        return strcmp(type, "starttls-not-supported") == 0 ? SESSION_LOCAL_GATE_DANE_TLS
                                                           : SESSION_LOCAL_GATE_DANE_CERT;
    case GATE_POLICY_STS:
    case GATE_POLICY_NONE:
        break;
    }
    return strcmp(type, "starttls-not-supported") == 0 ? SESSION_LOCAL_GATE_STS_TLS
                                                       : SESSION_LOCAL_GATE_STS_CERT;
}

/* session_gate_domain_of finds the domain of a RCPT path the way the upstream would route
 * it, or says it cannot (dnsname_path_domain()): a Postfix behind the proxy reads the
 * percent hack, bang paths, an '@' in a quoted local part, comments and spaces, and would
 * deliver to a domain other than the one the gate judged. */
static enum dnsname_path session_gate_domain_of(char out[DNSNAME_BUF],
                                                const struct smtp_command *cmd)
{
    return dnsname_path_domain(out, cmd->path, cmd->path_len);
}

/* session_gate_refuse_address refuses a RCPT whose domain the gate cannot tell: failing
 * closed, as nothing says its mail may go over this leg. */
static void session_gate_refuse_address(struct session *s, const struct smtp_command *cmd)
{
    char path[80];
    log_warn(s->id, "gate-refused-address", "path=\"%s\" upstream=%s back_tls=%s",
             log_escape(path, sizeof(path), cmd->path, cmd->path_len, 60), s->back_addr,
             s->back.tls_active ? "yes" : "no");
    s->rcpts_refused++;
    session_front_reply(s, SESSION_LOCAL_GATE_ADDRESS);
}

static struct session_gate_domain *session_gate_find(struct session_gate *sg, const char *name)
{
    for (size_t i = 0; i < sg->n_domains; i++) {
        if (strcmp(sg->domains[i].name, name) == 0) {
            return &sg->domains[i];
        }
    }
    return NULL;
}

/* session_gate_slot gives a slot for a new domain: a free one, or the oldest one that is
 * neither in the transaction nor waited for. NULL when all are. */
static struct session_gate_domain *session_gate_slot(struct session_gate *sg)
{
    if (sg->n_domains < SESSION_GATE_DOMAINS) {
        return &sg->domains[sg->n_domains++];
    }
    for (size_t tries = 0; tries < SESSION_GATE_DOMAINS; tries++) {
        struct session_gate_domain *d = &sg->domains[sg->next_evict];
        sg->next_evict = (sg->next_evict + 1) % SESSION_GATE_DOMAINS;
        if (!d->in_transaction && d != sg->waiting) {
            gate_lookup_free(d->q);
            memset(d, 0, sizeof(*d));
            return d;
        }
    }
    return NULL;
}

/* session_gate_string adds one policy string (heap, freed by the caller). */
static void session_gate_string(char **strings, size_t *n, const char *prefix, const char *text)
{
    size_t len = strlen(prefix) + strlen(text) + 1;
    char *out = malloc(len);
    if (out != NULL) {
        snprintf(out, len, "%s%s", prefix, text);
        strings[(*n)++] = out;
    }
}

/* session_gate_tlsrpt_policy describes the policy that judged |f| for TLS-RPT (RFC 8460
 * section 4.4): the STS policy's lines, or the TLSA records; else no-policy-found. The
 * strings are allocated into |strings|: free the first p->n_policy_strings. */
static void session_gate_tlsrpt_policy(struct tlsrpt_policy *p, char **strings,
                                       const struct gate_facts *f, const struct gate_verdict *v)
{
    size_t n = 0;
    p->policy_domain = f->domain;
    p->policy_strings = (const char *const *)strings;
    p->mx_hosts = NULL;
    p->n_mx_hosts = 0;
    if (v->policy == GATE_POLICY_DANE && f->dane == GATE_DANE_TLSA) {
        p->type = TLSRPT_POLICY_TLSA;
        for (size_t i = 0; i < f->n_tlsa && n < SESSION_GATE_TLSRPT_STRINGS; i++) {
            const struct dane_tlsa *r = &f->tlsa[i];
            size_t cap = 13 + 2 * r->data_len; /* a Full(0) record holds a whole certificate */
            char *out = malloc(cap);
            if (out != NULL && tlsrpt_tlsa_string(out, cap, r->usage, r->selector, r->mtype,
                                                  r->data, r->data_len)) {
                strings[n++] = out;
            } else {
                free(out);
            }
        }
    } else if (f->sts != NULL && v->policy == GATE_POLICY_STS) {
        p->type = TLSRPT_POLICY_STS;
        char age[16];
        snprintf(age, sizeof(age), "%u", f->sts->max_age);
        session_gate_string(strings, &n, "version: ", "STSv1");
        session_gate_string(strings, &n, "mode: ", mtasts_mode_name(f->sts->mode));
        for (size_t i = 0; i < f->sts->n_mx && n + 1 < SESSION_GATE_TLSRPT_STRINGS; i++) {
            session_gate_string(strings, &n, "mx: ", f->sts->mx[i]);
        }
        session_gate_string(strings, &n, "max_age: ", age);
        p->mx_hosts = f->sts->mx;
        p->n_mx_hosts = f->sts->n_mx;
    } else {
        p->type = TLSRPT_POLICY_NO_POLICY_FOUND;
    }
    p->n_policy_strings = n;
}

static void session_gate_tlsrpt_count(struct session *s, const struct gate_facts *f,
                                      const struct gate_verdict *v, const struct tlsrpt_policy *p,
                                      bool failed);

/* session_gate_tlsrpt counts this session for the domain's TLS-RPT report, once: every
 * session judged under a policy (and the failures to find one: DNSSEC, the fetch). */
static void session_gate_tlsrpt(struct session *s, struct session_gate_domain *d,
                                const struct gate_verdict *v)
{
    const struct gate_facts *f = gate_lookup_facts(d->q);
    bool policy = v->policy == GATE_POLICY_DANE || (f->sts != NULL && v->policy == GATE_POLICY_STS);
    bool failed = !v->pass || v->report_failure;
    if (s->env->tlsrpt == NULL || d->reported) {
        return;
    }
    /* Sessions under a policy, and failures to find one (a result type but no policy). */
    if (!policy && !(failed && v->result_type != NULL)) {
        return;
    }
    d->reported = true;
    if (failed) {
        enum metrics_counter counter = metrics_tls_failure(v->result_type);
        if (counter != METRICS_N_COUNTERS) {
            metrics_inc(counter);
        }
    }
    char *strings[SESSION_GATE_TLSRPT_STRINGS];
    struct tlsrpt_policy p;
    session_gate_tlsrpt_policy(&p, strings, f, v);
    if (p.type == TLSRPT_POLICY_NO_POLICY_FOUND || p.n_policy_strings > 0) {
        session_gate_tlsrpt_count(s, f, v, &p, failed);
    }
    for (size_t i = 0; i < p.n_policy_strings; i++) {
        free(strings[i]);
    }
}

/* session_gate_tlsrpt_count records the session under |p|. */
static void session_gate_tlsrpt_count(struct session *s, const struct gate_facts *f,
                                      const struct gate_verdict *v, const struct tlsrpt_policy *p,
                                      bool failed)
{
    int64_t now = (int64_t)time(NULL);
    if (!failed) {
        tlsrpt_success(s->env->tlsrpt, p, now);
        return;
    }
    char sending[INET6_ADDRSTRLEN] = "0.0.0.0"; /* if the address cannot be read */
    char receiving[INET6_ADDRSTRLEN] = "";
    struct sockaddr_storage local;
    int local_len = sizeof(local);
    if (uv_tcp_getsockname(&s->back.tcp, (struct sockaddr *)&local, &local_len) == 0) {
        addr_format_host(sending, sizeof(sending), (struct sockaddr *)&local);
    }
    addr_format_host(receiving, sizeof(receiving), &s->back_sa.sa);
    struct tlsrpt_failure fail = {
        .result_type = v->result_type,
        .sending_mta_ip = sending,
        .receiving_ip = receiving,
        .receiving_mx_hostname = f->dane == GATE_DANE_TLSA ? f->mx_host : NULL,
        .failure_reason_code = v->why,
    };
    tlsrpt_failure(s->env->tlsrpt, p, &fail, now);
}

/* session_gate_decide judges a RCPT whose domain's facts are in, and forwards it or
 * refuses it. */
static void session_gate_decide(struct session *s, struct session_gate_domain *d, const char *line,
                                size_t len)
{
    struct gate_verdict v;
    gate_judge(&v, gate_lookup_facts(d->q), session_gate_leg(s), s->requiretls);
    session_gate_tlsrpt(s, d, &v);
    if (v.pass) {
        metrics_inc(v.report_failure ? METRICS_GATE_TESTING_FAILURES : METRICS_GATE_PASSED);
        if (v.report_failure) {
            log_warn(s->id, "gate-testing-failure",
                     "domain=%s policy=%s mode=%s result=%s upstream=%s reason=\"%s\"", d->name,
                     gate_policy_name(v.policy), v.mode, v.result_type, s->back_addr, v.why);
        } else {
            log_debug(s->id, "gate-passed", "domain=%s policy=%s mode=%s authenticated=%s", d->name,
                      gate_policy_name(v.policy), v.mode, v.authenticated ? "yes" : "no");
        }
        d->in_transaction = true;
        session_front_forward(s, line, len, SESSION_PENDING_OTHER);
        session_replay_note(s, SMTP_VERB_RCPT, line, len);
        s->rcpts_forwarded++;
        return;
    }
    metrics_inc(v.policy == GATE_POLICY_DANE  ? METRICS_GATE_REFUSED_DANE
                : v.policy == GATE_POLICY_STS ? METRICS_GATE_REFUSED_STS
                                              : METRICS_GATE_REFUSED_REQUIRETLS);
    log_warn(s->id, "gate-refused",
             "domain=%s policy=%s mode=%s result=%s reply=\"%s\" upstream=%s back_tls=%s "
             "reason=\"%s\"",
             d->name, gate_policy_name(v.policy), v.mode, v.result_type, v.reply, s->back_addr,
             s->back.tls_active ? "yes" : "no", v.why);
    /* A remembered cleartext step must not make a TLS-requiring domain wait a whole
     * remember_failures: the next session probes TLS again. */
    if (!s->back.tls_active) {
        session_learn_upstream_forget(s); /* remembered, or learnt by this very session */
    }
    s->rcpts_refused++;
    session_front_reply(s, session_gate_reply(&v));
}

void session_gate_rcpt(struct session *s, const struct smtp_command *cmd, const char *line,
                       size_t len)
{
    char domain[DNSNAME_BUF];
    struct session_gate *sg = session_gate_state(s);
    if (sg == NULL) {
        session_abort(s, REASON_END_OUT_OF_MEMORY);
        return;
    }
    switch (session_gate_domain_of(domain, cmd)) {
    case DNSNAME_PATH_DOMAIN:
        break;
    case DNSNAME_PATH_UNCLEAR:
        session_gate_refuse_address(s, cmd);
        return;
    case DNSNAME_PATH_NON_ASCII:
        /* Its policy lives under the A-label, which the proxy cannot compute. */
        s->rcpts_refused++;
        session_front_reply(s, SESSION_LOCAL_GATE_IDN);
        return;
    case DNSNAME_PATH_LOCAL:
    case DNSNAME_PATH_LITERAL:
        if (s->requiretls) {
            s->rcpts_refused++;
            session_front_reply(s, SESSION_LOCAL_GATE_REQUIRETLS_PERM);
            return;
        }
        /* No domain whose policy could apply (an address literal, "<postmaster>"). */
        session_front_forward(s, line, len, SESSION_PENDING_OTHER);
        session_replay_note(s, SMTP_VERB_RCPT, line, len);
        s->rcpts_forwarded++;
        return;
    }
    struct session_gate_domain *d = session_gate_find(sg, domain);
    if (d == NULL) {
        d = session_gate_slot(sg);
        if (d == NULL) {
            s->rcpts_refused++;
            session_front_reply(s, SESSION_LOCAL_GATE_DNS_FAILED);
            return;
        }
        memcpy(d->name, domain, sizeof(d->name));
        d->q = gate_lookup(s->env->gate, s->conf, s->runtime->webpki_ctx, domain, &s->back_sa.sa,
                           session_on_gate_facts, s);
        if (d->q == NULL) {
            memset(d, 0, sizeof(*d));
            s->rcpts_refused++;
            session_front_reply(s, SESSION_LOCAL_GATE_DNS_FAILED);
            return;
        }
    }
    if (gate_lookup_done(d->q)) {
        session_gate_decide(s, d, line, len);
        return;
    }
    /* Hold the RCPT (and everything after it) until the facts are in. */
    if (buf_append(&sg->held, line, len, s->conf->max_line_len) != 0) {
        session_abort(s, REASON_END_OUT_OF_MEMORY);
        return;
    }
    sg->waiting = d;
}

bool session_gate_facts_in(const struct session *s)
{
    return session_gate_waiting(s) && gate_lookup_done(s->gate->waiting->q);
}

bool session_gate_facts_ready(struct session *s)
{
    /* Judged against the connection the RCPT will go to, and written only once it is
     * negotiated: not while leg 2 is being replaced (a replay or a reopen after a break),
     * when the gate would judge the old connection and the line would reach the new one
     * before its greeting, identity and STARTTLS. */
    if (!session_gate_facts_in(s) || s->state != SESSION_RELAY ||
        s->back_state != SESSION_BACK_READY) {
        return false;
    }
    struct session_gate *sg = s->gate;
    struct session_gate_domain *d = sg->waiting;
    sg->waiting = NULL;
    s->steps++;
    session_gate_decide(s, d, buf_head(&sg->held), buf_len(&sg->held));
    buf_cleanup(&sg->held);
    return true;
}

void session_gate_timeout(struct session *s)
{
    struct session_gate *sg = s->gate;
    if (sg == NULL || sg->waiting == NULL) {
        return;
    }
    log_warn(s->id, "gate-timeout", "domain=%s wait_ms=%" PRIu64, sg->waiting->name,
             s->conf->recipients.wait_ms);
    s->rcpts_refused++;
    /* Its lookups may still finish: a later RCPT of the domain can use them. */
    sg->waiting = NULL;
    buf_cleanup(&sg->held);
    s->steps++;
    session_front_reply(s, SESSION_LOCAL_GATE_TIMEOUT);
}

/* ---- transactions, REQUIRETLS and new connections ----------------------------------------- */

/* session_gate_param finds an ESMTP parameter (keyword, any case) after a MAIL's path. */
static bool session_gate_param(const struct smtp_command *cmd, const char *keyword)
{
    const char *p = cmd->path + cmd->path_len;
    const char *end = cmd->args + cmd->args_len;
    size_t klen = strlen(keyword);
    while (p < end) {
        while (p < end && smtp_is_space(*p)) {
            p++;
        }
        const char *word = p;
        while (p < end && !smtp_is_space(*p)) {
            p++;
        }
        size_t wlen = (size_t)(p - word);
        const char *eq = memchr(word, '=', wlen);
        size_t name_len = eq != NULL ? (size_t)(eq - word) : wlen;
        if (name_len == klen && strncasecmp(word, keyword, klen) == 0) {
            return true;
        }
    }
    return false;
}

bool session_gate_offers_requiretls(const struct session *s)
{
    /* RFC 8689 section 4: both legs TLS, the upstream offering it, and leg 2's server
     * certificate verified (against the configured CA, or valid under the WebPKI roots:
     * each recipient's DANE or MTA-STS policy still has to authenticate it). */
    if (!session_gate_on(s) || !s->conf->recipients.requiretls || !s->front.tls_active ||
        !s->back.tls_active || (s->back_caps & SMTP_CAP_REQUIRETLS) == 0) {
        return false;
    }
    const char *why = NULL;
    bool verified_ca = s->conf->back_tls.verify == CONF_VERIFY_CA &&
                       tlsio_verify_result(&s->back.tls, &why) == TLSIO_VERIFY_OK;
    return verified_ca || (s->runtime->webpki_ctx != NULL &&
                           tlsio_peer_webpki(&s->back.tls, s->runtime->webpki_ctx, &why));
}

bool session_gate_mail(struct session *s, const struct smtp_command *cmd)
{
    s->requiretls = false;
    if (s->gate != NULL) {
        for (size_t i = 0; i < s->gate->n_domains; i++) {
            s->gate->domains[i].in_transaction = false;
        }
    }
    if (!session_gate_param(cmd, "REQUIRETLS")) {
        return true;
    }
    if (!s->offered_requiretls) {
        /* Not advertised (a cleartext leg, or an upstream that cannot honour it). */
        session_front_reply(s, SESSION_LOCAL_REQUIRETLS_UNAVAILABLE);
        return false;
    }
    s->requiretls = true;
    return true;
}

bool session_gate_leg_still_good(struct session *s)
{
    struct session_gate *sg = s->gate;
    if (sg == NULL) {
        return true;
    }
    for (size_t i = 0; i < sg->n_domains; i++) {
        struct session_gate_domain *d = &sg->domains[i];
        if (!d->in_transaction || d->q == NULL || !gate_lookup_done(d->q)) {
            continue;
        }
        struct gate_verdict v;
        gate_judge(&v, gate_lookup_facts(d->q), session_gate_leg(s), s->requiretls);
        if (!v.pass) {
            log_warn(s->id, "gate-refused-replay",
                     "domain=%s policy=%s result=%s upstream=%s reason=\"%s\"", d->name,
                     gate_policy_name(v.policy), v.result_type, s->back_addr, v.why);
            return false;
        }
    }
    return true;
}

void session_gate_end(struct session *s)
{
    struct session_gate *sg = s->gate;
    if (sg == NULL) {
        return;
    }
    for (size_t i = 0; i < sg->n_domains; i++) {
        gate_lookup_free(sg->domains[i].q);
    }
    buf_cleanup(&sg->held);
    free(sg);
    s->gate = NULL;
}
