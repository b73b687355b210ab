/*
 * session_impl.h: the private header of the session, shared by its parts the way
 * BoringSSL's ssl/ sources share ssl/internal.h. Nothing outside session*.c includes it.
 *
 *   session.c         accept, free, every libuv callback (the only entry points), the pump
 *                     that runs after each of them, back-pressure, the one timer
 *   session_front.c   leg 1: the PROXY header, commands (a verb table), DATA and BDAT
 *                     content, client STARTTLS, and the pipeline of pending replies
 *   session_back.c    leg 2: the negotiation (identity, EHLO, STARTTLS, the handshake,
 *                     the fallback ladder) as one state machine, and its replies
 *   session_connect.c leg 2's connections: resolve, connect, PROXY header or spoofed
 *                     source, and new connections for a fallback step, replay or reopen
 *   session_replay.c  the envelope record, and its replay on a new connection
 *
 * The session as a whole waits for one thing at a time (enum session_state); leg 2 has its
 * own machine (enum session_back_state), entered only through session_back_enter().
 */
#ifndef PROXY_SESSION_IMPL_H
#define PROXY_SESSION_IMPL_H

#include "session.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netdb.h>

#include <uv.h>

#include "addr.h"
#include "anvil.h"
#include "buf.h"
#include "conf.h"
#include "ladder.h"
#include "leg.h"
#include "reason.h"
#include "smtp.h"
#include "store.h"
#include "tlsio.h"

struct gate_lookup;
struct session_gate;

/* Commands forwarded or answered but not yet replied to; more wait in the input buffer. */
#define SESSION_PENDING_MAX 64
/* After the last reply, how long the client may go on sending before we close anyway. */
#define SESSION_LINGER_MS 2000
/* The same after the drain timeout: the process is exiting, so keep it short. */
#define SESSION_SHUTDOWN_LINGER_MS 200
/* The replay record: this transaction's lines since EHLO, RSET or the last message. */
#define SESSION_REPLAY_MAX (32 * 1024)

/* What the session as a whole waits for. */
enum session_state {
    SESSION_ACCEPTED = 0,    /* accepted; nothing asked of either side yet */
    SESSION_PROXY_HEADER,    /* the load balancer's PROXY header */
    SESSION_OPENING,         /* leg 2 opening; the client waits for its greeting */
    SESSION_RELAY,           /* commands, replies and content */
    SESSION_FRONT_HANDSHAKE, /* our 220 to STARTTLS going out, then the client's handshake */
    SESSION_CLOSING,         /* our last reply going out, then the close */
};

/* What the client's bytes are, in SESSION_RELAY. */
enum session_front_mode {
    SESSION_FRONT_COMMAND = 0, /* command lines */
    SESSION_FRONT_SASL,        /* the next line answers the upstream's 334 */
    SESSION_FRONT_SKIP_LINE,   /* the rest of an over-long line, to throw away */
    SESSION_FRONT_DATA,        /* DATA content, relayed until CRLF.CRLF */
    SESSION_FRONT_DATA_REJECT, /* rejected DATA content, thrown away until CRLF.CRLF */
    SESSION_FRONT_CHUNK,       /* BDAT chunk bytes, relayed */
    SESSION_FRONT_CHUNK_SKIP,  /* the chunk of a refused BDAT, thrown away */
};

/* What a place in the pending queue waits for. */
enum session_pending_kind {
    SESSION_PENDING_LOCAL = 0, /* our own reply, sent when it reaches the head */
    SESSION_PENDING_GREETING,  /* the client's first EHLO/HELO: leg 2's negotiation answers */
    SESSION_PENDING_EHLO,      /* a later EHLO: the upstream's reply, edited */
    SESSION_PENDING_DATA,      /* 354 switches the front to content */
    SESSION_PENDING_DATA_END,  /* the verdict on a message sent with DATA */
    SESSION_PENDING_BDAT,      /* a chunk that is not the last */
    SESSION_PENDING_BDAT_LAST, /* the verdict on a message sent with BDAT */
    SESSION_PENDING_AUTH,      /* AUTH or a SASL response: 334 asks for the next line */
    SESSION_PENDING_QUIT,      /* the session ends after this reply */
    SESSION_PENDING_MAIL,      /* a refused MAIL starts no transaction */
    SESSION_PENDING_STARTTLS,  /* our 220, then TLS, once every earlier reply is out */
    SESSION_PENDING_OTHER,     /* any other command: relay the reply */
};

