/*
 * session_back: leg 2, the upstream. Resolve and connect, the client's identity (PROXY
 * header, spoofed source, XCLIENT), the greeting, and the negotiation: EHLO, XCLIENT,
 * STARTTLS, the handshake and the EHLO inside TLS, with the fallback ladder on fresh
 * connections and the memory of the step that worked.
 *
 * One enum (session_back_state), one function that enters a state and performs its entry
 * action (session_back_enter), one that decides what a complete reply means in the state
 * it arrived in (session_back_reply), the way OpenSMTPD's mta_session.c does. Every
 * connection, whichever path opens it (first try, fallback step, replay, reopen after a
 * rejected message), goes through the same states: nothing of the client goes up before
 * its identity and leg 2's TLS are settled.
 */
#include "session_impl.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>

#include "learn.h"
#include "log.h"
#include "metrics.h"
#include "proxyproto.h"
#include "runtime.h"

const char *session_back_state_name(enum session_back_state state)
{
    switch (state) {
    case SESSION_BACK_IDLE:
        return "idle";
    case SESSION_BACK_RESOLVING:
        return "resolving";
    case SESSION_BACK_CONNECTING:
        return "connecting";
    case SESSION_BACK_GREETING:
        return "greeting";
    case SESSION_BACK_GREETED:
        return "greeted";
    case SESSION_BACK_PROBE:
        return "probe";
    case SESSION_BACK_XCLIENT:
        return "xclient";
    case SESSION_BACK_STARTTLS:
        return "starttls";
    case SESSION_BACK_HANDSHAKE:
        return "handshake";
    case SESSION_BACK_HELLO:
        return "hello";
    case SESSION_BACK_RECONNECTING:
        return "reconnecting";
    case SESSION_BACK_READY:
        return "ready";
    case SESSION_BACK_REPLAY:
        return "replay";
    case SESSION_BACK_GONE:
        return "gone";
    }
    return "?";
}

/* ---- what this connection tries ----------------------------------------------------------- */

static struct ladder_config session_back_ladder_config(const struct session *s)
{
    const struct conf *c = s->conf;
    return (struct ladder_config){
        .steps = c->back_tls.fallback_steps,
        .n_steps = c->back_tls.n_fallback_steps,
        .fallback = c->back_tls.fallback && s->back_policy == CONF_BACK_STARTTLS_MAY,
        .has_client_cert = c->back_tls.certificate != NULL,
    };
}

/* session_back_wants_tls tells whether this connection tries STARTTLS. */
static bool session_back_wants_tls(const struct session *s)
{
    return s->back_policy != CONF_BACK_STARTTLS_OFF && s->runtime->back_ctx != NULL &&
           !s->attempt.cleartext;
}

/*
 * session_back_choose_attempt picks the first attempt of the session: TLS as configured,
 * or, with policy may and fallback on, the step remembered as working for this upstream
 * (the better steps are tried again once the memory expires).
 */
static void session_back_choose_attempt(struct session *s)
{
    ladder_start(&s->attempt);
    if (s->back_policy == CONF_BACK_STARTTLS_OFF || s->runtime->back_ctx == NULL) {
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "policy-off");
        return;
    }
    struct ladder_config cfg = session_back_ladder_config(s);
    uint8_t value = cfg.fallback ? session_learn_upstream_step(s) : 0;
    if (value == 0) {
        return;
    }
    s->remembered = value;
    if (!ladder_decode(&s->attempt, &cfg, value)) {
        ladder_start(&s->attempt); /* from another configuration: probe from the top */
        return;
    }
    metrics_inc(METRICS_BACK_REMEMBERED_SKIPS);
    if (s->attempt.cleartext) {
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "remembered");
    }
    log_debug(s->id, "back-tls-remembered-step", "upstream=%s step=%s", s->back_addr,
              ladder_name(&s->attempt));
}

/*
 * session_back_remember keeps, per upstream address, the attempt that just worked, when it
 * is not the first one and was not itself taken from the memory (so that the entry expires
 * and the better steps are probed again). A first attempt that works forgets a stale entry.
 */
static void session_back_remember(struct session *s)
{
    /* After a connection broke mid-session, the attempt was chosen for the replay, not
     * learnt from a negotiation: a client may have made the upstream close. */
    if (s->back_policy != CONF_BACK_STARTTLS_MAY || !s->conf->back_tls.fallback ||
        s->runtime->back_ctx == NULL || s->replayed) {
        return;
    }
    session_learn_upstream_worked(s);
}

/* ---- failures ------------------------------------------------------------------------------- */

/* session_back_fail_tls ends the session when leg 2 cannot be negotiated as required: with
 * require, with fallback = off, or with no step left. Nothing goes in cleartext. */
