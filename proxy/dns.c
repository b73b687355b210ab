/*
 * dns: see dns.h. unbound's worker thread resolves and validates; its results wait on a
 * pipe (ub_fd) until the loop calls ub_process(), which runs our callback on the loop's
 * thread. Each query also has a timer: unbound's own retries can take much longer than a
 * session may wait.
 */
#include "dns.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <unbound.h>

#include "log.h"

struct dns {
    uv_loop_t *loop;
    struct ub_ctx *ctx;
    uv_poll_t poll;
    uint64_t timeout_ms;
    struct dns_query *queries; /* outstanding, for dns_close() */
    unsigned n_open_handles;
    bool closed;
    bool unref;
};

struct dns_query {
    struct dns *d;
    struct dns_query *prev;
    struct dns_query *next;
    int async_id;
    bool started;  /* unbound has it (async_id is valid) */
    bool finished; /* answered or cancelled; freed once its timer is closed */
    dns_answer_fn *fn;
    void *arg;
    uv_timer_t timer;
};

const char *dns_security_name(enum dns_security security)
{
    switch (security) {
    case DNS_SECURE:
        return "secure";
    case DNS_INSECURE:
        return "insecure";
    case DNS_BOGUS:
        return "bogus";
    case DNS_FAILED:
        break;
    }
    return "failed";
}

static void dns_unlink(struct dns_query *q)
{
    struct dns *d = q->d;
    if (q->prev != NULL) {
        q->prev->next = q->next;
    } else if (d->queries == q) {
        d->queries = q->next;
    }
    if (q->next != NULL) {
        q->next->prev = q->prev;
    }
    q->prev = q->next = NULL;
}

static void dns_on_timer_closed(uv_handle_t *handle)
{
    free(handle->data);
}

/* dns_finish ends a query: no more unbound work, its timer closed (which frees it). */
static void dns_finish(struct dns_query *q)
{
    q->finished = true;
    dns_unlink(q);
    q->fn = NULL;
    uv_close((uv_handle_t *)&q->timer, dns_on_timer_closed);
}

static void dns_answer_failed(struct dns_query *q, const char *why)
{
    dns_answer_fn *fn = q->fn;
    void *arg = q->arg;
    dns_finish(q);
    if (fn != NULL) {
        struct dns_answer a = {.security = DNS_FAILED, .rcode = 2, .why = why};
        fn(arg, &a);
    }
}

static void dns_on_result(void *mydata, int err, struct ub_result *result)
{
    struct dns_query *q = mydata;
    q->started = false;
    dns_answer_fn *fn = q->fn;
    void *arg = q->arg;
    dns_finish(q);
    if (fn == NULL) {
        ub_resolve_free(result);
        return;
    }
    if (err != 0 || result == NULL) {
        struct dns_answer a = {.security = DNS_FAILED, .rcode = 2, .why = ub_strerror(err)};
        fn(arg, &a);
        ub_resolve_free(result);
        return;
    }
    size_t n = 0;
    while (result->havedata && result->data[n] != NULL) {
        n++;
    }
    size_t *lens = n > 0 ? calloc(n, sizeof(*lens)) : NULL;
    for (size_t i = 0; lens != NULL && i < n; i++) {
        lens[i] = (size_t)result->len[i];
    }
    struct dns_answer a = {
        .rcode = result->rcode,
        .nxdomain = result->nxdomain != 0,
        .n = lens != NULL ? n : 0,
        .rdata = (const uint8_t *const *)result->data,
        .rdata_len = lens,
        .why = result->why_bogus,
    };
    if (result->bogus) {
        a.security = DNS_BOGUS;
    } else if (result->rcode != 0 && result->rcode != 3) {
        a.security = DNS_FAILED; /* SERVFAIL and friends: nothing is known */
        a.why = "server failure";
    } else {
        a.security = result->secure ? DNS_SECURE : DNS_INSECURE;
    }
    fn(arg, &a);
    free(lens);
    ub_resolve_free(result);
}

static void dns_on_timeout(uv_timer_t *timer)
{
    struct dns_query *q = timer->data;
    if (q->started) {
        ub_cancel(q->d->ctx, q->async_id);
        q->started = false;
    }
    dns_answer_failed(q, "timeout");
}

