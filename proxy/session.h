/*
 * session: one client connection (the front) and the upstream connection(s) opened for it
 * (the back). The only module that sees both legs: it relays SMTP between them, decides
 * what is answered locally, and owns every byte and handle of the pair until its last
 * close callback. Its parts share the private header session_impl.h.
 */
#ifndef PROXY_SESSION_H
#define PROXY_SESSION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

struct session;
struct runtime;
struct learn;
struct anvil;
struct store;
struct gate;
struct tlsrpt;

/* What one event loop gives its sessions; owned by the worker that runs the loop. */
struct session_env {
    uv_loop_t *loop;
    struct runtime *runtime;         /* new sessions start under this one */
    struct learn *front_learned;     /* clients whose handshake failed (shared by all loops) */
    struct learn *back_memory;       /* per upstream, the fallback step that worked */
    struct anvil *anvil;             /* per-client limits (shared by all loops) */
    struct store *store;             /* this loop's connection to the shared store, or NULL */
    struct gate *gate;               /* this loop's recipient policy lookups, or NULL */
    struct tlsrpt *tlsrpt;           /* TLS-RPT counts (shared by all loops), or NULL */
    _Atomic unsigned *n_connections; /* open sessions across all loops, for max_connections */
    struct session *sessions;        /* this loop's live sessions, for the drain */
    uint64_t next_id;                /* session ids: a per-loop random walk */
};

/*
 * session_accept accepts one pending connection from |server| and starts its session on
 * |env|'s loop (or refuses it with 421 when max_connections are open). Returns 0, or
 * UV_ENOMEM when not even the session could be allocated: the connection is then left
 * pending for the caller to refuse. Other failures are logged and affect only that
 * connection.
 */
int session_accept(struct session_env *env, uv_stream_t *server);

/*
 * session_shutdown ends |s| because the process is stopping: the client gets 421, the
 * upstream leg is closed (without end-of-data if a message was in progress).
 */
void session_shutdown(struct session *s);

/* session_next returns the next session in its loop's list (for iteration). */
struct session *session_next(struct session *s);

#endif
