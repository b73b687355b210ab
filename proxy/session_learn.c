/*
 * session_learn: what a session learns and remembers about its peers, and asks of the
 * fleet's shared store ([store] redis):
 *
 *   - a client whose TLS handshake failed is not offered STARTTLS again for learn_ttl;
 *   - per upstream address, the leg-2 fallback step that worked is used directly for
 *     remember_failures.
 *
 * The process's own memories (learn.c) always decide when the store cannot: the store is
 * asked at the start of the session (the client, in parallel with the upstream's
 * connection and greeting) and when the upstream's greeting has decided the policy, and its answer
 * replaces what the local memory says. Only if an answer is still missing when it is needed (at the
 * client's first command) does the session wait, at most [store] timeout.
 */
#include <inttypes.h>
#include <string.h>

#include "ladder.h"
#include "runtime.h"
#include "learn.h"
#include "log.h"
#include "metrics.h"
#include "session_impl.h"
#include "store.h"

static uint64_t session_learn_clock_ms(void)
{
    return uv_hrtime() / 1000000;
}

static bool session_learn_matches(const struct conf_cidr *list, size_t n, const struct sockaddr *sa)
{
    for (size_t i = 0; i < n; i++) {
        if (conf_cidr_match(&list[i], sa)) {
            return true;
        }
    }
    return false;
}

/* ---- the client ------------------------------------------------------------------------- */

/* session_learn_offer decides whether the client is offered STARTTLS: not with strip, nor
 * to never_offer_to, nor to a client whose handshake failed (unless always_offer_to). */
static void session_learn_offer(struct session *s)
{
    const struct conf *c = s->conf;
    const struct sockaddr *sa = &s->front_sa.sa;
    if (c->front_tls.starttls == CONF_FRONT_STARTTLS_STRIP) {
        s->front_starttls = SESSION_STARTTLS_NOT_OFFERED;
        return;
    }
    bool hidden =
        session_learn_matches(c->front_tls.never_offer_to, c->front_tls.n_never_offer_to, sa);
    if (!hidden && c->front_tls.learn_failures &&
        learn_contains(s->env->front_learned, sa, session_learn_clock_ms())) {
        hidden = true;
        log_info(s->id, "front-tls-hidden", "client=%s reason=learned-failure", s->front_addr);
    }
    s->offer_starttls = !hidden;
    s->front_starttls = hidden ? SESSION_STARTTLS_HIDDEN : SESSION_STARTTLS_OFFERED;
}

/* session_learn_client_asks tells whether the learned state decides anything for this
 * client (else the store is not asked). */
static bool session_learn_client_asks(const struct session *s)
{
    const struct conf *c = s->conf;
    const struct sockaddr *sa = &s->front_sa.sa;
    return c->front_tls.starttls != CONF_FRONT_STARTTLS_STRIP && c->front_tls.learn_failures &&
           !session_learn_matches(c->front_tls.never_offer_to, c->front_tls.n_never_offer_to, sa) &&
           !session_learn_matches(c->front_tls.always_offer_to, c->front_tls.n_always_offer_to, sa);
}

void session_learn_start(struct session *s)
{
    if (s->env->store != NULL && session_learn_client_asks(s)) {
        s->client_lookup =
            store_get(s->env->store, STORE_CLIENT, &s->front_sa.sa, session_on_client_known, s);
        if (s->client_lookup != NULL) {
            return; /* decided when the store answers */
        }
    }
    session_learn_offer(s);
}

void session_learn_client_answer(struct session *s, enum store_answer answer)
{
    s->client_lookup = NULL;
    struct learn *learned = s->env->front_learned;
    const struct sockaddr *sa = &s->front_sa.sa;
    if (answer == STORE_FOUND) {
        /* Kept here too, for when the store is unreachable. */
        if (!learn_contains(learned, sa, session_learn_clock_ms())) {
            learn_add(learned, sa, session_learn_clock_ms());
        }
    } else if (answer == STORE_ABSENT) {
        /* Expired in the store, or cleared by an operator: the store is the authority. */
        learn_remove_addr(learned, sa);
    }
    session_learn_offer(s);
}

