/*
 * session: the entry points of a session. Accept and free, every libuv callback, and the
 * pump that runs after each of them: process both legs, flush, adjust reading
 * (back-pressure) and the one deadline. What the bytes mean is decided in session_front.c
 * (leg 1) and session_back.c (leg 2); nothing here parses SMTP.
 */
#include "session_impl.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>

#include <uv.h>

#include "anvil.h"
#include "learn.h"
#include "log.h"
#include "metrics.h"
#include "proxyproto.h"
#include "runtime.h"

static const char *const session_starttls_names[] = {
    [SESSION_STARTTLS_NOT_OFFERED] = "not-offered", [SESSION_STARTTLS_OFFERED] = "offered",
    [SESSION_STARTTLS_HIDDEN] = "hidden",           [SESSION_STARTTLS_USED] = "used",
    [SESSION_STARTTLS_FAILED] = "failed",
};

static const char *session_state_name(enum session_state state)
{
    switch (state) {
    case SESSION_ACCEPTED:
        return "accepted";
    case SESSION_PROXY_HEADER:
        return "proxy-header";
    case SESSION_OPENING:
        return "opening";
    case SESSION_RELAY:
        return "relay";
    case SESSION_FRONT_HANDSHAKE:
        return "front-handshake";
    case SESSION_CLOSING:
        return "closing";
    }
    return "?";
}

void session_enter(struct session *s, enum session_state next)
{
    log_debug(s->id, "state", "from=%s to=%s", session_state_name(s->state),
              session_state_name(next));
    s->state = next;
    s->steps++;
}

uint64_t session_now_ms(const struct session *s)
{
    return uv_now(s->env->loop);
}

static void session_run(struct session *s);
static void session_on_timeout(uv_timer_t *timer);
void session_on_back_closed(uv_handle_t *handle);

/* ---- lifetime ---------------------------------------------------------------------- */

/* session_count_end counts a finished session in the metrics. */
static void session_count_end(const struct session *s, uint64_t duration_ms)
{
    metrics_inc(metrics_session_end(s->end_reason));
    metrics_add(METRICS_BYTES_IN, s->front.bytes_read);
    metrics_add(METRICS_BYTES_OUT, s->back.bytes_read);
    metrics_observe(METRICS_SESSION_SECONDS, (double)duration_ms / 1000.0);
    switch (s->front_starttls) {
    case SESSION_STARTTLS_USED:
        metrics_inc(METRICS_FRONT_STARTTLS_OFFERED);
        metrics_inc(METRICS_FRONT_STARTTLS_USED);
        break;
    case SESSION_STARTTLS_FAILED:
        metrics_inc(METRICS_FRONT_STARTTLS_OFFERED);
        metrics_inc(METRICS_FRONT_STARTTLS_FAILED);
        break;
    case SESSION_STARTTLS_OFFERED:
        metrics_inc(METRICS_FRONT_STARTTLS_OFFERED);
        break;
    case SESSION_STARTTLS_HIDDEN:
        metrics_inc(METRICS_FRONT_STARTTLS_HIDDEN);
        break;
    case SESSION_STARTTLS_NOT_OFFERED:
        break;
    }
}

