/*
 * worker: one thread running one libuv loop with its own listeners and sessions.
 *
 * Stopping is a drain: listeners close at once, open sessions may finish until the drain
 * timer fires, then the rest are shut down; the loop ends when its last session is gone.
 * A reload swaps the runtime for new sessions and the set of listeners, nothing else.
 */
#include "worker.h"

#include <errno.h>
#include <sys/random.h>
#include <unistd.h>

#include <uv.h>

#include "log.h"
#include "metrics_http.h"
#include "session.h"
#include "gate.h"
#include "store.h"

static void worker_on_drain_timeout(uv_timer_t *timer)
{
    struct worker *w = timer->data;
    if (w->env.sessions != NULL) {
        log_info(0, "drain-timeout", "worker=%u", w->index);
    }
    struct session *s = w->env.sessions;
    while (s != NULL) {
        struct session *next = session_next(s);
        session_shutdown(s);
        s = next;
    }
}

static void worker_stop_listeners(struct worker *w)
{
    for (size_t i = 0; i < w->n_listeners; i++) {
        listener_stop(w->listeners[i]);
    }
    w->n_listeners = 0;
}

/* worker_apply_reload adopts a new runtime and brings the listeners in line with it. */
static void worker_apply_reload(struct worker *w, struct runtime *runtime, const int *fds)
{
    const struct conf *conf = runtime->conf;
    struct listener *kept[CONF_LISTEN_MAX];
    size_t n_kept = 0;
    for (size_t i = 0; i < conf->n_listen; i++) {
        struct listener *l = NULL;
        if (fds[i] >= 0) {
            l = w->draining ? NULL : listener_start(&w->env, &conf->listen[i], fds[i]);
            if (w->draining) {
                close(fds[i]);
            }
        } else {
            for (size_t j = 0; j < w->n_listeners && l == NULL; j++) {
                if (w->listeners[j] != NULL &&
                    listener_same_addr(&w->listeners[j]->addr, &conf->listen[i])) {
                    l = w->listeners[j];
                    w->listeners[j] = NULL;
                }
            }
        }
        if (l != NULL) {
            kept[n_kept++] = l;
        }
    }
    for (size_t j = 0; j < w->n_listeners; j++) {
        if (w->listeners[j] != NULL) {
            listener_stop(w->listeners[j]); /* no longer configured */
        }
    }
    for (size_t i = 0; i < n_kept; i++) {
        w->listeners[i] = kept[i];
    }
    w->n_listeners = n_kept;
    runtime_unref(w->env.runtime);
    w->env.runtime = runtime;
}

static void worker_on_wakeup(uv_async_t *async)
{
    struct worker *w = async->data;
    uv_mutex_lock(&w->wakeup_lock);
    struct runtime *reload = w->reload;
    int fds[CONF_LISTEN_MAX];
    for (size_t i = 0; i < CONF_LISTEN_MAX; i++) {
        fds[i] = w->reload_fds[i];
    }
    w->reload = NULL;
    uv_mutex_unlock(&w->wakeup_lock);
    if (reload != NULL) {
        worker_apply_reload(w, reload, fds);
        uv_sem_post(&w->reloaded);
    }

    int request = w->stop_request;
    if (request == 0) {
        return;
    }
    if (!w->draining) {
        w->draining = true;
        worker_stop_listeners(w);
        metrics_http_stop(w->metrics);
        w->metrics = NULL;
        /* Neither handle keeps the loop alive any more: it ends with its last session. */
        uv_unref((uv_handle_t *)&w->wakeup);
        uv_unref((uv_handle_t *)&w->drain_timer);
        if (w->env.store != NULL) {
            store_unref(w->env.store); /* it serves the sessions still open, no more */
        }
        if (w->env.gate != NULL) {
            gate_unref(w->env.gate);
        }
    }
    uint64_t drain_ms = request == 2 ? 0 : w->env.runtime->conf->drain_timeout_ms;
    uv_timer_start(&w->drain_timer, worker_on_drain_timeout, drain_ms, 0);
}

