/*
 * session: one client connection (the front) and the upstream connection opened for it
 * (the back), relayed as SMTP, not as a byte pipe.
 *
 * Commands are read line by line, checked, and forwarded; every forwarded or locally
 * answered line takes one place in the pending queue, so replies reach the client in
 * PIPELINING order (RFC 2920). DATA content is streamed without buffering the message and
 * its end is found by the smtp scanner; BDAT chunks are counted. The session never sends
 * the client a reply the upstream did not send, except the proxy's own errors, and never
 * lets a message be completed upstream unless the client completed it.
 */
#include "session.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <unistd.h>

#include <uv.h>

#include "buf.h"
#include "conf.h"
#include "learn.h"
#include "log.h"
#include "metrics.h"
#include "proxyproto.h"
#include "runtime.h"
#include "smtp.h"
#include "tlsio.h"
#include "worker.h"

/* One read takes at most this much; input beyond it waits in the kernel (back-pressure). */
#define SESSION_READ_SIZE (64 * 1024)
#define SESSION_IN_MAX (2 * SESSION_READ_SIZE)
/* Stop reading a leg while the other leg has this much unsent. */
#define SESSION_HIGH_WATER (128 * 1024)
/* Hard cap of one side's unsent bytes; reaching it is a bug, not a peer's doing. */
#define SESSION_OUT_MAX (SESSION_HIGH_WATER + SESSION_IN_MAX + SMTP_EHLO_REPLY_MAX + 4096)
/* Commands forwarded or answered but not yet replied to; more wait in the input buffer. */
#define SESSION_PENDING_MAX 64
/* After the last reply, how long the client may go on sending before we close anyway. */
#define SESSION_LINGER_MS 2000
/* The same after the drain timeout: the process is exiting, so keep it short. */
#define SESSION_SHUTDOWN_LINGER_MS 200
#define SESSION_ADDR_MAX 56

enum session_state {
    SESSION_ACCEPTED = 0,       /* accepted; nothing asked of either side yet */
    SESSION_BACK_RESOLVING,     /* waiting for the upstream name to resolve */
    SESSION_FRONT_PROXY_HEADER, /* waiting for the load balancer's PROXY header */
    SESSION_BACK_CONNECTING,    /* waiting for the TCP connection to the upstream */
    SESSION_BACK_GREETING,      /* waiting for the upstream's greeting */
    SESSION_RELAY,              /* relaying commands and replies */
    SESSION_FRONT_HANDSHAKE,    /* our 220 to STARTTLS going out, then the client's handshake */
    /* Leg 2 negotiation, while the client waits for the reply to its first EHLO/HELO: */
    SESSION_BACK_EHLO,      /* the upstream's reply to our EHLO (a probe, or inside TLS) */
    SESSION_BACK_STARTTLS,  /* the upstream's reply to our STARTTLS */
    SESSION_BACK_HANDSHAKE, /* the TLS handshake with the upstream */
    SESSION_BACK_RECONNECT, /* the failed upstream connection closing; a new one follows */
    SESSION_BACK_REPLAY,    /* replaying the envelope on a cleartext connection */
    SESSION_BACK_XCLIENT,   /* the upstream's new greeting after our XCLIENT */
    SESSION_CLOSING,        /* flushing our last reply to the client, then closing */
};

/* What the front bytes are, in SESSION_RELAY. */
enum session_front_mode {
    SESSION_FRONT_COMMAND = 0, /* command lines */
    SESSION_FRONT_SKIP_LINE,   /* the rest of an over-long line, to throw away */
    SESSION_FRONT_DATA,        /* DATA content, relayed until CRLF.CRLF */
    SESSION_FRONT_DATA_REJECT, /* DATA content after a bare CR or LF, thrown away */
    SESSION_FRONT_CHUNK,       /* BDAT chunk bytes, relayed or thrown away */
};

/* What a place in the pending queue waits for. */
enum session_pending_kind {
    SESSION_PENDING_LOCAL = 0, /* our own reply, sent when it reaches the head */
    SESSION_PENDING_EHLO,      /* the upstream's EHLO reply, edited before relaying */
    SESSION_PENDING_DATA,      /* 354 switches the front to content */
    SESSION_PENDING_DATA_END,  /* the verdict on a message sent with DATA */
    SESSION_PENDING_BDAT,      /* a chunk that is not the last */
    SESSION_PENDING_BDAT_LAST, /* the verdict on a message sent with BDAT */
    SESSION_PENDING_AUTH,      /* 334 makes the client's next line a SASL response */
    SESSION_PENDING_QUIT,      /* the session ends after this reply */
    SESSION_PENDING_MAIL,      /* a refused MAIL starts no transaction */
    SESSION_PENDING_STARTTLS,  /* our 220, then TLS, once every earlier reply is out */
    SESSION_PENDING_OTHER,     /* any other command: relay the reply */
};

/* The proxy's own replies to commands (not the session-ending 421s, which are built with
 * the host name). */
enum session_local_reply {
    SESSION_LOCAL_LINE_TOO_LONG = 0,
    SESSION_LOCAL_BAD_BYTES,
    SESSION_LOCAL_MAIL_PATH_TOO_LONG,
    SESSION_LOCAL_RCPT_PATH_TOO_LONG,
    SESSION_LOCAL_PATH_SYNTAX,
    SESSION_LOCAL_BDAT_SYNTAX,
    SESSION_LOCAL_STARTTLS_UNAVAILABLE,
    SESSION_LOCAL_BDAT_UNSUPPORTED,
    SESSION_LOCAL_BARE_EOL,
    SESSION_LOCAL_BYE,
    SESSION_LOCAL_TLS_ACTIVE,
    SESSION_LOCAL_STARTTLS_SYNTAX,
    SESSION_LOCAL_TLS_HIDDEN,
    SESSION_LOCAL_STARTTLS_IN_TRANSACTION,
    SESSION_LOCAL_EHLO_FIRST,
    SESSION_LOCAL_TLS_REQUIRED,
    SESSION_LOCAL_XCLIENT_DENIED,
};

static const char *const session_local_replies[] = {
    [SESSION_LOCAL_LINE_TOO_LONG] = "500 5.5.2 Line too long\r\n",
    [SESSION_LOCAL_BAD_BYTES] = "500 5.5.2 Syntax error: NUL or bare CR in command\r\n",
    [SESSION_LOCAL_MAIL_PATH_TOO_LONG] = "501 5.1.7 Path too long\r\n",
    [SESSION_LOCAL_RCPT_PATH_TOO_LONG] = "501 5.1.3 Path too long\r\n",
    [SESSION_LOCAL_PATH_SYNTAX] = "501 5.5.4 Syntax: MAIL FROM:<address> or RCPT TO:<address>\r\n",
    [SESSION_LOCAL_BDAT_SYNTAX] = "501 5.5.4 Syntax: BDAT size [LAST]\r\n",
    /* starttls = strip: STARTTLS is "not implemented" here (502), not "temporarily
     * unavailable" (454), which would invite the client to try again and again. */
    [SESSION_LOCAL_STARTTLS_UNAVAILABLE] = "502 5.5.1 STARTTLS not available\r\n",
    [SESSION_LOCAL_BDAT_UNSUPPORTED] = "502 5.5.1 BDAT not supported by this server\r\n",
    [SESSION_LOCAL_BARE_EOL] = "550 5.5.2 Message rejected: bare CR or LF in content "
                               "(RFC 5321 section 2.3.8)\r\n",
    [SESSION_LOCAL_BYE] = "221 2.0.0 Bye\r\n",
    /* RFC 3207 section 4: STARTTLS after TLS is a bad sequence. */
    [SESSION_LOCAL_TLS_ACTIVE] = "503 5.5.1 TLS already active\r\n",
    [SESSION_LOCAL_STARTTLS_SYNTAX] = "501 5.5.4 Syntax: STARTTLS\r\n",
    /* Not offered to this client (a learned failure or never_offer_to): temporary. */
    [SESSION_LOCAL_TLS_HIDDEN] = "454 4.7.0 TLS not available\r\n",
    [SESSION_LOCAL_STARTTLS_IN_TRANSACTION] =
        "503 5.5.1 STARTTLS not allowed during a mail transaction\r\n",
    /* RFC 3207 section 4.2: after TLS the client starts over with EHLO. */
    [SESSION_LOCAL_EHLO_FIRST] = "503 5.5.1 Send EHLO first\r\n",
    [SESSION_LOCAL_TLS_REQUIRED] = "530 5.7.0 Must issue a STARTTLS command first\r\n",
    /* The upstream may trust the proxy's address for XCLIENT: a client must never use it. */
    [SESSION_LOCAL_XCLIENT_DENIED] = "550 5.7.0 XCLIENT not permitted\r\n",
};

/* What became of STARTTLS on leg 1, for the session line. */
enum session_front_starttls {
    SESSION_STARTTLS_NOT_OFFERED = 0, /* starttls = strip */
    SESSION_STARTTLS_OFFERED,         /* offered, not used */
    SESSION_STARTTLS_HIDDEN,          /* not offered to this client: learned or listed */
    SESSION_STARTTLS_USED,
    SESSION_STARTTLS_FAILED,
};

static const char *const session_starttls_names[] = {
    [SESSION_STARTTLS_NOT_OFFERED] = "not-offered", [SESSION_STARTTLS_OFFERED] = "offered",
    [SESSION_STARTTLS_HIDDEN] = "hidden",           [SESSION_STARTTLS_USED] = "used",
    [SESSION_STARTTLS_FAILED] = "failed",
};

/* An IPv4 or IPv6 socket address in 28 bytes rather than sockaddr_storage's 128: a session
 * keeps four, and idle sessions are counted in bytes (the 4 KB target). */
union session_addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* session_addr_set copies an IPv4 or IPv6 address; any other family is left unset. */
static void session_addr_set(union session_addr *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        memcpy(&out->in, sa, sizeof(out->in));
    } else if (sa->sa_family == AF_INET6) {
        memcpy(&out->in6, sa, sizeof(out->in6));
    }
}

struct session_pending {
    uint8_t kind;     /* enum session_pending_kind */
    uint8_t local;    /* enum session_local_reply, for SESSION_PENDING_LOCAL */
    uint8_t recorded; /* its line is in the replay record */
};

/* The replay record: this transaction's lines since EHLO, RSET or the last message, each
 * with the reply code the client saw (0: not answered yet). */
#define SESSION_REPLAY_MAX (32 * 1024)

/* One leg: its socket and the bytes in each direction. */
struct session_side {
    uv_tcp_t tcp;
    uv_write_t write_req;
    struct buf in;    /* read, not yet processed */
    struct buf out;   /* handed to uv_write: must not move until its callback */
    struct buf queue; /* waiting behind |out| */
    uint64_t bytes_read;
    /* TLS on this leg: once started, reads go to tls_raw and through tls into |in|, and
     * what is queued goes to tls_plain and through tls into |queue|. */
    struct tlsio tls;
    struct buf tls_raw;
    struct buf tls_plain;
    bool tls_started;
    bool tls_active; /* handshake complete */
    bool open;       /* tcp is initialised and not yet closing */
    bool reading;    /* uv_read_start is in force */
    bool writing;    /* a uv_write is in flight */
    bool eof;        /* the peer will send no more */
};

struct session {
    uint64_t id;
    struct worker *worker;
    struct runtime *runtime;     /* a reference: the configuration this session started under */
    const struct conf *conf;     /* runtime->conf */
    struct session *prev, *next; /* the worker's list */
    enum session_state state;
    int n_handles; /* open handles and requests; freed at zero */

    struct session_side front;
    struct session_side back;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    uv_getaddrinfo_t *resolve_req; /* separately allocated: it may outlive a cancel */
    struct addrinfo *addrs;
    struct addrinfo *next_addr;

    enum session_front_mode front_mode;
    struct smtp_data_scanner scanner;
    uint64_t chunk_left;
    bool chunk_discard;
    bool wait_data_reply;    /* DATA forwarded: the next bytes depend on its reply */
    bool auth_continuation;  /* the next line answers a 334 */
    bool back_dead;          /* upstream aborted on purpose; answer the rest ourselves */
    bool counted;            /* counted in worker_connections */
    bool lingering;          /* front shut down for writing; reading to drain */
    bool closing_timed;      /* the SESSION_CLOSING deadline is running */
    bool front_close_notify; /* our close_notify is queued */
    bool shutting_down;      /* closing because the process stops */
    bool offer_starttls;     /* advertise STARTTLS to this client (decided at accept) */
    bool wait_starttls;      /* STARTTLS queued: what follows it is never read as commands */
    bool in_transaction;     /* MAIL sent and the message not yet finished or reset */
    bool need_ehlo;          /* TLS just started: RFC 3207 section 4.2 */
    enum session_front_starttls front_starttls;
    uint64_t front_injected;     /* bytes thrown away between STARTTLS and the handshake */
    const char *front_tls_error; /* static, or tlsio's reason (lives as long as front.tls) */

    /* Leg 2: STARTTLS towards the upstream and the retries when it fails. */
    struct buf client_ehlo; /* the client's first EHLO/HELO line, replayed on retries */
    struct buf saved_ehlo;  /* the cleartext EHLO reply, kept while STARTTLS is tried */
    union session_addr back_sa;
    enum conf_back_starttls back_policy;
    uint8_t back_next_step;   /* index into conf->back_tls.fallback_steps */
    bool client_helo;         /* the client greeted with HELO */
    bool back_negotiated;     /* leg 2's TLS question has been asked for this session */
    bool back_retrying;       /* a new connection after a failure: its greeting is ours */
    bool back_no_client_cert; /* options of the current attempt */
    bool back_max_tls12;
    bool back_cleartext;
    uint64_t back_bytes_at_220; /* to tell "closed right after 220" from a failed handshake */
    char back_tls_reason[80];   /* why leg 2 is in cleartext, or a verification note */
    struct buf replay;          /* see SESSION_REPLAY_MAX */
    size_t replay_at;           /* SESSION_BACK_REPLAY: the record replayed now, or SIZE_MAX
                                   while our EHLO is */
    bool replay_ok;             /* a TLS leg's transaction could be replayed in cleartext */
    bool replaying;             /* the reconnect under way is for a replay */
    bool back_skip_tls;         /* the probe is only for XCLIENT: no STARTTLS upstream */
    bool xclient_done;          /* XCLIENT was sent on this upstream connection */
    unsigned connect_attempts;