/* session_log_end writes the session line: who, how much, TLS on each leg, how it ended. */
static void session_log_end(const struct session *s, uint64_t duration_ms)
{
    char front_tls[TLSIO_REASON_MAX + TLSIO_FINGERPRINT_MAX + 96] = "front_tls=none";
    if (s->front.tls_active) {
        snprintf(front_tls, sizeof(front_tls), "front_tls=%s front_cipher=%s%s%s",
                 tlsio_version(&s->front.tls), tlsio_cipher(&s->front.tls),
                 s->front_cert[0] != '\0' ? " front_client_cert=" : "", s->front_cert);
    } else if (s->front_starttls == SESSION_STARTTLS_FAILED) {
        snprintf(front_tls, sizeof(front_tls), "front_tls=none front_tls_error=\"%s\"",
                 s->front_tls_error);
    }
    char back_tls[sizeof(s->back_tls_reason) + 96];
    if (s->back.tls_active) {
        snprintf(back_tls, sizeof(back_tls), "back_tls=%s back_cipher=%s%s%s%s",
                 tlsio_version(&s->back.tls), tlsio_cipher(&s->back.tls),
                 s->back_tls_reason[0] != '\0' ? " back_tls_note=\"" : "", s->back_tls_reason,
                 s->back_tls_reason[0] != '\0' ? "\"" : "");
    } else {
        snprintf(back_tls, sizeof(back_tls), "back_tls=cleartext back_tls_reason=\"%s\"",
                 s->back_tls_reason[0] != '\0' ? s->back_tls_reason : "none");
    }
    /* A refused flood would otherwise write a line per connection: the refusals are
     * counted in the metrics and reported once per client and window (or per second). */
    bool refused =
        s->end_reason == REASON_END_LIMIT || s->end_reason == REASON_END_TOO_MANY_CONNECTIONS;
    log_event(refused ? CONF_LOG_DEBUG : CONF_LOG_INFO, s->id, "session",
              "client=%s upstream=%s bytes_in=%" PRIu64 " bytes_out=%" PRIu64 " messages=%" PRIu64
              " %s starttls=%s %s duration_ms=%" PRIu64 " end=%s",
              s->front_addr, s->back_addr[0] != '\0' ? s->back_addr : s->conf->upstream.host,
              s->front.bytes_read, s->back.bytes_read, s->messages, front_tls,
              session_starttls_names[s->front_starttls], back_tls, duration_ms,
              reason_end_name(s->end_reason));
}

static void session_free(struct session *s)
{
    session_learn_end(s);
    session_gate_end(s);
    uint64_t duration_ms = session_now_ms(s) - s->started_ms;
    session_log_end(s, duration_ms);
    if (s->addrs != NULL) {
        uv_freeaddrinfo(s->addrs);
    }
    leg_cleanup(&s->front);
    leg_cleanup(&s->back);
    buf_cleanup(&s->reply);
    buf_cleanup(&s->client_greeting);
    buf_cleanup(&s->probe_reply);
    buf_cleanup(&s->replay);
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else {
        s->env->sessions = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    if (s->counted) {
        atomic_fetch_sub(s->env->n_connections, 1);
        metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, -1);
    }
    anvil_close(s->env->anvil, &s->anvil_place);
    session_count_end(s, duration_ms);
    runtime_unref(s->runtime);
    free(s);
}

static void session_unref(struct session *s)
{
    assert(s->n_handles > 0);
    if (--s->n_handles == 0) {
        session_free(s);
    }
}

static void session_on_handle_closed(uv_handle_t *handle)
{
    session_unref(handle->data);
}

void session_on_back_closed(uv_handle_t *handle)
{
    struct session *s = handle->data;
    session_connect_closed(s); /* may open the next connection (a fallback step), or give up */
    if (s->front.open) {
        session_run(s);
    }
    session_unref(s);
}

/* session_leg_close closes |leg|'s socket, with a reset when |reset| (the peer must not
 * take a half-sent message as complete). */
static void session_leg_close(struct leg *leg, uv_close_cb cb, bool reset)
{
    if (!leg->open) {
        return;
    }
    leg->open = false;
    leg->reading = false;
    if (reset && uv_tcp_close_reset(&leg->tcp, cb) == 0) {
        return;
    }
    uv_close((uv_handle_t *)&leg->tcp, cb);
}

void session_close_back(struct session *s, bool reset)
{
    session_leg_close(&s->back, session_on_back_closed, reset);
}

bool session_mid_message(const struct session *s)
{
    if (session_front_in_content(s)) {
        return true;
    }
    /* DATA went up and its 354 may be on its way: content pipelined behind it must not be
     * completed upstream for a client that has left. (Complete BDAT chunks are not a
     * message until BDAT LAST: their replies are still awaited.) */
    for (unsigned i = 0; i < s->n_pending; i++) {
        if (s->pending[(s->pending_head + i) % SESSION_PENDING_MAX].kind == SESSION_PENDING_DATA) {
            return true;
        }
    }
    return false;
}

void session_abort(struct session *s, enum reason_end reason)
{
    if (s->end_reason == REASON_END_UNKNOWN) {
        s->end_reason = reason;
    }
    if (s->state != SESSION_CLOSING) {
        session_enter(s, SESSION_CLOSING);
    }
    if (s->resolve_req != NULL) {
        uv_cancel((uv_req_t *)s->resolve_req);
    }
    if (s->back_state != SESSION_BACK_GONE) {
        session_back_enter(s, SESSION_BACK_GONE);
    }
    session_close_back(s, session_mid_message(s));
    session_leg_close(&s->front, session_on_handle_closed, false);
    if (!uv_is_closing((uv_handle_t *)&s->timer)) {
        uv_close((uv_handle_t *)&s->timer, session_on_handle_closed);
    }
}