static void worker_close_own_handles(struct worker *w)
{
    uv_mutex_lock(&w->wakeup_lock);
    w->wakeup_open = false;
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    if (w->reload != NULL) {
        uv_sem_post(&w->reloaded); /* never adopted: main must not wait for it */
    }
    uv_mutex_unlock(&w->wakeup_lock);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    if (w->env.store != NULL) {
        store_close(w->env.store);
    }
    if (w->env.gate != NULL) {
        gate_close(w->env.gate);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    store_free(w->env.store);
    w->env.store = NULL;
    gate_free(w->env.gate);
    w->env.gate = NULL;
}

int worker_init(struct worker *w, unsigned index, struct runtime *runtime,
                struct worker_shared *shared, const int *fds, uv_async_t *finished)
{
    w->index = index;
    w->shared = shared;
    w->env = (struct session_env){
        .loop = &w->loop,
        .runtime = runtime,
        .front_learned = shared->front_learned,
        .back_memory = shared->back_memory,
        .anvil = shared->anvil,
        .tlsrpt = shared->tlsrpt,
        .n_connections = &shared->connections,
    };
    w->reload = NULL;
    w->finished_notify = finished;
    w->stop_request = 0;
    w->finished = false;
    w->draining = false;
    w->metrics = NULL;
    w->n_listeners = 0;
    if (getrandom(&w->env.next_id, sizeof(w->env.next_id), 0) != (ssize_t)sizeof(w->env.next_id)) {
        w->env.next_id = (uint64_t)uv_hrtime() ^ ((uint64_t)index << 56);
    }
    int rc = uv_mutex_init(&w->wakeup_lock);
    if (rc != 0) {
        return rc;
    }
    rc = uv_sem_init(&w->reloaded, 0);
    if (rc != 0) {
        uv_mutex_destroy(&w->wakeup_lock);
        return rc;
    }
    rc = uv_loop_init(&w->loop);
    if (rc != 0) {
        uv_sem_destroy(&w->reloaded);
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
    const struct conf *conf = runtime->conf;
    if (conf->store.enabled) {
        w->env.store = store_new(&w->loop, conf, &shared->store);
        if (w->env.store == NULL) {
            rc = UV_ENOMEM;
            for (size_t i = 0; i < conf->n_listen; i++) {
                close(fds[i]);
            }
        }
    }
    if (rc == 0 && conf->recipients.enabled) {
        char err[256];
        w->env.gate = gate_new(&w->loop, conf, shared->sts_cache, err, sizeof(err));
        if (w->env.gate == NULL) {
            log_error(0, "gate-start-failed", "worker=%u error=\"%s\"", index, err);
            rc = UV_EINVAL;
            for (size_t i = 0; i < conf->n_listen; i++) {
                close(fds[i]);
            }
        }
    }
    for (size_t i = 0; i < conf->n_listen && rc == 0; i++) {
        struct listener *l = listener_start(&w->env, &conf->listen[i], fds[i]);
        if (l == NULL) {
            for (size_t j = i + 1; j < conf->n_listen; j++) {
                close(fds[j]);
            }
            rc = UV_EINVAL;
            break;
        }
        w->listeners[w->n_listeners++] = l;
    }
    if (rc != 0) {
        worker_stop_listeners(w);
        worker_close_own_handles(w);
        uv_loop_close(&w->loop);
        uv_sem_destroy(&w->reloaded);
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
    uv_async_send(w->finished_notify);
}

int worker_serve_metrics(struct worker *w, int fd)
{
    w->metrics = metrics_http_start(&w->loop, fd, w->shared->front_learned, w->shared->back_memory);
    return w->metrics != NULL ? 0 : -1;
}

int worker_start(struct worker *w)
{
    return uv_thread_create(&w->thread, worker_main, w);
}

bool worker_reload(struct worker *w, struct runtime *runtime, const int *fds)
{
    uv_mutex_lock(&w->wakeup_lock);
    if (!w->wakeup_open) {
        uv_mutex_unlock(&w->wakeup_lock);
        for (size_t i = 0; i < runtime->conf->n_listen; i++) {
            if (fds[i] >= 0) {
                close(fds[i]);
            }
        }
        runtime_unref(runtime);
        return false;
    }
    struct runtime *stale = w->reload; /* two reloads before the worker woke up */
    int stale_fds[CONF_LISTEN_MAX];
    for (size_t i = 0; i < CONF_LISTEN_MAX; i++) {
        stale_fds[i] = w->reload_fds[i];
        w->reload_fds[i] = i < runtime->conf->n_listen ? fds[i] : -1;
    }
    w->reload = runtime;
    uv_async_send(&w->wakeup);
    uv_mutex_unlock(&w->wakeup_lock);
    if (stale != NULL) {
        uv_sem_post(&w->reloaded); /* the stale reload counts as adopted: it never will be */
        for (size_t i = 0; i < CONF_LISTEN_MAX; i++) {
            if (stale_fds[i] >= 0) {
                close(stale_fds[i]);
            }
        }
        runtime_unref(stale);
    }
    return true;
}

void worker_wait_reloaded(struct worker *w)
{
    uv_sem_wait(&w->reloaded);
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

void worker_join(struct worker *w)
{
    uv_thread_join(&w->thread);
    uv_sem_destroy(&w->reloaded);
    uv_mutex_destroy(&w->wakeup_lock);
    runtime_unref(w->reload);
    runtime_unref(w->env.runtime);
}