static void session_back_fail_tls(struct session *s, const char *reason)
{
    bool required = s->back_policy == CONF_BACK_STARTTLS_REQUIRE;
    if (required) {
        metrics_inc(METRICS_BACK_REQUIRE_FAILURES);
    }
    log_warn(s->id, required ? "back-tls-required-failed" : "back-tls-no-fallback",
             "upstream=%s reason=\"%s\"", s->back_addr, reason);
    session_finish(s, REASON_END_UPSTREAM_TLS_FAILED, "421 4.7.0",
                   "TLS to the upstream failed, try again later");
}

/*
 * session_back_negotiation_failed handles a failed STARTTLS negotiation on this connection
 * (only ever the upstream's doing: its reply, its handshake, its EHLO inside TLS): the
 * connection is finished and the next step of the ladder is tried on a new one, or the
 * session fails.
 */
static void session_back_negotiation_failed(struct session *s, enum ladder_failure kind,
                                            enum reason_back_tls cls, const char *reason)
{
    struct ladder_config cfg = session_back_ladder_config(s);
    metrics_inc(metrics_back_fallback(cls));
    snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "%s", reason);
    bool next = ladder_next(&s->attempt, &cfg, kind);
    char action[48] = "fail";
    if (next) {
        snprintf(action, sizeof(action), "%s%s", s->attempt.cleartext ? "reconnect-" : "retry-",
                 ladder_name(&s->attempt));
    }
    log_warn(s->id, "back-tls-failed", "upstream=%s reason=\"%s\" action=%s", s->back_addr, reason,
             action);
    if (!next) {
        session_back_fail_tls(s, reason);
        return;
    }
    if (s->back_purpose == SESSION_BACK_FIRST) {
        s->back_purpose = SESSION_BACK_RETRY;
    }
    session_back_enter(s, SESSION_BACK_RECONNECTING);
}

/* session_back_identity_failed: the client's identity cannot be conveyed on this
 * connection; not one of its commands may go up under the proxy's own identity. */
void session_back_identity_failed(struct session *s, const char *why, int code)
{
    log_warn(s->id, "identity-refused", "upstream=%s client=%s reason=%s code=%d", s->back_addr,
             s->front_addr, why, code);
    session_finish(s, REASON_END_UPSTREAM_IDENTITY_REFUSED, "421 4.7.0",
                   "Upstream refused the client's identity, try again later");
}

/* session_back_alert_reason turns "received alert: handshake failure" into the alert's name
 * as TLS-RPT reports and the logs show it: "tls-alert:handshake_failure". */
static void session_back_alert_reason(char *out, size_t out_size, const char *text)
{
    static const char prefix[] = "received alert: ";
    if (strncmp(text, prefix, sizeof(prefix) - 1) == 0) {
        text += sizeof(prefix) - 1;
    }
    int n = snprintf(out, out_size, "tls-alert:%s", text);
    for (size_t i = 10; n > 0 && i < (size_t)n && i < out_size; i++) {
        if (out[i] == ' ') {
            out[i] = '_';
        }
    }
}

/* session_back_tls_failure names a failed handshake, RFC 8460 style where one fits, and
 * returns its class. */
static enum reason_back_tls session_back_tls_failure(struct session *s, char *out, size_t out_size)
{
    const struct tlsio *t = &s->back.tls;
    const char *text = tlsio_reason(t);
    switch (tlsio_failure(t)) {
    case TLSIO_FAILURE_EOF:
        snprintf(out, out_size, "%s",
                 s->back.bytes_read == s->back_bytes_at_220 ? "eof-after-220"
                                                            : "eof-during-handshake");
        return REASON_BACK_TLS_EOF;
    case TLSIO_FAILURE_ALERT:
        session_back_alert_reason(out, out_size, text);
        return REASON_BACK_TLS_ALERT;
    case TLSIO_FAILURE_VERIFY:
        switch (tlsio_verify_result(t, NULL)) {
        case TLSIO_VERIFY_HOST_MISMATCH:
            snprintf(out, out_size, "certificate-host-mismatch");
            break;
        case TLSIO_VERIFY_EXPIRED:
            snprintf(out, out_size, "certificate-expired");
            break;
        default:
            snprintf(out, out_size, "validation-failure");
            break;
        }
        return REASON_BACK_TLS_CERTIFICATE;
    default:
        snprintf(out, out_size, "tls-error:%s", text[0] != '\0' ? text : "handshake failed");
        return REASON_BACK_TLS_ERROR;
    }
}

/* ---- the negotiation --------------------------------------------------------------------- */

/*
 * session_back_decide_policy picks leg 2's policy from the first greeting line: the most
 * specific [upstream_policy] pattern for the configured name, the greeting's host name and
 * the address.
 */