void session_finish(struct session *s, enum reason_end reason, const char *status, const char *text)
{
    if (s->state == SESSION_CLOSING) {
        return;
    }
    if (s->end_reason == REASON_END_UNKNOWN) {
        s->end_reason = reason;
    }
    if (s->resolve_req != NULL) {
        uv_cancel((uv_req_t *)s->resolve_req);
    }
    bool mid_message = session_mid_message(s);
    session_enter(s, SESSION_CLOSING);
    if (s->back_state != SESSION_BACK_GONE) {
        session_back_enter(s, SESSION_BACK_GONE);
    }
    session_close_back(s, mid_message);
    if (status != NULL) {
        char reply[512];
        int n = snprintf(reply, sizeof(reply), "%s %s %s\r\n", status, s->conf->hostname, text);
        if (n > 0 && (size_t)n < sizeof(reply)) {
            session_send_front(s, reply, (size_t)n);
        }
    }
    buf_cleanup(&s->front.in);
}

/* ---- output ---------------------------------------------------------------------------- */

void session_send_front(struct session *s, const void *data, size_t len)
{
    if (s->front.open && leg_queue(&s->front, data, len) != 0) {
        log_error(s->id, "bug", "front output over its cap: %zu unsent", leg_unsent(&s->front));
        session_abort(s, REASON_END_OUT_OF_MEMORY);
    }
}

void session_send_back(struct session *s, const void *data, size_t len)
{
    if (s->back.open && leg_queue(&s->back, data, len) != 0) {
        log_error(s->id, "bug", "back output over its cap: %zu unsent", leg_unsent(&s->back));
        session_abort(s, REASON_END_OUT_OF_MEMORY);
    }
}

void session_send_body(struct session *s, const void *data, size_t len)
{
    if (!s->back.open) {
        return;
    }
    int rc = leg_send(&s->back, data, len);
    if (rc == -ENOBUFS || rc == -ENOMEM) {
        log_error(s->id, "bug", "back output over its cap: %zu unsent", leg_unsent(&s->back));
        session_abort(s, REASON_END_OUT_OF_MEMORY);
    } else if (rc != 0) {
        session_back_lost(s, REASON_END_UPSTREAM_WRITE_ERROR, uv_strerror(rc));
    }
}

static void session_on_write(uv_write_t *req, int status)
{
    struct leg *leg = req->data;
    struct session *s = leg->tcp.data;
    leg_written(leg);
    if (status < 0) {
        if (status == UV_ECANCELED) {
            return;
        }
        if (leg == &s->front) {
            session_abort(s, REASON_END_CLIENT_WRITE_ERROR);
        } else {
            session_back_lost(s, REASON_END_UPSTREAM_WRITE_ERROR, uv_strerror(status));
        }
    }
    session_run(s);
}

/* session_flush writes what |leg| has queued. Returns true when bytes moved. */
static bool session_flush(struct session *s, struct leg *leg)
{
    bool moved = false;
    int rc = leg_flush(leg, session_on_write, &moved);
    if (rc != 0) {
        if (leg == &s->front) {
            log_warn(s->id, "client-write-error", "client=%s error=\"%s\"%s%s%s", s->front_addr,
                     uv_strerror(rc), rc == UV_EPROTO ? " reason=\"" : "",
                     rc == UV_EPROTO ? tlsio_reason(&leg->tls) : "", rc == UV_EPROTO ? "\"" : "");
            session_abort(s, rc == UV_EPROTO ? REASON_END_CLIENT_TLS_ERROR
                                             : REASON_END_CLIENT_WRITE_ERROR);
        } else {
            session_back_lost(s, REASON_END_UPSTREAM_WRITE_ERROR, uv_strerror(rc));
        }
        return false;
    }
    return moved;
}

/* session_close_notify queues our close_notify behind the last reply, so that both leave
 * in one write: a TLS client learns from it that it got everything (RFC 8446 6.1). */