    struct session_pending pending[SESSION_PENDING_MAX];
    unsigned pending_head;
    unsigned n_pending;
    struct smtp_reply_parser reply_parser;
    struct buf ehlo_reply; /* the EHLO reply being collected for editing */
    unsigned back_caps;    /* enum smtp_cap flags of the last EHLO reply */

    uint64_t started_ms;
    uint64_t tls_started_ms; /* the handshake under way began (either leg: never both) */
    uint64_t deadline;       /* when the session times out (loop time, ms) */
    uint64_t timer_due;      /* when the libuv timer fires; never after |deadline| */
    uint64_t messages;
    const char *end_reason;
    union session_addr front_sa;  /* the client (from a PROXY header when configured) */
    union session_addr local_sa;  /* the address the client connected to */
    union session_addr target_sa; /* transparent mode: the original destination */
    char front_addr[SESSION_ADDR_MAX];
    char back_addr[SESSION_ADDR_MAX];
};

static const char *session_state_name(enum session_state state)
{
    switch (state) {
    case SESSION_ACCEPTED:
        return "accepted";
    case SESSION_BACK_RESOLVING:
        return "back-resolving";
    case SESSION_BACK_CONNECTING:
        return "back-connecting";
    case SESSION_BACK_GREETING:
        return "back-greeting";
    case SESSION_RELAY:
        return "relay";
    case SESSION_FRONT_HANDSHAKE:
        return "front-handshake";
    case SESSION_BACK_EHLO:
        return "back-ehlo";
    case SESSION_BACK_STARTTLS:
        return "back-starttls";
    case SESSION_BACK_HANDSHAKE:
        return "back-handshake";
    case SESSION_BACK_RECONNECT:
        return "back-reconnect";
    case SESSION_BACK_REPLAY:
        return "back-replay";
    case SESSION_BACK_XCLIENT:
        return "back-xclient";
    case SESSION_FRONT_PROXY_HEADER:
        return "front-proxy-header";
    case SESSION_CLOSING:
        return "closing";
    }
    return "?";
}

static void session_enter(struct session *s, enum session_state next)
{
    log_debug(s->id, "state", "from=%s to=%s", session_state_name(s->state),
              session_state_name(next));
    s->state = next;
}

static void session_after_io(struct session *s);
static void session_finish(struct session *s, const char *reason, const char *status,
                           const char *text);
static void session_abort(struct session *s, const char *reason);
static void session_front_process(struct session *s);
static void session_back_connect_next(struct session *s);
static void session_back_connect_again(struct session *s);
static void session_back_connect_to(struct session *s, const struct sockaddr *sa);
static void session_back_tls_fallback(struct session *s, const char *reason, bool in_handshake);
static void session_front_tls_begin(struct session *s);
static void session_front_starttls_reply(struct session *s);
static void session_front_starttls(struct session *s, const struct smtp_command *cmd);
static void session_back_failed(struct session *s, const char *reason);
static void session_back_negotiate(struct session *s, const char *line, size_t len, bool helo);
static void session_back_remember(struct session *s, const char *reason);
static bool session_replay_possible(const struct session *s);
static void session_replay_note(struct session *s, enum smtp_verb verb, const char *line,
                                size_t len);
static void session_replay_answered(struct session *s, int code);
static void session_back_replay_line(struct session *s, const char *line, size_t len);
static void session_back_retry_greeted(struct session *s, int code);
static void session_back_decide_policy(struct session *s, const char *line, size_t len);
static void session_back_tls_input(struct session *s);
static void session_back_eof(struct session *s, const char *reason);
static void session_back_xclient_reply(struct session *s, int code);
static void session_back_send_xclient(struct session *s, const char *params, size_t params_len);
static void session_back_negotiation_reply(struct session *s, int code);
static void session_decide_offer(struct session *s);
static void session_back_start(struct session *s);
static void session_front_proxy_header(struct session *s);
static void session_back_tls_broken(struct session *s);
static void session_on_timeout(uv_timer_t *timer);

static void session_format_addr(char *out, size_t out_size, const struct sockaddr *sa)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
        snprintf(out, out_size, "%s:%u", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        snprintf(out, out_size, "[%s]:%u", host, port);
    } else {
        snprintf(out, out_size, "?");
    }
}

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

static void session_free(struct session *s)
{
    uint64_t duration_ms = uv_now(&s->worker->loop) - s->started_ms;
    char front_tls[TLSIO_REASON_MAX + 64] = "front_tls=none";
    if (s->front.tls_active) {
        snprintf(front_tls, sizeof(front_tls), "front_tls=%s front_cipher=%s",
                 tlsio_version(&s->front.tls), tlsio_cipher(&s->front.tls));
    } else if (s->front_starttls == SESSION_STARTTLS_FAILED) {
        snprintf(front_tls, sizeof(front_tls), "front_tls=none front_tls_error=\"%s\"",
                 s->front_tls_error);
    }
    char back_tls[sizeof(s->back_tls_reason) + 64];
    if (s->back.tls_active) {
        snprintf(back_tls, sizeof(back_tls), "back_tls=%s back_cipher=%s%s%s%s",
                 tlsio_version(&s->back.tls), tlsio_cipher(&s->back.tls),
                 s->back_tls_reason[0] != '\0' ? " back_tls_note=\"" : "", s->back_tls_reason,
                 s->back_tls_reason[0] != '\0' ? "\"" : "");
    } else {
        snprintf(back_tls, sizeof(back_tls), "back_tls=cleartext back_tls_reason=\"%s\"",
                 s->back_tls_reason[0] != '\0' ? s->back_tls_reason : "none");
    }
    log_info(s->id, "session",
             "client=%s upstream=%s bytes_in=%" PRIu64 " bytes_out=%" PRIu64 " messages=%" PRIu64
             " %s starttls=%s %s duration_ms=%" PRIu64 " end=%s",
             s->front_addr, s->back_addr[0] != '\0' ? s->back_addr : s->conf->upstream.host,
             s->front.bytes_read, s->back.bytes_read, s->messages, front_tls,
             session_starttls_names[s->front_starttls], back_tls, duration_ms,
             s->end_reason != NULL ? s->end_reason : "unknown");
    if (s->addrs != NULL) {
        uv_freeaddrinfo(s->addrs);
    }
    struct session_side *sides[] = {&s->front, &s->back};
    for (size_t i = 0; i < 2; i++) {
        buf_cleanup(&sides[i]->in);
        buf_cleanup(&sides[i]->out);
        buf_cleanup(&sides[i]->queue);
        buf_cleanup(&sides[i]->tls_raw);
        buf_cleanup(&sides[i]->tls_plain);
        tlsio_cleanup(&sides[i]->tls);
    }
    buf_cleanup(&s->ehlo_reply);
    buf_cleanup(&s->client_ehlo);
    buf_cleanup(&s->saved_ehlo);
    buf_cleanup(&s->replay);
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else {
        s->worker->sessions = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    if (s->counted) {
        worker_connections--;
        metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, -1);
    }
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

static void session_on_back_closed(uv_handle_t *handle)
{
    struct session *s = handle->data;
    /* A failed connect attempt closes the socket before the next address is tried. */
    if (s->state == SESSION_BACK_CONNECTING) {
        session_back_connect_next(s);
    } else if (s->state == SESSION_BACK_RECONNECT) {
        session_back_connect_again(s);
    }
    session_unref(s);
}

static void session_side_close(struct session *s, struct session_side *side, bool reset)
{
    if (!side->open) {
        return;
    }
    side->open = false;
    side->reading = false;
    uv_close_cb cb = side == &s->back ? session_on_back_closed : session_on_handle_closed;
    /* A reset tells the upstream the message was not finished: it must discard it. */
    if (reset && uv_tcp_close_reset(&side->tcp, cb) == 0) {
        return;
    }
    uv_close((uv_handle_t *)&side->tcp, cb);
}

/* session_back_abort closes the upstream leg at once, without end-of-data. */
static void session_back_abort(struct session *s)
{
    buf_cleanup(&s->back.queue);
    session_side_close(s, &s->back, true);
}

static bool session_front_in_body(const struct session *s)
{
    return s->front_mode == SESSION_FRONT_DATA || s->front_mode == SESSION_FRONT_CHUNK ||
           s->front_mode == SESSION_FRONT_DATA_REJECT;
}

/* A message is under way upstream: closing now must not let it complete. */
static bool session_mid_message(const struct session *s)
{
    return session_front_in_body(s) || s->wait_data_reply;
}

/* session_abort closes everything now; the client gets nothing more. */
static void session_abort(struct session *s, const char *reason)
{
    if (s->end_reason == NULL) {
        s->end_reason = reason;
    }
    if (s->state != SESSION_CLOSING) {
        session_enter(s, SESSION_CLOSING);
    }
    if (s->resolve_req != NULL) {
        uv_cancel((uv_req_t *)s->resolve_req);
    }
    session_side_close(s, &s->back, session_mid_message(s));
    session_side_close(s, &s->front, false);
    if (!uv_is_closing((uv_handle_t *)&s->timer)) {
        uv_close((uv_handle_t *)&s->timer, session_on_handle_closed);
    }
}

/* ---- output -------------------------------------------------------------------------- */

static size_t session_unsent(const struct session_side *side)
{
    return buf_len(&side->out) + buf_len(&side->queue) + buf_len(&side->tls_plain);
}

static void session_queue(struct session *s, struct session_side *side, const void *data,
                          size_t len)
{
    if (!side->open) {
        return;
    }
    struct buf *to = side->tls_active ? &side->tls_plain : &side->queue;
    if (buf_append(to, data, len, SESSION_OUT_MAX) != 0) {
        session_abort(s, "out-of-memory");
    }
}

/* session_tls_feed gives |side|'s TLS the ciphertext read so far, as much as it takes. */
static void session_tls_feed(struct session_side *side)
{
    while (buf_len(&side->tls_raw) > 0) {
        size_t n = 0;
        if (tlsio_feed(&side->tls, &n, buf_head(&side->tls_raw), buf_len(&side->tls_raw)) != 0 ||
            n == 0) {
            return;
        }
        buf_consume(&side->tls_raw, n);
    }
}

/* session_take_tls_out moves the ciphertext |side|'s TLS has made into its queue. */
static void session_take_tls_out(struct session *s, struct session_side *side)
{
    size_t pending;
    while (side->open && (pending = tlsio_pending_out(&side->tls)) > 0) {
        if (buf_reserve(&side->queue, pending, SESSION_OUT_MAX) != 0) {
            session_abort(s, "out-of-memory");
            return;
        }
        size_t n = 0;
        tlsio_take_out(&side->tls, &n, buf_tail(&side->queue), buf_tail_len(&side->queue));
        buf_commit(&side->queue, n);
    }
}

/* session_encrypt turns |side|'s queued plaintext into ciphertext in its queue. */
static void session_encrypt(struct session *s, struct session_side *side)
{
    while (side->open && buf_len(&side->tls_plain) > 0) {
        size_t n = 0;
        enum tlsio_result r =
            tlsio_write(&side->tls, &n, buf_head(&side->tls_plain), buf_len(&side->tls_plain));
        if (r == TLSIO_FAILED || r == TLSIO_CLOSED) {
            session_abort(s, side == &s->front ? "client-tls-error" : "upstream-tls-error");
            return;
        }
        buf_consume(&side->tls_plain, n);
        session_take_tls_out(s, side);
        if (n == 0 && tlsio_pending_out(&side->tls) == 0) {
            return; /* nothing moves: try again after the next event */
        }
    }
}

static void session_on_write(uv_write_t *req, int status);

static void session_flush(struct session *s, struct session_side *side)
{
    if (side->tls_active) {
        session_encrypt(s, side);
    }
    if (!side->open || side->writing || buf_len(&side->queue) == 0) {
        return;
    }
    /* Most writes fit in the socket buffer: try without queueing a request first. */
    uv_buf_t b = uv_buf_init(buf_head(&side->queue), (unsigned)buf_len(&side->queue));
    int n = uv_try_write((uv_stream_t *)&side->tcp, &b, 1);
    if (n > 0) {
        buf_consume(&side->queue, (size_t)n);
        if (buf_len(&side->queue) == 0) {
            return;
        }
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
        session_abort(s, side == &s->front ? "client-write-error" : "upstream-write-error");
        return;
    }
    /* The rest goes in flight from |out|, which nothing touches until the callback. */
    struct buf tmp = side->out;
    side->out = side->queue;
    side->queue = tmp;
    b = uv_buf_init(buf_head(&side->out), (unsigned)buf_len(&side->out));
    int rc = uv_write(&side->write_req, (uv_stream_t *)&side->tcp, &b, 1, session_on_write);
    if (rc != 0) {
        session_abort(s, side == &s->front ? "client-write-error" : "upstream-write-error");
        return;
    }
    side->writing = true;
}

/*
 * session_send_body writes message content to the upstream without copying when nothing
 * is queued ahead of it; only what the socket does not take now is copied.
 */
static void session_send_body(struct session *s, const char *data, size_t len)
{
    struct session_side *side = &s->back;
    if (!side->open || len == 0) {
        return;
    }
    if (!side->tls_active && !side->writing && buf_len(&side->queue) == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&side->tcp, &b, 1);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
            session_abort(s, "upstream-write-error");
            return;
        }
    }
    session_queue(s, side, data, len);
}

static void session_on_front_shutdown(uv_shutdown_t *req, int status)
{
    struct session *s = req->data;
    (void)status;
    session_unref(s);
}

/* In SESSION_CLOSING: once our last reply is out, half-close and drain the client's
 * input for a moment, so a client still sending reads our reply instead of a reset. */
static void session_closing_progress(struct session *s)
{
    if (!s->front.open || s->front.writing || session_unsent(&s->front) > 0 || s->lingering) {
        return;
    }
    /* A TLS client learns from close_notify that it got everything (RFC 8446 6.1). */
    if (s->front.tls_active && !s->front_close_notify) {
        s->front_close_notify = true;
        tlsio_shutdown(&s->front.tls);
        session_take_tls_out(s, &s->front);
        session_flush(s, &s->front);
        if (!s->front.open || s->front.writing || buf_len(&s->front.queue) > 0) {
            return; /* again from the write callback */
        }
    }
    if (s->front.eof) {
        session_abort(s, s->end_reason);
        return;
    }
    s->lingering = true;
    s->shutdown_req.data = s;
    if (uv_shutdown(&s->shutdown_req, (uv_stream_t *)&s->front.tcp, session_on_front_shutdown) !=
        0) {
        session_abort(s, s->end_reason);
        return;
    }
    s->n_handles++;
}

