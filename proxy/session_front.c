/*
 * session_front: leg 1, the client. The PROXY header, every command line (read the way
 * the laxest upstream reads it, checked against a verb table, then forwarded or answered
 * here), DATA and BDAT content, client STARTTLS, and the pipeline: one place per command,
 * in the client's order, so replies reach the client in PIPELINING order (RFC 2920).
 *
 * It never lets a client command the proxy refuses reach the upstream, never lets bytes
 * sent before a handshake be read after it, and never lets a message be completed upstream
 * unless the client completed it cleanly.
 */
#include "session_impl.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learn.h"
#include "log.h"
#include "metrics.h"
#include "proxyproto.h"
#include "runtime.h"

/* A SASL response may be longer than a command line (RFC 4954 section 4: 12288 octets). */
#define SESSION_SASL_LINE_MAX (12288 + 2)

/* ---- the pipeline ------------------------------------------------------------------------ */

/* session_kind_waits_back tells whether a place waits for an upstream reply. */
static bool session_kind_waits_back(enum session_pending_kind kind)
{
    return kind != SESSION_PENDING_LOCAL && kind != SESSION_PENDING_STARTTLS &&
           kind != SESSION_PENDING_GREETING;
}

enum session_pending_kind session_front_head(const struct session *s)
{
    return s->n_pending > 0 ? (enum session_pending_kind)s->pending[s->pending_head].kind
                            : SESSION_PENDING_LOCAL;
}

static void session_push(struct session *s, enum session_pending_kind kind,
                         enum session_local_reply local)
{
    assert(s->n_pending < SESSION_PENDING_MAX);
    unsigned slot = (s->pending_head + s->n_pending) % SESSION_PENDING_MAX;
    s->pending[slot] = (struct session_pending){.kind = (uint8_t)kind, .local = (uint8_t)local};
    s->n_pending++;
    if (session_kind_waits_back(kind)) {
        s->n_pending_back++;
    }
}

static void session_pop(struct session *s)
{
    assert(s->n_pending > 0);
    if (session_kind_waits_back(session_front_head(s))) {
        s->n_pending_back--;
    }
    s->pending_head = (s->pending_head + 1) % SESSION_PENDING_MAX;
    s->n_pending--;
}

static void session_front_starttls_reply(struct session *s);

/* Our own replies go out as soon as every reply queued before them has. */
void session_front_send_ready_local_replies(struct session *s)
{
    while (s->n_pending > 0 && s->state == SESSION_RELAY) {
        enum session_pending_kind head = session_front_head(s);
        if (head == SESSION_PENDING_STARTTLS) {
            session_pop(s);
            session_front_starttls_reply(s);
            return;
        }
        if (head != SESSION_PENDING_LOCAL) {
            return;
        }
        const char *reply = session_local_replies[s->pending[s->pending_head].local];
        session_send_front(s, reply, strlen(reply));
        session_pop(s);
    }
}

#define SESSION_REFUSALS_LOGGED 5

static void session_reply_locally(struct session *s, enum session_local_reply local)
{
    const char *reply = session_local_replies[local];
    /* A client that sends nothing but bad commands must not fill the log: the first few
     * refusals of a session are enough to see what it was doing. */
    if (reply[0] >= '4' && s->n_refused++ < SESSION_REFUSALS_LOGGED) {
        log_info(s->id, "refused", "client=%s reply=\"%.9s\"%s", s->front_addr, reply,
                 s->n_refused == SESSION_REFUSALS_LOGGED ? " (later refusals not logged)" : "");
    }
    session_push(s, SESSION_PENDING_LOCAL, local);
    session_front_send_ready_local_replies(s);
}

/* ---- the client's identity and STARTTLS offer --------------------------------------------- */

/*
 * session_front_proxy_header reads the load balancer's PROXY header (v1/v2): its source
 * address is the client's for logs, learning, policy and the identity sent upstream. A
 * connection without a valid one is dropped without a greeting.
 */
void session_front_proxy_header(struct session *s)
{
    static const enum proxyproto_version modes[] = {
        [CONF_PROXY_PROTOCOL_OFF] = PROXYPROTO_ANY,
        [CONF_PROXY_PROTOCOL_V1] = PROXYPROTO_V1,
        [CONF_PROXY_PROTOCOL_V2] = PROXYPROTO_V2,
        [CONF_PROXY_PROTOCOL_ANY] = PROXYPROTO_ANY,
    };
    struct proxyproto_header header;
    size_t used = 0;
    enum proxyproto_result r =
        proxyproto_parse(&header, &used, buf_head(&s->front.in), buf_len(&s->front.in),
                         modes[s->conf->proxy_protocol]);
    if (r == PROXYPROTO_NEED_MORE && !s->front.eof) {
        return;
    }
    if (r != PROXYPROTO_OK) {
        log_warn(s->id, "proxy-header-bad", "peer=%s bytes=%zu", s->front_addr,
                 buf_len(&s->front.in));
        session_abort(s, REASON_END_BAD_PROXY_HEADER);
        return;
    }
    buf_consume(&s->front.in, used);
    if (header.family == PROXYPROTO_TCP4 || header.family == PROXYPROTO_TCP6) {
        char via[ADDR_TEXT_MAX];
        memcpy(via, s->front_addr, sizeof(via));
        addr_set(&s->front_sa, (const struct sockaddr *)&header.src);
        addr_format(s->front_addr, sizeof(s->front_addr), &s->front_sa.sa);
        log_debug(s->id, "proxy-header", "client=%s via=%s", s->front_addr, via);
    }
    session_start_back(s);
}