static void session_close_notify(struct session *s)
{
    struct leg *f = &s->front;
    if (!f->open || !f->tls_active || s->close_notified) {
        return;
    }
    if (leg_seal(f) != 0 || buf_len(&f->tls_plain) > 0) {
        /* A failure is reported (and ends the session) by the flush that follows; a reply
         * that did not all fit yet is sealed, and followed, once the queue drained. */
        return;
    }
    s->close_notified = true;
    tlsio_shutdown(&f->tls);
}

/* In SESSION_CLOSING: once our last reply is out, half-close and drain the client's
 * input for a moment, so a client still sending reads our reply instead of a reset. */
static void session_closing_progress(struct session *s)
{
    struct leg *f = &s->front;
    if (!f->open || f->writing || leg_unsent(f) > 0 || s->lingering) {
        return;
    }
    if (f->eof) {
        session_abort(s, s->end_reason);
        return;
    }
    /* Nothing is queued or in flight: shutdown() itself, as uv_shutdown() would only add an
     * epoll_ctl() round for the write it waits for. */
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&f->tcp, &fd) != 0 || shutdown(fd, SHUT_WR) != 0) {
        session_abort(s, s->end_reason);
        return;
    }
    s->lingering = true;
}

/* ---- reading and back-pressure ----------------------------------------------------------- */

static void session_on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *out)
{
    struct session *s = handle->data;
    (void)suggested;
    leg_alloc(handle == (uv_handle_t *)&s->front.tcp ? &s->front : &s->back, out);
}

static void session_on_front_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b);

/*
 * session_update_reading is all of the back-pressure: a leg is read only while there is
 * room for its input and the other leg (and, for the client, its own replies) has less than
 * LEG_HIGH_WATER unsent. Locally answered commands count too: a client that pipelines
 * thousands of them without reading the replies is simply not read.
 */
static void session_update_reading(struct session *s)
{
    bool front_want = false;
    bool back_want = false;
    size_t front_unsent = leg_unsent(&s->front);
    switch (s->state) {
    case SESSION_PROXY_HEADER:
        front_want = !s->front.eof && buf_len(&s->front.in) < PROXYPROTO_HEADER_MAX;
        break;
    case SESSION_RELAY:
        front_want = leg_wants_read(&s->front) && leg_unsent(&s->back) < LEG_HIGH_WATER &&
                     front_unsent < LEG_HIGH_WATER;
        break;
    case SESSION_FRONT_HANDSHAKE:
        /* Not before our 220 is out and TLS started: what the client sends meanwhile stays
         * in the kernel, and only TLS reads it. */
        front_want =
            s->front.tls_started && !s->front.eof && leg_tls_unread(&s->front) < LEG_READ_SIZE;
        break;
    case SESSION_CLOSING:
        front_want = s->lingering && !s->front.eof;
        break;
    case SESSION_ACCEPTED:
    case SESSION_OPENING:
        break;
    }
    if (s->state == SESSION_OPENING || s->state == SESSION_RELAY ||
        s->state == SESSION_FRONT_HANDSHAKE) {
        /* Asked for while connecting too: libuv then turns the connect's registration into
         * the read's (one epoll_ctl) instead of dropping it and adding it again. */
        bool connecting = s->back_state == SESSION_BACK_CONNECTING;
        back_want = (connecting || session_back_wants_input(s)) && leg_wants_read(&s->back) &&
                    front_unsent < LEG_HIGH_WATER;
    }
    leg_set_reading(&s->front, front_want, session_on_alloc, session_on_front_read);
    leg_set_reading(&s->back, back_want, session_on_alloc, session_on_back_read);
}

/* ---- the deadline ------------------------------------------------------------------------- */

