/*
 * worker: one thread, one libuv loop, its own SO_REUSEPORT listeners and the sessions they
 * accept. A worker touches no other worker's data; the main thread talks to it only
 * through worker_stop(), which is safe to call from any thread.
 */
#ifndef PROXY_WORKER_H
#define PROXY_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "conf.h"
#include "listener.h"

struct session;
struct learn;
struct tlsio;
struct tlsio_ctx;

/*
 * State shared by every worker, made by main before they start. front_ctx is replaced on
 * SIGHUP under |lock|; a session holds its own reference from the moment its handshake
 * starts (SSL_new), so a replaced context lives on until its last session is done.
 */
struct worker_shared {
    uv_mutex_t lock;
    struct tlsio_ctx *front_ctx; /* NULL when [client_tls] starttls = strip */
    struct learn *front_learned; /* clients whose handshake failed; NULL: not learning */
    struct tlsio_ctx *back_ctx;  /* leg 2; NULL when STARTTLS upstream is never used */
    struct learn *back_failed;   /* upstreams whose TLS failed, for remember_failures */
};

struct worker {
    unsigned index;
    const struct conf *conf;
    struct worker_shared *shared;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;      /* worker_stop() pokes the loop through this */
    uv_mutex_t wakeup_lock; /* guards wakeup_open against worker_stop() from other threads */
    bool wakeup_open;
    uv_timer_t drain_timer;   /* ends the drain after conf->drain_timeout_ms */
    _Atomic int stop_request; /* 0: run, 1: drain, 2: stop now */
    _Atomic bool finished;    /* the loop has ended; worker_join() will not block */
    bool draining;
    struct listener listeners[CONF_LISTEN_MAX];
    size_t n_listeners;
    struct session *sessions; /* every live session of this loop, for the drain */
    uint64_t next_id;         /* session ids: a per-worker random walk */
};

/* Connections open across all workers, for max_connections. */
extern _Atomic unsigned worker_connections;

/*
 * worker_init prepares |w| to serve the already bound, listening-ready sockets |fds|
 * (one per configured listen address). Returns 0 or a negative libuv error; on failure
 * nothing needs cleaning up.
 */
int worker_init(struct worker *w, unsigned index, const struct conf *conf,
                struct worker_shared *shared, const int *fds, size_t n_fds);

/*
 * worker_front_tls_start starts |t| as the server side of a handshake with the current
 * leg-1 context. Returns 0, -ENOTSUP when there is none, or tlsio_start_front()'s error.
 */
int worker_front_tls_start(struct worker *w, struct tlsio *t);

/* worker_start runs the worker's loop on a new thread. Returns 0 or a libuv error. */
int worker_start(struct worker *w);

/*
 * worker_stop asks the worker to stop accepting and drain its sessions (now = false), or
 * to close every session at once (now = true). Safe from any thread and any time.
 */
void worker_stop(struct worker *w, bool now);

/* worker_join waits for the thread to end and releases the loop. */
void worker_join(struct worker *w);

#endif