static void session_back_decide_policy(struct session *s, const char *line, size_t len)
{
    const struct conf *c = s->conf;
    s->back_policy = c->back_tls.starttls;
    char greeting_name[CONF_HOST_MAX + 1] = "";
    if (len > 4) {
        const char *name = line + 4;
        size_t name_len = len - 4;
        const char *space = memchr(name, ' ', name_len);
        if (space != NULL) {
            name_len = (size_t)(space - name);
        }
        if (name_len <= CONF_HOST_MAX && memchr(name, '\0', name_len) == NULL) {
            memcpy(greeting_name, name, name_len);
            greeting_name[name_len] = '\0';
        }
    }
    const char *names[] = {c->upstream.numeric ? NULL : c->upstream.host,
                           greeting_name[0] != '\0' ? greeting_name : NULL};
    enum conf_back_starttls policy;
    if (conf_policy_lookup(&policy, c, names, 2, &s->back_sa.sa)) {
        s->back_policy = policy;
    }
}

/* session_back_first_command chooses what goes first on a greeted connection: our EHLO
 * probe when XCLIENT or STARTTLS is to be asked for, else the client's own EHLO/HELO. */
static void session_back_first_command(struct session *s)
{
    bool want_xclient = s->conf->upstream_identity == CONF_IDENTITY_XCLIENT && !s->xclient_done;
    if (want_xclient || session_back_wants_tls(s)) {
        session_back_enter(s, SESSION_BACK_PROBE);
    } else {
        session_back_enter(s, SESSION_BACK_HELLO);
    }
}

void session_back_negotiate(struct session *s)
{
    assert(s->back_state == SESSION_BACK_GREETED);
    session_back_choose_attempt(s);
    session_back_first_command(s);
}

/*
 * session_back_negotiated: this connection is ready, and |s->reply| (code |code|) answers
 * the client's EHLO/HELO. What comes next depends on why the connection was opened.
 */
static void session_back_negotiated(struct session *s, int code)
{
    s->back_generation++; /* the gate judges recipients against this connection now */
    session_back_remember(s);
    switch (s->back_purpose) {
    case SESSION_BACK_FIRST:
    case SESSION_BACK_RETRY:
        /* Counted here, not at the handshake: the negotiation may still fail after it
         * (a TLS 1.3 alert after Finished, a 403 to the EHLO inside TLS) and end in
         * cleartext. */
        if (s->back.tls_active) {
            metrics_inc(METRICS_BACK_TLS_USED);
        }
        session_back_enter(s, SESSION_BACK_READY);
        session_replay_message_done(s); /* a transaction from here on may be replayed */
        session_front_answer_greeting(s, &s->reply, code);
        return;
    case SESSION_BACK_REPLAY_ON:
    case SESSION_BACK_REOPEN:
        if (code < 200 || code >= 300) {
            buf_cleanup(&s->reply);
            session_back_lost(s, REASON_END_UPSTREAM_PROTOCOL_ERROR, "EHLO refused on reconnect");
            return;
        }
        if (!s->client_helo) {
            session_front_edit_ehlo(s, buf_head(&s->reply), buf_len(&s->reply), false);
        }
        buf_cleanup(&s->reply);
        if (s->back_purpose == SESSION_BACK_REOPEN) {
            session_back_enter(s, SESSION_BACK_READY);
            session_replay_message_done(s);
        } else if (!session_gate_leg_still_good(s)) {
            /* The replay would carry recipients whose policy this connection fails. */
            session_finish(s, REASON_END_UPSTREAM_REPLAY_FAILED, "421 4.7.0",
                           "TLS to the recipient's server was lost, try again later");
        } else {
            session_back_enter(s, SESSION_BACK_REPLAY);
        }
        return;
    }
}

/* session_back_cleartext settles this connection as cleartext: the probe's reply answers an
 * EHLO client; a HELO client gets its own HELO sent, so its reply has the form it expects. */
static void session_back_cleartext(struct session *s, struct buf *probe, int code)
{
    if (s->client_helo) {
        buf_cleanup(probe);
        session_back_enter(s, SESSION_BACK_HELLO);
        return;
    }
    if (probe != &s->reply) {
        buf_cleanup(&s->reply);
        s->reply = *probe;
        buf_init(probe);
    }
    session_back_negotiated(s, code);
}

static void session_back_greeting_reply(struct session *s, int code)
{
    if (s->back_purpose == SESSION_BACK_FIRST) {
        /* RFC 5321 section 4.2: a server greets with 220, or 554 for "no service here". */
        if (code != 220 && code != 554) {
            log_warn(s->id, "upstream-bad-greeting", "upstream=%s code=%d", s->back_addr, code);
            buf_cleanup(&s->reply);
            session_connect_unreachable(s);
            return;
        }
        session_back_enter(s, SESSION_BACK_GREETED);
        session_front_greeting(s, buf_head(&s->reply), buf_len(&s->reply));
        buf_cleanup(&s->reply);
        return;
    }
    buf_cleanup(&s->reply);
    if (code != 220) {
        log_warn(s->id, "upstream-refused-retry", "upstream=%s code=%d", s->back_addr, code);
        session_back_lost(s, REASON_END_UPSTREAM_UNREACHABLE, "new connection refused");
        return;
    }
    session_back_first_command(s);
}

