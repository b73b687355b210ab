/*
 * session_replay: the envelope record, and its replay on a new upstream connection when a
 * TLS upstream broke mid-transaction (before any message content went up, so nothing can
 * be delivered twice). The new connection is negotiated like every other (identity, EHLO,
 * STARTTLS as the ladder says); then the lines the client already saw answered are sent one
 * by one and must be answered alike, and the rest go up together, their replies the
 * client's.
 */
#include "session_impl.h"

#include "log.h"

/* A record: 2 bytes of reply code (0: not answered yet), 2 bytes of length, the line. */
static size_t session_replay_record(const struct session *s, size_t at, int *out_code,
                                    const char **out_line, size_t *out_len)
{
    const unsigned char *p = (const unsigned char *)buf_head(&s->replay) + at;
    *out_code = p[0] << 8 | p[1];
    *out_len = (size_t)(p[2] << 8 | p[3]);
    *out_line = (const char *)p + 4;
    return at + 4 + *out_len;
}

static bool session_replay_all_answered(const struct session *s)
{
    for (size_t at = 0; at < buf_len(&s->replay);) {
        int seen;
        const char *line;
        size_t len;
        at = session_replay_record(s, at, &seen, &line, &len);
        if (seen == 0) {
            return false;
        }
    }
    return true;
}

void session_replay_note(struct session *s, enum smtp_verb verb, const char *line, size_t len)
{
    if (!s->back.tls_active || s->back_state != SESSION_BACK_READY) {
        return;
    }
    switch (verb) {
    case SMTP_VERB_EHLO:
    case SMTP_VERB_HELO:
        buf_cleanup(&s->replay); /* its own reply is not replayable: wait for it */
        s->replay_ok = false;
        return;
    case SMTP_VERB_RSET:
        /* A new transaction: the record starts over, unless a recorded command before the
         * RSET still waits for its reply (pipelined): replies are matched to records in
         * order, so that one stays. */
        if (session_replay_all_answered(s)) {
            buf_cleanup(&s->replay);
        }
        s->replay_ok = true;
        break;
    case SMTP_VERB_MAIL:
    case SMTP_VERB_RCPT:
    case SMTP_VERB_NOOP:
        break;
    default: /* DATA, BDAT, AUTH, VRFY...: not safe to send twice */
        s->replay_ok = false;
        return;
    }
    unsigned char head[4] = {0, 0, (unsigned char)(len >> 8), (unsigned char)len};
    if (!s->replay_ok || len > 0xffff || s->n_pending == 0 ||
        buf_append(&s->replay, head, sizeof(head), SESSION_REPLAY_MAX) != 0 ||
        buf_append(&s->replay, line, len, SESSION_REPLAY_MAX) != 0) {
        s->replay_ok = false;
        return;
    }
    unsigned last = (s->pending_head + s->n_pending - 1) % SESSION_PENDING_MAX;
    s->pending[last].recorded = 1;
}

void session_replay_answered(struct session *s, int code)
{
    for (size_t at = 0; at < buf_len(&s->replay);) {
        int seen;
        const char *line;
        size_t len;
        size_t next = session_replay_record(s, at, &seen, &line, &len);
        if (seen == 0) {
            unsigned char *p = (unsigned char *)buf_head(&s->replay) + at;
            p[0] = (unsigned char)(code >> 8);
            p[1] = (unsigned char)code;
            return;
        }
        at = next;
    }
}

void session_replay_message_done(struct session *s)
{
    buf_cleanup(&s->replay); /* the next transaction may be replayed again */
    s->replay_ok = s->back.tls_active;
}

bool session_replay_possible(const struct session *s)
{
    if (!s->replay_ok || s->state != SESSION_RELAY || session_mid_message(s) || s->wait_reply ||
        s->front_mode != SESSION_FRONT_COMMAND) {
        return false;
    }
    for (unsigned i = 0; i < s->n_pending; i++) {
        const struct session_pending *p = &s->pending[(s->pending_head + i) % SESSION_PENDING_MAX];
        if (p->kind != SESSION_PENDING_LOCAL && !p->recorded) {
            return false;
        }
    }
    return true;
}

/* session_replay_send_from sends the record at |at|; from the first one the client has not
 * seen answered, it sends all the rest and relaying goes on: their replies are the
 * client's. */
static void session_replay_send_from(struct session *s, size_t at)
{
    if (at < buf_len(&s->replay)) {
        int seen;
        const char *line;
        size_t len;
        size_t next = session_replay_record(s, at, &seen, &line, &len);
        if (seen != 0) {
            session_send_back(s, line, len);
            session_send_back(s, "\r\n", 2);
            s->replay_at = at;
            return;
        }
        for (; at < buf_len(&s->replay); at = next) {
            next = session_replay_record(s, at, &seen, &line, &len);
            session_send_back(s, line, len);
            session_send_back(s, "\r\n", 2);
        }
    }
    log_info(s->id, "back-replayed", "upstream=%s", s->back_addr);
    session_back_enter(s, SESSION_BACK_READY);
}

void session_replay_begin(struct session *s)
{
    session_replay_send_from(s, 0);
}

void session_replay_reply(struct session *s, int code)
{
    int seen;
    const char *record;
    size_t record_len;
    size_t next = session_replay_record(s, s->replay_at, &seen, &record, &record_len);
    /* The client acted on the first answer: the new one must agree with it. */
    if (code / 100 != seen / 100) {
        char why[48];
        snprintf(why, sizeof(why), "reply-%d-where-client-saw-%d", code, seen);
        session_back_lost(s, REASON_END_UPSTREAM_REPLAY_FAILED, why);
        return;
    }
    session_replay_send_from(s, next);
}