void session_learn_client_failed(struct session *s)
{
    const struct conf *c = s->conf;
    const struct sockaddr *sa = &s->front_sa.sa;
    if (!c->front_tls.learn_failures ||
        session_learn_matches(c->front_tls.always_offer_to, c->front_tls.n_always_offer_to, sa)) {
        return;
    }
    struct learn *learned = s->env->front_learned;
    if (learn_add(learned, sa, session_learn_clock_ms())) {
        metrics_inc(METRICS_FRONT_LEARNED);
        log_info(s->id, "front-tls-learned", "client=%s ttl_ms=%" PRIu64 " entries=%zu",
                 s->front_addr, c->front_tls.learn_ttl_ms, learn_count(learned));
    }
    store_set(s->env->store, STORE_CLIENT, sa, "1", c->front_tls.learn_ttl_ms);
}

/* ---- the upstream ----------------------------------------------------------------------- */

/* session_learn_upstream_greeted asks the store about the upstream once its greeting
 * decided the policy: only a fallback under policy may uses a remembered step. */
void session_learn_upstream_greeted(struct session *s)
{
    if (s->env->store == NULL || s->upstream_asked || !s->conf->back_tls.fallback ||
        s->back_policy != CONF_BACK_STARTTLS_MAY || s->runtime->back_ctx == NULL) {
        return;
    }
    s->upstream_asked = true;
    s->upstream_lookup =
        store_get(s->env->store, STORE_UPSTREAM, &s->back_sa.sa, session_on_upstream_known, s);
}

void session_learn_upstream_answer(struct session *s, enum store_answer answer, const char *value)
{
    s->upstream_lookup = NULL;
    struct learn *memory = s->env->back_memory;
    const struct sockaddr *sa = &s->back_sa.sa;
    uint8_t step = answer == STORE_FOUND ? ladder_value_of_name(value) : 0;
    if (step != 0) {
        uint8_t local = 0;
        if (!learn_get(memory, &local, sa, session_learn_clock_ms()) || local != step) {
            learn_add_value(memory, sa, session_learn_clock_ms(), step);
        }
    } else if (answer != STORE_UNANSWERED) {
        /* Absent (or a value this version does not know): probe from the top. */
        learn_remove_addr(memory, sa);
    }
}

uint8_t session_learn_upstream_step(struct session *s)
{
    uint8_t value = 0;
    if (!learn_get(s->env->back_memory, &value, &s->back_sa.sa, session_learn_clock_ms())) {
        return 0;
    }
    return value;
}

void session_learn_upstream_worked(struct session *s)
{
    /* Kept as its name says it, so that every instance reads the same step back. */
    uint8_t value = ladder_value_of_name(ladder_name(&s->attempt));
    struct learn *memory = s->env->back_memory;
    const struct sockaddr *sa = &s->back_sa.sa;
    if (value == 0) {
        if (s->remembered != 0) {
            learn_remove_addr(memory, sa);
            store_delete(s->env->store, STORE_UPSTREAM, sa);
        }
        return;
    }
    if (value == s->remembered) {
        return;
    }
    uint64_t ttl_ms = s->conf->back_tls.remember_failures_ms;
    if (learn_add_value(memory, sa, session_learn_clock_ms(), value)) {
        log_info(s->id, "back-tls-remembered", "upstream=%s step=%s reason=\"%s\" ttl_ms=%" PRIu64,
                 s->back_addr, ladder_name(&s->attempt), s->back_tls_reason, ttl_ms);
    }
    store_set(s->env->store, STORE_UPSTREAM, sa, ladder_name(&s->attempt), ttl_ms);
}

void session_learn_upstream_forget(struct session *s)
{
    if (learn_remove_addr(s->env->back_memory, &s->back_sa.sa)) {
        log_info(s->id, "back-tls-reprobe",
                 "upstream=%s reason=\"a recipient's policy requires TLS\"", s->back_addr);
    }
    store_delete(s->env->store, STORE_UPSTREAM, &s->back_sa.sa);
}

/* ---- waiting and ending ------------------------------------------------------------------ */

bool session_learn_waiting(const struct session *s)
{
    return s->client_lookup != NULL || s->upstream_lookup != NULL;
}

void session_learn_end(struct session *s)
{
    store_cancel(s->client_lookup);
    store_cancel(s->upstream_lookup);
    s->client_lookup = NULL;
    s->upstream_lookup = NULL;
}