/* The proxy's own replies to commands. */
enum session_local_reply {
    SESSION_LOCAL_LINE_TOO_LONG = 0,
    SESSION_LOCAL_BAD_SYNTAX,
    SESSION_LOCAL_MAIL_PATH_TOO_LONG,
    SESSION_LOCAL_RCPT_PATH_TOO_LONG,
    SESSION_LOCAL_PATH_SYNTAX,
    SESSION_LOCAL_BDAT_SYNTAX,
    SESSION_LOCAL_HELO_SYNTAX,
    SESSION_LOCAL_STARTTLS_UNAVAILABLE,
    SESSION_LOCAL_BDAT_UNSUPPORTED,
    SESSION_LOCAL_REJECTED_CONTENT,
    SESSION_LOCAL_OK,
    SESSION_LOCAL_BYE,
    SESSION_LOCAL_TLS_ACTIVE,
    SESSION_LOCAL_STARTTLS_SYNTAX,
    SESSION_LOCAL_TLS_HIDDEN,
    SESSION_LOCAL_STARTTLS_IN_TRANSACTION,
    SESSION_LOCAL_EHLO_FIRST,
    SESSION_LOCAL_HELLO_FIRST,
    SESSION_LOCAL_TLS_REQUIRED,
    SESSION_LOCAL_XCLIENT_DENIED,
    SESSION_LOCAL_MESSAGE_RATE,
    /* the downgrade gate's refusals (session_gate.c), one per kind, naming the policy */
    SESSION_LOCAL_GATE_STS_TLS,
    SESSION_LOCAL_GATE_STS_CERT,
    SESSION_LOCAL_GATE_DANE_TLS,
    SESSION_LOCAL_GATE_DANE_CERT,
    SESSION_LOCAL_GATE_DANE_NOT_MX,
    SESSION_LOCAL_GATE_DNSSEC,
    SESSION_LOCAL_GATE_DNS_FAILED,
    SESSION_LOCAL_GATE_TIMEOUT,
    SESSION_LOCAL_GATE_IDN,
    SESSION_LOCAL_GATE_ADDRESS,
    SESSION_LOCAL_GATE_REQUIRETLS_TEMP,
    SESSION_LOCAL_GATE_REQUIRETLS_PERM,
    SESSION_LOCAL_REQUIRETLS_UNAVAILABLE,
    SESSION_LOCAL_NO_VALID_RECIPIENTS,
};

/* What became of STARTTLS on leg 1, for the session line. */
enum session_front_starttls {
    SESSION_STARTTLS_NOT_OFFERED = 0, /* starttls = strip */
    SESSION_STARTTLS_OFFERED,         /* offered, not used */
    SESSION_STARTTLS_HIDDEN,          /* not offered to this client: learned or listed */
    SESSION_STARTTLS_USED,
    SESSION_STARTTLS_FAILED,
};

/* What leg 2 waits for. Each value is entered through session_back_enter(), which performs
 * its entry action (sends the command, starts the handshake, opens the connection). */
enum session_back_state {
    SESSION_BACK_IDLE = 0,     /* no connection yet */
    SESSION_BACK_RESOLVING,    /* the upstream's name being resolved */
    SESSION_BACK_CONNECTING,   /* the TCP connection (then the identity header, if any) */
    SESSION_BACK_GREETING,     /* the upstream's greeting */
    SESSION_BACK_GREETED,      /* first connection: the client's first EHLO/HELO */
    SESSION_BACK_PROBE,        /* the reply to our EHLO (the client's name), read for XCLIENT
                                  and STARTTLS */
    SESSION_BACK_XCLIENT,      /* the reply to XCLIENT: a new greeting */
    SESSION_BACK_STARTTLS,     /* the reply to STARTTLS */
    SESSION_BACK_HANDSHAKE,    /* the TLS handshake */
    SESSION_BACK_HELLO,        /* the reply to the client's EHLO/HELO, sent on this connection
                                  (inside TLS, or in cleartext for a HELO client) */
    SESSION_BACK_RECONNECTING, /* this connection closing; the next one opens after */
    SESSION_BACK_READY,        /* negotiated: relaying the client's commands */
    SESSION_BACK_REPLAY,       /* replaying the envelope record */
    SESSION_BACK_GONE,         /* closed for good */
};

