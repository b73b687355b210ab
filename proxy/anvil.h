/*
 * anvil: per-client abuse limits on a public port 25, like Postfix's anvil: sessions at
 * once, new sessions per window and messages per window, per client address (IPv6
 * addresses grouped by a prefix, /64 by default). Shared by every worker behind one short
 * lock, taken at a session's start and end and at each MAIL; bounded in memory.
 *
 * Pure: no I/O, no logging; the session decides what a verdict means.
 */
#ifndef PROXY_ANVIL_H
#define PROXY_ANVIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct anvil;

struct anvil_config {
    unsigned max_sessions;     /* sessions at once per client; 0: no limit */
    unsigned max_session_rate; /* new sessions per client per window; 0: no limit */
    unsigned max_message_rate; /* messages (MAIL commands) per client per window; 0: none */
    uint64_t window_ms;        /* the rate window, from a client's first event in it */
    unsigned ipv6_prefix;      /* 1..128: IPv6 clients in one such prefix count as one */
    size_t max_clients;        /* clients tracked at most */
};

/* The place a session holds among its client's sessions, for anvil_close(). */
struct anvil_place {
    uint8_t key[16];     /* the client, as counted when the session opened */
    uint64_t generation; /* which entry of that client (0: none) */
};

/* A verdict: the limit a client would exceed, or none. */
enum anvil_verdict {
    ANVIL_OK = 0,
    ANVIL_SESSIONS,     /* too many sessions at once */
    ANVIL_SESSION_RATE, /* too many new sessions in the window */
    ANVIL_MESSAGE_RATE, /* too many messages in the window */
};

/* anvil_new makes an empty table. Returns NULL when out of memory. Memory grows with the
 * number of clients seen, up to max_clients entries (about 130 bytes each, with the
 * hash table). */
struct anvil *anvil_new(const struct anvil_config *config);

/* anvil_free releases the table; anvil_free(NULL) does nothing. */
void anvil_free(struct anvil *l);

/* anvil_configure applies a reloaded configuration: new limits apply to new events, the
 * counts so far are kept. */
void anvil_configure(struct anvil *l, const struct anvil_config *config);

/*
 * anvil_open counts a new session of the client |sa| at |now_ms| (a monotonic clock in
 * milliseconds). Returns ANVIL_OK (then the session holds |out_place|: give it back with
 * anvil_close() at its end), or the limit it would exceed (nothing is counted then, the
 * refused attempt included, so a client that keeps trying is served again once it is
 * under the limit). *out_first is true for the first refusal of this client for this
 * limit in the current window (log that one, not every refusal).
 */
enum anvil_verdict anvil_open(struct anvil *l, struct anvil_place *out_place, bool *out_first,
                              const struct sockaddr *sa, uint64_t now_ms);

/* anvil_close gives back a place from anvil_open(). Its client is found as it was counted
 * then, whatever a reload changed since (ipv6_prefix); if that client was forgotten
 * meanwhile (evicted), nothing happens. */
void anvil_close(struct anvil *l, const struct anvil_place *place);

/* anvil_message counts a message (a MAIL command) of |sa|: ANVIL_OK or
 * ANVIL_MESSAGE_RATE, with *out_first as for anvil_open(). */
enum anvil_verdict anvil_message(struct anvil *l, bool *out_first, const struct sockaddr *sa,
                                 uint64_t now_ms);

/* anvil_name returns the verdict's name for logs and metrics ("sessions",
 * "session-rate", "message-rate"; "ok"). */
const char *anvil_name(enum anvil_verdict verdict);

/* anvil_count returns how many clients are tracked; anvil_evictions how many were
 * forgotten to make room (the least recently seen client without a session first). */
size_t anvil_count(struct anvil *l);
uint64_t anvil_evictions(struct anvil *l);

#endif