static void session_on_write(uv_write_t *req, int status)
{
    struct session_side *side = req->data;
    struct session *s = side->tcp.data;
    side->writing = false;
    buf_cleanup(&side->out);
    if (status < 0) {
        if (status != UV_ECANCELED) {
            session_abort(s, side == &s->front ? "client-write-error" : "upstream-write-error");
        }
        return;
    }
    /* Input held back by back-pressure may go on now. */
    session_front_process(s);
    session_after_io(s);
}

/* ---- reading ------------------------------------------------------------------------- */

static void session_on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *out)
{
    struct session *s = handle->data;
    struct session_side *side = handle == (uv_handle_t *)&s->front.tcp ? &s->front : &s->back;
    (void)suggested;
    struct buf *to = side->tls_started ? &side->tls_raw : &side->in;
    if (buf_reserve(to, SESSION_READ_SIZE, SESSION_IN_MAX) != 0) {
        *out = uv_buf_init(NULL, 0);
        return;
    }
    *out = uv_buf_init(buf_tail(to), (unsigned)buf_tail_len(to));
}

static void session_on_front_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b);
static void session_on_back_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b);

static void session_set_reading(struct session_side *side, bool want, uv_read_cb cb)
{
    if (!side->open || want == side->reading) {
        return;
    }
    if (want) {
        if (uv_read_start((uv_stream_t *)&side->tcp, session_on_alloc, cb) == 0) {
            side->reading = true;
        }
    } else {
        uv_read_stop((uv_stream_t *)&side->tcp);
        side->reading = false;
    }
}

static void session_update_reading(struct session *s)
{
    bool front_want = false;
    bool back_want = false;
    if (s->state == SESSION_RELAY) {
        front_want = !s->front.eof && buf_len(&s->front.in) < SESSION_READ_SIZE &&
                     buf_len(&s->front.tls_raw) < SESSION_READ_SIZE &&
                     session_unsent(&s->back) < SESSION_HIGH_WATER;
        back_want = !s->back.eof && buf_len(&s->back.in) < SESSION_READ_SIZE &&
                    buf_len(&s->back.tls_raw) < SESSION_READ_SIZE &&
                    session_unsent(&s->front) < SESSION_HIGH_WATER;
    } else if (s->state == SESSION_FRONT_HANDSHAKE) {
        front_want = !s->front.eof && buf_len(&s->front.tls_raw) < SESSION_READ_SIZE;
    } else if (s->state == SESSION_FRONT_PROXY_HEADER) {
        front_want = !s->front.eof && buf_len(&s->front.in) < PROXYPROTO_HEADER_MAX;
    } else if (s->state == SESSION_BACK_GREETING || s->state == SESSION_BACK_EHLO ||
               s->state == SESSION_BACK_STARTTLS || s->state == SESSION_BACK_HANDSHAKE ||
               s->state == SESSION_BACK_REPLAY || s->state == SESSION_BACK_XCLIENT) {
        back_want = !s->back.eof && buf_len(&s->back.in) < SESSION_READ_SIZE &&
                    buf_len(&s->back.tls_raw) < SESSION_READ_SIZE &&
                    session_unsent(&s->front) < SESSION_HIGH_WATER;
    } else if (s->state == SESSION_CLOSING) {
        front_want = s->lingering && !s->front.eof;
    }
    session_set_reading(&s->front, front_want, session_on_front_read);
    session_set_reading(&s->back, back_want, session_on_back_read);
}

static void session_on_timeout(uv_timer_t *timer);

/*
 * session_timer_set sets the session's one deadline to |ms| from now. Activity moves it
 * on every read, so the libuv timer is only re-armed when the deadline comes earlier than
 * the timer's; a timer that fires before the deadline is re-armed by session_on_timeout.
 */
static void session_timer_set(struct session *s, uint64_t ms)
{
    uint64_t now = uv_now(&s->worker->loop);
    s->deadline = now + ms;
    if (!uv_is_active((uv_handle_t *)&s->timer) || s->deadline < s->timer_due) {
        s->timer_due = s->deadline;
        uv_timer_start(&s->timer, session_on_timeout, ms, 0);
    }
}

/* session_arm_timer picks the timeout for what the session waits for now (RFC 5321
 * section 4.5.3.2). */
static void session_arm_timer(struct session *s)
{
    const struct conf *c = s->conf;
    uint64_t ms = c->timeouts.command_ms;
    switch (s->state) {
    case SESSION_ACCEPTED:
    case SESSION_BACK_RESOLVING:
    case SESSION_BACK_CONNECTING:
        ms = c->timeouts.connect_ms;
        break;
    case SESSION_BACK_GREETING:
        ms = c->timeouts.greeting_ms;
        break;
    case SESSION_FRONT_HANDSHAKE:
        if (s->front.tls_started) {
            return; /* one deadline for the whole handshake, set when it starts */
        }
        break;
    case SESSION_BACK_EHLO:
        ms = s->back.tls_active ? c->timeouts.tls_handshake_ms : c->timeouts.command_ms;
        break;
    case SESSION_BACK_STARTTLS:
        ms = c->timeouts.tls_handshake_ms;
        break;
    case SESSION_BACK_HANDSHAKE:
        if (s->back.tls_started) {
            return; /* one deadline for the whole handshake, set when it starts */
        }
        ms = c->timeouts.tls_handshake_ms;
        break;
    case SESSION_BACK_RECONNECT:
        ms = c->timeouts.connect_ms;
        break;
    case SESSION_BACK_REPLAY:
        break;
    case SESSION_BACK_XCLIENT:
        ms = c->timeouts.greeting_ms;
        break;
    case SESSION_FRONT_PROXY_HEADER:
        ms = c->timeouts.connect_ms;
        break;
    case SESSION_RELAY:
        if (session_front_in_body(s)) {
            ms = c->timeouts.data_block_ms;
        } else if (s->n_pending > 0) {
            enum session_pending_kind head = s->pending[s->pending_head].kind;
            if (head == SESSION_PENDING_DATA_END || head == SESSION_PENDING_BDAT_LAST) {
                ms = c->timeouts.data_end_ms;
            }
        }
        break;
    case SESSION_CLOSING:
        return; /* session_after_io sets one deadline for closing */
    }
    session_timer_set(s, ms);
}

/* session_after_io runs at the end of every callback: flush, adjust reading, re-arm. */
static void session_after_io(struct session *s)
{
    session_flush(s, &s->back);
    session_flush(s, &s->front);
    if (s->state == SESSION_FRONT_HANDSHAKE && !s->front.tls_started && s->front.open &&
        session_unsent(&s->front) == 0 && !s->front.writing) {
        session_front_tls_begin(s);
    }
    if (s->state == SESSION_CLOSING) {
        /* One deadline for the whole goodbye: a client that neither reads our last reply
         * nor closes is cut off after it. */
        if (!s->closing_timed && !uv_is_closing((uv_handle_t *)&s->timer)) {
            s->closing_timed = true;
            session_timer_set(s, s->shutting_down ? SESSION_SHUTDOWN_LINGER_MS : SESSION_LINGER_MS);
        }
        session_closing_progress(s);
        if (s->front.open) {
            session_update_reading(s);
        }
        return;
    }
    session_update_reading(s);
    session_arm_timer(s);
}

/* ---- the pending queue ----------------------------------------------------------------- */

static void session_push(struct session *s, enum session_pending_kind kind,
                         enum session_local_reply local)
{
    assert(s->n_pending < SESSION_PENDING_MAX);
    unsigned slot = (s->pending_head + s->n_pending) % SESSION_PENDING_MAX;
    s->pending[slot].kind = (uint8_t)kind;
    s->pending[slot].local = (uint8_t)local;
    s->pending[slot].recorded = 0;
    s->n_pending++;
}

static void session_pop(struct session *s)
{
    s->pending_head = (s->pending_head + 1) % SESSION_PENDING_MAX;
    s->n_pending--;
}

/* Our own replies go out as soon as every reply queued before them has. */
static void session_send_ready_local_replies(struct session *s)
{
    if (s->n_pending > 0 && s->pending[s->pending_head].kind == SESSION_PENDING_STARTTLS) {
        session_pop(s);
        session_front_starttls_reply(s);
        return;
    }
    while (s->n_pending > 0 && s->pending[s->pending_head].kind == SESSION_PENDING_LOCAL) {
        const char *reply = session_local_replies[s->pending[s->pending_head].local];
        session_queue(s, &s->front, reply, strlen(reply));
        session_pop(s);
    }
}

static void session_reply_locally(struct session *s, enum session_local_reply local)
{
    const char *reply = session_local_replies[local];
    if (reply[0] >= '4') {
        log_info(s->id, "refused", "client=%s reply=\"%.9s\"", s->front_addr, reply);
    }
    session_push(s, SESSION_PENDING_LOCAL, local);
    session_send_ready_local_replies(s);
}

/* ---- ending ---------------------------------------------------------------------------- */

/*
 * session_finish ends the session gracefully: the client gets the reply "|status| <our
 * host name> |text|" (none when status is NULL), the upstream leg is closed (reset when a
 * message was in progress, so it is never completed), and the front closes once the reply
 * is out.
 */
static void session_finish(struct session *s, const char *reason, const char *status,
                           const char *text)
{
    if (s->state == SESSION_CLOSING) {
        return;
    }
    if (s->end_reason == NULL) {
        s->end_reason = reason;
    }
    if (s->resolve_req != NULL) {
        uv_cancel((uv_req_t *)s->resolve_req);
    }
    bool mid_message = session_mid_message(s);
    session_enter(s, SESSION_CLOSING);
    session_side_close(s, &s->back, mid_message);
    if (status != NULL) {
        char reply[512];
        int n = snprintf(reply, sizeof(reply), "%s %s %s\r\n", status, s->conf->hostname, text);
        if (n > 0 && (size_t)n < sizeof(reply)) {
            session_queue(s, &s->front, reply, (size_t)n);
        }
    }
    buf_cleanup(&s->front.in);
}

static void session_back_failed(struct session *s, const char *reason)
{
    if (s->back_dead) {
        return;
    }
    /* While TLS is being negotiated, a broken connection is a reason to step down. */
    if (s->state == SESSION_BACK_STARTTLS || s->state == SESSION_BACK_HANDSHAKE ||
        (s->state == SESSION_BACK_EHLO && s->back.tls_active)) {
        session_back_tls_fallback(s, reason, s->state == SESSION_BACK_HANDSHAKE);
        return;
    }
    /* A TLS upstream lost mid-session: its next sessions go cleartext for a while. */
    if (s->back.tls_active) {
        session_back_remember(s, reason);
        if (session_replay_possible(s)) {
            log_warn(s->id, "back-tls-failed", "upstream=%s reason=\"%s\" action=replay-cleartext",
                     s->back_addr, reason);
            s->replaying = true;
            s->back_cleartext = true;
            session_enter(s, SESSION_BACK_RECONNECT);
            session_side_close(s, &s->back, false); /* its close callback connects again */
            return;
        }
    }
    log_warn(s->id, "upstream-lost", "upstream=%s reason=%s", s->back_addr, reason);
    session_finish(s, reason, "421 4.4.2", "Upstream connection lost, closing connection");
}

/* ---- front: commands and content ------------------------------------------------------- */

static bool session_front_blocked(const struct session *s)
{
    return s->state != SESSION_RELAY || s->wait_data_reply || s->wait_starttls ||
           s->n_pending == SESSION_PENDING_MAX || session_unsent(&s->back) >= SESSION_HIGH_WATER;
}

static void session_forward_line(struct session *s, const char *line, size_t len,
                                 enum session_pending_kind kind)
{
    session_queue(s, &s->back, line, len);
    session_queue(s, &s->back, "\r\n", 2);
    session_push(s, kind, 0);
}

/*
 * session_refuse_command answers a well-formed command locally. A refused BDAT still has
 * its chunk coming (RFC 3030 section 2): it is read and thrown away, never parsed as
 * commands, and never reaches the upstream, which could read it as commands.
 */
static void session_refuse_command(struct session *s, const struct smtp_command *cmd,
                                   enum session_local_reply reply)
{
    if (cmd->verb == SMTP_VERB_BDAT) {
        s->front_mode = SESSION_FRONT_CHUNK;
        s->chunk_left = cmd->bdat_size;
        s->chunk_discard = true;
    }
    session_reply_locally(s, reply);
}