/* ---- commands ------------------------------------------------------------------------------ */

static void session_forward(struct session *s, const char *line, size_t len,
                            enum session_pending_kind kind)
{
    session_send_back(s, line, len);
    session_send_back(s, "\r\n", 2);
    session_push(s, kind, 0);
}

void session_front_forward(struct session *s, const char *line, size_t len,
                           enum session_pending_kind kind)
{
    session_forward(s, line, len, kind);
}

void session_front_reply(struct session *s, enum session_local_reply local)
{
    session_reply_locally(s, local);
}

/*
 * session_refuse answers a well-formed command locally. A refused BDAT still has its chunk
 * coming (RFC 3030 section 2): it is read and thrown away, never parsed as commands, and
 * never reaches the upstream, which could read it as commands.
 */
static void session_refuse(struct session *s, const struct smtp_command *cmd,
                           enum session_local_reply reply)
{
    if (cmd->verb == SMTP_VERB_BDAT) {
        s->front_mode = SESSION_FRONT_CHUNK_SKIP;
        s->chunk_left = cmd->bdat_size;
    }
    session_reply_locally(s, reply);
}

/* session_verb_hello: EHLO or HELO. The first one starts leg 2's negotiation, which
 * answers it; later ones go up as they are. */
static void session_verb_hello(struct session *s, const struct smtp_command *cmd, const char *line,
                               size_t len)
{
    const char *name;
    size_t name_len;
    smtp_helo_name(&name, &name_len, cmd);
    if (name_len == 0 && !s->greeted) {
        session_reply_locally(s, SESSION_LOCAL_HELO_SYNTAX);
        return;
    }
    s->need_ehlo = false;
    s->in_transaction = false;
    if (s->greeted) {
        session_forward(s, line, len,
                        cmd->verb == SMTP_VERB_EHLO ? SESSION_PENDING_EHLO : SESSION_PENDING_OTHER);
        session_replay_note(s, cmd->verb, line, len);
        return;
    }
    s->greeted = true;
    s->client_helo = cmd->verb == SMTP_VERB_HELO;
    if (buf_append(&s->client_greeting, s->client_helo ? "HELO " : "EHLO ", 5, LEG_IN_MAX) != 0 ||
        buf_append(&s->client_greeting, name, name_len, LEG_IN_MAX) != 0) {
        session_abort(s, REASON_END_OUT_OF_MEMORY);
        return;
    }
    session_push(s, SESSION_PENDING_GREETING, 0);
    session_back_negotiate(s);
}

/* session_verb_local_before_hello: NOOP, RSET and QUIT are answered here until the client
 * has greeted: nothing of the client reaches the upstream before its EHLO/HELO. */
static bool session_verb_local_before_hello(struct session *s, const struct smtp_command *cmd)
{
    if (s->greeted) {
        return false;
    }
    if (cmd->verb == SMTP_VERB_QUIT) {
        session_reply_locally(s, SESSION_LOCAL_BYE);
        session_finish(s, REASON_END_QUIT, NULL, NULL);
    } else {
        session_reply_locally(s, SESSION_LOCAL_OK);
    }
    return true;
}

static void session_verb_noop(struct session *s, const struct smtp_command *cmd, const char *line,
                              size_t len)
{
    if (!session_verb_local_before_hello(s, cmd)) {
        session_forward(s, line, len, SESSION_PENDING_OTHER);
        session_replay_note(s, cmd->verb, line, len);
    }
}

static void session_verb_rset(struct session *s, const struct smtp_command *cmd, const char *line,
                              size_t len)
{
    if (!session_verb_local_before_hello(s, cmd)) {
        s->in_transaction = false;
        session_forward(s, line, len, SESSION_PENDING_OTHER);
        session_replay_note(s, cmd->verb, line, len);
    }
}

static void session_verb_quit(struct session *s, const struct smtp_command *cmd, const char *line,
                              size_t len)
{
    if (!session_verb_local_before_hello(s, cmd)) {
        session_forward(s, line, len, SESSION_PENDING_QUIT);
    }
}

static void session_verb_mail(struct session *s, const struct smtp_command *cmd, const char *line,
                              size_t len)
{
    if (session_over_message_rate(s)) {
        session_reply_locally(s, SESSION_LOCAL_MESSAGE_RATE);
        return;
    }
    if (!session_gate_mail(s, cmd)) {
        return;
    }
    s->in_transaction = true;
    s->rcpts_forwarded = 0;
    s->rcpts_refused = 0;
    session_forward(s, line, len, SESSION_PENDING_MAIL);
    session_replay_note(s, cmd->verb, line, len);
}