/* session_wait_for names what the session waits for now, which picks the timeout. */
static enum session_wait session_wait_for(const struct session *s)
{
    switch (s->state) {
    case SESSION_ACCEPTED:
        return SESSION_WAIT_NONE;
    case SESSION_PROXY_HEADER:
        return SESSION_WAIT_PROXY_HEADER;
    case SESSION_FRONT_HANDSHAKE:
        return SESSION_WAIT_FRONT_TLS;
    case SESSION_CLOSING:
        return SESSION_WAIT_CLOSING;
    case SESSION_OPENING:
    case SESSION_RELAY:
        break;
    }
    if (session_gate_waiting(s) && !session_gate_facts_in(s)) {
        return SESSION_WAIT_GATE; /* once they are in, the RCPT waits for leg 2 below */
    }
    switch (s->back_state) {
    case SESSION_BACK_IDLE:
    case SESSION_BACK_RESOLVING:
    case SESSION_BACK_CONNECTING:
    case SESSION_BACK_RECONNECTING:
        return SESSION_WAIT_CONNECT;
    case SESSION_BACK_GREETING:
        return SESSION_WAIT_GREETING;
    case SESSION_BACK_PROBE:
    case SESSION_BACK_XCLIENT:
    case SESSION_BACK_REPLAY:
        return SESSION_WAIT_BACK_REPLY;
    case SESSION_BACK_STARTTLS:
    case SESSION_BACK_HANDSHAKE:
        return SESSION_WAIT_BACK_TLS;
    case SESSION_BACK_HELLO:
        return s->back.tls_active ? SESSION_WAIT_BACK_TLS : SESSION_WAIT_BACK_REPLY;
    case SESSION_BACK_GONE:
        return SESSION_WAIT_NONE;
    case SESSION_BACK_GREETED:
    case SESSION_BACK_READY:
        break;
    }
    if (session_front_in_content(s)) {
        return SESSION_WAIT_CONTENT;
    }
    if (s->n_pending_back > 0) {
        enum session_pending_kind head = session_front_head(s);
        return head == SESSION_PENDING_DATA_END || head == SESSION_PENDING_BDAT_LAST
                   ? SESSION_WAIT_DATA_END
                   : SESSION_WAIT_BACK_REPLY;
    }
    return SESSION_WAIT_COMMAND;
}

static uint64_t session_wait_ms(const struct session *s, enum session_wait wait)
{
    const struct conf *c = s->conf;
    switch (wait) {
    case SESSION_WAIT_PROXY_HEADER:
    case SESSION_WAIT_CONNECT:
        return c->timeouts.connect_ms;
    case SESSION_WAIT_GREETING:
        return c->timeouts.greeting_ms;
    case SESSION_WAIT_BACK_TLS:
    case SESSION_WAIT_FRONT_TLS:
        return c->timeouts.tls_handshake_ms;
    case SESSION_WAIT_DATA_END:
        return c->timeouts.data_end_ms;
    case SESSION_WAIT_CONTENT:
        return c->timeouts.data_block_ms;
    case SESSION_WAIT_CLOSING:
        return s->shutting_down ? SESSION_SHUTDOWN_LINGER_MS : SESSION_LINGER_MS;
    case SESSION_WAIT_GATE:
        return c->recipients.wait_ms;
    case SESSION_WAIT_BACK_REPLY:
    case SESSION_WAIT_COMMAND:
    case SESSION_WAIT_NONE:
        break;
    }
    return c->timeouts.command_ms;
}

void session_deadline(struct session *s, uint64_t ms)
{
    if (uv_is_closing((uv_handle_t *)&s->timer)) {
        return;
    }
    uint64_t now = session_now_ms(s);
    s->deadline = now + ms;
    if (!uv_is_active((uv_handle_t *)&s->timer) || s->deadline < s->timer_due) {
        s->timer_due = s->deadline;
        uv_timer_start(&s->timer, session_on_timeout, ms, 0);
    }
}

/*
 * session_update_deadline restarts the deadline when the session starts waiting for
 * something else, or when what it waited for completed a unit (a command line, a reply, a
 * block of content, a state). Bytes that complete nothing move nothing: a command line, a
 * reply, a PROXY header or a handshake must be whole within its timeout from its first
 * byte, however slowly it trickles in.
 */
static void session_update_deadline(struct session *s)
{
    enum session_wait wait = session_wait_for(s);
    if (wait == s->wait && (s->steps == s->wait_steps || wait == SESSION_WAIT_CLOSING)) {
        return;
    }
    s->wait = wait;
    s->wait_steps = s->steps;
    if (wait == SESSION_WAIT_NONE) {
        uv_timer_stop(&s->timer);
        return;
    }
    session_deadline(s, session_wait_ms(s, wait));
}

