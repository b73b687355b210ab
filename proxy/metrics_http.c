/*
 * metrics_http: GET /metrics over HTTP/1.x, one response per connection, then close.
 *
 * The request head is parsed by http_request_parse() (http.c: pure, fuzzed); this file
 * only moves bytes. Hostile clients must never keep a scraper out: see
 * metrics_http_on_connection() for the pool, its eviction rule and the deadlines.
 */
#include "metrics_http.h"

#include <stdlib.h>
#include <unistd.h>

#include <uv.h>

#include "http.h"
#include "learn.h"
#include "log.h"
#include "metrics.h"

/* Connections served at once; a new one beyond this evicts the oldest unanswered one. */
#define METRICS_HTTP_CONNS 64
/* Connections allocated at once, closing ones included: evicted connections are freed at
 * the end of the loop iteration, so this only bites within one burst of accepts. */
#define METRICS_HTTP_ALLOCATED_MAX (2 * METRICS_HTTP_CONNS)
/* From accept to the end of the request head; bytes arriving do not extend it. */
#define METRICS_HTTP_HEAD_TIMEOUT_MS 2000
/* From the end of the request head to the response handed to the kernel. */
#define METRICS_HTTP_WRITE_TIMEOUT_MS 5000

struct metrics_http_conn;

struct metrics_http_server {
    uv_tcp_t tcp;
    struct learn *front_learned; /* sampled into the gauges at each scrape */
    struct learn *back_failed;
    /* Connections not yet closing, oldest accepted first: the eviction order. */
    struct metrics_http_conn *oldest;
    struct metrics_http_conn *newest;
    unsigned n_live;  /* in that list */
    unsigned n_conns; /* allocated, closing ones included */
    bool closed;      /* freed once closed and its last connection is gone */
};

struct metrics_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write_req;
    struct metrics_http_server *srv;
    struct metrics_http_conn *older; /* neighbours in srv's list while live */
    struct metrics_http_conn *newer;
    int n_handles;
    bool answered; /* the request head is complete; the response is being written */
    size_t in_len;
    char in[HTTP_HEAD_MAX];
    char head[HTTP_RESPONSE_MAX];
    char *body;
};

static void metrics_http_on_closed(uv_handle_t *handle)
{
    struct metrics_http_conn *c = handle->data;
    if (--c->n_handles == 0) {
        struct metrics_http_server *srv = c->srv;
        free(c->body);
        free(c);
        if (--srv->n_conns == 0 && srv->closed) {
            free(srv);
        }
    }
}

static void metrics_http_unlink(struct metrics_http_conn *c)
{
    struct metrics_http_server *srv = c->srv;
    if (c->older != NULL) {
        c->older->newer = c->newer;
    } else {
        srv->oldest = c->newer;
    }
    if (c->newer != NULL) {
        c->newer->older = c->older;
    } else {
        srv->newest = c->older;
    }
    c->older = NULL;
    c->newer = NULL;
    srv->n_live--;
}

static void metrics_http_close(struct metrics_http_conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
        metrics_http_unlink(c);
        uv_close((uv_handle_t *)&c->tcp, metrics_http_on_closed);
        uv_close((uv_handle_t *)&c->timer, metrics_http_on_closed);
    }
}

static void metrics_http_on_timeout(uv_timer_t *timer)
{
    metrics_http_close(timer->data);
}

static void metrics_http_on_written(uv_write_t *req, int status)
{
    (void)status;
    metrics_http_close(req->data);
}

static void metrics_http_answer(struct metrics_http_conn *c, enum http_result result,
                                bool head_only)
{
    c->answered = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_start(&c->timer, metrics_http_on_timeout, METRICS_HTTP_WRITE_TIMEOUT_MS, 0);
    int status = http_status(result);
    size_t body_len = 0;
    if (status == 200) {
        metrics_gauge_set(METRICS_FRONT_LEARNED_ENTRIES,
                          (int64_t)learn_count(c->srv->front_learned));
        metrics_gauge_set(METRICS_BACK_REMEMBERED_ENTRIES,
                          (int64_t)learn_count(c->srv->back_failed));
        size_t cap = metrics_render_max();
        c->body = malloc(cap);
        if (c->body == NULL) {
            metrics_http_close(c);
            return;
        }
        body_len = metrics_render(c->body, cap);
    }
    size_t head_len = http_response_head(c->head, sizeof(c->head), status, body_len);
    uv_buf_t bufs[2] = {uv_buf_init(c->head, (unsigned)head_len),
                        uv_buf_init(c->body, (unsigned)body_len)};
    c->write_req.data = c;
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, head_only || body_len == 0 ? 1 : 2,
                 metrics_http_on_written) != 0) {
        metrics_http_close(c);
    }
}

static void metrics_http_on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *out)
{
    struct metrics_http_conn *c = handle->data;
    (void)suggested;
    *out = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof(c->in) - c->in_len));
}