static void session_back_probe_reply(struct session *s, int code)
{
    if (s->conf->upstream_identity == CONF_IDENTITY_XCLIENT && !s->xclient_done) {
        const char *params = NULL;
        size_t params_len = 0;
        if (code != 250) {
            buf_cleanup(&s->reply);
            session_back_identity_failed(s, "ehlo-refused", code);
            return;
        }
        if (!smtp_ehlo_params(&params, &params_len, buf_head(&s->reply), buf_len(&s->reply),
                              "XCLIENT")) {
            buf_cleanup(&s->reply);
            session_back_identity_failed(s, "xclient-not-offered", code);
            return;
        }
        buf_cleanup(&s->probe_reply);
        s->probe_reply = s->reply;
        buf_init(&s->reply);
        session_back_enter(s, SESSION_BACK_XCLIENT);
        return;
    }
    if (session_back_wants_tls(s)) {
        unsigned caps = 0;
        if (code == 250 &&
            smtp_ehlo_caps(&caps, buf_head(&s->reply), buf_len(&s->reply)) == SMTP_OK &&
            (caps & SMTP_CAP_STARTTLS) != 0) {
            buf_cleanup(&s->probe_reply);
            s->probe_reply = s->reply;
            buf_init(&s->reply);
            session_back_enter(s, SESSION_BACK_STARTTLS);
            return;
        }
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "%s",
                 code == 250 ? "starttls-not-supported" : "ehlo-refused");
        if (s->back_policy == CONF_BACK_STARTTLS_REQUIRE) {
            buf_cleanup(&s->reply);
            session_back_fail_tls(s, s->back_tls_reason);
            return;
        }
    }
    session_back_cleartext(s, &s->reply, code);
}

static void session_back_xclient_reply(struct session *s, int code)
{
    buf_cleanup(&s->reply);
    buf_cleanup(&s->probe_reply);
    /* Postfix answers XCLIENT with the greeting a new client would get. Anything but 220
     * (not authorised, or this client refused) means the identity did not go through. */
    if (code != 220) {
        session_back_identity_failed(s, "xclient-refused", code);
        return;
    }
    s->xclient_done = true;
    log_info(s->id, "xclient", "upstream=%s client=%s", s->back_addr, s->front_addr);
    session_back_first_command(s);
}

static void session_back_starttls_reply(struct session *s, int code)
{
    buf_cleanup(&s->reply);
    if (code == 220) {
        session_back_enter(s, SESSION_BACK_HANDSHAKE); /* begins once this line is consumed */
        return;
    }
    /* Refused by a reply: RFC 3207 lets this connection go on in cleartext, unless TLS is
     * required. Cleartext worked, and that is what is remembered. */
    char reason[40];
    snprintf(reason, sizeof(reason), "starttls-refused-%d", code);
    snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "%s", reason);
    metrics_inc(metrics_back_fallback(REASON_BACK_TLS_STARTTLS_REFUSED));
    bool required = s->back_policy == CONF_BACK_STARTTLS_REQUIRE;
    log_warn(s->id, "back-tls-failed", "upstream=%s reason=\"%s\" action=%s", s->back_addr, reason,
             required ? "fail" : "cleartext-same-connection");
    if (required) {
        buf_cleanup(&s->probe_reply);
        session_back_fail_tls(s, reason);
        return;
    }
    s->attempt.cleartext = true;
    session_back_cleartext(s, &s->probe_reply, 250);
}

static void session_back_hello_reply(struct session *s, int code)
{
    if (s->back.tls_active && (code < 200 || code >= 300)) {
        /* e.g. "403 4.7.0 TLS handshake failed": this connection is no good. The same name
         * was accepted in cleartext by the probe, so the refusal is the TLS leg's. */
        char reason[40];
        snprintf(reason, sizeof(reason), "post-tls-ehlo-%d", code);
        buf_cleanup(&s->reply);
        session_back_negotiation_failed(s, LADDER_FAILED_OTHER, REASON_BACK_TLS_POST_TLS_EHLO,
                                        reason);
        return;
    }
    session_back_negotiated(s, code);
}

/* session_back_reply decides what a complete negotiation reply (in s->reply) means. */
static void session_back_reply(struct session *s, int code)
{
    switch (s->back_state) {
    case SESSION_BACK_GREETING:
        session_back_greeting_reply(s, code);
        return;
    case SESSION_BACK_PROBE:
        session_back_probe_reply(s, code);
        return;
    case SESSION_BACK_XCLIENT:
        session_back_xclient_reply(s, code);
        return;
    case SESSION_BACK_STARTTLS:
        session_back_starttls_reply(s, code);
        return;
    case SESSION_BACK_HELLO:
        session_back_hello_reply(s, code);
        return;
    default:
        log_warn(s->id, "bug", "back reply in state %s", session_back_state_name(s->back_state));
        assert(!"back reply in unexpected state");
        session_abort(s, REASON_END_INTERNAL_ERROR);
        return;
    }
}