static void session_on_timeout(uv_timer_t *timer)
{
    struct session *s = timer->data;
    uint64_t now = session_now_ms(s);
    if (now < s->deadline) {
        s->timer_due = s->deadline;
        uv_timer_start(&s->timer, session_on_timeout, s->deadline - now, 0);
        return;
    }
    switch (s->wait) {
    case SESSION_WAIT_NONE:
        return;
    case SESSION_WAIT_PROXY_HEADER:
        log_warn(s->id, "proxy-header-timeout", "peer=%s", s->front_addr);
        session_abort(s, REASON_END_BAD_PROXY_HEADER);
        return;
    case SESSION_WAIT_CONNECT:
    case SESSION_WAIT_GREETING:
    case SESSION_WAIT_BACK_REPLY:
    case SESSION_WAIT_BACK_TLS:
    case SESSION_WAIT_DATA_END:
        session_back_timeout(s);
        break;
    case SESSION_WAIT_COMMAND:
    case SESSION_WAIT_CONTENT:
        log_info(s->id, "client-timeout", "client=%s phase=%s", s->front_addr,
                 s->wait == SESSION_WAIT_CONTENT ? "data" : "command");
        session_finish(s, REASON_END_TIMEOUT, "421 4.4.2", "Timeout, closing connection");
        break;
    case SESSION_WAIT_FRONT_TLS:
        session_front_tls_failed(s, "handshake timeout");
        break;
    case SESSION_WAIT_CLOSING:
        session_abort(s, s->end_reason);
        return;
    case SESSION_WAIT_GATE:
        session_gate_timeout(s);
        break;
    }
    session_run(s);
}

/* ---- the pump ----------------------------------------------------------------------------- */

/*
 * session_run runs at the end of every callback. It processes both legs and flushes until
 * nothing moves: whenever back-pressure lifts (a flush emptied a queue, possibly at once
 * with uv_try_write and no callback to come), bytes held in either leg's input, in its TLS
 * buffers or inside TLS are processed now, since no socket event would bring them back.
 */
static void session_run(struct session *s)
{
    for (unsigned rounds = 0;; rounds++) {
        if (s->state == SESSION_CLOSING || !s->front.open) {
            break;
        }
        assert(rounds < 100000);
        bool progress = false;
        if (s->state == SESSION_FRONT_HANDSHAKE) {
            if (!s->front.tls_started && s->front.open && leg_unsent(&s->front) == 0 &&
                !s->front.writing) {
                session_front_tls_begin(s);
            }
            progress |= session_front_handshake(s);
        }
        progress |= session_back_process(s);
        progress |= session_gate_facts_ready(s);
        progress |= session_front_process(s);
        bool back_moved = session_flush(s, &s->back);
        if (back_moved && session_front_in_content(s)) {
            s->steps++; /* the upstream takes content: the data block goes on */
        }
        progress |= back_moved;
        if (s->state == SESSION_CLOSING) {
            break; /* the last reply leaves below, with a close_notify if TLS */
        }
        progress |= session_flush(s, &s->front);
        if (!progress) {
            break;
        }
    }
    if (s->state == SESSION_CLOSING) {
        session_close_notify(s);
        (void)session_flush(s, &s->front);
        session_closing_progress(s);
    }
    if (s->front.open) {
        session_update_reading(s);
        session_update_deadline(s);
    }
}

/* ---- reads ---------------------------------------------------------------------------------- */

static void session_on_front_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    struct session *s = stream->data;
    (void)b;
    if (!leg_received(&s->front, nread)) {
        return;
    }
    switch (s->state) {
    case SESSION_PROXY_HEADER:
        session_front_proxy_header(s);
        break;
    case SESSION_RELAY:
    case SESSION_FRONT_HANDSHAKE:
        if (nread < 0) {
            session_front_eof(s);
        }
        break;
    case SESSION_CLOSING:
        /* Lingering: the client's words no longer matter. */
        buf_cleanup(&s->front.in);
        leg_tls_drop_input(&s->front);
        if (nread < 0) {
            session_abort(s, s->end_reason);
            return;
        }
        break;
    case SESSION_ACCEPTED:
    case SESSION_OPENING:
        log_warn(s->id, "bug", "front read in state %s", session_state_name(s->state));
        assert(!"front read in unexpected state");
        session_abort(s, REASON_END_INTERNAL_ERROR);
        return;
    }
    session_run(s);
}