/* session_no_recipient tells whether every RCPT of the transaction was refused here (the
 * downgrade gate): then DATA or BDAT must not go up, where the upstream might take a
 * message for nobody, over a leg a refused recipient's policy forbids. */
static bool session_no_recipient(const struct session *s)
{
    return s->in_transaction && s->rcpts_forwarded == 0 && s->rcpts_refused > 0;
}

static void session_verb_data(struct session *s, const struct smtp_command *cmd, const char *line,
                              size_t len)
{
    if (session_no_recipient(s)) {
        session_refuse(s, cmd, SESSION_LOCAL_NO_VALID_RECIPIENTS);
        return;
    }
    /* RFC 2920: DATA ends a pipelined group; what follows depends on its reply. */
    session_forward(s, line, len, SESSION_PENDING_DATA);
    session_replay_note(s, cmd->verb, line, len);
    s->wait_reply = true;
}

static void session_verb_bdat(struct session *s, const struct smtp_command *cmd, const char *line,
                              size_t len)
{
    (void)line;
    (void)len;
    if (session_no_recipient(s)) {
        session_refuse(s, cmd, SESSION_LOCAL_NO_VALID_RECIPIENTS);
        return;
    }
    /* Without CHUNKING upstream the chunk would be read there as commands. */
    if ((s->back_caps & SMTP_CAP_CHUNKING) == 0) {
        session_refuse(s, cmd, SESSION_LOCAL_BDAT_UNSUPPORTED);
        return;
    }
    /* Sent in canonical form: whatever spelling the client used, the upstream frames the
     * chunk exactly as the proxy does. */
    char canonical[48];
    int n = snprintf(canonical, sizeof(canonical), "BDAT %" PRIu64 "%s", cmd->bdat_size,
                     cmd->bdat_last ? " LAST" : "");
    session_forward(s, canonical, (size_t)n,
                    cmd->bdat_last ? SESSION_PENDING_BDAT_LAST : SESSION_PENDING_BDAT);
    session_replay_note(s, cmd->verb, canonical, (size_t)n);
    s->front_mode = SESSION_FRONT_CHUNK;
    s->chunk_left = cmd->bdat_size;
}

static void session_verb_auth(struct session *s, const struct smtp_command *cmd, const char *line,
                              size_t len)
{
    /* RFC 4954 section 4: AUTH ends a pipelined group. Nothing more goes up until its reply
     * says whether the next line is a SASL response. */
    session_forward(s, line, len, SESSION_PENDING_AUTH);
    session_replay_note(s, cmd->verb, line, len);
    s->wait_reply = true;
}

static void session_verb_xclient(struct session *s, const struct smtp_command *cmd,
                                 const char *line, size_t len)
{
    (void)cmd;
    (void)line;
    (void)len;
    session_reply_locally(s, SESSION_LOCAL_XCLIENT_DENIED);
}

static void session_verb_other(struct session *s, const struct smtp_command *cmd, const char *line,
                               size_t len)
{
    session_forward(s, line, len, SESSION_PENDING_OTHER);
    session_replay_note(s, cmd->verb, line, len);
    s->rcpts_forwarded += cmd->verb == SMTP_VERB_RCPT;
}

/* session_verb_rcpt: under the downgrade gate, each recipient is judged first. */
static void session_verb_rcpt(struct session *s, const struct smtp_command *cmd, const char *line,
                              size_t len)
{
    if (session_gate_on(s)) {
        session_gate_rcpt(s, cmd, line, len);
    } else {
        session_verb_other(s, cmd, line, len);
    }
}

/* session_verb_starttls answers STARTTLS (RFC 3207); it is never forwarded upstream. */
static void session_verb_starttls(struct session *s, const struct smtp_command *cmd,
                                  const char *line, size_t len)
{
    (void)line;
    (void)len;
    if (s->conf->front_tls.starttls == CONF_FRONT_STARTTLS_STRIP) {
        session_reply_locally(s, SESSION_LOCAL_STARTTLS_UNAVAILABLE);
    } else if (s->front.tls_active) {
        session_reply_locally(s, SESSION_LOCAL_TLS_ACTIVE);
    } else if (cmd->args_len > 0) {
        session_reply_locally(s, SESSION_LOCAL_STARTTLS_SYNTAX);
    } else if (!s->offer_starttls) {
        session_reply_locally(s, SESSION_LOCAL_TLS_HIDDEN);
    } else if (s->in_transaction) {
        session_reply_locally(s, SESSION_LOCAL_STARTTLS_IN_TRANSACTION);
    } else {
        /* The 220 waits for every reply due before it; nothing after the STARTTLS line is
         * read as a command meanwhile. */
        s->wait_starttls = true;
        session_push(s, SESSION_PENDING_STARTTLS, 0);
        session_front_send_ready_local_replies(s);
    }
}

enum {
    SESSION_VERB_BEFORE_HELLO = 1 << 0, /* taken before the client's first EHLO/HELO */
    SESSION_VERB_AFTER_TLS = 1 << 1,    /* taken right after the handshake (RFC 3207 4.2) */
    SESSION_VERB_WITHOUT_TLS = 1 << 2,  /* taken before TLS with require = on */
};

