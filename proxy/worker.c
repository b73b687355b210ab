/*
 * worker: one thread running one libuv loop with its own listeners and sessions.
 *
 * Stopping is a drain: listeners close at once, open sessions may finish until the drain
 * timer fires, then the rest are shut down; the loop ends when its last session is gone.
 */
#include "worker.h"

#include <errno.h>
#include <sys/random.h>

#include <uv.h>

#include "log.h"
#include "session.h"
#include "tlsio.h"

_Atomic unsigned worker_connections;

static void worker_on_drain_timeout(uv_timer_t *timer)
{
    struct worker *w = timer->data;
    if (w->sessions != NULL) {
        log_info(0, "drain-timeout", "worker=%u", w->index);
    }
    struct session *s = w->sessions;
    while (s != NULL) {
        struct session *next = session_next(s);
        session_shutdown(s);
        s = next;
    }
}

static void worker_on_wakeup(uv_async_t *async)
{
    struct worker *w = async->data;
    int request = w->stop_request;
    if (request == 0) {
        return;
    }
    if (!w->draining) {
        w->draining = true;
        for (size_t i = 0; i < w->n_listeners; i++) {
            listener_stop(&w->listeners[i]);
        }
        /* Neither handle keeps the loop alive any more: it ends with its last session. */
        uv_unref((uv_handle_t *)&w->wakeup);
        uv_unref((uv_handle_t *)&w->drain_timer);
    }
    uint64_t drain_ms = request == 2 ? 0 : w->conf->drain_timeout_ms;
    uv_timer_start(&w->drain_timer, worker_on_drain_timeout, drain_ms, 0);
}

static void worker_close_own_handles(struct worker *w)
{
    uv_mutex_lock(&w->wakeup_lock);
    w->wakeup_open = false;
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    uv_mutex_unlock(&w->wakeup_lock);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

int worker_init(struct worker *w, unsigned index, const struct conf *conf,
                struct worker_shared *shared, const int *fds, size_t n_fds)
{
    w->index = index;
    w->conf = conf;
    w->shared = shared;
    w->stop_request = 0;
    w->finished = false;
    w->draining = false;
    w->sessions = NULL;
    w->n_listeners = 0;
    if (getrandom(&w->next_id, sizeof(w->next_id), 0) != (ssize_t)sizeof(w->next_id)) {
        w->next_id = (uint64_t)uv_hrtime() ^ ((uint64_t)index << 56);
    }
    int rc = uv_mutex_init(&w->wakeup_lock);
    if (rc != 0) {
        return rc;
    }
    rc = uv_loop_init(&w->loop);
    if (rc != 0) {
        uv_mutex_destroy(&w->wakeup_lock);
        return rc;
    }
    w->loop.data = w;
    /* Neither call can fail on Linux once the loop exists. */
    uv_async_init(&w->loop, &w->wakeup, worker_on_wakeup);
    w->wakeup.data = w;
    w->wakeup_open = true;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    for (size_t i = 0; rc == 0 && i < n_fds; i++) {
        rc = listener_start(&w->listeners[i], w, &conf->listen[i], fds[i]);
        if (rc == 0) {
            w->n_listeners++;
        }
    }
    if (rc != 0) {
        for (size_t i = 0; i < w->n_listeners; i++) {
            listener_stop(&w->listeners[i]);
        }
        worker_close_own_handles(w);
        uv_loop_close(&w->loop);
        uv_mutex_destroy(&w->wakeup_lock);
    }
    return rc;
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    worker_close_own_handles(w);
    int rc = uv_loop_close(&w->loop);
    if (rc != 0) {
        log_warn(0, "loop-close-failed", "worker=%u error=\"%s\"", w->index, uv_strerror(rc));
    }
    w->finished = true;
}

int worker_start(struct worker *w)
{
    return uv_thread_create(&w->thread, worker_main, w);
}

void worker_stop(struct worker *w, bool now)
{
    int want = now ? 2 : 1;
    int have = w->stop_request;
    while (have < want && !atomic_compare_exchange_weak(&w->stop_request, &have, want)) {
    }
    uv_mutex_lock(&w->wakeup_lock);
    if (w->wakeup_open) {
        uv_async_send(&w->wakeup);
    }
    uv_mutex_unlock(&w->wakeup_lock);
}

int worker_front_tls_start(struct worker *w, struct tlsio *t)
{
    uv_mutex_lock(&w->shared->lock);
    int rc = w->shared->front_ctx != NULL ? tlsio_start_front(t, w->shared->front_ctx) : -ENOTSUP;
    uv_mutex_unlock(&w->shared->lock);
    return rc;
}

void worker_join(struct worker *w)
{
    uv_thread_join(&w->thread);
    uv_mutex_destroy(&w->wakeup_lock);
}
