/*
 * reason: name tables for enum reason_end and enum reason_back_tls. Every value has a
 * name; the tables are checked against the enums at compile time.
 */
#include "reason.h"

#include <stddef.h>

static const char *const reason_end_names[] = {
    [REASON_END_UNKNOWN] = "unknown",
    [REASON_END_QUIT] = "quit",
    [REASON_END_CLIENT_CLOSED] = "client-closed",
    [REASON_END_CLIENT_ERROR] = "client-error",
    [REASON_END_CLIENT_WRITE_ERROR] = "client-write-error",
    [REASON_END_CLIENT_LOST_IN_DATA] = "client-lost-in-data",
    [REASON_END_CLIENT_TLS_FAILED] = "client-tls-failed",
    [REASON_END_CLIENT_TLS_ERROR] = "client-tls-error",
    [REASON_END_TIMEOUT] = "timeout",
    [REASON_END_BAD_PROXY_HEADER] = "bad-proxy-header",
    [REASON_END_TOO_MANY_CONNECTIONS] = "too-many-connections",
    [REASON_END_LIMIT] = "client-limit",
    [REASON_END_LOOP_REFUSED] = "loop-refused",
    [REASON_END_SHUTDOWN] = "shutdown",
    [REASON_END_UPSTREAM_UNREACHABLE] = "upstream-unreachable",
    [REASON_END_UPSTREAM_TIMEOUT] = "upstream-timeout",
    [REASON_END_UPSTREAM_CLOSED] = "upstream-closed",
    [REASON_END_UPSTREAM_ERROR] = "upstream-error",
    [REASON_END_UPSTREAM_WRITE_ERROR] = "upstream-write-error",
    [REASON_END_UPSTREAM_TLS_ERROR] = "upstream-tls-error",
    [REASON_END_UPSTREAM_421] = "upstream-421",
    [REASON_END_UPSTREAM_PROTOCOL_ERROR] = "upstream-protocol-error",
    [REASON_END_UPSTREAM_TLS_FAILED] = "upstream-tls-failed",
    [REASON_END_UPSTREAM_IDENTITY_REFUSED] = "upstream-identity-refused",
    [REASON_END_UPSTREAM_REPLAY_FAILED] = "upstream-replay-failed",
    [REASON_END_OUT_OF_MEMORY] = "out-of-memory",
    [REASON_END_INTERNAL_ERROR] = "internal-error",
};
_Static_assert(sizeof(reason_end_names) / sizeof(reason_end_names[0]) == REASON_END_COUNT,
               "a name for every end reason");

static const char *const reason_back_tls_names[] = {
    [REASON_BACK_TLS_STARTTLS_REFUSED] = "starttls-refused",
    [REASON_BACK_TLS_STARTTLS_BAD_REPLY] = "starttls-bad-reply",
    [REASON_BACK_TLS_ALERT] = "tls-alert",
    [REASON_BACK_TLS_ERROR] = "tls-error",
    [REASON_BACK_TLS_EOF] = "eof",
    [REASON_BACK_TLS_TIMEOUT] = "handshake-timeout",
    [REASON_BACK_TLS_POST_TLS_EHLO] = "post-tls-ehlo",
    [REASON_BACK_TLS_POST_TLS_EOF] = "post-tls-eof",
    [REASON_BACK_TLS_CERTIFICATE] = "certificate",
};
_Static_assert(sizeof(reason_back_tls_names) / sizeof(reason_back_tls_names[0]) ==
                   REASON_BACK_TLS_COUNT,
               "a name for every leg-2 failure class");

const char *reason_end_name(enum reason_end reason)
{
    return (unsigned)reason < REASON_END_COUNT && reason_end_names[reason] != NULL
               ? reason_end_names[reason]
               : "unknown";
}

const char *reason_back_tls_name(enum reason_back_tls reason)
{
    return (unsigned)reason < REASON_BACK_TLS_COUNT ? reason_back_tls_names[reason] : "other";
}