/* ---- entering a state ------------------------------------------------------------------------ */

/* session_back_send_probe sends "EHLO <the client's name>", whatever greeting it used. */
static void session_back_send_probe(struct session *s)
{
    session_send_back(s, "EHLO", 4);
    session_send_back(s, buf_head(&s->client_greeting) + 4, buf_len(&s->client_greeting) - 4);
    session_send_back(s, "\r\n", 2);
}

/* session_back_send_xclient tells the upstream who the client is, with the attributes its
 * XCLIENT capability (in the probe's reply) advertised. */
static void session_back_send_xclient(struct session *s)
{
    const char *params = NULL;
    size_t params_len = 0;
    smtp_ehlo_params(&params, &params_len, buf_head(&s->probe_reply), buf_len(&s->probe_reply),
                     "XCLIENT");
    char host[ADDR_TEXT_MAX];
    addr_format_host(host, sizeof(host), &s->front_sa.sa);
    struct smtp_xclient x = {
        .addr = host,
        .ipv6 = s->front_sa.sa.sa_family == AF_INET6,
        .port = addr_port(&s->front_sa.sa),
        .esmtp = !s->client_helo,
        .helo = buf_head(&s->client_greeting) + 5,
        .helo_len = buf_len(&s->client_greeting) - 5,
    };
    char line[SMTP_XCLIENT_LINE_MAX];
    size_t len = 0;
    enum smtp_result rc = smtp_xclient_format(line, &len, sizeof(line), params, params_len, &x);
    if (rc != SMTP_OK) {
        session_back_identity_failed(
            s, rc == SMTP_BAD_SYNTAX ? "xclient-without-addr" : "xclient-line-too-long", 250);
        return;
    }
    session_send_back(s, line, len);
}

/* session_back_tls_begin starts the handshake after the upstream's 220 to STARTTLS. */
static void session_back_tls_begin(struct session *s)
{
    /* Response injection: whatever came after the 220 was not protected by TLS. */
    size_t injected = buf_len(&s->back.in);
    if (injected > 0) {
        log_warn(s->id, "starttls-response-injection", "upstream=%s discarded=%zu", s->back_addr,
                 injected);
    }
    buf_cleanup(&s->back.in);
    const struct conf *c = s->conf;
    struct tlsio_back_options options = {
        .name = c->mode == CONF_MODE_FORWARD ? c->upstream.host : NULL,
        .no_client_cert = s->attempt.no_client_cert,
        .max_tls12 = s->attempt.max_tls12,
        .verify_soft = s->back_policy != CONF_BACK_STARTTLS_REQUIRE,
        .address = s->back_addr,
    };
    int rc = tlsio_start_back(&s->back.tls, s->runtime->back_ctx, &options);
    if (rc != 0) {
        log_error(s->id, "back-tls-start-failed", "error=\"%s\"", uv_strerror(rc));
        session_abort(s, REASON_END_INTERNAL_ERROR);
        return;
    }
    s->back.tls_started = true;
    s->tls_started_ms = session_now_ms(s);
    s->back_bytes_at_220 = s->back.bytes_read;
}

void session_back_enter(struct session *s, enum session_back_state next)
{
    log_debug(s->id, "back-state", "from=%s to=%s", session_back_state_name(s->back_state),
              session_back_state_name(next));
    s->back_state = next;
    s->steps++;
    switch (next) {
    case SESSION_BACK_IDLE:
    case SESSION_BACK_GREETED:
    case SESSION_BACK_GONE:
        return;
    case SESSION_BACK_RESOLVING:
        session_connect_resolve(s);
        return;
    case SESSION_BACK_CONNECTING:
        session_connect_next(s);
        return;
    case SESSION_BACK_GREETING:
        smtp_reply_parser_init(&s->reply_parser);
        buf_cleanup(&s->reply);
        s->xclient_done = false;
        return;
    case SESSION_BACK_PROBE:
        session_back_send_probe(s);
        return;
    case SESSION_BACK_XCLIENT:
        session_back_send_xclient(s);
        return;
    case SESSION_BACK_STARTTLS:
        session_send_back(s, "STARTTLS\r\n", 10);
        return;
    case SESSION_BACK_HANDSHAKE:
        return; /* session_back_process() begins it once the 220 is consumed */
    case SESSION_BACK_HELLO:
        session_send_back(s, buf_head(&s->client_greeting), buf_len(&s->client_greeting));
        session_send_back(s, "\r\n", 2);
        return;
    case SESSION_BACK_RECONNECTING:
        /* A reset when a message was under way, so that it is discarded, never completed;
         * the close callback opens the next connection. */
        buf_cleanup(&s->reply);
        buf_cleanup(&s->probe_reply);
        session_close_back(s, session_mid_message(s));
        return;
    case SESSION_BACK_READY:
        return;
    case SESSION_BACK_REPLAY:
        session_replay_begin(s);
        return;
    }
}

