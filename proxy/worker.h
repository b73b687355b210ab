/*
 * worker: one thread, one libuv loop, its own SO_REUSEPORT listeners and the sessions they
 * accept. A worker touches no other worker's data; the main thread talks to it only
 * through worker_stop() and worker_reload(), which are safe from any thread, and hears
 * from it through the uv_async_t it passed to worker_init() (the loop has ended).
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
#include "session.h"
#include "store.h"

struct sts_cache;
struct tlsrpt;

struct learn;
struct metrics_http_server;

/* State shared by every worker, made by main before they start; both memories lock
 * themselves. */
struct worker_shared {
    struct learn *front_learned;  /* clients whose handshake failed */
    struct learn *back_memory;    /* per upstream, the leg-2 fallback step that worked */
    struct anvil *anvil;          /* per-client abuse limits */
    struct store_shared store;    /* the shared store's outage state, across workers */
    struct sts_cache *sts_cache;  /* MTA-STS policies fetched, across workers */
    struct tlsrpt *tlsrpt;        /* TLS-RPT counts, across workers (NULL: gate off) */
    _Atomic unsigned connections; /* open sessions across all workers, for max_connections */
};

struct worker {
    unsigned index;
    struct session_env env; /* what this loop gives its sessions; env.runtime is a reference */
    struct worker_shared *shared;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;      /* worker_stop() and worker_reload() poke the loop with it */
    uv_mutex_t wakeup_lock; /* guards the fields below against the other threads */
    bool wakeup_open;
    struct runtime *reload;          /* a runtime waiting to be adopted, or NULL */
    int reload_fds[CONF_LISTEN_MAX]; /* sockets for its new listen addresses, else -1 */
    uv_sem_t reloaded;               /* posted once a reload is adopted */
    uv_async_t *finished_notify;     /* main's: sent once the loop has ended */
    uv_timer_t drain_timer;          /* ends the drain after drain_timeout */
    _Atomic int stop_request;        /* 0: run, 1: drain, 2: stop now */
    _Atomic bool finished;           /* the loop has ended; worker_join() will not block */
    bool draining;
    struct listener *listeners[CONF_LISTEN_MAX];
    size_t n_listeners;
    struct metrics_http_server *metrics; /* the [metrics] endpoint, on one worker only */
};

/*
 * worker_init prepares |w| to serve |runtime| (the worker takes over the caller's
 * reference) on the bound sockets |fds|, one per address of runtime->conf->listen.
 * |finished| (main's async handle) is sent when the loop has ended. Returns 0 or a
 * negative libuv error; on failure nothing needs cleaning up except the reference.
 */
int worker_init(struct worker *w, unsigned index, struct runtime *runtime,
                struct worker_shared *shared, const int *fds, uv_async_t *finished);

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
 * sessions are untouched. Safe from any thread. Returns true when the worker will adopt it
 * (wait for that with worker_wait_reloaded()), false when its loop has already ended (the
 * runtime and sockets were released).
 */
bool worker_reload(struct worker *w, struct runtime *runtime, const int *fds);

/* worker_wait_reloaded blocks until the worker has adopted the runtime of the last
 * worker_reload() that returned true. */
void worker_wait_reloaded(struct worker *w);

/*
 * worker_stop asks the worker to stop accepting and drain its sessions (now = false), or
 * to close every session at once (now = true). Safe from any thread and any time.
 */
void worker_stop(struct worker *w, bool now);

/* worker_join waits for the thread to end and releases the loop and the runtime. */
void worker_join(struct worker *w);

#endif
