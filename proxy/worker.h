/*
 * worker: one thread, one libuv loop, its own SO_REUSEPORT listeners and the sessions they
 * accept. A worker touches no other worker's data; the main thread talks to it only
 * through worker_stop() and worker_reload(), which are safe from any thread.
 */
#ifndef PROXY_WORKER_H
#define PROXY_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "conf.h"
#include "listener.h"
#include "runtime.h"

struct session;
struct learn;
struct metrics_http_server;

/* State shared by every worker, made by main before they start; both memories lock
 * themselves. */
struct worker_shared {
    struct learn *front_learned; /* clients whose handshake failed */
    struct learn *back_failed;   /* upstreams whose TLS failed, for remember_failures */
};

struct worker {
    unsigned index;
    struct runtime *runtime; /* new sessions start under this one (a reference) */
    struct worker_shared *shared;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;      /* worker_stop() and worker_reload() poke the loop with it */
    uv_mutex_t wakeup_lock; /* guards the fields below against the other threads */
    bool wakeup_open;
    struct runtime *reload;           /* a runtime waiting to be adopted, or NULL */
    int reload_fds[CONF_LISTEN_MAX];  /* sockets for its new listen addresses, else -1 */
    uv_timer_t drain_timer;           /* ends the drain after drain_timeout */
    _Atomic int stop_request;         /* 0: run, 1: drain, 2: stop now */
    _Atomic bool finished;            /* the loop has ended; worker_join() will not block */
    _Atomic unsigned reloads_applied; /* main waits on this between two reloads */
    bool draining;
    struct listener *listeners[CONF_LISTEN_MAX];
    size_t n_listeners;
    struct session *sessions;            /* every live session of this loop, for the drain */
    struct metrics_http_server *metrics; /* the [metrics] endpoint, on one worker only */
    uint64_t next_id;                    /* session ids: a per-worker random walk */
};

/* Connections open across all workers, for max_connections. */
extern _Atomic unsigned worker_connections;

/*
 * worker_init prepares |w| to serve |runtime| (the worker takes over the caller's
 * reference) on the bound sockets |fds|, one per address of runtime->conf->listen. Returns
 * 0 or a negative libuv error; on failure nothing needs cleaning up except the reference.
 */
int worker_init(struct worker *w, unsigned index, struct runtime *runtime,
                struct worker_shared *shared, const int *fds);

/* worker_serve_metrics makes the worker answer the metrics endpoint on the bound socket
 * |fd| (before worker_start()). Returns 0 or -1 (then |fd| is closed). */
int worker_serve_metrics(struct worker *w, int fd);

/* worker_start runs the worker's loop on a new thread. Returns 0 or a libuv error. */
int worker_start(struct worker *w);

/*
 * worker_reload hands |runtime| (the worker takes over the caller's reference) to the
 * worker for its new sessions. |fds| has one entry per address of runtime->conf->listen:
 * a bound socket for an address the worker does not listen on yet, or -1 to keep its
 * current listener. Listeners for addresses no longer configured are closed; open
 * sessions are untouched. Safe from any thread.
 */
void worker_reload(struct worker *w, struct runtime *runtime, const int *fds);

/*
 * worker_stop asks the worker to stop accepting and drain its sessions (now = false), or
 * to close every session at once (now = true). Safe from any thread and any time.
 */
void worker_stop(struct worker *w, bool now);

/* worker_join waits for the thread to end and releases the loop and the runtime. */
void worker_join(struct worker *w);

#endif