/* Why the current upstream connection was opened: what its negotiation ends in. */
enum session_back_purpose {
    SESSION_BACK_FIRST = 0, /* its greeting is the client's; then the client's EHLO */
    SESSION_BACK_RETRY,     /* a fallback step: its greeting is swallowed, then the
                               negotiation answers the client's first EHLO/HELO */
    SESSION_BACK_REPLAY_ON, /* after a TLS break mid-session: then the replay */
    SESSION_BACK_REOPEN,    /* after a rejected message: then relaying goes on */
};

/* What the session's deadline is for (one timeout each, RFC 5321 section 4.5.3.2). */
enum session_wait {
    SESSION_WAIT_NONE = 0,
    SESSION_WAIT_PROXY_HEADER, /* the PROXY header, from accept */
    SESSION_WAIT_CONNECT,      /* the name and the TCP connection */
    SESSION_WAIT_GREETING,     /* the upstream's greeting */
    SESSION_WAIT_BACK_REPLY,   /* a reply from the upstream */
    SESSION_WAIT_BACK_TLS,     /* leg 2's STARTTLS reply, handshake and EHLO inside TLS */
    SESSION_WAIT_DATA_END,     /* the upstream's verdict on a message */
    SESSION_WAIT_COMMAND,      /* the client's next command */
    SESSION_WAIT_CONTENT,      /* the client's next block of message content */
    SESSION_WAIT_FRONT_TLS,    /* the client's handshake */
    SESSION_WAIT_CLOSING,      /* the goodbye */
    SESSION_WAIT_GATE,         /* a RCPT's recipient policy lookups */
};

struct session_pending {
    uint8_t kind;     /* enum session_pending_kind */
    uint8_t local;    /* enum session_local_reply, for SESSION_PENDING_LOCAL */
    uint8_t recorded; /* its line is in the replay record */
};

struct session {
    uint64_t id;
    struct session_env *env;
    struct runtime *runtime;     /* a reference: the configuration this session started under */
    const struct conf *conf;     /* runtime->conf */
    struct session *prev, *next; /* the loop's list */
    enum session_state state;
    int n_handles; /* open handles and requests; freed at zero */

    struct leg front;
    struct leg back;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_getaddrinfo_t *resolve_req; /* separately allocated: it may outlive a cancel */
    struct addrinfo *addrs;
    struct addrinfo *next_addr;

    /* Leg 1. */
    enum session_front_mode front_mode;
    struct smtp_data_scanner scanner;
    uint64_t chunk_left;
    bool wait_reply;          /* DATA or AUTH went up: what follows depends on its reply */
    bool wait_starttls;       /* STARTTLS queued: what follows it is never read as commands */
    bool greeted;             /* the client's first EHLO/HELO was taken */
    bool need_ehlo;           /* TLS just started: RFC 3207 section 4.2 */
    bool in_transaction;      /* MAIL accepted and the message not yet finished or reset */
    unsigned rcpts_forwarded; /* this transaction's RCPTs sent upstream */
    unsigned rcpts_refused;   /* ... and refused here (the downgrade gate, syntax) */
    bool offer_starttls;      /* advertise STARTTLS to this client (decided at accept) */
    bool counted;             /* counted in env->n_connections */
    bool limits_exempt;       /* the client is in [limits] exempt */
    unsigned n_refused;       /* commands the proxy refused itself (the first few are logged) */
    struct anvil_place anvil_place;       /* our place among the client's sessions, if any */
    struct store_lookup *client_lookup;   /* the shared store is asked about the client */
    struct store_lookup *upstream_lookup; /* ... and about the upstream's address */
    bool upstream_asked;                  /* once per session */
    bool lingering;                       /* front shut down for writing; reading to drain */
    bool close_notified;                  /* our close_notify is queued */
    bool shutting_down;                   /* closing because the process stops */
    bool skip_sasl;                       /* SESSION_FRONT_SKIP_LINE: the line answers a 334 */
    enum session_front_starttls front_starttls;
    uint64_t front_injected;     /* bytes thrown away between STARTTLS and the handshake */
    const char *front_tls_error; /* static, or tlsio's reason (lives as long as front.tls) */
    char front_cert[TLSIO_FINGERPRINT_MAX];

