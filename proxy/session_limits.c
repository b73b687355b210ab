/*
 * session_limits: a session against the abuse limits (anvil.c): its client's place among
 * its sessions, its messages per window, and the reports when a limit is reached (one log
 * line per client, limit and window; at the global cap, one a second).
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>

#include "anvil.h"
#include "log.h"
#include "metrics.h"
#include "session_impl.h"

/* session_exempt tells whether |sa| is in [limits] exempt. */
bool session_exempt(const struct conf *c, const struct sockaddr *sa)
{
    for (size_t i = 0; i < c->limits.n_exempt; i++) {
        if (conf_cidr_match(&c->limits.exempt[i], sa)) {
            return true;
        }
    }
    return false;
}

/* session_count_limit counts a refusal over a per-client limit in the metrics, and logs it
 * once per client, limit and window, not once per refusal. */
static void session_count_limit(struct session *s, enum anvil_verdict verdict, bool first)
{
    static const enum metrics_counter metric[] = {
        [ANVIL_SESSIONS] = METRICS_LIMIT_SESSIONS,
        [ANVIL_SESSION_RATE] = METRICS_LIMIT_SESSION_RATE,
        [ANVIL_MESSAGE_RATE] = METRICS_LIMIT_MESSAGE_RATE,
    };
    const struct conf *c = s->conf;
    metrics_inc(metric[verdict]);
    if (first) {
        unsigned max = verdict == ANVIL_SESSIONS       ? c->limits.sessions
                       : verdict == ANVIL_SESSION_RATE ? c->limits.session_rate
                                                       : c->limits.message_rate;
        log_warn(s->id, "limit-reached", "client=%s limit=%s max=%u window_ms=%" PRIu64,
                 s->front_addr, anvil_name(verdict), max, c->limits.window_ms);
    }
}

bool session_over_message_rate(struct session *s)
{
    if (s->limits_exempt || s->conf->limits.message_rate == 0) {
        return false;
    }
    bool first = false;
    enum anvil_verdict verdict =
        anvil_message(s->env->anvil, &first, &s->front_sa.sa, uv_hrtime() / 1000000);
    if (verdict == ANVIL_OK) {
        return false;
    }
    session_count_limit(s, verdict, first);
    return true;
}

/* session_within_limits takes the client's place among its sessions, or ends the session
 * with a 421 that says which limit it is over, before anything is asked of the upstream. */
bool session_within_limits(struct session *s)
{
    const struct conf *c = s->conf;
    s->limits_exempt = session_exempt(c, &s->front_sa.sa);
    if (s->limits_exempt) {
        return true;
    }
    bool first = false;
    enum anvil_verdict verdict =
        anvil_open(s->env->anvil, &s->anvil_place, &first, &s->front_sa.sa, uv_hrtime() / 1000000);
    if (verdict == ANVIL_OK) {
        return true;
    }
    session_count_limit(s, verdict, first);
    char text[160];
    if (verdict == ANVIL_SESSIONS) {
        snprintf(text, sizeof(text),
                 "Too many connections from your address (limit sessions: %u at once), "
                 "try again later",
                 c->limits.sessions);
    } else {
        snprintf(text, sizeof(text),
                 "Too many new connections from your address (limit session-rate: %u per "
                 "%" PRIu64 " s), try again later",
                 c->limits.session_rate, c->limits.window_ms / 1000);
    }
    session_finish(s, REASON_END_LIMIT, "421 4.7.0", text);
    return false;
}

/* session_log_cap_reached reports refusals at max_connections: at most one line a second
 * for the whole process, saying how many were refused since the last line. */
void session_log_cap_reached(const struct session *s)
{
    static _Atomic uint64_t last_logged_ms;
    static _Atomic uint64_t refused_since;
    uint64_t now_ms = uv_hrtime() / 1000000;
    uint64_t refused = atomic_fetch_add(&refused_since, 1) + 1;
    uint64_t last = atomic_load(&last_logged_ms);
    if ((last != 0 && now_ms - last < 1000) ||
        !atomic_compare_exchange_strong(&last_logged_ms, &last, now_ms)) {
        return;
    }
    atomic_fetch_sub(&refused_since, refused);
    log_warn(s->id, "too-many-connections", "client=%s max=%u refused=%" PRIu64, s->front_addr,
             s->conf->max_connections, refused);
}