/* ---- losing the connection ---------------------------------------------------------------- */

void session_back_lost(struct session *s, enum reason_end reason, const char *detail)
{
    switch (s->back_state) {
    case SESSION_BACK_GONE:
    case SESSION_BACK_RECONNECTING:
        return;
    case SESSION_BACK_REPLAY:
        log_warn(s->id, "back-replay-failed", "upstream=%s reason=\"%s\"", s->back_addr, detail);
        session_finish(s, REASON_END_UPSTREAM_REPLAY_FAILED, "421 4.4.2",
                       "Upstream connection lost, closing connection");
        return;
    default:
        break;
    }
    log_warn(s->id, "upstream-lost", "upstream=%s state=%s reason=\"%s\"", s->back_addr,
             session_back_state_name(s->back_state), detail);
    if (s->back_state == SESSION_BACK_GREETING && s->back_purpose == SESSION_BACK_FIRST) {
        session_connect_unreachable(s);
        return;
    }
    session_finish(s, reason, "421 4.4.2", "Upstream connection lost, closing connection");
}

/*
 * session_back_tls_broken: the upstream's TLS failed after the handshake. Right after it
 * (TLS 1.3 servers reject a client certificate only then) it is a failed negotiation;
 * later, the connection is lost, and the envelope may be replayed on a new one. Nothing of
 * this is remembered: a client may have made the upstream close.
 */
static void session_back_tls_broken(struct session *s)
{
    char reason[80];
    const struct tlsio *t = &s->back.tls;
    if (s->back_state == SESSION_BACK_HELLO) {
        enum reason_back_tls cls = session_back_tls_failure(s, reason, sizeof(reason));
        session_back_negotiation_failed(s, LADDER_FAILED_HANDSHAKE, cls, reason);
        return;
    }
    switch (tlsio_failure(t)) {
    case TLSIO_FAILURE_EOF:
        snprintf(reason, sizeof(reason), "tls-eof-without-close-notify");
        break;
    case TLSIO_FAILURE_ALERT:
        session_back_alert_reason(reason, sizeof(reason), tlsio_reason(t));
        break;
    default:
        snprintf(reason, sizeof(reason), "tls-error:%s", tlsio_reason(t));
        break;
    }
    if (s->back_state == SESSION_BACK_READY && !s->replayed && session_replay_possible(s)) {
        /* The replay goes one step down the ladder where the configuration allows it
         * (the same step otherwise); what it finds is not remembered. */
        struct ladder_config cfg = session_back_ladder_config(s);
        (void)ladder_next(&s->attempt, &cfg, LADDER_FAILED_OTHER);
        log_warn(s->id, "back-tls-broken", "upstream=%s reason=\"%s\" action=replay-%s",
                 s->back_addr, reason, ladder_name(&s->attempt));
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "replayed-after:%s", reason);
        s->replayed = true;
        s->back_purpose = SESSION_BACK_REPLAY_ON;
        session_back_enter(s, SESSION_BACK_RECONNECTING);
        return;
    }
    log_warn(s->id, "back-tls-broken", "upstream=%s reason=\"%s\" action=close", s->back_addr,
             reason);
    session_back_lost(s, REASON_END_UPSTREAM_TLS_ERROR, reason);
}

void session_back_eof(struct session *s)
{
    switch (s->back_state) {
    case SESSION_BACK_STARTTLS:
        session_back_negotiation_failed(s, LADDER_FAILED_OTHER, REASON_BACK_TLS_EOF,
                                        "eof-after-starttls");
        return;
    case SESSION_BACK_HELLO:
        if (s->back.tls_active) {
            session_back_negotiation_failed(s, LADDER_FAILED_OTHER, REASON_BACK_TLS_POST_TLS_EOF,
                                            "post-tls-eof");
            return;
        }
        break;
    case SESSION_BACK_GREETING:
        log_warn(s->id, "upstream-closed-before-greeting", "upstream=%s", s->back_addr);
        break;
    default:
        break;
    }
    session_back_lost(s, REASON_END_UPSTREAM_CLOSED, "closed by the upstream");
}