/* session_front_command handles one complete command line (ending removed). */
static void session_front_command(struct session *s, const char *line, size_t len)
{
    if (s->auth_continuation) {
        /* A SASL response, not a command: relay it whatever it looks like. */
        s->auth_continuation = false;
        session_forward_line(s, line, len, SESSION_PENDING_AUTH);
        return;
    }
    /* NUL or CR inside a line could end or split it differently upstream. */
    if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL) {
        session_reply_locally(s, SESSION_LOCAL_BAD_BYTES);
        return;
    }
    struct smtp_command cmd;
    enum smtp_result rc = smtp_command_parse(&cmd, line, len);
    if (log_enabled(CONF_LOG_DEBUG)) {
        char verb[24];
        const char *space = memchr(line, ' ', len);
        size_t verb_len = space != NULL ? (size_t)(space - line) : len;
        log_debug(s->id, "command", "verb=\"%s\" len=%zu",
                  log_escape(verb, sizeof(verb), line, verb_len, 12), len);
    }
    if (s->back_dead) {
        if (cmd.verb == SMTP_VERB_QUIT) {
            session_reply_locally(s, SESSION_LOCAL_BYE);
            session_finish(s, "quit", NULL, NULL);
        } else {
            session_finish(s, "message-rejected", "421 4.4.2",
                           "Closing connection after rejected message");
        }
        return;
    }
    if (rc == SMTP_PATH_TOO_LONG) {
        session_reply_locally(s, cmd.verb == SMTP_VERB_MAIL ? SESSION_LOCAL_MAIL_PATH_TOO_LONG
                                                            : SESSION_LOCAL_RCPT_PATH_TOO_LONG);
        return;
    }
    if (rc != SMTP_OK) {
        if (cmd.verb == SMTP_VERB_BDAT) {
            session_reply_locally(s, SESSION_LOCAL_BDAT_SYNTAX);
        } else if (cmd.verb == SMTP_VERB_MAIL || cmd.verb == SMTP_VERB_RCPT) {
            session_reply_locally(s, SESSION_LOCAL_PATH_SYNTAX);
        } else {
            session_reply_locally(s, SESSION_LOCAL_BAD_BYTES);
        }
        return;
    }
    bool greeting_verb = cmd.verb == SMTP_VERB_EHLO || cmd.verb == SMTP_VERB_HELO ||
                         cmd.verb == SMTP_VERB_NOOP || cmd.verb == SMTP_VERB_RSET ||
                         cmd.verb == SMTP_VERB_QUIT;
    if (s->need_ehlo && !greeting_verb) {
        session_refuse_command(s, &cmd, SESSION_LOCAL_EHLO_FIRST);
        return;
    }
    /* require = on (submission-style listeners only: RFC 3207 section 4 forbids it on a
     * public port 25). */
    if (s->conf->front_tls.require && !s->front.tls_active && !greeting_verb &&
        cmd.verb != SMTP_VERB_STARTTLS) {
        session_refuse_command(s, &cmd, SESSION_LOCAL_TLS_REQUIRED);
        return;
    }
    switch (cmd.verb) {
    case SMTP_VERB_EHLO:
    case SMTP_VERB_HELO:
        s->need_ehlo = false;
        s->in_transaction = false;
        session_forward_line(s, line, len,
                             cmd.verb == SMTP_VERB_EHLO ? SESSION_PENDING_EHLO
                                                        : SESSION_PENDING_OTHER);
        if (!s->back_negotiated) {
            s->back_negotiated = true;
            session_back_negotiate(s, line, len, cmd.verb == SMTP_VERB_HELO);
        }
        break;
    case SMTP_VERB_RSET:
        s->in_transaction = false;
        session_forward_line(s, line, len, SESSION_PENDING_OTHER);
        break;
    case SMTP_VERB_MAIL:
        s->in_transaction = true;
        session_forward_line(s, line, len, SESSION_PENDING_MAIL);
        break;
    case SMTP_VERB_STARTTLS:
        session_front_starttls(s, &cmd);
        break;
    case SMTP_VERB_XCLIENT:
        session_reply_locally(s, SESSION_LOCAL_XCLIENT_DENIED);
        break;
    case SMTP_VERB_DATA:
        /* RFC 2920: DATA ends a pipelined group; what follows depends on its reply. */
        session_forward_line(s, line, len, SESSION_PENDING_DATA);
        s->wait_data_reply = true;
        break;
    case SMTP_VERB_BDAT:
        /* Without CHUNKING upstream the chunk would be read there as commands. */
        if ((s->back_caps & SMTP_CAP_CHUNKING) == 0) {
            session_refuse_command(s, &cmd, SESSION_LOCAL_BDAT_UNSUPPORTED);
        } else {
            s->front_mode = SESSION_FRONT_CHUNK;
            s->chunk_left = cmd.bdat_size;
            s->chunk_discard = false;
            session_forward_line(s, line, len,
                                 cmd.bdat_last ? SESSION_PENDING_BDAT_LAST : SESSION_PENDING_BDAT);
        }
        break;
    case SMTP_VERB_QUIT:
        session_forward_line(s, line, len, SESSION_PENDING_QUIT);
        break;
    case SMTP_VERB_AUTH:
        session_forward_line(s, line, len, SESSION_PENDING_AUTH);
        break;
    default:
        session_forward_line(s, line, len, SESSION_PENDING_OTHER);
        break;
    }
    session_replay_note(s, cmd.verb, line, len);
}

/* session_front_starttls answers STARTTLS (RFC 3207); it is never forwarded upstream. */
static void session_front_starttls(struct session *s, const struct smtp_command *cmd)
{
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
        /* The 220 waits for every reply due before it; nothing after the STARTTLS line
         * is read as a command meanwhile. */
        s->wait_starttls = true;
        session_push(s, SESSION_PENDING_STARTTLS, 0);
        session_send_ready_local_replies(s);
    }
}

/* session_front_starttls_reply sends the 220: the STARTTLS reached the head of the queue. */
static void session_front_starttls_reply(struct session *s)
{
    static const char ready[] = "220 2.0.0 Ready to start TLS\r\n";
    session_queue(s, &s->front, ready, sizeof(ready) - 1);
    s->wait_starttls = false;
    s->front_mode = SESSION_FRONT_COMMAND;
    /* From here on nothing in front.in is read as a command: the STARTTLS line itself is
     * consumed by the caller, the rest is thrown away by session_front_tls_begin(). */
    session_enter(s, SESSION_FRONT_HANDSHAKE);
}

/* session_front_tls_begin starts the handshake once our 220 is entirely written. */
static void session_front_tls_begin(struct session *s)
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
                                           : -ENOTSUP;
    if (rc != 0) {
        log_error(s->id, "front-tls-start-failed", "error=\"%s\"", uv_strerror(rc));
        session_abort(s, "internal-error");
        return;
    }
    s->front.tls_started = true;
    s->tls_started_ms = uv_now(&s->worker->loop);
    session_timer_set(s, s->conf->timeouts.tls_handshake_ms);
}

/* session_front_tls_failed records a failed leg-1 handshake: the address is learned, so
 * the client's next attempt is not offered STARTTLS and goes through in cleartext. */
static void session_front_tls_failed(struct session *s, const char *reason)
{
    s->front_starttls = SESSION_STARTTLS_FAILED;
    s->front_tls_error = reason;
    log_warn(s->id, "front-tls-failed", "client=%s reason=\"%s\"", s->front_addr, reason);
    struct learn *learned = s->worker->shared->front_learned;
    const struct conf *c = s->conf;
    bool always = false;
    for (size_t i = 0; i < c->front_tls.n_always_offer_to && !always; i++) {
        always = conf_cidr_match(&c->front_tls.always_offer_to[i],
                                 (const struct sockaddr *)&s->front_sa);
    }
    if (c->front_tls.learn_failures && !always &&
        learn_add(learned, (const struct sockaddr *)&s->front_sa, uv_hrtime() / 1000000)) {
        metrics_inc(METRICS_FRONT_LEARNED);
        log_info(s->id, "front-tls-learned", "client=%s ttl_ms=%" PRIu64 " entries=%zu",
                 s->front_addr, c->front_tls.learn_ttl_ms, learn_count(learned));
    }
    session_take_tls_out(s, &s->front); /* an alert, if TLS made one */
    session_finish(s, "client-tls-failed", NULL, NULL);
}

/*
 * session_tls_pull moves |side|'s received ciphertext through its established TLS into
 * side->in (as much as fits; the rest waits in TLS until the lines before it are used
 * up). A close_notify sets side->eof. Returns false when the session is ending.
 */
static bool session_tls_pull(struct session *s, struct session_side *side)
{
    for (;;) {
        session_tls_feed(side);
        bool progress = false;
        while (buf_len(&side->in) < SESSION_READ_SIZE) {
            if (buf_reserve(&side->in, SESSION_READ_SIZE, SESSION_IN_MAX) != 0) {
                session_abort(s, "out-of-memory");
                return false;
            }
            size_t n = 0;
            enum tlsio_result r =
                tlsio_read(&side->tls, &n, buf_tail(&side->in), buf_tail_len(&side->in));
            buf_commit(&side->in, n);
            if (r == TLSIO_CLOSED) {
                side->eof = true;
                break;
            }
            if (r == TLSIO_FAILED) {
                bool front = side == &s->front;
                log_warn(s->id, front ? "front-tls-error" : "back-tls-error",
                         "peer=%s reason=\"%s\"", front ? s->front_addr : s->back_addr,
                         tlsio_reason(&side->tls));
                if (front) {
                    session_abort(s, "client-tls-error");
                } else {
                    session_back_tls_broken(s);
                }
                return false;
            }
            if (n == 0) {
                break;
            }
            progress = true;
        }
        session_take_tls_out(s, side); /* e.g. a key update */
        if (!progress || buf_len(&side->tls_raw) == 0) {
            return true;
        }
    }
}

/*
 * session_front_tls_input runs the client's handshake on what it sent, then moves any
 * plaintext into front.in. Returns false when the session is ending.
 */
static bool session_front_tls_input(struct session *s)
{
    struct session_side *side = &s->front;
    if (s->state == SESSION_FRONT_HANDSHAKE) {
        session_tls_feed(side);
        enum tlsio_result r;
        do {
            r = tlsio_handshake(&side->tls);
            session_take_tls_out(s, side);
        } while (r == TLSIO_WANT_WRITE && side->open);
        if (r == TLSIO_WANT_READ) {
            if (!side->eof) {
                return true;
            }
            r = TLSIO_FAILED; /* the client left in the middle of the handshake */
        }
        if (r != TLSIO_OK) {
            const char *reason = tlsio_reason(&side->tls);
            session_front_tls_failed(s, reason[0] != '\0' ? reason : "handshake failed");
            return false;
        }
        side->tls_active = true;
        s->front_starttls = SESSION_STARTTLS_USED;
        s->need_ehlo = true;
        s->in_transaction = false;
        s->auth_continuation = false;
        metrics_observe(METRICS_FRONT_HANDSHAKE_SECONDS,
                        (double)(uv_now(&s->worker->loop) - s->tls_started_ms) / 1000.0);
        log_info(s->id, "front-tls", "client=%s version=%s cipher=%s", s->front_addr,
                 tlsio_version(&side->tls), tlsio_cipher(&side->tls));
        session_enter(s, SESSION_RELAY);
    }
    return session_tls_pull(s, side);
}

/* Each session_front_* step consumes a prefix of |data| and returns its length; 0 means
 * nothing can be done with these bytes yet. */