static void metrics_http_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    struct metrics_http_conn *c = stream->data;
    (void)b;
    if (nread < 0 || c->answered) {
        if (nread < 0) {
            metrics_http_close(c);
        }
        return;
    }
    c->in_len += (size_t)nread;
    size_t consumed = 0;
    bool head_only = false;
    enum http_result r = http_request_parse(&consumed, &head_only, c->in, c->in_len);
    if (r == HTTP_NEED_MORE && c->in_len < sizeof(c->in)) {
        return;
    }
    if (r == HTTP_NEED_MORE) {
        r = HTTP_TOO_LARGE;
    }
    metrics_http_answer(c, r, head_only);
}

static void metrics_http_on_dropped(uv_handle_t *handle)
{
    free(handle);
}

/* Takes a connection off the listen queue and closes it at once. */
static void metrics_http_drop(uv_stream_t *server)
{
    uv_tcp_t *dropped = malloc(sizeof(*dropped));
    if (dropped != NULL && uv_tcp_init(server->loop, dropped) == 0) {
        (void)uv_accept(server, (uv_stream_t *)dropped);
        uv_close((uv_handle_t *)dropped, metrics_http_on_dropped);
    } else {
        free(dropped);
    }
}

/* The oldest live connection still waiting for its request head, or NULL. */
static struct metrics_http_conn *metrics_http_evictable(struct metrics_http_server *srv)
{
    for (struct metrics_http_conn *c = srv->oldest; c != NULL; c = c->newer) {
        if (!c->answered) {
            return c;
        }
    }
    return NULL;
}

/*
 * A scraper sends its whole request right after connecting and is answered at once: the
 * response (under 10 KiB) fits the kernel's send buffer, so an answered connection closes
 * within a loop iteration or two. Only connections still waiting for their request head
 * can pile up, idle or trickling bytes; when the pool is full, the oldest of them is
 * evicted for the newcomer, and none outlives METRICS_HTTP_HEAD_TIMEOUT_MS from accept.
 * Holding connections open therefore never keeps a scraper out; memory stays bounded by
 * METRICS_HTTP_ALLOCATED_MAX connections.
 */
static void metrics_http_on_connection(uv_stream_t *server, int status)
{
    struct metrics_http_server *srv = server->data;
    if (status < 0) {
        return;
    }
    if (srv->n_live >= METRICS_HTTP_CONNS) {
        struct metrics_http_conn *victim = metrics_http_evictable(srv);
        if (victim != NULL) {
            log_debug(0, "metrics-evicted", "received=%zu", victim->in_len);
            metrics_http_close(victim);
        }
    }
    struct metrics_http_conn *c = NULL;
    if (srv->n_live < METRICS_HTTP_CONNS && srv->n_conns < METRICS_HTTP_ALLOCATED_MAX) {
        c = calloc(1, sizeof(*c));
    }
    if (c == NULL) {
        metrics_http_drop(server);
        return;
    }
    if (uv_tcp_init(server->loop, &c->tcp) != 0) {
        free(c);
        metrics_http_drop(server);
        return;
    }
    /* From here on the connection is counted, listed, and freed by its close callbacks. */
    c->srv = srv;
    c->tcp.data = c;
    c->n_handles = 1;
    srv->n_conns++;
    srv->n_live++;
    c->older = srv->newest;
    if (srv->newest != NULL) {
        srv->newest->newer = c;
    } else {
        srv->oldest = c;
    }
    srv->newest = c;
    /* Accepted first: a connection left on the queue would stall the listener. */
    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc == 0) {
        rc = uv_timer_init(server->loop, &c->timer);
    }
    if (rc != 0) {
        metrics_http_unlink(c);
        uv_close((uv_handle_t *)&c->tcp, metrics_http_on_closed);
        return;
    }
    c->timer.data = c;
    c->n_handles = 2;
    if (uv_read_start((uv_stream_t *)&c->tcp, metrics_http_on_alloc, metrics_http_on_read) != 0 ||
        uv_timer_start(&c->timer, metrics_http_on_timeout, METRICS_HTTP_HEAD_TIMEOUT_MS, 0) != 0) {
        metrics_http_close(c);
    }
}

struct metrics_http_server *metrics_http_start(uv_loop_t *loop, int fd, struct learn *front_learned,
                                               struct learn *back_failed)
{
    struct metrics_http_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL || uv_tcp_init(loop, &srv->tcp) != 0) {
        free(srv);
        close(fd);
        return NULL;
    }
    srv->front_learned = front_learned;
    srv->back_failed = back_failed;
    srv->tcp.data = srv;
    if (uv_tcp_open(&srv->tcp, fd) != 0) {
        close(fd);
        metrics_http_stop(srv);
        return NULL;
    }
    int rc = uv_listen((uv_stream_t *)&srv->tcp, 64, metrics_http_on_connection);
    if (rc != 0) {
        log_error(0, "metrics-listen-failed", "error=\"%s\"", uv_strerror(rc));
        metrics_http_stop(srv);
        return NULL;
    }
    return srv;
}

static void metrics_http_on_server_closed(uv_handle_t *handle)
{
    struct metrics_http_server *srv = handle->data;
    srv->closed = true;
    if (srv->n_conns == 0) {
        free(srv);
    }
}

void metrics_http_stop(struct metrics_http_server *srv)
{
    if (srv != NULL) {
        uv_close((uv_handle_t *)&srv->tcp, metrics_http_on_server_closed);
    }
}