void session_back_timeout(struct session *s)
{
    const char *phase = session_back_state_name(s->back_state);
    switch (s->back_state) {
    case SESSION_BACK_RESOLVING:
        log_warn(s->id, "upstream-timeout", "upstream=%s phase=resolve", s->conf->upstream.host);
        session_connect_unreachable(s);
        return;
    case SESSION_BACK_CONNECTING:
        log_warn(s->id, "upstream-timeout", "upstream=%s phase=connect", s->back_addr);
        session_close_back(s, false); /* its close callback tries the next address */
        return;
    case SESSION_BACK_STARTTLS:
        session_back_negotiation_failed(s, LADDER_FAILED_OTHER, REASON_BACK_TLS_TIMEOUT,
                                        "starttls-reply-timeout");
        return;
    case SESSION_BACK_HANDSHAKE:
        session_back_negotiation_failed(s, LADDER_FAILED_HANDSHAKE, REASON_BACK_TLS_TIMEOUT,
                                        "handshake-timeout");
        return;
    case SESSION_BACK_HELLO:
        if (s->back.tls_active) {
            session_back_negotiation_failed(s, LADDER_FAILED_OTHER, REASON_BACK_TLS_POST_TLS_EHLO,
                                            "post-tls-ehlo-timeout");
            return;
        }
        break;
    case SESSION_BACK_RECONNECTING:
    case SESSION_BACK_GONE:
    case SESSION_BACK_IDLE:
        return;
    default:
        break;
    }
    log_warn(s->id, "upstream-timeout", "upstream=%s phase=%s", s->back_addr, phase);
    session_finish(s, REASON_END_UPSTREAM_TIMEOUT, "421 4.4.2",
                   "Upstream did not answer, try again later");
}

/* ---- reading replies ------------------------------------------------------------------------ */

/* session_back_handshake runs leg 2's handshake on what the upstream sent. */
static bool session_back_handshake(struct session *s)
{
    struct leg *b = &s->back;
    if (!b->tls_started) {
        session_back_tls_begin(s);
        if (!b->tls_started) {
            return true;
        }
    }
    switch (leg_tls_handshake(b)) {
    case LEG_TLS_WANT:
        return false;
    case LEG_TLS_FAILED: {
        char reason[80];
        enum reason_back_tls cls = session_back_tls_failure(s, reason, sizeof(reason));
        session_back_negotiation_failed(
            s, cls == REASON_BACK_TLS_CERTIFICATE ? LADDER_FAILED_OTHER : LADDER_FAILED_HANDSHAKE,
            cls, reason);
        return true;
    }
    case LEG_TLS_DONE:
    case LEG_TLS_CLOSED:
    case LEG_TLS_TRUNCATED:
        break;
    }
    const char *verify_text = NULL;
    enum tlsio_verify verify = tlsio_verify_result(&b->tls, &verify_text);
    if (verify != TLSIO_VERIFY_OK && verify != TLSIO_VERIFY_NOT_CHECKED) {
        /* Opportunistic (may): an unverified encrypted leg still beats cleartext. */
        log_warn(s->id, "back-tls-unverified", "upstream=%s reason=\"%s\" action=continue",
                 s->back_addr, verify_text != NULL ? verify_text : "?");
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "unverified");
    } else if (ladder_is_first(&s->attempt)) {
        s->back_tls_reason[0] = '\0';
    } else {
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "step=%s",
                 ladder_name(&s->attempt));
    }
    metrics_observe(METRICS_BACK_HANDSHAKE_SECONDS,
                    (double)(session_now_ms(s) - s->tls_started_ms) / 1000.0);
    log_info(s->id, "back-tls", "upstream=%s version=%s cipher=%s step=%s%s", s->back_addr,
             tlsio_version(&b->tls), tlsio_cipher(&b->tls), ladder_name(&s->attempt),
             tlsio_resumed(&b->tls) ? " resumed=yes" : "");
    session_back_enter(s, SESSION_BACK_HELLO);
    return true;
}

/* session_back_reads_lines tells whether reply lines are read in the current state. */
static bool session_back_reads_lines(enum session_back_state state)
{
    switch (state) {
    case SESSION_BACK_GREETING:
    case SESSION_BACK_GREETED:
    case SESSION_BACK_PROBE:
    case SESSION_BACK_XCLIENT:
    case SESSION_BACK_STARTTLS:
    case SESSION_BACK_HELLO:
    case SESSION_BACK_READY:
    case SESSION_BACK_REPLAY:
        return true;
    default:
        return false;
    }
}

bool session_back_wants_input(const struct session *s)
{
    return session_back_reads_lines(s->back_state) || s->back_state == SESSION_BACK_HANDSHAKE;
}

/* session_back_awaits_new_reply: in these states the proxy has just sent a command and
 * waits for its one reply; bytes that were there before it are nobody's reply. */
static bool session_back_awaits_new_reply(enum session_back_state state)
{
    return state == SESSION_BACK_PROBE || state == SESSION_BACK_XCLIENT ||
           state == SESSION_BACK_STARTTLS || state == SESSION_BACK_HELLO;
}

/* session_back_line handles one complete reply line (ending removed); false when the
 * session's view of leg 2 changed so that the rest must wait. */
