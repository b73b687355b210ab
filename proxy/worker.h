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

struct worker {
    unsigned index;
    const struct conf *conf;
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
int worker_init(struct worker *w, unsigned index, const struct conf *conf, const int *fds,
                size_t n_fds);

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