    /* The pipeline: one place per command, in the client's order. */
    struct session_pending pending[SESSION_PENDING_MAX];
    unsigned pending_head;
    unsigned n_pending;
    unsigned n_pending_back; /* places that wait for an upstream reply */
    struct smtp_reply_parser reply_parser;
    struct buf reply;          /* a reply collected whole: an EHLO reply, a negotiation reply */
    unsigned back_caps;        /* enum smtp_cap flags of the upstream's last EHLO reply */
    struct session_gate *gate; /* the downgrade gate's state, from the first RCPT it judges */
    bool requiretls;           /* the transaction's MAIL asked for REQUIRETLS */
    bool offered_requiretls;   /* our EHLO reply to the client advertised it */
    unsigned back_generation;  /* counts leg-2 connections negotiated */

    /* Leg 2. */
    enum session_back_state back_state;
    enum session_back_purpose back_purpose;
    enum conf_back_starttls back_policy;
    struct ladder_attempt attempt; /* what this connection tries */
    uint8_t remembered;            /* the memory's value when the session started, 0: none */
    bool xclient_done;             /* this connection carries the client's identity */
    bool replayed;                 /* the session's one replay was used */
    struct buf client_greeting;    /* the client's first EHLO/HELO, "EHLO name" */
    bool client_helo;              /* ... and it was HELO */
    struct buf probe_reply;        /* the cleartext EHLO reply, kept while STARTTLS is tried */
    uint64_t back_bytes_at_220;    /* to tell "closed right after 220" from a handshake */
    char back_tls_reason[128];     /* why leg 2 is cleartext, or a note on its TLS */
    unsigned connect_attempts;
    union addr back_sa;

    /* The replay record: 2 bytes of the reply code the client saw (0: none yet), 2 bytes of
     * length, then the line. */
    struct buf replay;
    size_t replay_at; /* SESSION_BACK_REPLAY: the record whose reply is awaited */
    bool replay_ok;   /* the transaction so far could be replayed */

    uint64_t started_ms;
    uint64_t tls_started_ms; /* the handshake under way began (either leg: never both) */
    uint64_t deadline;       /* when the session times out (loop time, ms) */
    uint64_t timer_due;      /* when the libuv timer fires; never after |deadline| */
    enum session_wait wait;  /* what |deadline| is for */
    uint64_t steps;          /* completed units (lines, replies, content blocks, states) */
    uint64_t wait_steps;     /* |steps| when |deadline| was set */
    uint64_t messages;
    enum reason_end end_reason;
    union addr front_sa;  /* the client (from a PROXY header when configured) */
    union addr local_sa;  /* the address the client connected to */
    union addr target_sa; /* transparent mode: the original destination */
    char front_addr[ADDR_TEXT_MAX];
    char back_addr[ADDR_TEXT_MAX];
};

/* session.c */
void session_enter(struct session *s, enum session_state next);
void session_abort(struct session *s, enum reason_end reason);
void session_finish(struct session *s, enum reason_end reason, const char *status,
                    const char *text);
void session_send_front(struct session *s, const void *data, size_t len);
void session_send_back(struct session *s, const void *data, size_t len);
void session_send_body(struct session *s, const void *data, size_t len);
void session_close_back(struct session *s, bool reset);
bool session_mid_message(const struct session *s);
uint64_t session_now_ms(const struct session *s);
void session_deadline(struct session *s, uint64_t ms);
void session_on_back_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b);
void session_on_back_connect(uv_connect_t *req, int status);
void session_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res);
store_answer_fn session_on_client_known;
void session_on_gate_facts(void *arg, struct gate_lookup *q);
store_answer_fn session_on_upstream_known;
void session_on_back_closed(uv_handle_t *handle);
void session_start_back(struct session *s);
/* session_over_message_rate counts a MAIL against [limits] client_message_rate: true when
 * the client is over it (counted and logged; the caller refuses the MAIL). */