/* What each verb may do when, and who handles it. */
static const struct session_verb {
    enum smtp_verb verb;
    unsigned flags;
    void (*run)(struct session *s, const struct smtp_command *cmd, const char *line, size_t len);
} session_verbs[] = {
    {SMTP_VERB_OTHER, 0, session_verb_other},
    {SMTP_VERB_HELO, SESSION_VERB_BEFORE_HELLO | SESSION_VERB_AFTER_TLS | SESSION_VERB_WITHOUT_TLS,
     session_verb_hello},
    {SMTP_VERB_EHLO, SESSION_VERB_BEFORE_HELLO | SESSION_VERB_AFTER_TLS | SESSION_VERB_WITHOUT_TLS,
     session_verb_hello},
    {SMTP_VERB_MAIL, 0, session_verb_mail},
    {SMTP_VERB_RCPT, 0, session_verb_rcpt},
    {SMTP_VERB_DATA, 0, session_verb_data},
    {SMTP_VERB_BDAT, 0, session_verb_bdat},
    {SMTP_VERB_RSET, SESSION_VERB_BEFORE_HELLO | SESSION_VERB_AFTER_TLS | SESSION_VERB_WITHOUT_TLS,
     session_verb_rset},
    {SMTP_VERB_NOOP, SESSION_VERB_BEFORE_HELLO | SESSION_VERB_AFTER_TLS | SESSION_VERB_WITHOUT_TLS,
     session_verb_noop},
    {SMTP_VERB_QUIT, SESSION_VERB_BEFORE_HELLO | SESSION_VERB_AFTER_TLS | SESSION_VERB_WITHOUT_TLS,
     session_verb_quit},
    {SMTP_VERB_STARTTLS, SESSION_VERB_BEFORE_HELLO | SESSION_VERB_WITHOUT_TLS,
     session_verb_starttls},
    {SMTP_VERB_AUTH, 0, session_verb_auth},
    {SMTP_VERB_XCLIENT,
     SESSION_VERB_BEFORE_HELLO | SESSION_VERB_AFTER_TLS | SESSION_VERB_WITHOUT_TLS,
     session_verb_xclient},
};

static const struct session_verb *session_verb_find(enum smtp_verb verb)
{
    for (size_t i = 0; i < sizeof(session_verbs) / sizeof(session_verbs[0]); i++) {
        if (session_verbs[i].verb == verb) {
            return &session_verbs[i];
        }
    }
    return &session_verbs[0];
}

/* session_front_command handles one complete command line (ending removed). */
static void session_front_command(struct session *s, const char *line, size_t len)
{
    /* NUL or CR inside a line could end or split it differently upstream. */
    if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL) {
        session_reply_locally(s, SESSION_LOCAL_BAD_SYNTAX);
        return;
    }
    struct smtp_command cmd;
    enum smtp_result rc = smtp_command_parse(&cmd, line, len);
    if (log_enabled(CONF_LOG_DEBUG)) {
        char verb[24];
        log_debug(s->id, "command", "verb=\"%s\" len=%zu",
                  log_escape(verb, sizeof(verb), line, len < 12 ? len : 12, 12), len);
    }
    if (rc == SMTP_PATH_TOO_LONG) {
        session_reply_locally(s, cmd.verb == SMTP_VERB_MAIL ? SESSION_LOCAL_MAIL_PATH_TOO_LONG
                                                            : SESSION_LOCAL_RCPT_PATH_TOO_LONG);
        return;
    }
    if (rc != SMTP_OK) {
        /* A BDAT with a size we cannot read: its chunk (if any) is parsed as commands here,
         * each one checked; the upstream never sees this line. */
        if (cmd.verb == SMTP_VERB_BDAT) {
            session_reply_locally(s, SESSION_LOCAL_BDAT_SYNTAX);
        } else if (cmd.verb == SMTP_VERB_MAIL || cmd.verb == SMTP_VERB_RCPT) {
            session_reply_locally(s, SESSION_LOCAL_PATH_SYNTAX);
        } else {
            session_reply_locally(s, SESSION_LOCAL_BAD_SYNTAX);
        }
        return;
    }
    const struct session_verb *verb = session_verb_find(cmd.verb);
    if (!s->greeted && !(verb->flags & SESSION_VERB_BEFORE_HELLO)) {
        session_refuse(s, &cmd, SESSION_LOCAL_HELLO_FIRST);
        return;
    }
    if (s->need_ehlo && !(verb->flags & SESSION_VERB_AFTER_TLS)) {
        session_refuse(s, &cmd, SESSION_LOCAL_EHLO_FIRST);
        return;
    }
    /* require = on (submission-style listeners only: RFC 3207 section 4 forbids it on a
     * public port 25). */
    if (s->conf->front_tls.require && !s->front.tls_active &&
        !(verb->flags & SESSION_VERB_WITHOUT_TLS)) {
        session_refuse(s, &cmd, SESSION_LOCAL_TLS_REQUIRED);
        return;
    }
    verb->run(s, &cmd, line, len);
}

