/*
 * store: the learned state shared with the other instances of a fleet, in Redis ([store]
 * redis). One connection per worker loop, driven by hiredis's libuv adapter, so that no
 * session ever blocks on it: a lookup is answered by Redis, or else it is answered
 * "unanswered" within the configured timeout, and while Redis is unreachable at once.
 * Writes are fire-and-forget; those that cannot be sent wait (a bounded number) for the
 * connection to come back.
 *
 * Keys (documented in the README for operators):
 *   <prefix>client:<address>    "1": the client's TLS handshake failed, STARTTLS hidden
 *   <prefix>upstream:<address>  the leg-2 fallback step that worked ("cleartext", ...)
 * Both expire in Redis (PX) after the TTL the local memory uses.
 */
#ifndef PROXY_STORE_H
#define PROXY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "conf.h"

struct store;
struct store_lookup;

/* What the instances share, process-wide: how many worker connections are down, for one
 * warning per outage and the store_up gauge. */
struct store_shared {
    _Atomic unsigned n_down;  /* worker connections that are down now */
    _Atomic unsigned n_ready; /* worker connections that are ready now */
    unsigned n_workers;
};

enum store_kind {
    STORE_CLIENT = 0, /* a client address whose TLS handshake failed */
    STORE_UPSTREAM,   /* an upstream address and the fallback step that works with it */
};

enum store_answer {
    STORE_FOUND = 0,  /* the key exists: its value is given */
    STORE_ABSENT,     /* Redis answered: no such key */
    STORE_UNANSWERED, /* no answer within the timeout, or the connection broke */
};

/* A lookup's answer; |value| is NUL-terminated (empty unless STORE_FOUND). */
typedef void store_answer_fn(void *arg, enum store_answer answer, const char *value);

/*
 * store_new starts the connection of one worker loop to the configured Redis (the host
 * name is resolved on the loop, never blocking it). Returns NULL when out of memory. The
 * store may be used at once; until it is connected, lookups are not sent.
 */
struct store *store_new(uv_loop_t *loop, const struct conf *conf, struct store_shared *shared);

/* store_unref lets the loop end while the store is connected (a draining worker). */
void store_unref(struct store *st);

/* store_close disconnects (unanswered lookups get STORE_UNANSWERED) and closes the
 * store's handles; run the loop until they are closed, then store_free(). */
void store_close(struct store *st);
void store_free(struct store *st);

/*
 * store_get asks for the key of |sa| of |kind|. Returns a handle, and |fn| is called
 * exactly once later (never from within store_get()) unless store_cancel() comes first;
 * or NULL when the store is not connected or too busy: then decide without it.
 */
struct store_lookup *store_get(struct store *st, enum store_kind kind, const struct sockaddr *sa,
                               store_answer_fn *fn, void *arg);

/* store_cancel forgets a lookup's callback (its session is ending). */
void store_cancel(struct store_lookup *q);

/* store_set stores |value| for |sa| of |kind| for |ttl_ms|; store_delete removes it. */
void store_set(struct store *st, enum store_kind kind, const struct sockaddr *sa, const char *value,
               uint64_t ttl_ms);
void store_delete(struct store *st, enum store_kind kind, const struct sockaddr *sa);

#endif