void session_on_back_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    struct session *s = stream->data;
    (void)b;
    if (!leg_received(&s->back, nread)) {
        return;
    }
    session_run(s); /* session_back_process() reads the bytes, and the end */
}

void session_on_back_connect(uv_connect_t *req, int status)
{
    struct session *s = req->data;
    bool current = status != UV_ECANCELED && s->back_state == SESSION_BACK_CONNECTING;
    if (current) {
        session_connect_done(s, status);
        session_run(s);
    }
    session_unref(s); /* the request */
}

void session_on_client_known(void *arg, enum store_answer answer, const char *value)
{
    struct session *s = arg;
    (void)value;
    session_learn_client_answer(s, answer);
    session_run(s);
}

void session_on_gate_facts(void *arg, struct gate_lookup *q)
{
    struct session *s = arg;
    (void)q;
    session_run(s); /* decides the held RCPT when leg 2 can take it */
}

void session_on_upstream_known(void *arg, enum store_answer answer, const char *value)
{
    struct session *s = arg;
    session_learn_upstream_answer(s, answer, value);
    session_run(s);
}

void session_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct session *s = req->data;
    free(req);
    s->resolve_req = NULL;
    if (status == UV_ECANCELED || s->back_state != SESSION_BACK_RESOLVING) {
        uv_freeaddrinfo(res);
    } else {
        session_connect_resolved(s, status, res);
        session_run(s);
    }
    session_unref(s); /* the request */
}

/* ---- starting --------------------------------------------------------------------------- */

static struct session *session_new(struct session_env *env)
{
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->env = env;
    s->runtime = runtime_ref(env->runtime);
    s->conf = s->runtime->conf;
    /* splitmix64 over a random start: unique per loop, unpredictable across runs. */
    uint64_t z = (env->next_id += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    s->id = z ^ (z >> 31);
    s->state = SESSION_ACCEPTED;
    s->back_state = SESSION_BACK_IDLE;
    s->started_ms = uv_now(env->loop);
    leg_init(&s->front);
    leg_init(&s->back);
    buf_init(&s->reply);
    buf_init(&s->client_greeting);
    buf_init(&s->probe_reply);
    buf_init(&s->replay);
    smtp_reply_parser_init(&s->reply_parser);
    ladder_start(&s->attempt);
    s->next = env->sessions;
    if (env->sessions != NULL) {
        env->sessions->prev = s;
    }
    env->sessions = s;
    return s;
}

/* session_is_local_address tells whether |sa|'s address belongs to this machine: only a
 * local address can be bound without IP_TRANSPARENT. */
static bool session_is_local_address(const struct sockaddr *sa)
{
    int fd = socket(sa->sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return false;
    }
    union addr probe;
    addr_set(&probe, sa);
    if (sa->sa_family == AF_INET6) {
        probe.in6.sin6_port = 0;
    } else {
        probe.in.sin_port = 0;
    }
    bool local = bind(fd, &probe.sa, addr_len(sa)) == 0;
    close(fd);
    return local;
}

/*
 * session_find_target sets the upstream of a transparent session: the destination the
 * client meant. With iptables REDIRECT (NAT) the kernel keeps it (SO_ORIGINAL_DST); with
 * TPROXY the accepted socket's own address is it. A destination that is one of our own
 * listeners would make the proxy connect to itself: refused. Returns false when the
 * session is ending.
 */
static bool session_find_target(struct session *s)
{
    int fd = -1;
    uv_fileno((uv_handle_t *)&s->front.tcp, &fd);
    struct sockaddr_storage dst;
    socklen_t len = sizeof(dst);
    bool v6 = s->local_sa.sa.sa_family == AF_INET6;
    if (getsockopt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IP6T_SO_ORIGINAL_DST : SO_ORIGINAL_DST, &dst,
                   &len) == 0) {
        addr_set(&s->target_sa, (const struct sockaddr *)&dst);
    } else {
        s->target_sa = s->local_sa;
    }
    const struct sockaddr *target = &s->target_sa.sa;
    bool loop = false;
    for (size_t i = 0; i < s->conf->n_listen && !loop; i++) {
        loop = s->conf->listen[i].port == addr_port(target) && session_is_local_address(target);
    }
    char text[ADDR_TEXT_MAX];
    addr_format(text, sizeof(text), target);
    if (loop) {
        log_warn(s->id, "loop-refused", "client=%s destination=%s", s->front_addr, text);
        session_finish(s, REASON_END_LOOP_REFUSED, "421 4.3.5", "Refusing to relay to myself");
        return false;
    }
    log_debug(s->id, "destination", "client=%s destination=%s", s->front_addr, text);
    return true;
}