bool session_over_message_rate(struct session *s);

/* session_front.c */
void session_front_proxy_header(struct session *s);
bool session_front_process(struct session *s);
bool session_front_blocked(const struct session *s);
void session_front_eof(struct session *s);
void session_front_tls_begin(struct session *s);
bool session_front_handshake(struct session *s);
void session_front_tls_failed(struct session *s, const char *reason);
void session_front_greeting(struct session *s, const char *greeting, size_t len);
void session_front_unsolicited(struct session *s, const char *line, size_t len, int code,
                               bool done);
void session_front_reply_line(struct session *s, const char *line, size_t len, int code, bool done);
void session_front_answer_greeting(struct session *s, struct buf *reply, int code);
void session_front_edit_ehlo(struct session *s, const char *reply, size_t len, bool to_client);
bool session_front_in_content(const struct session *s);
enum session_pending_kind session_front_head(const struct session *s);
void session_front_send_ready_local_replies(struct session *s);
void session_front_forward(struct session *s, const char *line, size_t len,
                           enum session_pending_kind kind);
void session_front_reply(struct session *s, enum session_local_reply local);

/* session_back.c */
void session_back_enter(struct session *s, enum session_back_state next);
bool session_back_process(struct session *s);
bool session_back_wants_input(const struct session *s);
void session_back_negotiate(struct session *s);
void session_back_eof(struct session *s);
void session_back_timeout(struct session *s);
void session_back_lost(struct session *s, enum reason_end reason, const char *detail);
void session_back_identity_failed(struct session *s, const char *why, int code);
const char *session_back_state_name(enum session_back_state state);

/* session_connect.c */
void session_connect_start(struct session *s);
void session_connect_resolve(struct session *s);
void session_connect_resolved(struct session *s, int status, struct addrinfo *res);
void session_connect_next(struct session *s);
void session_connect_done(struct session *s, int status);
void session_connect_closed(struct session *s);
void session_connect_reopen(struct session *s);
void session_connect_unreachable(struct session *s);

/* session_learn.c */
void session_learn_start(struct session *s);
void session_learn_client_answer(struct session *s, enum store_answer answer);
void session_learn_client_failed(struct session *s);
void session_learn_upstream_greeted(struct session *s);
void session_learn_upstream_answer(struct session *s, enum store_answer answer, const char *value);
uint8_t session_learn_upstream_step(struct session *s);
void session_learn_upstream_worked(struct session *s);
void session_learn_upstream_forget(struct session *s);
bool session_learn_waiting(const struct session *s);
void session_learn_end(struct session *s);

/* session_limits.c */
bool session_exempt(const struct conf *c, const struct sockaddr *sa);
bool session_within_limits(struct session *s);
void session_log_cap_reached(const struct session *s);

/* session_replies.c: the text of each enum session_local_reply, CRLF included */
extern const char *const session_local_replies[];

/* session_gate.c */
bool session_gate_on(const struct session *s);
bool session_gate_waiting(const struct session *s);
void session_gate_rcpt(struct session *s, const struct smtp_command *cmd, const char *line,
                       size_t len);
/* session_gate_facts_in: the held RCPT's lookups are done; it waits for leg 2 at most. */
bool session_gate_facts_in(const struct session *s);
/* session_gate_facts_ready decides the held RCPT once its facts are in and leg 2 is ready
 * for commands; true when it did. */
bool session_gate_facts_ready(struct session *s);
void session_gate_timeout(struct session *s);
bool session_gate_offers_requiretls(const struct session *s);
bool session_gate_mail(struct session *s, const struct smtp_command *cmd);
bool session_gate_leg_still_good(struct session *s);
void session_gate_end(struct session *s);

/* session_replay.c */
void session_replay_note(struct session *s, enum smtp_verb verb, const char *line, size_t len);
void session_replay_answered(struct session *s, int code);
void session_replay_message_done(struct session *s);
bool session_replay_possible(const struct session *s);
void session_replay_begin(struct session *s);
void session_replay_reply(struct session *s, int code);

#endif