static size_t session_front_commands(struct session *s, const char *data, size_t len)
{
    size_t line_len;
    size_t eol_len;
    switch (smtp_line_find(&line_len, &eol_len, data, len, s->conf->max_line_len)) {
    case SMTP_OK:
        session_front_command(s, data, line_len);
        return line_len + eol_len;
    case SMTP_TOO_LONG:
        /* RFC 5321 section 4.5.3.1.4; the reply waits for the end of the line so the
         * session stays in step: one reply per line. */
        if (eol_len != 0) {
            session_reply_locally(s, SESSION_LOCAL_LINE_TOO_LONG);
        } else {
            s->front_mode = SESSION_FRONT_SKIP_LINE;
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
    session_reply_locally(s, SESSION_LOCAL_LINE_TOO_LONG);
    return (size_t)(lf - data) + 1;
}

static size_t session_front_data(struct session *s, const char *data, size_t len)
{
    size_t used;
    switch (smtp_data_scan(&s->scanner, &used, data, len)) {
    case SMTP_DATA_MORE:
        session_send_body(s, data, len);
        return len;
    case SMTP_DATA_END:
        session_send_body(s, data, used);
        s->front_mode = SESSION_FRONT_COMMAND;
        session_push(s, SESSION_PENDING_DATA_END, 0);
        return used;
    case SMTP_DATA_BARE_EOL:
        /* SMTP smuggling (CVE-2023-51764): the upstream might read a "." line ended by a
         * bare CR or LF as the end of data. It gets nothing more of this message: its
         * connection is reset, so it discards the partial message. */
        log_warn(s->id, "message-rejected", "reason=bare-cr-or-lf offset=%zu", used);
        s->back_dead = true;
        session_back_abort(s);
        /* The same scanner goes on skipping: it knows whether a line starts here. */
        s->front_mode = SESSION_FRONT_DATA_REJECT;
        return used;
    }
    return 0;
}

static size_t session_front_data_reject(struct session *s, const char *data, size_t len)
{
    size_t used;
    if (!smtp_skip_bad_data(&s->scanner, &used, data, len)) {
        return len;
    }
    s->front_mode = SESSION_FRONT_COMMAND;
    session_reply_locally(s, SESSION_LOCAL_BARE_EOL);
    return used;
}

static size_t session_front_chunk(struct session *s, const char *data, size_t len)
{
    size_t take = s->chunk_left < len ? (size_t)s->chunk_left : len;
    if (!s->chunk_discard) {
        session_send_body(s, data, take);
    }
    s->chunk_left -= take;
    if (s->chunk_left == 0) {
        s->front_mode = SESSION_FRONT_COMMAND;
    }
    return take;
}

static void session_front_process(struct session *s)
{
    while (!session_front_blocked(s)) {
        if (s->front.tls_active && buf_len(&s->front.in) < SESSION_READ_SIZE &&
            !session_front_tls_input(s)) {
            return;
        }
        size_t len = buf_len(&s->front.in);
        /* A BDAT 0 chunk is complete without any byte. */
        if (s->front_mode == SESSION_FRONT_CHUNK && s->chunk_left == 0) {
            s->front_mode = SESSION_FRONT_COMMAND;
        }
        if (len == 0) {
            break;
        }
        const char *data = buf_head(&s->front.in);
        size_t used = 0;
        switch (s->front_mode) {
        case SESSION_FRONT_COMMAND:
            used = session_front_commands(s, data, len);
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
            used = session_front_chunk(s, data, len);
            break;
        }
        if (used == 0) {
            break;
        }
        buf_consume(&s->front.in, used);
    }
    if (s->state == SESSION_RELAY && s->front.eof && s->n_pending == 0 &&
        !session_front_blocked(s)) {
        session_finish(s, "client-closed", NULL, NULL);
    }
}

/* The client has sent its last byte. */
static void session_front_eof(struct session *s, const char *reason)
{
    s->front.eof = true;
    if (session_mid_message(s)) {
        /* Client lost mid-message: the upstream must never see an end-of-data. */
        log_warn(s->id, "client-lost-in-data", "client=%s", s->front_addr);
        session_abort(s, "client-lost-in-data");
        return;
    }
    s->end_reason = s->end_reason != NULL ? s->end_reason : reason;
    /* Replies still due are awaited (a pipelining client may send its last commands and
     * close at once); session_front_process ends the session when nothing is left. */
    session_front_process(s);
}

/* session_side_received keeps |nread| bytes that libuv read into the buffer
 * session_on_alloc handed out (ciphertext once TLS started), or marks the end of the
 * stream. Returns false when there is nothing to do. */
static bool session_side_received(struct session_side *side, ssize_t nread)
{
    if (nread == 0) {
        return false; /* EAGAIN, not the end of the stream */
    }
    if (nread > 0) {
        buf_commit(side->tls_started ? &side->tls_raw : &side->in, (size_t)nread);
        side->bytes_read += (uint64_t)nread;
    } else {
        side->eof = true;
    }
    return true;
}

static void session_on_front_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    struct session *s = stream->data;
    (void)b;
    if (!session_side_received(&s->front, nread)) {
        return;
    }
    switch (s->state) {
    case SESSION_RELAY:
        if (nread < 0) {
            session_front_eof(s, nread == UV_EOF ? "client-closed" : "client-error");
        } else {
            session_front_process(s);
        }
        break;
    case SESSION_FRONT_PROXY_HEADER:
        session_front_proxy_header(s);
        break;
    case SESSION_FRONT_HANDSHAKE:
        if (nread < 0 && s->front.tls_started) {
            tlsio_feed_eof(&s->front.tls);
        }
        if (!s->front.tls_started) {
            /* Sent before our 220 was out: an injection attempt, never a handshake. */
            s->front_injected += buf_len(&s->front.in);
            buf_cleanup(&s->front.in);
            if (s->front.eof) {
                session_front_tls_failed(s, "closed before the handshake");
            }
        } else if (session_front_tls_input(s) && s->state == SESSION_RELAY) {
            session_front_process(s);
        }
        break;
    case SESSION_CLOSING:
        /* Lingering: the client's words no longer matter. */
        buf_cleanup(&s->front.in);
        if (nread < 0) {
            s->front.eof = true;
            session_abort(s, s->end_reason);
        }
        break;
    default:
        log_warn(s->id, "bug", "front read in state %s", session_state_name(s->state));
        assert(!"front read in unexpected state");
        session_abort(s, "internal-error");
        return;
    }
    if (s->front.open) {
        session_after_io(s);
    }
}

/* ---- back: replies ----------------------------------------------------------------------- */

static void session_relay_reply_line(struct session *s, const char *line, size_t len)
{
    session_queue(s, &s->front, line, len);
    session_queue(s, &s->front, "\r\n", 2);
}

/* session_reply_done acts on the complete reply to the head of the pending queue. */
static void session_reply_done(struct session *s, enum session_pending_kind kind, int code)
{
    switch (kind) {
    case SESSION_PENDING_DATA:
        s->wait_data_reply = false;
        if (code == 354) {
            s->front_mode = SESSION_FRONT_DATA;
            smtp_data_scanner_init(&s->scanner);
        }
        break;
    case SESSION_PENDING_DATA_END:
    case SESSION_PENDING_BDAT_LAST:
        s->in_transaction = false;
        buf_cleanup(&s->replay); /* the next transaction may be replayed again */
        s->replay_ok = s->back.tls_active;
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
        s->auth_continuation = code == 334;
        break;
    case SESSION_PENDING_QUIT:
        session_finish(s, "quit", NULL, NULL);
        break;
    default:
        break;
    }
}

static void session_ehlo_reply_done(struct session *s, int code)
{
    size_t len = buf_len(&s->ehlo_reply);
    if (code != 250) {
        session_queue(s, &s->front, buf_head(&s->ehlo_reply), len);
        buf_cleanup(&s->ehlo_reply);
        return;
    }
    size_t cap = len + len / 4 + 16; /* bare-LF lines grow by one byte each */
    struct buf *to = s->front.tls_active ? &s->front.tls_plain : &s->front.queue;
    if (buf_reserve(to, cap, SESSION_OUT_MAX) != 0) {
        session_abort(s, "out-of-memory");
        return;
    }
    size_t out_len = 0;
    unsigned caps = 0;
    bool add_starttls = s->offer_starttls && !s->front.tls_active;
    /* XCLIENT would let any client tell an upstream that trusts us who it is. AUTH that
     * the upstream offers inside TLS would invite a cleartext client to send its password
     * in the clear on leg 1: it is shown only when leg 1 is encrypted too. */
    unsigned drop = SMTP_CAP_XCLIENT;
    if (s->back.tls_active && !s->front.tls_active) {
        drop |= SMTP_CAP_AUTH;
    }
    if (smtp_ehlo_edit(buf_tail(to), &out_len, &caps, cap, buf_head(&s->ehlo_reply), len,
                       add_starttls, drop) != SMTP_OK) {
        buf_cleanup(&s->ehlo_reply);
        session_back_failed(s, "bad-ehlo-reply");
        return;
    }
    buf_commit(to, out_len);
    s->back_caps = caps;
    buf_cleanup(&s->ehlo_reply);
}

/* session_back_reply_line handles one reply line from the upstream in SESSION_RELAY. */
static void session_back_reply_line(struct session *s, const char *line, size_t len)
{
    int code = 0;
    bool done = false;
    if (smtp_reply_parse_line(&s->reply_parser, &code, &done, line, len) != SMTP_OK) {
        char text[80];
        log_warn(s->id, "upstream-protocol-error", "line=\"%s\"",
                 log_escape(text, sizeof(text), line, len, 60));
        session_back_failed(s, "upstream-protocol-error");
        return;
    }
    if (s->n_pending == 0) {
        /* Unsolicited: only a 421 (RFC 5321 section 3.8) means something; pass it on. */
        if (s->reply_parser.code == 421 || code == 421) {
            session_relay_reply_line(s, line, len);
            if (done) {
                session_finish(s, "upstream-421", NULL, NULL);
            }
        } else {
            char text[80];
            log_warn(s->id, "upstream-unsolicited", "line=\"%s\"",
                     log_escape(text, sizeof(text), line, len, 60));
        }
        return;
    }
    enum session_pending_kind kind = s->pending[s->pending_head].kind;
    assert(kind != SESSION_PENDING_LOCAL);
    if (kind == SESSION_PENDING_EHLO) {
        if (buf_append(&s->ehlo_reply, line, len, SMTP_EHLO_REPLY_MAX) != 0 ||
            buf_append(&s->ehlo_reply, "\r\n", 2, SMTP_EHLO_REPLY_MAX) != 0) {
            session_back_failed(s, "ehlo-reply-too-long");
            return;
        }
    } else {
        session_relay_reply_line(s, line, len);
    }
    if (!done) {
        return;
    }
    if (s->pending[s->pending_head].recorded) {
        session_replay_answered(s, code);
    }
    session_pop(s);
    if (kind == SESSION_PENDING_EHLO) {
        session_ehlo_reply_done(s, code);
    } else {
        session_reply_done(s, kind, code);
    }
    if (s->state != SESSION_RELAY) {
        return;
    }
    session_send_ready_local_replies(s);
}

/* session_back_greeting_line relays one line of the upstream's greeting. */
static void session_back_greeting_line(struct session *s, const char *line, size_t len)
{
    int code = 0;
    bool done = false;
    if (smtp_reply_parse_line(&s->reply_parser, &code, &done, line, len) != SMTP_OK) {
        char text[80];
        log_warn(s->id, "upstream-protocol-error", "greeting=\"%s\"",
                 log_escape(text, sizeof(text), line, len, 60));
        session_finish(s, "upstream-protocol-error", "421 4.4.0",
                       "Upstream unavailable, try again later");
        return;
    }
    if (s->back_retrying) {
        /* A fallback connection: the client had its greeting long ago. */
        if (done) {
            session_back_retry_greeted(s, code);
        }
        return;
    }
    if (s->reply_parser.code == 0 || done) {
        session_back_decide_policy(s, line, len);
    }
    session_relay_reply_line(s, line, len);
    if (done) {
        session_enter(s, SESSION_RELAY);
    }
}

/* ---- back: STARTTLS towards the upstream and the fallback ladder ------------------------ */

/* session_back_decide_policy picks leg 2's policy from the first greeting line: the most
 * specific [upstream_policy] pattern for the configured name, the greeting's host name and
 * the address. */
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
    if (conf_policy_lookup(&policy, c, names, 2, (const struct sockaddr *)&s->back_sa)) {
        s->back_policy = policy;
    }
}

static void session_back_send(struct session *s, const char *data, size_t len)
{
    session_queue(s, &s->back, data, len);
}

/* session_back_send_probe sends "EHLO <the client's name>", whatever the client said. */
static void session_back_send_probe(struct session *s)
{
    const char *line = buf_head(&s->client_ehlo);
    size_t len = buf_len(&s->client_ehlo);
    session_back_send(s, "EHLO", 4);
    session_back_send(s, line + 4, len - 4);
    session_back_send(s, "\r\n", 2);
}

/* session_back_send_client_greeting sends the client's own EHLO or HELO line. */
static void session_back_send_client_greeting(struct session *s)
{
    session_back_send(s, buf_head(&s->client_ehlo), buf_len(&s->client_ehlo));
    session_back_send(s, "\r\n", 2);
}

/*
 * session_back_negotiate starts leg 2's STARTTLS on the client's first EHLO/HELO, which
 * session_front_command has just queued (forwarded and pushed). Where TLS is to be tried,
 * the forwarded line is replaced by our probe and the client waits until it is settled.
 */
static void session_back_negotiate(struct session *s, const char *line, size_t len, bool helo)
{
    const char *skip = NULL;
    struct learn *failed = s->worker->shared->back_failed;
    if (s->back_policy == CONF_BACK_STARTTLS_OFF) {
        skip = "policy-off";
    } else if (s->back_policy == CONF_BACK_STARTTLS_MAY && failed != NULL &&
               learn_contains(failed, (const struct sockaddr *)&s->back_sa,
                              uv_hrtime() / 1000000)) {
        skip = "remembered";
    } else if (s->runtime->back_ctx == NULL) {
        skip = "policy-off";
    }
    if (skip != NULL) {
        if (strcmp(skip, "remembered") == 0) {
            metrics_inc(METRICS_BACK_REMEMBERED_SKIPS);
        }
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "%s", skip);
        if (s->conf->upstream_identity != CONF_IDENTITY_XCLIENT) {
            return; /* the line goes up as it is */
        }
        s->back_skip_tls = true; /* probe anyway, for XCLIENT */
    }
    /* Take back the line just queued: the probe goes instead. */
    size_t queued = len + 2;
    assert(buf_len(&s->back.queue) >= queued);
    s->back.queue.end -= queued;
    if (buf_append(&s->client_ehlo, line, len, SMTP_EHLO_REPLY_MAX) != 0) {
        session_abort(s, "out-of-memory");
        return;
    }
    s->client_helo = helo;
    session_back_send_probe(s);
    session_enter(s, SESSION_BACK_EHLO);
}

/* session_back_answer gives the client the reply to its EHLO/HELO: negotiation is over. */
static void session_back_answer(struct session *s, struct buf *reply, int code)
{
    enum session_pending_kind kind = s->pending[s->pending_head].kind;
    session_pop(s);
    session_enter(s, SESSION_RELAY);
    if (kind == SESSION_PENDING_EHLO) {
        if (reply != &s->ehlo_reply) {
            buf_cleanup(&s->ehlo_reply);
            s->ehlo_reply = *reply;
            buf_init(reply);
        }
        session_ehlo_reply_done(s, code);
    } else {
        session_queue(s, &s->front, buf_head(reply), buf_len(reply));
        buf_cleanup(reply);
    }
    buf_cleanup(&s->ehlo_reply);
    buf_cleanup(&s->saved_ehlo);
    s->replay_ok = s->back.tls_active;
    session_send_ready_local_replies(s);
}

/*
 * session_back_go_cleartext settles leg 2 as cleartext on the current connection, which
 * has just answered our EHLO probe with |reply| (code |code|). A HELO client gets its own
 * HELO sent, so its reply has the form it expects.
 */
static void session_back_go_cleartext(struct session *s, struct buf *reply, int code)
{
    if (s->client_helo) {
        buf_cleanup(reply);
        session_back_send_client_greeting(s);
        session_enter(s, SESSION_RELAY); /* the HELO reply answers the client's HELO */
        return;
    }
    session_back_answer(s, reply, code);
}

static void session_back_fail_required(struct session *s, const char *reason)
{
    bool required = s->back_policy == CONF_BACK_STARTTLS_REQUIRE;
    if (required) {
        metrics_inc(METRICS_BACK_REQUIRE_FAILURES);
    }
    /* With require, or with fallback = off (or no step left), nothing goes in cleartext. */
    log_warn(s->id, required ? "back-tls-required-failed" : "back-tls-no-fallback",
             "upstream=%s reason=\"%s\"", s->back_addr, reason);
    session_finish(s, "upstream-tls-failed", "421 4.7.0",
                   "TLS to the upstream failed, try again later");
}

/* session_back_remember records the upstream's TLS failure, once per session. */
static void session_back_remember(struct session *s, const char *reason)
{
    struct learn *failed = s->worker->shared->back_failed;
    if (s->back_tls_reason[0] == '\0') {
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "%s", reason);
    }
    if (failed != NULL && s->back_policy == CONF_BACK_STARTTLS_MAY &&
        learn_add(failed, (const struct sockaddr *)&s->back_sa, uv_hrtime() / 1000000)) {
        log_info(s->id, "back-tls-remembered", "upstream=%s reason=\"%s\" ttl_ms=%" PRIu64,
                 s->back_addr, reason, s->conf->back_tls.remember_failures_ms);
    }
}

/*
 * session_back_tls_fallback handles a failed handshake, or a failure right after it: that
 * connection is finished. The next applicable step of fallback_steps is tried on a new
 * connection, the last being cleartext; with require, or nothing left, the client gets 421.
 */
static void session_back_tls_fallback(struct session *s, const char *reason, bool in_handshake)
{
    const struct conf *c = s->conf;
    session_back_remember(s, reason);
    const char *action = NULL;
    if (s->back_policy != CONF_BACK_STARTTLS_REQUIRE && c->back_tls.fallback) {
        while (action == NULL && s->back_next_step < c->back_tls.n_fallback_steps) {
            switch (c->back_tls.fallback_steps[s->back_next_step++]) {
            case CONF_FALLBACK_NO_CLIENT_CERT:
                if (in_handshake && c->back_tls.certificate != NULL && !s->back_no_client_cert) {
                    s->back_no_client_cert = true;
                    action = "retry-no-client-cert";
                }
                break;
            case CONF_FALLBACK_TLS12:
                if (in_handshake && !s->back_max_tls12) {
                    s->back_max_tls12 = true;
                    action = "retry-tls12";
                }
                break;
            case CONF_FALLBACK_CLEARTEXT:
                s->back_cleartext = true;
                action = "reconnect-cleartext";
                break;
            }
        }
    }
    metrics_inc(metrics_back_fallback_reason(reason));
    log_warn(s->id, "back-tls-failed", "upstream=%s reason=\"%s\" action=%s", s->back_addr, reason,
             action != NULL ? action : "fail");
    if (action == NULL) {
        session_back_fail_required(s, reason);
        return;
    }
    session_enter(s, SESSION_BACK_RECONNECT);
    session_side_close(s, &s->back, false); /* its close callback connects again */
}