/* session_start_back starts leg 2 once the client is known (after accept, or after the
 * PROXY header), if the client is within its limits. */
void session_start_back(struct session *s)
{
    if (!session_within_limits(s)) {
        return;
    }
    session_learn_start(s);
    session_enter(s, SESSION_OPENING);
    session_connect_start(s);
}

int session_accept(struct session_env *env, uv_stream_t *server)
{
    struct session *s = session_new(env);
    if (s == NULL) {
        log_error(0, "out-of-memory", "action=refuse-connection");
        return UV_ENOMEM;
    }
    uv_tcp_init(env->loop, &s->front.tcp);
    s->front.tcp.data = s;
    s->front.open = true;
    uv_timer_init(env->loop, &s->timer);
    s->timer.data = s;
    s->n_handles = 2;
    if (uv_accept(server, (uv_stream_t *)&s->front.tcp) != 0) {
        session_abort(s, REASON_END_CLIENT_ERROR);
        return 0;
    }
    /* TCP_NODELAY: inherited from the listening socket (listener_bind). */
    struct sockaddr_storage peer;
    int peer_len = sizeof(peer);
    if (uv_tcp_getpeername(&s->front.tcp, (struct sockaddr *)&peer, &peer_len) != 0) {
        /* Gone already (reset right after connecting): nothing to serve, no address to
         * count against a limit. */
        snprintf(s->front_addr, sizeof(s->front_addr), "?");
        session_abort(s, REASON_END_CLIENT_ERROR);
        return 0;
    }
    addr_set(&s->front_sa, (const struct sockaddr *)&peer);
    addr_format(s->front_addr, sizeof(s->front_addr), &s->front_sa.sa);
    /* The local address matters only in transparent mode (the original destination) and
     * to a PROXY header sent upstream: other sessions save the system call. */
    enum conf_identity identity = s->conf->upstream_identity;
    if (s->conf->mode == CONF_MODE_TRANSPARENT || identity == CONF_IDENTITY_PROXY_V1 ||
        identity == CONF_IDENTITY_PROXY_V2) {
        struct sockaddr_storage local;
        int local_len = sizeof(local);
        if (uv_tcp_getsockname(&s->front.tcp, (struct sockaddr *)&local, &local_len) == 0) {
            addr_set(&s->local_sa, (const struct sockaddr *)&local);
        }
    }
    log_debug(s->id, "accepted", "client=%s", s->front_addr);

    unsigned open = atomic_fetch_add(env->n_connections, 1) + 1;
    s->counted = true;
    metrics_inc(METRICS_CONNECTIONS);
    metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, 1);
    /* A small reserve above the cap keeps the exempt networks (the operator's relays, the
     * load balancer's health checks) served when everyone else is refused. */
    const struct conf *c = s->conf;
    bool over = open > c->max_connections && (open > c->max_connections + c->limits.reserve ||
                                              !session_exempt(c, &s->front_sa.sa));
    if (over) {
        metrics_inc(METRICS_CONNECTIONS_REFUSED);
        session_log_cap_reached(s);
        session_finish(s, REASON_END_TOO_MANY_CONNECTIONS, "421 4.7.0",
                       "Too many connections, try again later");
    } else if (s->conf->mode == CONF_MODE_TRANSPARENT && !session_find_target(s)) {
        /* refused: the 421 is queued */
    } else if (s->conf->proxy_protocol != CONF_PROXY_PROTOCOL_OFF) {
        session_enter(s, SESSION_PROXY_HEADER);
    } else {
        session_start_back(s);
    }
    session_run(s);
    return 0;
}

void session_shutdown(struct session *s)
{
    if (s->state == SESSION_CLOSING) {
        session_abort(s, s->end_reason);
        return;
    }
    s->shutting_down = true;
    session_finish(s, REASON_END_SHUTDOWN, "421 4.3.2", "Service shutting down, try again later");
    session_run(s);
}

struct session *session_next(struct session *s)
{
    return s->next;
}