static void dns_on_readable(uv_poll_t *handle, int status, int events)
{
    struct dns *d = handle->data;
    (void)status;
    (void)events;
    if (!d->closed) {
        ub_process(d->ctx);
    }
}

struct dns *dns_new(uv_loop_t *loop, const char *unbound_config, const char *root_anchor,
                    uint64_t timeout_ms, char *err, size_t err_len)
{
    struct dns *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    d->loop = loop;
    d->timeout_ms = timeout_ms;
    d->ctx = ub_ctx_create();
    if (d->ctx == NULL) {
        snprintf(err, err_len, "cannot create an unbound context");
        free(d);
        return NULL;
    }
    int rc = ub_ctx_async(d->ctx, 1); /* a thread, not a forked process */
    if (rc == 0 && unbound_config != NULL) {
        rc = ub_ctx_config(d->ctx, unbound_config);
    } else if (rc == 0) {
        rc = ub_ctx_resolvconf(d->ctx, NULL);
        if (rc == 0 && root_anchor != NULL && access(root_anchor, R_OK) == 0) {
            rc = ub_ctx_add_ta_file(d->ctx, root_anchor);
        }
    }
    if (rc != 0) {
        snprintf(err, err_len, "%s: %s", unbound_config != NULL ? unbound_config : "resolv.conf",
                 ub_strerror(rc));
        ub_ctx_delete(d->ctx);
        free(d);
        return NULL;
    }
    if (uv_poll_init(loop, &d->poll, ub_fd(d->ctx)) != 0) {
        snprintf(err, err_len, "cannot watch unbound's descriptor");
        ub_ctx_delete(d->ctx);
        free(d);
        return NULL;
    }
    d->poll.data = d;
    d->n_open_handles = 1;
    uv_poll_start(&d->poll, UV_READABLE, dns_on_readable);
    return d;
}

void dns_unref(struct dns *d)
{
    d->unref = true;
    uv_unref((uv_handle_t *)&d->poll);
    for (struct dns_query *q = d->queries; q != NULL; q = q->next) {
        uv_unref((uv_handle_t *)&q->timer);
    }
}

static void dns_on_poll_closed(uv_handle_t *handle)
{
    struct dns *d = handle->data;
    d->n_open_handles--;
}

void dns_close(struct dns *d)
{
    if (d == NULL || d->closed) {
        return;
    }
    d->closed = true;
    while (d->queries != NULL) {
        struct dns_query *q = d->queries;
        if (q->started) {
            ub_cancel(d->ctx, q->async_id);
            q->started = false;
        }
        dns_finish(q);
    }
    uv_close((uv_handle_t *)&d->poll, dns_on_poll_closed);
}

void dns_free(struct dns *d)
{
    if (d == NULL) {
        return;
    }
    if (d->n_open_handles != 0) {
        log_error(0, "bug", "resolver freed with its descriptor watched");
        return;
    }
    ub_ctx_delete(d->ctx);
    free(d);
}

struct dns_query *dns_resolve(struct dns *d, const char *name, int rrtype, dns_answer_fn *fn,
                              void *arg)
{
    if (d == NULL || d->closed) {
        return NULL;
    }
    struct dns_query *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return NULL;
    }
    q->d = d;
    q->fn = fn;
    q->arg = arg;
    uv_timer_init(d->loop, &q->timer);
    q->timer.data = q;
    if (d->unref) {
        uv_unref((uv_handle_t *)&q->timer);
    }
    q->next = d->queries;
    if (d->queries != NULL) {
        d->queries->prev = q;
    }
    d->queries = q;
    if (ub_resolve_async(d->ctx, name, rrtype, 1 /* IN */, q, dns_on_result, &q->async_id) != 0) {
        dns_finish(q); /* frees it once the timer is closed */
        return NULL;
    }
    if (q->finished) {
        return NULL; /* answered from within ub_resolve_async(): libunbound does not */
    }
    q->started = true;
    uv_timer_start(&q->timer, dns_on_timeout, d->timeout_ms, 0);
    return q;
}

void dns_cancel(struct dns_query *q)
{
    if (q == NULL || q->finished) {
        return;
    }
    if (q->started) {
        ub_cancel(q->d->ctx, q->async_id);
        q->started = false;
    }
    dns_finish(q);
}