static void session_back_line(struct session *s, const char *line, size_t len, int code, bool done)
{
    switch (s->back_state) {
    case SESSION_BACK_READY:
        session_front_reply_line(s, line, len, code, done);
        return;
    case SESSION_BACK_REPLAY:
        if (done) {
            session_replay_reply(s, code);
        }
        return;
    case SESSION_BACK_GREETED:
        session_front_unsolicited(s, line, len, code, done); /* nothing was asked yet */
        return;
    default:
        break;
    }
    if (s->back_state == SESSION_BACK_GREETING && s->back_purpose == SESSION_BACK_FIRST &&
        buf_len(&s->reply) == 0) {
        session_back_decide_policy(s, line, len);
        session_learn_upstream_greeted(s);
    }
    if (buf_append(&s->reply, line, len, SMTP_EHLO_REPLY_MAX) != 0 ||
        buf_append(&s->reply, "\r\n", 2, SMTP_EHLO_REPLY_MAX) != 0) {
        buf_cleanup(&s->reply);
        session_back_lost(s, REASON_END_UPSTREAM_PROTOCOL_ERROR, "reply too long");
        return;
    }
    if (done) {
        session_back_reply(s, code);
    }
}

/* session_back_bad_reply: a line that is not a reply. In the middle of STARTTLS it is a
 * failed negotiation; anywhere else the upstream cannot be followed any more. */
static void session_back_bad_reply(struct session *s, const char *line, size_t len)
{
    char text[80];
    log_warn(s->id, "upstream-protocol-error", "upstream=%s state=%s line=\"%s\"", s->back_addr,
             session_back_state_name(s->back_state), log_escape(text, sizeof(text), line, len, 60));
    if (s->back_state == SESSION_BACK_STARTTLS) {
        buf_cleanup(&s->reply);
        session_back_negotiation_failed(s, LADDER_FAILED_OTHER, REASON_BACK_TLS_STARTTLS_BAD_REPLY,
                                        "starttls-bad-reply");
        return;
    }
    session_back_lost(s, REASON_END_UPSTREAM_PROTOCOL_ERROR, "malformed reply");
}

bool session_back_process(struct session *s)
{
    bool progress = false;
    struct leg *b = &s->back;
    while (b->open && session_back_reads_lines(s->back_state)) {
        /* Replies go to the client: not while it has not read those before them. */
        if (s->back_state == SESSION_BACK_READY && leg_unsent(&s->front) >= LEG_HIGH_WATER) {
            break;
        }
        if (b->tls_active && buf_len(&b->in) < LEG_READ_SIZE) {
            bool moved = false;
            enum leg_tls r = leg_tls_pull(b, &moved);
            if (r == LEG_TLS_FAILED || r == LEG_TLS_TRUNCATED) {
                session_back_tls_broken(s); /* a close without close_notify is a break too */
                return true;
            }
        }
        const char *data = buf_head(&b->in);
        size_t line_len;
        size_t eol_len;
        enum smtp_result rc =
            smtp_line_find(&line_len, &eol_len, data, buf_len(&b->in), SMTP_REPLY_LINE_MAX);
        if (rc == SMTP_NEED_MORE) {
            break;
        }
        if (rc != SMTP_OK) {
            session_back_lost(s, REASON_END_UPSTREAM_PROTOCOL_ERROR, "reply line too long");
            return true;
        }
        int code = 0;
        bool done = false;
        enum session_back_state before = s->back_state;
        if (smtp_reply_parse_line(&s->reply_parser, &code, &done, data, line_len) != SMTP_OK) {
            session_back_bad_reply(s, data, line_len);
            return true;
        }
        if (done) {
            s->steps++;
        }
        session_back_line(s, data, line_len, code, done);
        progress = true;
        if (!b->open) {
            return true; /* its handler closed this connection (and may open another) */
        }
        buf_consume(&b->in, line_len + eol_len);
        if (done && s->back_state != before && session_back_awaits_new_reply(s->back_state) &&
            buf_len(&b->in) > 0) {
            char text[80];
            log_warn(s->id, "upstream-unsolicited", "upstream=%s state=%s bytes=\"%s\"",
                     s->back_addr, session_back_state_name(before),
                     log_escape(text, sizeof(text), buf_head(&b->in), buf_len(&b->in), 60));
            session_back_lost(s, REASON_END_UPSTREAM_PROTOCOL_ERROR, "reply nobody asked for");
            return true;
        }
    }
    if (s->back_state == SESSION_BACK_HANDSHAKE && b->open) {
        progress |= session_back_handshake(s);
    }
    /* The upstream sent its last byte and every complete line before it was handled. */
    if (b->open && b->eof && session_back_reads_lines(s->back_state) && !leg_tls_has_input(b) &&
        s->back_state != SESSION_BACK_HANDSHAKE) {
        size_t line_len;
        size_t eol_len;
        if (smtp_line_find(&line_len, &eol_len, buf_head(&b->in), buf_len(&b->in),
                           SMTP_REPLY_LINE_MAX) == SMTP_NEED_MORE) {
            session_back_eof(s);
            progress = true;
        }
    }
    return progress;
}