/*
 * session_front_sasl relays the line that answers the upstream's 334. It must be exactly
 * the line the upstream reads next, so it cannot be refused locally: one the proxy cannot
 * relay safely (a NUL or bare CR inside) goes up as "*", which cancels the exchange.
 */
static void session_front_sasl(struct session *s, const char *line, size_t len)
{
    s->front_mode = SESSION_FRONT_COMMAND;
    if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL) {
        line = "*";
        len = 1;
    }
    session_forward(s, line, len, SESSION_PENDING_AUTH);
    s->wait_reply = true;
}

/* Each session_front_* step below consumes a prefix of |data| and returns its length; 0
 * means nothing can be done with these bytes yet. */

static size_t session_front_lines(struct session *s, const char *data, size_t len)
{
    bool sasl = s->front_mode == SESSION_FRONT_SASL;
    size_t max = sasl && s->conf->max_line_len < SESSION_SASL_LINE_MAX ? SESSION_SASL_LINE_MAX
                                                                       : s->conf->max_line_len;
    size_t line_len;
    size_t eol_len;
    switch (smtp_line_find(&line_len, &eol_len, data, len, max)) {
    case SMTP_OK:
        s->steps++;
        if (sasl) {
            session_front_sasl(s, data, line_len);
        } else {
            session_front_command(s, data, line_len);
        }
        return line_len + eol_len;
    case SMTP_TOO_LONG:
        /* RFC 5321 section 4.5.3.1.4; the reply waits for the end of the line so the
         * session stays in step: one reply per line. */
        if (eol_len != 0) {
            s->steps++;
            if (sasl) {
                session_front_sasl(s, "*", 1);
            } else {
                session_reply_locally(s, SESSION_LOCAL_LINE_TOO_LONG);
            }
        } else {
            s->front_mode = SESSION_FRONT_SKIP_LINE;
            s->skip_sasl = sasl; /* the skipped line answers a 334: cancel it upstream */
        }
        return line_len;
    default:
        return 0;
    }
}

static size_t session_front_skip_line(struct session *s, const char *data, size_t len)
{
    const char *lf = memchr(data, '\n', len);
    if (lf == NULL) {
        return len;
    }
    s->front_mode = SESSION_FRONT_COMMAND;
    s->steps++;
    if (s->skip_sasl) {
        s->skip_sasl = false;
        session_front_sasl(s, "*", 1);
    } else {
        session_reply_locally(s, SESSION_LOCAL_LINE_TOO_LONG);
    }
    return (size_t)(lf - data) + 1;
}

/* session_front_reject_message starts throwing a message away: its upstream connection is
 * reset (the partial message is discarded there, never completed) and reopened. */
static void session_front_reject_message(struct session *s, size_t offset)
{
    log_warn(s->id, "message-rejected", "client=%s reason=%s offset=%zu", s->front_addr,
             smtp_data_reject_name(&s->scanner), offset);
    metrics_inc(METRICS_MESSAGES_REJECTED);
    s->front_mode = SESSION_FRONT_DATA_REJECT;
    session_connect_reopen(s);
}

static size_t session_front_data(struct session *s, const char *data, size_t len)
{
    size_t total = 0;
    for (;;) {
        size_t used;
        switch (smtp_data_scan(&s->scanner, &used, data + total, len - total)) {
        case SMTP_DATA_MORE:
            session_send_body(s, data + total, used);
            return total + used;
        case SMTP_DATA_BARE_LF:
            /* bare_newline = normalize: the line is relayed with CRLF, as Postfix 3.9
             * does; the scanner goes on from the LF. */
            session_send_body(s, data + total, used);
            session_send_back(s, "\r", 1);
            total += used;
            continue;
        case SMTP_DATA_END:
            if (total + used < len) {
                /* The client pipelined more (QUIT, the next MAIL): queued, the end of the
                 * message leaves with it in one write; the copy is at most a read. */
                session_send_back(s, data + total, used);
            } else {
                session_send_body(s, data + total, used);
            }
            s->front_mode = SESSION_FRONT_COMMAND;
            session_push(s, SESSION_PENDING_DATA_END, 0);
            return total + used;
        case SMTP_DATA_REJECT:
            session_front_reject_message(s, used);
            return total + used;
        }
    }
}

static size_t session_front_data_reject(struct session *s, const char *data, size_t len)
{
    size_t used;
    if (!smtp_skip_bad_data(&s->scanner, &used, data, len)) {
        return len;
    }
    s->front_mode = SESSION_FRONT_COMMAND;
    s->in_transaction = false;
    session_replay_message_done(s);
    session_reply_locally(s, SESSION_LOCAL_REJECTED_CONTENT);
    return used;
}

static size_t session_front_chunk(struct session *s, const char *data, size_t len)
{
    size_t take = s->chunk_left < len ? (size_t)s->chunk_left : len;
    if (s->front_mode == SESSION_FRONT_CHUNK) {
        session_send_body(s, data, take);
    }
    s->chunk_left -= take;
    if (s->chunk_left == 0) {
        s->front_mode = SESSION_FRONT_COMMAND;
    }
    return take;
}