/* session_back_retry_greeted goes on once a fallback connection has greeted. */
static void session_back_retry_greeted(struct session *s, int code)
{
    if (code < 200 || code >= 300) {
        log_warn(s->id, "upstream-refused-retry", "upstream=%s code=%d", s->back_addr, code);
        session_finish(s, "upstream-unreachable", "421 4.4.0",
                       "Upstream unavailable, try again later");
        return;
    }
    if (s->replaying) {
        if (s->client_helo) {
            session_back_send_client_greeting(s);
        } else {
            session_back_send_probe(s);
        }
        s->replay_at = SIZE_MAX;
        session_enter(s, SESSION_BACK_REPLAY);
        return;
    }
    if (s->back_cleartext) {
        /* The last step: the client's own EHLO/HELO, answered the normal way. */
        session_back_send_client_greeting(s);
        session_enter(s, SESSION_RELAY);
        return;
    }
    session_back_send_probe(s);
    session_enter(s, SESSION_BACK_EHLO);
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
        .no_client_cert = s->back_no_client_cert,
        .max_tls12 = s->back_max_tls12,
        .verify_soft = s->back_policy != CONF_BACK_STARTTLS_REQUIRE,
    };
    int rc = tlsio_start_back(&s->back.tls, s->runtime->back_ctx, &options);
    if (rc != 0) {
        log_error(s->id, "back-tls-start-failed", "error=\"%s\"", uv_strerror(rc));
        session_abort(s, "internal-error");
        return;
    }
    s->back.tls_started = true;
    s->tls_started_ms = uv_now(&s->worker->loop);
    s->back_bytes_at_220 = s->back.bytes_read;
    session_timer_set(s, c->timeouts.tls_handshake_ms);
    session_back_tls_input(s);
}

/* session_alert_reason turns "received alert: handshake failure" into the alert's name as
 * TLS-RPT reports and the logs show it: "tls-alert:handshake_failure". */
static void session_alert_reason(char *out, size_t out_size, const char *text)
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

/* session_back_tls_failure_reason names a failed handshake, RFC 8460 style where one fits. */
static void session_back_tls_failure_reason(struct session *s, char *out, size_t out_size)
{
    const struct tlsio *t = &s->back.tls;
    const char *text = tlsio_reason(t);
    switch (tlsio_failure(t)) {
    case TLSIO_FAILURE_EOF:
        snprintf(out, out_size, "%s",
                 s->back.bytes_read == s->back_bytes_at_220 ? "eof-after-220"
                                                            : "eof-during-handshake");
        return;
    case TLSIO_FAILURE_ALERT:
        session_alert_reason(out, out_size, text);
        return;
    case TLSIO_FAILURE_VERIFY:
        const char *verify_text;
        switch (tlsio_verify_result(t, &verify_text)) {
        case TLSIO_VERIFY_HOST_MISMATCH:
            snprintf(out, out_size, "certificate-host-mismatch");
            return;
        case TLSIO_VERIFY_EXPIRED:
            snprintf(out, out_size, "certificate-expired");
            return;
        default:
            snprintf(out, out_size, "validation-failure");
            return;
        }
    default:
        snprintf(out, out_size, "tls-error:%s", text[0] != '\0' ? text : "handshake failed");
        return;
    }
}

/* session_back_tls_input runs the upstream handshake on what it sent; once done, our
 * EHLO (or the client's HELO) goes up inside TLS. */
static void session_back_tls_input(struct session *s)
{
    struct session_side *side = &s->back;
    session_tls_feed(side);
    enum tlsio_result r;
    do {
        r = tlsio_handshake(&side->tls);
        session_take_tls_out(s, side);
    } while (r == TLSIO_WANT_WRITE && side->open);
    if (r == TLSIO_WANT_READ && !side->eof) {
        return;
    }
    if (r != TLSIO_OK) {
        char reason[sizeof(s->back_tls_reason)];
        session_back_tls_failure_reason(s, reason, sizeof(reason));
        session_back_tls_fallback(s, reason, tlsio_failure(&side->tls) != TLSIO_FAILURE_VERIFY);
        return;
    }
    side->tls_active = true;
    const char *verify_text = NULL;
    enum tlsio_verify verify = tlsio_verify_result(&side->tls, &verify_text);
    if (verify != TLSIO_VERIFY_OK && verify != TLSIO_VERIFY_NOT_CHECKED) {
        /* Opportunistic (may): an unverified encrypted leg still beats cleartext. */
        log_warn(s->id, "back-tls-unverified", "upstream=%s reason=\"%s\" action=continue",
                 s->back_addr, verify_text != NULL ? verify_text : "?");
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "unverified");
    } else {
        s->back_tls_reason[0] = '\0';
    }
    metrics_inc(METRICS_BACK_TLS_USED);
    metrics_observe(METRICS_BACK_HANDSHAKE_SECONDS,
                    (double)(uv_now(&s->worker->loop) - s->tls_started_ms) / 1000.0);
    log_info(s->id, "back-tls", "upstream=%s version=%s cipher=%s", s->back_addr,
             tlsio_version(&side->tls), tlsio_cipher(&side->tls));
    if (s->client_helo) {
        session_back_send_client_greeting(s);
    } else {
        session_back_send_probe(s);
    }
    session_enter(s, SESSION_BACK_EHLO);
}

/*
 * session_back_tls_broken: the upstream's TLS failed after the handshake. Right after it
 * (TLS 1.3 servers reject a client certificate only then), it counts as a handshake
 * failure for the fallback ladder; later, the upstream connection is simply lost.
 */
static void session_back_tls_broken(struct session *s)
{
    char reason[sizeof(s->back_tls_reason)];
    if (s->state == SESSION_BACK_EHLO) {
        session_back_tls_failure_reason(s, reason, sizeof(reason));
        session_back_tls_fallback(s, reason, true);
        return;
    }
    const struct tlsio *t = &s->back.tls;
    switch (tlsio_failure(t)) {
    case TLSIO_FAILURE_EOF:
        snprintf(reason, sizeof(reason), "tls-eof-without-close-notify");
        break;
    case TLSIO_FAILURE_ALERT:
        session_alert_reason(reason, sizeof(reason), tlsio_reason(t));
        break;
    default:
        snprintf(reason, sizeof(reason), "tls-error:%s", tlsio_reason(t));
        break;
    }
    session_back_failed(s, reason);
}

/* session_back_negotiation_reply acts on a complete reply in SESSION_BACK_EHLO or
 * SESSION_BACK_STARTTLS (its lines are in s->ehlo_reply). */
static void session_back_negotiation_reply(struct session *s, int code)
{
    char reason[64];
    if (s->state == SESSION_BACK_STARTTLS) {
        if (code == 220) {
            buf_cleanup(&s->ehlo_reply);
            session_enter(s, SESSION_BACK_HANDSHAKE); /* begins once this line is consumed */
            return;
        }
        /* Refused by a reply: RFC 3207 lets this connection go on in cleartext. */
        snprintf(reason, sizeof(reason), "starttls-refused-%d", code);
        metrics_inc(metrics_back_fallback_reason(reason));
        buf_cleanup(&s->ehlo_reply);
        session_back_remember(s, reason);
        log_warn(
            s->id, "back-tls-failed", "upstream=%s reason=\"%s\" action=%s", s->back_addr, reason,
            s->back_policy == CONF_BACK_STARTTLS_REQUIRE ? "fail" : "cleartext-same-connection");
        if (s->back_policy == CONF_BACK_STARTTLS_REQUIRE) {
            session_back_fail_required(s, reason);
            return;
        }
        session_back_go_cleartext(s, &s->saved_ehlo, 250);
        return;
    }
    if (s->back.tls_active) {
        if (code >= 200 && code < 300) {
            session_back_answer(s, &s->ehlo_reply, code);
            return;
        }
        /* e.g. "403 4.7.0 TLS handshake failed": this connection is no good. */
        snprintf(reason, sizeof(reason), "post-tls-ehlo-%d", code);
        buf_cleanup(&s->ehlo_reply);
        session_back_tls_fallback(s, reason, false);
        return;
    }
    if (s->state == SESSION_BACK_XCLIENT) {
        session_back_xclient_reply(s, code);
        return;
    }
    /* Our probe on a cleartext connection. */
    unsigned caps = 0;
    if (code == 250 && s->conf->upstream_identity == CONF_IDENTITY_XCLIENT && !s->xclient_done &&
        smtp_ehlo_caps(&caps, buf_head(&s->ehlo_reply), buf_len(&s->ehlo_reply)) == SMTP_OK) {
        s->xclient_done = true;
        const char *params = NULL;
        size_t params_len = 0;
        if (smtp_ehlo_params(&params, &params_len, buf_head(&s->ehlo_reply),
                             buf_len(&s->ehlo_reply), "XCLIENT")) {
            session_back_send_xclient(s, params, params_len);
            return;
        }
        log_warn(s->id, "xclient-not-offered", "upstream=%s", s->back_addr);
    }
    if (s->back_skip_tls) {
        session_back_go_cleartext(s, &s->ehlo_reply, code);
        return;
    }
    if (code != 250 ||
        smtp_ehlo_caps(&caps, buf_head(&s->ehlo_reply), buf_len(&s->ehlo_reply)) != SMTP_OK ||
        (caps & SMTP_CAP_STARTTLS) == 0) {
        snprintf(s->back_tls_reason, sizeof(s->back_tls_reason), "%s",
                 code == 250 ? "starttls-not-supported" : "ehlo-refused");
        if (s->back_policy == CONF_BACK_STARTTLS_REQUIRE) {
            buf_cleanup(&s->ehlo_reply);
            session_back_fail_required(s, s->back_tls_reason);
            return;
        }
        session_back_go_cleartext(s, &s->ehlo_reply, code);
        return;
    }
    buf_cleanup(&s->saved_ehlo);
    s->saved_ehlo = s->ehlo_reply;
    buf_init(&s->ehlo_reply);
    session_back_send(s, "STARTTLS\r\n", 10);
    session_enter(s, SESSION_BACK_STARTTLS);
}

/* session_xtext appends |len| bytes of |text| as RFC 3461 xtext (XCLIENT's encoding). */
static void session_xtext(struct session *s, const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 33 && c <= 126 && c != '+' && c != '=') {
            session_back_send(s, text + i, 1);
        } else {
            char hex[4];
            snprintf(hex, sizeof(hex), "+%02X", c);
            session_back_send(s, hex, 3);
        }
    }
}

/* session_xclient_offers tells whether the XCLIENT capability's parameters name |attr|. */
static bool session_xclient_offers(const char *params, size_t len, const char *attr)
{
    size_t attr_len = strlen(attr);
    for (size_t i = 0; i < len;) {
        const char *space = memchr(params + i, ' ', len - i);
        size_t end = space != NULL ? (size_t)(space - params) : len;
        if (end - i == attr_len && strncasecmp(params + i, attr, attr_len) == 0) {
            return true;
        }
        i = end + 1;
    }
    return false;
}

/* session_back_send_xclient tells a Postfix-style upstream who the client really is
 * (upstream_identity = xclient), with the attributes it advertised. Its reply is a new
 * greeting. */
static void session_back_send_xclient(struct session *s, const char *params, size_t params_len)
{
    char host[INET6_ADDRSTRLEN] = "";
    unsigned port = 0;
    const struct sockaddr *sa = (const struct sockaddr *)&s->front_sa;
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    } else {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
    }
    char attr[96];
    session_back_send(s, "XCLIENT", 7);
    if (session_xclient_offers(params, params_len, "ADDR")) {
        /* Postfix wants the IPV6: prefix (RFC 5321 address literal form). */
        snprintf(attr, sizeof(attr), " ADDR=%s%s", sa->sa_family == AF_INET6 ? "IPV6:" : "", host);
        session_back_send(s, attr, strlen(attr));
    }
    if (session_xclient_offers(params, params_len, "PORT")) {
        snprintf(attr, sizeof(attr), " PORT=%u", port);
        session_back_send(s, attr, strlen(attr));
    }
    if (session_xclient_offers(params, params_len, "PROTO")) {
        snprintf(attr, sizeof(attr), " PROTO=%s", s->client_helo ? "SMTP" : "ESMTP");
        session_back_send(s, attr, strlen(attr));
    }
    if (session_xclient_offers(params, params_len, "HELO")) {
        const char *greeting = buf_head(&s->client_ehlo);
        size_t len = buf_len(&s->client_ehlo);
        size_t name_at = len > 5 ? 5 : len; /* "EHLO " / "HELO " */
        const char *name = greeting + name_at;
        const char *space = memchr(name, ' ', len - name_at);
        size_t name_len = space != NULL ? (size_t)(space - name) : len - name_at;
        if (name_len > 0) {
            session_back_send(s, " HELO=", 6);
            session_xtext(s, name, name_len);
        }
    }
    session_back_send(s, "\r\n", 2);
    /* Keep the probe's reply: if XCLIENT is refused we go on with it. */
    buf_cleanup(&s->saved_ehlo);
    s->saved_ehlo = s->ehlo_reply;
    buf_init(&s->ehlo_reply);
    session_enter(s, SESSION_BACK_XCLIENT);
}

/* session_back_xclient_reply: 220 is the upstream's new greeting (EHLO again); anything
 * else is a refusal, and the session goes on without it. */
static void session_back_xclient_reply(struct session *s, int code)
{
    buf_cleanup(&s->ehlo_reply);
    if (code == 220) {
        log_info(s->id, "xclient", "upstream=%s client=%s", s->back_addr, s->front_addr);
        buf_cleanup(&s->saved_ehlo);
        session_back_send_probe(s);
        session_enter(s, SESSION_BACK_EHLO);
        return;
    }
    log_warn(s->id, "xclient-refused", "upstream=%s code=%d", s->back_addr, code);
    s->ehlo_reply = s->saved_ehlo;
    buf_init(&s->saved_ehlo);
    session_enter(s, SESSION_BACK_EHLO);
    session_back_negotiation_reply(s, 250);
}

/* session_back_negotiation_line collects one reply line in SESSION_BACK_EHLO or
 * SESSION_BACK_STARTTLS. */
static void session_back_negotiation_line(struct session *s, const char *line, size_t len)
{
    int code = 0;
    bool done = false;
    if (smtp_reply_parse_line(&s->reply_parser, &code, &done, line, len) != SMTP_OK) {
        char text[80];
        log_warn(s->id, "upstream-protocol-error", "line=\"%s\"",
                 log_escape(text, sizeof(text), line, len, 60));
        if (s->state == SESSION_BACK_STARTTLS) {
            session_back_tls_fallback(s, "starttls-bad-reply", false);
        } else {
            session_back_failed(s, "upstream-protocol-error");
        }
        return;
    }
    if (buf_append(&s->ehlo_reply, line, len, SMTP_EHLO_REPLY_MAX) != 0 ||
        buf_append(&s->ehlo_reply, "\r\n", 2, SMTP_EHLO_REPLY_MAX) != 0) {
        session_back_failed(s, "ehlo-reply-too-long");
        return;
    }
    if (done) {
        session_back_negotiation_reply(s, code);
    }
}

