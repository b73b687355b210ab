/*
 * reason: why a session ended and why a leg-2 TLS negotiation failed, as enums with one
 * name table each, shared by the session (which decides), the log (which prints the name)
 * and metrics (which counts by class). Pure.
 */
#ifndef PROXY_REASON_H
#define PROXY_REASON_H

/* Why a session ended; the name is the session line's end=... */
enum reason_end {
    REASON_END_UNKNOWN = 0,
    REASON_END_QUIT,
    REASON_END_CLIENT_CLOSED,
    REASON_END_CLIENT_ERROR,
    REASON_END_CLIENT_WRITE_ERROR,
    REASON_END_CLIENT_LOST_IN_DATA,
    REASON_END_CLIENT_TLS_FAILED, /* the client's STARTTLS handshake failed */
    REASON_END_CLIENT_TLS_ERROR,  /* the client's TLS broke after the handshake */
    REASON_END_TIMEOUT,           /* the client was silent too long */
    REASON_END_BAD_PROXY_HEADER,
    REASON_END_TOO_MANY_CONNECTIONS,
    REASON_END_LIMIT, /* over a per-client limit ([limits]) */
    REASON_END_LOOP_REFUSED,
    REASON_END_SHUTDOWN,
    REASON_END_UPSTREAM_UNREACHABLE, /* no connection, or no greeting */
    REASON_END_UPSTREAM_TIMEOUT,
    REASON_END_UPSTREAM_CLOSED,
    REASON_END_UPSTREAM_ERROR,
    REASON_END_UPSTREAM_WRITE_ERROR,
    REASON_END_UPSTREAM_TLS_ERROR, /* leg 2's TLS broke after the negotiation */
    REASON_END_UPSTREAM_421,
    REASON_END_UPSTREAM_PROTOCOL_ERROR, /* a malformed, unsolicited or out-of-place reply */
    REASON_END_UPSTREAM_TLS_FAILED,     /* the negotiation failed and no fallback was left */
    REASON_END_UPSTREAM_IDENTITY_REFUSED,
    REASON_END_UPSTREAM_REPLAY_FAILED,
    REASON_END_OUT_OF_MEMORY,
    REASON_END_INTERNAL_ERROR,
    REASON_END_COUNT,
};

/* reason_end_name returns the reason's log name ("quit", "upstream-421", ...). */
const char *reason_end_name(enum reason_end reason);

/* The class of a failed leg-2 TLS negotiation (metrics: back_tls_fallback_total). */
enum reason_back_tls {
    REASON_BACK_TLS_STARTTLS_REFUSED = 0, /* a 4xx/5xx reply to STARTTLS */
    REASON_BACK_TLS_STARTTLS_BAD_REPLY,   /* a malformed reply to STARTTLS */
    REASON_BACK_TLS_ALERT,                /* the upstream sent a fatal alert */
    REASON_BACK_TLS_ERROR,                /* we rejected what the upstream sent */
    REASON_BACK_TLS_EOF,                  /* closed or reset during STARTTLS or the handshake */
    REASON_BACK_TLS_TIMEOUT,              /* no STARTTLS reply or handshake in time */
    REASON_BACK_TLS_POST_TLS_EHLO,        /* the EHLO inside TLS failed or timed out */
    REASON_BACK_TLS_POST_TLS_EOF,         /* closed right after the handshake */
    REASON_BACK_TLS_CERTIFICATE,          /* the certificate failed verification */
    REASON_BACK_TLS_COUNT,
};

/* reason_back_tls_name returns the class's metric label ("starttls-refused", ...). */
const char *reason_back_tls_name(enum reason_back_tls reason);

#endif