bool session_front_in_content(const struct session *s)
{
    switch (s->front_mode) {
    case SESSION_FRONT_DATA:
    case SESSION_FRONT_DATA_REJECT:
    case SESSION_FRONT_CHUNK:
    case SESSION_FRONT_CHUNK_SKIP:
        return true;
    default:
        return false;
    }
}

bool session_front_blocked(const struct session *s)
{
    /* The client's commands wait for what the shared store knows about the peers. */
    if (s->state != SESSION_RELAY || session_learn_waiting(s) || session_gate_waiting(s)) {
        return true;
    }
    bool back_full = leg_unsent(&s->back) >= LEG_HIGH_WATER;
    bool front_full = leg_unsent(&s->front) >= LEG_HIGH_WATER;
    switch (s->front_mode) {
    case SESSION_FRONT_COMMAND:
    case SESSION_FRONT_SASL: {
        /* Commands go up only on a negotiated connection; before the client's greeting
         * they are answered here. */
        bool back_takes = s->back_state == SESSION_BACK_READY ||
                          (s->back_state == SESSION_BACK_GREETED && !s->greeted);
        return !back_takes || s->wait_reply || s->wait_starttls ||
               s->n_pending == SESSION_PENDING_MAX || back_full || front_full;
    }
    case SESSION_FRONT_DATA:
    case SESSION_FRONT_CHUNK:
        return s->back_state != SESSION_BACK_READY || back_full;
    case SESSION_FRONT_SKIP_LINE:
        return s->n_pending == SESSION_PENDING_MAX || front_full;
    case SESSION_FRONT_DATA_REJECT:
    case SESSION_FRONT_CHUNK_SKIP:
        return false;
    }
    return true;
}

bool session_front_process(struct session *s)
{
    bool progress = false;
    while (!session_front_blocked(s)) {
        if (s->front.tls_active && buf_len(&s->front.in) < LEG_READ_SIZE) {
            /* A client that closes without close_notify after its last command has only
             * closed: its commands are answered as after a FIN in cleartext. */
            bool moved = false;
            if (leg_tls_pull(&s->front, &moved) == LEG_TLS_FAILED) {
                log_warn(s->id, "front-tls-error", "peer=%s reason=\"%s\"", s->front_addr,
                         tlsio_reason(&s->front.tls));
                session_abort(s, REASON_END_CLIENT_TLS_ERROR);
                return true;
            }
        }
        /* A BDAT 0 chunk is complete without any byte. */
        if ((s->front_mode == SESSION_FRONT_CHUNK || s->front_mode == SESSION_FRONT_CHUNK_SKIP) &&
            s->chunk_left == 0) {
            s->front_mode = SESSION_FRONT_COMMAND;
        }
        size_t len = buf_len(&s->front.in);
        if (len == 0) {
            break;
        }
        const char *data = buf_head(&s->front.in);
        size_t used = 0;
        switch (s->front_mode) {
        case SESSION_FRONT_COMMAND:
        case SESSION_FRONT_SASL:
            used = session_front_lines(s, data, len);
            break;
        case SESSION_FRONT_SKIP_LINE:
            used = session_front_skip_line(s, data, len);
            break;
        case SESSION_FRONT_DATA:
            used = session_front_data(s, data, len);
            break;
        case SESSION_FRONT_DATA_REJECT:
            used = session_front_data_reject(s, data, len);
            break;
        case SESSION_FRONT_CHUNK:
        case SESSION_FRONT_CHUNK_SKIP:
            used = session_front_chunk(s, data, len);
            break;
        }
        if (used == 0 || !s->front.open) {
            break;
        }
        buf_consume(&s->front.in, used);
        if (session_front_in_content(s)) {
            s->steps++; /* a block of content: the data block timeout starts over */
        }
        progress = true;
    }
    /* The client has sent its last byte: once every reply due is out, the session ends
     * (a pipelining client may send its last commands and close at once). */
    if (s->state == SESSION_RELAY && s->front.eof && !session_front_blocked(s) &&
        !leg_tls_has_input(&s->front)) {
        if (session_mid_message(s)) {
            /* Gone inside a message (a BDAT chunk it never finished, content read only now
             * that a new upstream connection is ready): never an end of data upstream. */
            log_warn(s->id, "client-lost-in-data", "client=%s", s->front_addr);
            session_abort(s, REASON_END_CLIENT_LOST_IN_DATA);
            return true;
        }
        buf_cleanup(&s->front.in); /* an unfinished line: never a command */
        if (s->n_pending == 0) {
            session_finish(s, REASON_END_CLIENT_CLOSED, NULL, NULL);
            progress = true;
        }
    }
    return progress;
}

void session_front_eof(struct session *s)
{
    if (s->state == SESSION_RELAY && session_mid_message(s)) {
        /* Client lost mid-message: the upstream must never see an end-of-data. */
        log_warn(s->id, "client-lost-in-data", "client=%s", s->front_addr);
        session_abort(s, REASON_END_CLIENT_LOST_IN_DATA);
    }
    /* Otherwise the replies still due are awaited: session_front_process ends it. */
}