/* ---- back: replaying a transaction after a TLS upstream broke ------------------------- */

/* A record: 2 bytes of reply code, 2 bytes of length, then the line without CRLF. */
static size_t session_replay_record(const struct session *s, size_t at, int *out_code,
                                    const char **out_line, size_t *out_len)
{
    const unsigned char *p = (const unsigned char *)buf_head(&s->replay) + at;
    *out_code = p[0] << 8 | p[1];
    *out_len = (size_t)(p[2] << 8 | p[3]);
    *out_line = (const char *)p + 4;
    return at + 4 + *out_len;
}

/*
 * session_replay_note keeps the record up to date as the client's commands go up on a TLS
 * leg: what a fresh cleartext connection would need to reach the same point. Only plain
 * envelope commands can be replayed; once DATA or BDAT went up, nothing can.
 */
static void session_replay_note(struct session *s, enum smtp_verb verb, const char *line,
                                size_t len)
{
    if (!s->back.tls_active || s->state != SESSION_RELAY) {
        return;
    }
    switch (verb) {
    case SMTP_VERB_EHLO:
    case SMTP_VERB_HELO:
        buf_cleanup(&s->replay); /* its own reply is not replayable: wait for it */
        s->replay_ok = false;
        return;
    case SMTP_VERB_RSET:
        buf_cleanup(&s->replay);
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
    if (!s->replay_ok || len > 0xffff ||
        buf_append(&s->replay, head, sizeof(head), SESSION_REPLAY_MAX) != 0 ||
        buf_append(&s->replay, line, len, SESSION_REPLAY_MAX) != 0) {
        s->replay_ok = false;
        return;
    }
    unsigned last = (s->pending_head + s->n_pending - 1) % SESSION_PENDING_MAX;
    s->pending[last].recorded = 1;
}

/* session_replay_answered stores the code of the reply the client got for a recorded
 * line: the first record still without one. */
static void session_replay_answered(struct session *s, int code)
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

/* session_replay_possible: every command awaiting a reply is in the record, and nothing
 * went up that cannot be sent twice. */
static bool session_replay_possible(const struct session *s)
{
    if (!s->replay_ok || s->back_policy != CONF_BACK_STARTTLS_MAY || !s->conf->back_tls.fallback ||
        s->conf->upstream_identity == CONF_IDENTITY_XCLIENT || s->state != SESSION_RELAY ||
        session_mid_message(s)) {
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

static void session_replay_failed(struct session *s, const char *why)
{
    log_warn(s->id, "back-replay-failed", "upstream=%s reason=\"%s\"", s->back_addr, why);
    session_finish(s, "upstream-replay-failed", "421 4.4.2",
                   "Upstream connection lost, closing connection");
}

/* session_replay_send_from sends the record at |at|; from the first one the client has
 * not seen answered, it sends all the rest and relaying goes on: their replies are the
 * client's. */
static void session_replay_send_from(struct session *s, size_t at)
{
    if (at < buf_len(&s->replay)) {
        int seen;
        const char *line;
        size_t len;
        size_t next = session_replay_record(s, at, &seen, &line, &len);
        if (seen != 0) {
            session_back_send(s, line, len);
            session_back_send(s, "\r\n", 2);
            s->replay_at = at;
            return;
        }
        for (; at < buf_len(&s->replay); at = next) {
            next = session_replay_record(s, at, &seen, &line, &len);
            session_back_send(s, line, len);
            session_back_send(s, "\r\n", 2);
        }
    }
    log_info(s->id, "back-replayed", "upstream=%s", s->back_addr);
    s->replaying = false;
    session_enter(s, SESSION_RELAY);
}

/* session_back_replay_line checks one reply line on the replay connection. */
static void session_back_replay_line(struct session *s, const char *line, size_t len)
{
    int code = 0;
    bool done = false;
    if (smtp_reply_parse_line(&s->reply_parser, &code, &done, line, len) != SMTP_OK) {
        session_replay_failed(s, "protocol-error");
        return;
    }
    if (s->replay_at == SIZE_MAX &&
        (buf_append(&s->ehlo_reply, line, len, SMTP_EHLO_REPLY_MAX) != 0 ||
         buf_append(&s->ehlo_reply, "\r\n", 2, SMTP_EHLO_REPLY_MAX) != 0)) {
        session_replay_failed(s, "ehlo-reply-too-long");
        return;
    }
    if (!done) {
        return;
    }
    if (s->replay_at == SIZE_MAX) {
        unsigned caps = 0;
        if (code < 200 || code >= 300 ||
            (!s->client_helo &&
             smtp_ehlo_caps(&caps, buf_head(&s->ehlo_reply), buf_len(&s->ehlo_reply)) != SMTP_OK)) {
            buf_cleanup(&s->ehlo_reply);
            session_replay_failed(s, "ehlo-refused");
            return;
        }
        buf_cleanup(&s->ehlo_reply);
        s->back_caps = caps;
        session_replay_send_from(s, 0);
        return;
    }
    int seen;
    const char *record;
    size_t record_len;
    size_t next = session_replay_record(s, s->replay_at, &seen, &record, &record_len);
    /* The client acted on the first answer: the new one must agree with it. */
    if (code / 100 != seen / 100) {
        char why[48];
        snprintf(why, sizeof(why), "reply-%d-where-client-saw-%d", code, seen);
        session_replay_failed(s, why);
        return;
    }
    session_replay_send_from(s, next);
}

static bool session_back_reads_lines(const struct session *s)
{
    return s->state == SESSION_BACK_GREETING || s->state == SESSION_RELAY ||
           s->state == SESSION_BACK_EHLO || s->state == SESSION_BACK_STARTTLS ||
           s->state == SESSION_BACK_REPLAY || s->state == SESSION_BACK_XCLIENT;
}

static void session_back_process(struct session *s)
{
    while (session_back_reads_lines(s)) {
        if (s->back.tls_active && buf_len(&s->back.in) < SESSION_READ_SIZE &&
            !session_tls_pull(s, &s->back)) {
            return;
        }
        size_t len = buf_len(&s->back.in);
        if (len == 0) {
            return;
        }
        const char *data = buf_head(&s->back.in);
        size_t line_len;
        size_t eol_len;
        enum smtp_result rc = smtp_line_find(&line_len, &eol_len, data, len, SMTP_REPLY_LINE_MAX);
        if (rc == SMTP_NEED_MORE) {
            return;
        }
        if (rc != SMTP_OK) {
            session_back_failed(s, "reply-line-too-long");
            return;
        }
        switch (s->state) {
        case SESSION_BACK_GREETING:
            session_back_greeting_line(s, data, line_len);
            break;
        case SESSION_RELAY:
            session_back_reply_line(s, data, line_len);
            break;
        case SESSION_BACK_REPLAY:
            session_back_replay_line(s, data, line_len);
            break;
        default:
            session_back_negotiation_line(s, data, line_len);
            break;
        }
        if (!s->back.open) {
            return; /* the line's handler closed this connection (and maybe opens another) */
        }
        buf_consume(&s->back.in, line_len + eol_len);
    }
    if (s->state == SESSION_BACK_HANDSHAKE && !s->back.tls_started) {
        session_back_tls_begin(s);
    }
}

static void session_on_back_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    struct session *s = stream->data;
    (void)b;
    if (!session_side_received(&s->back, nread)) {
        return;
    }
    if (nread < 0 && s->back.tls_started) {
        tlsio_feed_eof(&s->back.tls);
    }
    switch (s->state) {
    case SESSION_BACK_HANDSHAKE:
        session_back_tls_input(s);
        if (s->state == SESSION_BACK_EHLO) {
            session_back_process(s); /* a reply may have come with the handshake's end */
        }
        break;
    case SESSION_BACK_GREETING:
    case SESSION_BACK_EHLO:
    case SESSION_BACK_STARTTLS:
    case SESSION_BACK_REPLAY:
    case SESSION_BACK_XCLIENT:
    case SESSION_RELAY:
        session_back_process(s);
        if (s->state == SESSION_BACK_HANDSHAKE || !s->back.open) {
            break;
        }
        if (s->back.eof) {
            session_back_eof(s,
                             nread == UV_EOF || nread > 0 ? "upstream-closed" : "upstream-error");
            break;
        }
        if (s->state == SESSION_RELAY) {
            session_front_process(s);
        }
        break;
    default:
        log_warn(s->id, "bug", "back read in state %s", session_state_name(s->state));
        assert(!"back read in unexpected state");
        session_abort(s, "internal-error");
        return;
    }
    if (s->front.open) {
        session_after_io(s);
    }
}

/* session_back_eof: the upstream will send no more (close, reset or close_notify). */
static void session_back_eof(struct session *s, const char *reason)
{
    switch (s->state) {
    case SESSION_BACK_GREETING:
        session_side_close(s, &s->back, false);
        log_warn(s->id, "upstream-closed-before-greeting", "upstream=%s", s->back_addr);
        session_finish(s, "upstream-unreachable", "421 4.4.0",
                       "Upstream unavailable, try again later");
        return;
    case SESSION_BACK_STARTTLS:
        session_back_tls_fallback(s, "eof-after-starttls", false);
        return;
    case SESSION_BACK_EHLO:
        if (s->back.tls_active) {
            session_back_tls_fallback(s, "post-tls-eof", false);
            return;
        }
        break;
    default:
        break;
    }
    session_side_close(s, &s->back, false);
    session_back_failed(s, reason);
}

/* ---- back: resolving and connecting ------------------------------------------------------ */

static void session_on_back_connect(uv_connect_t *req, int status)
{
    struct session *s = req->data;
    session_unref(s); /* the request */
    if (status == UV_ECANCELED || s->state != SESSION_BACK_CONNECTING) {
        return;
    }
    if (status < 0) {
        log_warn(s->id, "upstream-connect-failed", "upstream=%s error=\"%s\"", s->back_addr,
                 uv_strerror(status));
        session_side_close(s, &s->back, false); /* its close callback tries the next one */
        return;
    }
    uv_tcp_nodelay(&s->back.tcp, 1);
    enum conf_identity identity = s->conf->upstream_identity;
    if (identity == CONF_IDENTITY_PROXY_V1 || identity == CONF_IDENTITY_PROXY_V2) {
        /* Before anything else on the connection (HAProxy's PROXY protocol). */
        char header[PROXYPROTO_HEADER_MAX];
        size_t len = 0;
        const struct sockaddr *dst =
            (const struct sockaddr *)(s->conf->mode == CONF_MODE_TRANSPARENT ? &s->target_sa
                                                                             : &s->local_sa);
        if (proxyproto_format(header, &len, sizeof(header),
                              identity == CONF_IDENTITY_PROXY_V1 ? PROXYPROTO_V1 : PROXYPROTO_V2,
                              (const struct sockaddr *)&s->front_sa, dst) == 0) {
            session_queue(s, &s->back, header, len);
        }
    }
    s->xclient_done = false;
    session_enter(s, SESSION_BACK_GREETING);
    smtp_reply_parser_init(&s->reply_parser);
    session_after_io(s);
}

static void session_connect_failed(struct session *s)
{
    session_finish(s, "upstream-unreachable", "421 4.4.0", "Upstream unavailable, try again later");
    session_after_io(s);
}

/* session_back_connect_next tries the next upstream address, or gives up. */
static void session_back_connect_next(struct session *s)
{
    const struct sockaddr *sa = NULL;
    if (s->conf->mode == CONF_MODE_TRANSPARENT) {
        if (s->connect_attempts == 0) {
            sa = (const struct sockaddr *)&s->target_sa;
        }
    } else if (s->conf->upstream.numeric) {
        if (s->connect_attempts == 0) {
            sa = (const struct sockaddr *)&s->conf->upstream.sa;
        }
    } else if (s->next_addr != NULL) {
        sa = s->next_addr->ai_addr;
        s->next_addr = s->next_addr->ai_next;
    }
    if (sa == NULL) {
        session_connect_failed(s);
        return;
    }
    s->connect_attempts++;
    session_back_connect_to(s, sa);
}

/* session_back_connect_to opens a new upstream connection to |sa|. */
/*
 * session_back_spoof_socket gives the upstream socket the client's own address
 * (upstream_identity = spoof, TPROXY): IP_TRANSPARENT lets us bind an address that is not
 * ours, and the routing described in the README brings the replies back to us.
 */
static int session_back_spoof_socket(struct session *s, int family)
{
    const struct sockaddr *client = (const struct sockaddr *)&s->front_sa;
    if (client->sa_family != family) {
        return UV_EAFNOSUPPORT;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return -errno;
    }
    int on = 1;
    union session_addr from = s->front_sa;
    if (family == AF_INET6) {
        ((struct sockaddr_in6 *)&from)->sin6_port = 0;
    } else {
        ((struct sockaddr_in *)&from)->sin_port = 0;
    }
    if (setsockopt(fd, family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP,
                   family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &on, sizeof(on)) == -1 ||
        bind(fd, (const struct sockaddr *)&from,
             family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in)) == -1) {
        int err = -errno;
        close(fd);
        return err;
    }
    int rc = uv_tcp_open(&s->back.tcp, fd);
    if (rc != 0) {
        close(fd);
    }
    return rc;
}

static void session_back_connect_to(struct session *s, const struct sockaddr *sa)
{
    session_addr_set(&s->back_sa, sa);
    session_format_addr(s->back_addr, sizeof(s->back_addr), sa);
    int rc = uv_tcp_init(&s->worker->loop, &s->back.tcp);
    if (rc != 0) {
        session_abort(s, "internal-error");
        return;
    }
    s->back.tcp.data = s;
    s->back.write_req.data = &s->back;
    s->back.open = true;
    s->back.eof = false;
    s->n_handles++;
    if (s->conf->upstream_identity == CONF_IDENTITY_SPOOF) {
        rc = session_back_spoof_socket(s, sa->sa_family);
        if (rc != 0) {
            log_warn(s->id, "upstream-spoof-failed", "client=%s error=\"%s\"", s->front_addr,
                     uv_strerror(rc));
            session_side_close(s, &s->back, false);
            return;
        }
    }
    s->connect_req.data = s;
    rc = uv_tcp_connect(&s->connect_req, &s->back.tcp, sa, session_on_back_connect);
    if (rc != 0) {
        log_warn(s->id, "upstream-connect-failed", "upstream=%s error=\"%s\"", s->back_addr,
                 uv_strerror(rc));
        session_side_close(s, &s->back, false);
        return;
    }
    s->n_handles++; /* the request */
    session_arm_timer(s);
}

/*
 * session_back_connect_again opens the next attempt of the fallback ladder, once the
 * failed connection is closed: a fresh socket and a fresh TLS state, same address.
 */
static void session_back_connect_again(struct session *s)
{
    struct session_side *b = &s->back;
    buf_cleanup(&b->in);
    buf_cleanup(&b->out);
    buf_cleanup(&b->queue);
    buf_cleanup(&b->tls_raw);
    buf_cleanup(&b->tls_plain);
    tlsio_cleanup(&b->tls);
    b->tls_started = false;
    b->tls_active = false;
    b->writing = false;
    b->reading = false;
    b->eof = false;
    buf_cleanup(&s->ehlo_reply);
    buf_cleanup(&s->saved_ehlo);
    s->back_caps = 0;
    s->back_retrying = true;
    smtp_reply_parser_init(&s->reply_parser);
    session_enter(s, SESSION_BACK_CONNECTING);
    union session_addr sa = s->back_sa;
    session_back_connect_to(s, (const struct sockaddr *)&sa);
}

static void session_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct session *s = req->data;
    free(req);
    s->resolve_req = NULL;
    session_unref(s); /* the request */
    if (status == UV_ECANCELED || s->state != SESSION_BACK_RESOLVING) {
        uv_freeaddrinfo(res);
        return;
    }
    if (status < 0 || res == NULL) {
        log_warn(s->id, "upstream-resolve-failed", "upstream=%s error=\"%s\"",
                 s->conf->upstream.host, uv_strerror(status));
        uv_freeaddrinfo(res);
        session_connect_failed(s);
        return;
    }
    s->addrs = res;
    s->next_addr = res;
    session_enter(s, SESSION_BACK_CONNECTING);
    session_back_connect_next(s);
}

static void session_back_start(struct session *s)
{
    const struct conf_addr *up = &s->conf->upstream;
    if (up->numeric || s->conf->mode == CONF_MODE_TRANSPARENT) {
        session_enter(s, SESSION_BACK_CONNECTING);
        session_back_connect_next(s);
        return;
    }
    /* Entered explicitly: the session may come from SESSION_FRONT_PROXY_HEADER, and the
     * resolver's answer is taken only in this state. */
    session_enter(s, SESSION_BACK_RESOLVING);
    s->resolve_req = malloc(sizeof(*s->resolve_req));
    if (s->resolve_req == NULL) {
        session_abort(s, "out-of-memory");
        return;
    }
    s->resolve_req->data = s;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)up->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = uv_getaddrinfo(&s->worker->loop, s->resolve_req, session_on_resolved, up->host, port,
                            &hints);
    if (rc != 0) {
        free(s->resolve_req);
        s->resolve_req = NULL;
        log_warn(s->id, "upstream-resolve-failed", "upstream=%s error=\"%s\"", up->host,
                 uv_strerror(rc));
        session_connect_failed(s);
        return;
    }
    s->n_handles++; /* the request */
    session_arm_timer(s);
}

/* ---- timers ------------------------------------------------------------------------------ */

static void session_on_timeout(uv_timer_t *timer)
{
    struct session *s = timer->data;
    uint64_t now = uv_now(&s->worker->loop);
    if (now < s->deadline) {
        s->timer_due = s->deadline;
        uv_timer_start(&s->timer, session_on_timeout, s->deadline - now, 0);
        return;
    }
    switch (s->state) {
    case SESSION_ACCEPTED:
    case SESSION_BACK_RESOLVING:
        log_warn(s->id, "upstream-timeout", "upstream=%s phase=resolve", s->conf->upstream.host);
        session_connect_failed(s);
        return;
    case SESSION_BACK_CONNECTING:
        log_warn(s->id, "upstream-timeout", "upstream=%s phase=connect", s->back_addr);
        session_side_close(s, &s->back, false); /* its close callback tries the next one */
        return;
    case SESSION_BACK_GREETING:
        log_warn(s->id, "upstream-timeout", "upstream=%s phase=greeting", s->back_addr);
        session_finish(s, "upstream-timeout", "421 4.4.2",
                       "Upstream did not answer, try again later");
        break;
    case SESSION_RELAY:
        if (!session_front_in_body(s) && s->n_pending > 0) {
            log_warn(s->id, "upstream-timeout", "upstream=%s phase=reply", s->back_addr);
            session_finish(s, "upstream-timeout", "421 4.4.2",
                           "Upstream did not answer, closing connection");
        } else {
            log_info(s->id, "client-timeout", "client=%s", s->front_addr);
            session_finish(s, "timeout", "421 4.4.2", "Timeout, closing connection");
        }
        break;
    case SESSION_FRONT_HANDSHAKE:
        session_front_tls_failed(s, "handshake timeout");
        break;
    case SESSION_BACK_HANDSHAKE:
        session_back_tls_fallback(s, "handshake-timeout", true);
        break;
    case SESSION_BACK_STARTTLS:
        session_back_tls_fallback(s, "starttls-reply-timeout", false);
        break;
    case SESSION_BACK_EHLO:
        if (s->back.tls_active) {
            session_back_tls_fallback(s, "post-tls-ehlo-timeout", false);
        } else {
            log_warn(s->id, "upstream-timeout", "upstream=%s phase=ehlo", s->back_addr);
            session_finish(s, "upstream-timeout", "421 4.4.2",
                           "Upstream did not answer, closing connection");
        }
        break;
    case SESSION_BACK_RECONNECT:
        break; /* the close callback comes at once */
    case SESSION_FRONT_PROXY_HEADER:
        log_warn(s->id, "proxy-header-timeout", "peer=%s", s->front_addr);
        session_abort(s, "bad-proxy-header");
        return;
    case SESSION_BACK_XCLIENT:
        log_warn(s->id, "upstream-timeout", "upstream=%s phase=xclient", s->back_addr);
        session_finish(s, "upstream-timeout", "421 4.4.2",
                       "Upstream did not answer, closing connection");
        break;
    case SESSION_BACK_REPLAY:
        log_warn(s->id, "upstream-timeout", "upstream=%s phase=replay", s->back_addr);
        session_finish(s, "upstream-timeout", "421 4.4.2",
                       "Upstream did not answer, closing connection");
        break;
    case SESSION_CLOSING:
        session_abort(s, s->end_reason);
        return;
    }
    session_after_io(s);
}

/* ---- starting ---------------------------------------------------------------------------- */

static struct session *session_new(struct worker *w)
{
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->worker = w;
    s->runtime = runtime_ref(w->runtime);
    s->conf = s->runtime->conf;
    /* splitmix64 over a random start: unique per worker, unpredictable across runs. */
    uint64_t z = (w->next_id += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    s->id = z ^ (z >> 31);
    s->state = SESSION_ACCEPTED;
    s->started_ms = uv_now(&w->loop);
    buf_init(&s->front.in);
    buf_init(&s->front.out);
    buf_init(&s->front.queue);
    buf_init(&s->back.in);
    buf_init(&s->back.out);
    buf_init(&s->back.queue);
    buf_init(&s->ehlo_reply);
    buf_init(&s->client_ehlo);
    buf_init(&s->saved_ehlo);
    buf_init(&s->replay);
    buf_init(&s->front.tls_raw);
    buf_init(&s->front.tls_plain);
    buf_init(&s->back.tls_raw);
    buf_init(&s->back.tls_plain);
    tlsio_init(&s->front.tls);
    tlsio_init(&s->back.tls);
    smtp_reply_parser_init(&s->reply_parser);
    s->next = w->sessions;
    if (w->sessions != NULL) {
        w->sessions->prev = s;
    }
    w->sessions = s;
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
    union session_addr probe;
    session_addr_set(&probe, sa);
    socklen_t len;
    if (sa->sa_family == AF_INET6) {
        probe.in6.sin6_port = 0;
        len = sizeof(probe.in6);
    } else {
        probe.in.sin_port = 0;
        len = sizeof(probe.in);
    }
    bool local = bind(fd, (const struct sockaddr *)&probe, len) == 0;
    close(fd);
    return local;
}

static uint16_t session_port_of(const struct sockaddr *sa)
{
    return ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                           : ((const struct sockaddr_in *)sa)->sin_port);
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
        session_addr_set(&s->target_sa, (const struct sockaddr *)&dst);
    } else {
        s->target_sa = s->local_sa;
    }
    const struct sockaddr *target = (const struct sockaddr *)&s->target_sa;
    bool loop = false;
    for (size_t i = 0; i < s->conf->n_listen && !loop; i++) {
        loop =
            s->conf->listen[i].port == session_port_of(target) && session_is_local_address(target);
    }
    char text[SESSION_ADDR_MAX];
    session_format_addr(text, sizeof(text), target);
    if (loop) {
        log_warn(s->id, "loop-refused", "client=%s destination=%s", s->front_addr, text);
        session_finish(s, "loop-refused", "421 4.3.5", "Refusing to relay to myself");
        return false;
    }
    log_debug(s->id, "destination", "client=%s destination=%s", s->front_addr, text);
    return true;
}

/*
 * session_front_proxy_header reads the load balancer's PROXY header (v1/v2): its source
 * address is the client's for logs, learning and policy. A connection without a valid one
 * is dropped without a greeting.
 */
static void session_front_proxy_header(struct session *s)
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
        session_abort(s, "bad-proxy-header");
        return;
    }
    buf_consume(&s->front.in, used);
    if (header.family == PROXYPROTO_TCP4 || header.family == PROXYPROTO_TCP6) {
        char via[SESSION_ADDR_MAX];
        memcpy(via, s->front_addr, sizeof(via));
        session_addr_set(&s->front_sa, (const struct sockaddr *)&header.src);
        session_format_addr(s->front_addr, sizeof(s->front_addr),
                            (const struct sockaddr *)&s->front_sa);
        log_debug(s->id, "proxy-header", "client=%s via=%s", s->front_addr, via);
    }
    session_decide_offer(s);
    session_back_start(s);
}

/* session_decide_offer decides once, at accept, whether STARTTLS is offered to this
 * client: the learned memory is consulted here and on failure only. */
static void session_decide_offer(struct session *s)
{
    const struct conf *c = s->conf;
    const struct sockaddr *sa = (const struct sockaddr *)&s->front_sa;
    if (c->front_tls.starttls == CONF_FRONT_STARTTLS_STRIP) {
        s->front_starttls = SESSION_STARTTLS_NOT_OFFERED;
        return;
    }
    bool hidden = false;
    for (size_t i = 0; i < c->front_tls.n_never_offer_to && !hidden; i++) {
        hidden = conf_cidr_match(&c->front_tls.never_offer_to[i], sa);
    }
    struct learn *learned = s->worker->shared->front_learned;
    if (!hidden && c->front_tls.learn_failures &&
        learn_contains(learned, sa, uv_hrtime() / 1000000)) {
        hidden = true;
        log_info(s->id, "front-tls-hidden", "client=%s reason=learned-failure", s->front_addr);
    }
    s->offer_starttls = !hidden;
    s->front_starttls = hidden ? SESSION_STARTTLS_HIDDEN : SESSION_STARTTLS_OFFERED;
}

void session_accept(struct worker *w, uv_stream_t *server)
{
    struct session *s = session_new(w);
    uv_tcp_t dropped;
    if (s == NULL) {
        /* Take the connection off the queue and close it, or accept would spin. */
        if (uv_tcp_init(&w->loop, &dropped) == 0) {
            if (uv_accept(server, (uv_stream_t *)&dropped) == 0) {
                uv_close((uv_handle_t *)&dropped, NULL);
                uv_run(&w->loop, UV_RUN_NOWAIT);
            } else {
                uv_close((uv_handle_t *)&dropped, NULL);
            }
        }
        log_error(0, "out-of-memory", "action=dropped-connection");
        return;
    }
    uv_tcp_init(&w->loop, &s->front.tcp);
    s->front.tcp.data = s;
    s->front.write_req.data = &s->front;
    s->front.open = true;
    uv_timer_init(&w->loop, &s->timer);
    s->timer.data = s;
    s->n_handles = 2;
    if (uv_accept(server, (uv_stream_t *)&s->front.tcp) != 0) {
        session_abort(s, "accept-failed");
        return;
    }
    uv_tcp_nodelay(&s->front.tcp, 1);
    struct sockaddr_storage peer;
    int peer_len = sizeof(peer);
    if (uv_tcp_getpeername(&s->front.tcp, (struct sockaddr *)&peer, &peer_len) == 0) {
        session_format_addr(s->front_addr, sizeof(s->front_addr), (struct sockaddr *)&peer);
        session_addr_set(&s->front_sa, (const struct sockaddr *)&peer);
    } else {
        snprintf(s->front_addr, sizeof(s->front_addr), "?");
    }
    struct sockaddr_storage local;
    int local_len = sizeof(local);
    if (uv_tcp_getsockname(&s->front.tcp, (struct sockaddr *)&local, &local_len) == 0) {
        session_addr_set(&s->local_sa, (const struct sockaddr *)&local);
    }
    log_debug(s->id, "accepted", "client=%s", s->front_addr);

    unsigned open = ++worker_connections;
    s->counted = true;
    metrics_inc(METRICS_CONNECTIONS);
    metrics_gauge_add(METRICS_CONNECTIONS_CURRENT, 1);
    if (open > s->conf->max_connections) {
        metrics_inc(METRICS_CONNECTIONS_REFUSED);
        log_warn(s->id, "too-many-connections", "client=%s max=%u", s->front_addr,
                 s->conf->max_connections);
        session_finish(s, "too-many-connections", "421 4.7.0",
                       "Too many connections, try again later");
        session_after_io(s);
        return;
    }
    if (s->conf->mode == CONF_MODE_TRANSPARENT && !session_find_target(s)) {
        session_after_io(s);
        return;
    }
    if (s->conf->proxy_protocol != CONF_PROXY_PROTOCOL_OFF) {
        session_enter(s, SESSION_FRONT_PROXY_HEADER);
        session_after_io(s);
        return;
    }
    session_decide_offer(s);
    session_back_start(s);
}

void session_shutdown(struct session *s)
{
    if (s->state == SESSION_CLOSING) {
        session_abort(s, s->end_reason);
        return;
    }
    s->shutting_down = true;
    session_finish(s, "shutdown", "421 4.3.2", "Service shutting down, try again later");
    session_after_io(s);
}

struct session *session_next(struct session *s)
{
    return s->next;
}