/* ---- client STARTTLS ---------------------------------------------------------------------- */

/* session_front_starttls_reply sends the 220: the STARTTLS reached the head of the queue. */
static void session_front_starttls_reply(struct session *s)
{
    static const char ready[] = "220 2.0.0 Ready to start TLS\r\n";
    session_send_front(s, ready, sizeof(ready) - 1);
    s->wait_starttls = false;
    s->front_mode = SESSION_FRONT_COMMAND;
    /* From here nothing in front.in is read as a command: the STARTTLS line itself is
     * consumed by the caller, the rest is thrown away by session_front_tls_begin(). */
    session_enter(s, SESSION_FRONT_HANDSHAKE);
}

void session_front_tls_begin(struct session *s)
{
    /* RFC 3207 section 6 (CVE-2011-0411): bytes sent after the STARTTLS line, before our
     * 220 went out, were not protected by TLS and cannot be a legitimate handshake: they
     * are thrown away, never executed. */
    s->front_injected += buf_len(&s->front.in);
    buf_cleanup(&s->front.in);
    if (s->front_injected > 0) {
        log_warn(s->id, "starttls-injection", "client=%s discarded=%" PRIu64, s->front_addr,
                 s->front_injected);
    }
    int rc = s->runtime->front_ctx != NULL ? tlsio_start_front(&s->front.tls, s->runtime->front_ctx)
                                           : UV_ENOTSUP;
    if (rc != 0) {
        log_error(s->id, "front-tls-start-failed", "error=\"%s\"", uv_strerror(rc));
        session_abort(s, REASON_END_INTERNAL_ERROR);
        return;
    }
    s->front.tls_started = true;
    s->tls_started_ms = session_now_ms(s);
}

void session_front_tls_failed(struct session *s, const char *reason)
{
    s->front_starttls = SESSION_STARTTLS_FAILED;
    s->front_tls_error = reason;
    log_warn(s->id, "front-tls-failed", "client=%s reason=\"%s\"", s->front_addr, reason);
    session_learn_client_failed(s);
    session_finish(s, REASON_END_CLIENT_TLS_FAILED, NULL, NULL);
}

bool session_front_handshake(struct session *s)
{
    struct leg *f = &s->front;
    if (!f->tls_started) {
        return false;
    }
    switch (leg_tls_handshake(f)) {
    case LEG_TLS_WANT:
        return false;
    case LEG_TLS_FAILED: {
        const char *reason = tlsio_reason(&f->tls);
        session_front_tls_failed(s, reason[0] != '\0' ? reason
                                    : f->eof          ? "closed during the handshake"
                                                      : "handshake failed");
        return true;
    }
    case LEG_TLS_DONE:
    case LEG_TLS_CLOSED:
    case LEG_TLS_TRUNCATED:
        break;
    }
    s->front_starttls = SESSION_STARTTLS_USED;
    s->need_ehlo = true;
    s->in_transaction = false;
    s->front_mode = SESSION_FRONT_COMMAND;
    if (s->conf->front_tls.ask_client_certificate) {
        tlsio_peer_fingerprint(&f->tls, s->front_cert, sizeof(s->front_cert));
    }
    metrics_observe(METRICS_FRONT_HANDSHAKE_SECONDS,
                    (double)(session_now_ms(s) - s->tls_started_ms) / 1000.0);
    log_info(s->id, "front-tls", "client=%s version=%s cipher=%s%s%s%s", s->front_addr,
             tlsio_version(&f->tls), tlsio_cipher(&f->tls),
             s->front_cert[0] != '\0' ? " client_cert=" : "", s->front_cert,
             tlsio_resumed(&f->tls) ? " resumed=yes" : "");
    session_enter(s, SESSION_RELAY);
    return true;
}

/* ---- replies ----------------------------------------------------------------------------- */

void session_front_edit_ehlo(struct session *s, const char *reply, size_t len, bool to_client)
{
    unsigned caps = 0;
    if (!to_client) {
        if (smtp_ehlo_caps(&caps, reply, len) == SMTP_OK) {
            s->back_caps = caps;
        }
        return;
    }
    size_t cap = len + len / 4 + 16; /* bare-LF lines grow by one byte each */
    char *out = malloc(cap);
    if (out == NULL) {
        session_abort(s, REASON_END_OUT_OF_MEMORY);
        return;
    }
    size_t out_len = 0;
    bool add_starttls = s->offer_starttls && !s->front.tls_active;
    /* XCLIENT would let any client tell an upstream that trusts us who it is. AUTH that
     * the upstream offers inside TLS would invite a cleartext client to send its password
     * in the clear on leg 1: it is shown only when leg 1 is encrypted too. */
    unsigned drop = SMTP_CAP_XCLIENT;
    if (s->back.tls_active && !s->front.tls_active) {
        drop |= SMTP_CAP_AUTH;
    }
    /* REQUIRETLS only where both legs can honour it (RFC 8689): never a promise that a
     * cleartext fallback could break. */
    unsigned seen = 0;
    if (smtp_ehlo_caps(&seen, reply, len) == SMTP_OK) {
        s->back_caps = seen;
    }
    s->offered_requiretls = session_gate_offers_requiretls(s);
    if (!s->offered_requiretls) {
        drop |= SMTP_CAP_REQUIRETLS;
    }
    enum smtp_result rc = smtp_ehlo_edit(out, &out_len, &caps, cap, reply, len, add_starttls, drop);
    if (rc == SMTP_OK) {
        s->back_caps = caps;
        session_send_front(s, out, out_len);
    }
    free(out);
    if (rc != SMTP_OK) {
        session_back_lost(s, REASON_END_UPSTREAM_PROTOCOL_ERROR, "malformed EHLO reply");
    }
}

void session_front_greeting(struct session *s, const char *greeting, size_t len)
{
    session_send_front(s, greeting, len);
    session_enter(s, SESSION_RELAY);
}

void session_front_answer_greeting(struct session *s, struct buf *reply, int code)
{
    assert(session_front_head(s) == SESSION_PENDING_GREETING);
    session_pop(s);
    s->steps++;
    if (!s->client_helo && code == 250) {
        session_front_edit_ehlo(s, buf_head(reply), buf_len(reply), true);
    } else {
        session_send_front(s, buf_head(reply), buf_len(reply));
    }
    buf_cleanup(reply);
    session_front_send_ready_local_replies(s);
}

/* session_front_reply_done acts on the complete reply to a place of |kind|. */
static void session_front_reply_done(struct session *s, enum session_pending_kind kind, int code)
{
    switch (kind) {
    case SESSION_PENDING_EHLO:
        if (code == 250) {
            session_front_edit_ehlo(s, buf_head(&s->reply), buf_len(&s->reply), true);
        } else {
            session_send_front(s, buf_head(&s->reply), buf_len(&s->reply));
        }
        buf_cleanup(&s->reply);
        break;
    case SESSION_PENDING_DATA:
        s->wait_reply = false;
        if (code == 354) {
            s->front_mode = SESSION_FRONT_DATA;
            smtp_data_scanner_init(&s->scanner,
                                   s->conf->bare_newline == CONF_BARE_NEWLINE_NORMALIZE);
        }
        break;
    case SESSION_PENDING_DATA_END:
    case SESSION_PENDING_BDAT_LAST:
        s->in_transaction = false;
        session_replay_message_done(s);
        if (code >= 200 && code < 300) {
            s->messages++;
            metrics_inc(METRICS_MESSAGES);
        }
        break;
    case SESSION_PENDING_MAIL:
        if (code < 200 || code >= 300) {
            s->in_transaction = false;
        }
        break;
    case SESSION_PENDING_AUTH:
        s->wait_reply = false;
        if (code == 334) {
            s->front_mode = SESSION_FRONT_SASL;
        }
        break;
    case SESSION_PENDING_QUIT:
        session_finish(s, REASON_END_QUIT, NULL, NULL);
        break;
    default:
        break;
    }
}

void session_front_unsolicited(struct session *s, const char *line, size_t len, int code, bool done)
{
    /* Nobody asked: only a 421 (RFC 5321 section 3.8) means something; anything else
     * would be taken for the reply to the client's next command. */
    char text[80];
    log_warn(s->id, "upstream-unsolicited", "upstream=%s line=\"%s\"", s->back_addr,
             log_escape(text, sizeof(text), line, len, 60));
    if (code == 421) {
        session_send_front(s, line, len);
        session_send_front(s, "\r\n", 2);
        if (done) {
            session_finish(s, REASON_END_UPSTREAM_421, NULL, NULL);
        }
        return;
    }
    session_finish(s, REASON_END_UPSTREAM_PROTOCOL_ERROR, "421 4.4.2",
                   "Upstream protocol error, closing connection");
}

void session_front_reply_line(struct session *s, const char *line, size_t len, int code, bool done)
{
    if (s->n_pending_back == 0) {
        session_front_unsolicited(s, line, len, code, done);
        return;
    }
    enum session_pending_kind kind = session_front_head(s);
    assert(session_kind_waits_back(kind));
    if (kind == SESSION_PENDING_EHLO) {
        if (buf_append(&s->reply, line, len, SMTP_EHLO_REPLY_MAX) != 0 ||
            buf_append(&s->reply, "\r\n", 2, SMTP_EHLO_REPLY_MAX) != 0) {
            session_back_lost(s, REASON_END_UPSTREAM_PROTOCOL_ERROR, "EHLO reply too long");
            return;
        }
    } else {
        session_send_front(s, line, len);
        session_send_front(s, "\r\n", 2);
    }
    if (!done) {
        return;
    }
    if (s->pending[s->pending_head].recorded) {
        session_replay_answered(s, code);
    }
    session_pop(s);
    s->steps++;
    session_front_reply_done(s, kind, code);
    if (code == 421 && s->state == SESSION_RELAY) {
        /* RFC 5321 section 3.8: the upstream is closing; so does the session. */
        session_finish(s, REASON_END_UPSTREAM_421, NULL, NULL);
        return;
    }
    session_front_send_ready_local_replies(s);
}
