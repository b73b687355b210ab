/*
 * store: see store.h. One Redis connection per worker loop, a small state machine:
 *
 *   RESOLVING -> CONNECTING -> (AUTH, SELECT, PING answered) READY
 *        ^                                                   |
 *        +------------- BACKOFF (100 ms doubling to 5 s) <---+ any failure
 *
 * Commands in flight are kept in send order (Redis answers in that order), so one timer
 * finds both the lookups that are late (answered "unanswered" to their session) and a
 * connection that stopped answering at all (dropped, then reconnected).
 */
#include "store.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "log.h"
#include "metrics.h"

#define STORE_IN_FLIGHT_MAX 4096 /* commands sent and not answered, per connection */
#define STORE_PENDING_MAX 256    /* writes waiting for a connection, per worker */
#define STORE_CONNECT_TIMEOUT_MS 2000
#define STORE_BACKOFF_MIN_MS 100
#define STORE_BACKOFF_MAX_MS 5000
#define STORE_DEAD_MIN_MS 2000 /* no reply for this long (or 20 timeouts): reconnect */
#define STORE_KEY_MAX (CONF_STORE_PREFIX_MAX + sizeof("upstream:") + INET6_ADDRSTRLEN)
#define STORE_VALUE_MAX 32

enum store_state {
    STORE_RESOLVING = 0,
    STORE_CONNECTING, /* TCP, then AUTH/SELECT/PING */
    STORE_READY,
    STORE_BACKOFF,
    STORE_CLOSED,
};

/* A command in flight: a lookup (GET), or a write (SET/DEL) kept to be sent again if the
 * connection breaks before Redis answers it. */
struct store_lookup {
    struct store *st;
    struct store_lookup *older;
    struct store_lookup *newer;
    bool linked; /* in st's in-flight list */
    uint64_t sent_ms;
    bool is_lookup;
    store_answer_fn *fn; /* NULL once answered or cancelled */
    void *arg;
    bool del;
    uint64_t ttl_ms;
    char key[STORE_KEY_MAX];
    char value[STORE_VALUE_MAX];
};

struct store_write {
    bool del;
    uint64_t ttl_ms;
    char key[STORE_KEY_MAX];
    char value[STORE_VALUE_MAX];
};

struct store {
    uv_loop_t *loop;
    struct store_shared *shared;
    struct redis_url url;
    char prefix[CONF_STORE_PREFIX_MAX + 1];
    char name[REDIS_URL_HOST_MAX + 16]; /* host:port, for the log */
    uint64_t timeout_ms;
    uint64_t dead_ms;
    enum store_state state;
    redisAsyncContext *ac;
    unsigned setup_left; /* AUTH/SELECT/PING replies still due before READY */
    uv_getaddrinfo_t resolve_req;
    bool resolving;
    uv_timer_t timer;    /* connect timeout, or backoff */
    uv_timer_t deadline; /* the oldest command's */
    unsigned n_open_handles;
    uint64_t backoff_ms;
    bool down; /* counted in shared->n_down */
    bool ready_counted;
    bool unref;
    struct store_lookup *oldest;
    struct store_lookup *newest;
    size_t n_in_flight;
    struct store_write pending[STORE_PENDING_MAX];
    size_t pending_head;
    size_t n_pending;
};

static void store_connect(struct store *st, const char *ip);
static void store_resolve(struct store *st);
static void store_arm_deadline(struct store *st);

static uint64_t store_now(const struct store *st)
{
    return uv_now(st->loop);
}

/* ---- up and down ---------------------------------------------------------------------------- */

static void store_update_gauge(struct store *st)
{
    struct store_shared *sh = st->shared;
    bool up = atomic_load(&sh->n_ready) == sh->n_workers && atomic_load(&sh->n_down) == 0;
    metrics_gauge_set(METRICS_STORE_UP, up ? 1 : 0);
}

/* store_mark_down counts this connection down: the first one down starts an outage, which
 * is logged once, whatever the number of workers and retries. */
static void store_mark_down(struct store *st, const char *reason)
{
    if (st->ready_counted) {
        st->ready_counted = false;
        atomic_fetch_sub(&st->shared->n_ready, 1);
    }
    if (!st->down) {
        st->down = true;
        if (atomic_fetch_add(&st->shared->n_down, 1) == 0) {
            metrics_inc(METRICS_STORE_OUTAGES);
            log_warn(0, "store-unavailable",
                     "redis=%s reason=\"%s\" action=\"sessions use this instance's memory\"",
                     st->name, reason);
        }
    }
    log_debug(0, "store-down", "redis=%s reason=\"%s\" retry_ms=%" PRIu64, st->name, reason,
              st->backoff_ms);
    store_update_gauge(st);
}

static void store_mark_ready(struct store *st)
{
    st->state = STORE_READY;
    st->backoff_ms = STORE_BACKOFF_MIN_MS;
    uv_timer_stop(&st->timer);
    if (!st->ready_counted) {
        st->ready_counted = true;
        atomic_fetch_add(&st->shared->n_ready, 1);
    }
    if (st->down) {
        st->down = false;
        if (atomic_fetch_sub(&st->shared->n_down, 1) == 1) {
            log_info(0, "store-available", "redis=%s", st->name);
        }
    }
    log_debug(0, "store-connected", "redis=%s", st->name);
    store_update_gauge(st);
}

/* ---- the in-flight list ----------------------------------------------------------------- */

static void store_link(struct store *st, struct store_lookup *q)
{
    q->older = st->newest;
    q->newer = NULL;
    if (st->newest != NULL) {
        st->newest->newer = q;
    } else {
        st->oldest = q;
    }
    st->newest = q;
    q->linked = true;
    st->n_in_flight++;
}

static void store_unlink(struct store *st, struct store_lookup *q)
{
    if (!q->linked) {
        return;
    }
    if (q->older != NULL) {
        q->older->newer = q->newer;
    } else {
        st->oldest = q->newer;
    }
    if (q->newer != NULL) {
        q->newer->older = q->older;
    } else {
        st->newest = q->older;
    }
    q->linked = false;
    st->n_in_flight--;
}

/* store_answer gives a lookup its answer, once. */
static void store_answer(struct store_lookup *q, enum store_answer answer, const char *value)
{
    store_answer_fn *fn = q->fn;
    if (fn == NULL) {
        return;
    }
    q->fn = NULL;
    static const enum metrics_counter counters[] = {
        [STORE_FOUND] = METRICS_STORE_LOOKUPS_FOUND,
        [STORE_ABSENT] = METRICS_STORE_LOOKUPS_ABSENT,
        [STORE_UNANSWERED] = METRICS_STORE_LOOKUPS_UNANSWERED,
    };
    metrics_inc(counters[answer]);
    fn(q->arg, answer, value);
}

/* ---- writes waiting for a connection ---------------------------------------------------- */

static void store_keep_write(struct store *st, bool del, const char *key, const char *value,
                             uint64_t ttl_ms)
{
    if (st->state == STORE_CLOSED) {
        return;
    }
    if (st->n_pending == STORE_PENDING_MAX) {
        /* Full: the oldest goes. It is still in this instance's memory. */
        st->pending_head = (st->pending_head + 1) % STORE_PENDING_MAX;
        st->n_pending--;
    }
    struct store_write *w = &st->pending[(st->pending_head + st->n_pending) % STORE_PENDING_MAX];
    st->n_pending++;
    w->del = del;
    w->ttl_ms = ttl_ms;
    snprintf(w->key, sizeof(w->key), "%s", key);
    snprintf(w->value, sizeof(w->value), "%s", value);
}

/* ---- replies ------------------------------------------------------------------------------ */

static void store_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)ac;
    struct store_lookup *q = privdata;
    struct store *st = q->st;
    const redisReply *reply = r;
    store_unlink(st, q);
    if (q->is_lookup) {
        if (reply != NULL && reply->type == REDIS_REPLY_STRING) {
            char value[STORE_VALUE_MAX];
            snprintf(value, sizeof(value), "%.*s", (int)reply->len, reply->str);
            store_answer(q, STORE_FOUND, value);
        } else if (reply != NULL && reply->type == REDIS_REPLY_NIL) {
            store_answer(q, STORE_ABSENT, "");
        } else {
            store_answer(q, STORE_UNANSWERED, "");
        }
    } else if (reply == NULL) {
        /* The connection broke before Redis took it: send it again once reconnected. */
        store_keep_write(st, q->del, q->key, q->value, q->ttl_ms);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        log_debug(0, "store-write-failed", "redis=%s key=%s error=\"%.*s\"", st->name, q->key,
                  (int)reply->len, reply->str);
    }
    free(q);
    if (st->state != STORE_CLOSED) {
        store_arm_deadline(st);
    }
}

/* ---- sending ------------------------------------------------------------------------------ */

static bool store_send(struct store *st, struct store_lookup *q)
{
    int rc;
    if (q->is_lookup) {
        rc = redisAsyncCommand(st->ac, store_on_reply, q, "GET %s", q->key);
    } else if (q->del) {
        rc = redisAsyncCommand(st->ac, store_on_reply, q, "DEL %s", q->key);
    } else {
        rc = redisAsyncCommand(st->ac, store_on_reply, q, "SET %s %s PX %" PRIu64, q->key, q->value,
                               q->ttl_ms);
    }
    if (rc != REDIS_OK) {
        return false;
    }
    q->sent_ms = store_now(st);
    store_link(st, q);
    store_arm_deadline(st);
    return true;
}

static struct store_lookup *store_new_command(struct store *st)
{
    struct store_lookup *q = calloc(1, sizeof(*q));
    if (q != NULL) {
        q->st = st;
    }
    return q;
}

static void store_write(struct store *st, bool del, const char *key, const char *value,
                        uint64_t ttl_ms)
{
    if (st->state != STORE_READY || st->n_in_flight >= STORE_IN_FLIGHT_MAX) {
        store_keep_write(st, del, key, value, ttl_ms);
        return;
    }
    struct store_lookup *q = store_new_command(st);
    if (q == NULL) {
        return;
    }
    q->del = del;
    q->ttl_ms = ttl_ms;
    snprintf(q->key, sizeof(q->key), "%s", key);
    snprintf(q->value, sizeof(q->value), "%s", value);
    if (!store_send(st, q)) {
        store_keep_write(st, del, key, value, ttl_ms);
        free(q);
    }
}

/* store_flush_pending sends the writes that waited for the connection, oldest first. */
static void store_flush_pending(struct store *st)
{
    size_t n = st->n_pending;
    for (size_t i = 0; i < n && st->state == STORE_READY; i++) {
        struct store_write w = st->pending[st->pending_head];
        st->pending_head = (st->pending_head + 1) % STORE_PENDING_MAX;
        st->n_pending--;
        store_write(st, w.del, w.key, w.value, w.ttl_ms);
    }
}

/* ---- the socket on the loop ------------------------------------------------------------------
 *
 * hiredis drives its socket through five hooks. Debian 12's hiredis (0.14) ships a libuv
 * adapter that drops poll errors (a refused connect is then never reported, and the
 * attempt hangs until its timeout), so the hooks are here: a uv_poll_t that passes every
 * event, errors included, to hiredis, which reads the socket error itself.
 *
 * Reading is ours too. hiredis 0.14's redisProcessCallbacks() assert()s when a reply
 * comes that no command waits for (one more reply than commands sent), unless the
 * context is subscribed or monitoring, which ours never is: one byte string from Redis,
 * or from anyone on the plain-TCP path to it, would abort the whole process. So
 * store_poll_read() reads the socket itself and first parses the bytes with a reader of
 * its own (|check|, fed the same stream, so it holds the same partial reply): each
 * complete reply is matched with the next callback hiredis holds (ac->replies, in send
 * order, as Redis answers). Only when every reply has one are the bytes given to
 * hiredis's reader and redisProcessCallbacks() run, which then cannot meet a reply
 * without a callback. A reply too many, like a protocol error or a read error, drops
 * the connection the usual way (store_drop: logged, reconnected after the backoff). */

struct store_poll {
    uv_poll_t handle;
    redisAsyncContext *ac; /* NULL once hiredis let go of the socket */
    redisReader *check;    /* parses what hiredis will, to count the replies first */
    int events;
};

/* Exported by libhiredis (async.c), but declared in none of its headers (0.14 to 1.x):
 * redisAsyncHandleRead() is redisBufferRead() and then this. */
void redisProcessCallbacks(redisAsyncContext *ac);

static void store_drop(struct store *st, const char *reason);

/* store_poll_count_replies parses |data| with |p|'s own reader and checks that each
 * complete reply has a callback waiting; false with |reason| set when not. */
static bool store_poll_count_replies(struct store_poll *p, char *reason, size_t reason_size,
                                     const char *data, size_t data_len)
{
    redisReader *r = p->check;
    if (redisReaderFeed(r, data, data_len) != REDIS_OK) {
        snprintf(reason, reason_size, "%s", r->errstr);
        return false;
    }
    const redisCallback *cb = p->ac->replies.head;
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(r, &reply) != REDIS_OK) {
            snprintf(reason, reason_size, "%s", r->errstr);
            return false;
        }
        if (reply == NULL) {
            return true; /* no more complete replies */
        }
        if (cb == NULL) {
            const redisReply *rr = reply;
            if (rr->type == REDIS_REPLY_ERROR) {
                /* What Redis sends before it closes (max clients reached, loading). */
                snprintf(reason, reason_size, "%.*s", (int)rr->len, rr->str);
            } else {
                snprintf(reason, reason_size, "protocol error: a reply to no command");
            }
            freeReplyObject(reply);
            return false;
        }
        freeReplyObject(reply);
        cb = cb->next;
    }
}

/* store_poll_drop ends |p|'s connection as store.c ends any that failed. */
static void store_poll_drop(struct store_poll *p, const char *reason)
{
    struct store *st = p->ac->data;
    if (st->ac == p->ac) {
        store_drop(st, reason);
    } else {
        redisAsyncFree(p->ac); /* not expected: |st| let go of it already */
    }
}

static void store_poll_read(struct store_poll *p)
{
    redisAsyncContext *ac = p->ac;
    if (!(ac->c.flags & REDIS_CONNECTED)) {
        redisAsyncHandleWrite(ac); /* completes the connect, or reports its failure */
        if (p->ac == NULL || !(ac->c.flags & REDIS_CONNECTED)) {
            return;
        }
    }
    char data[16384];
    ssize_t n = read(ac->c.fd, data, sizeof(data));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return;
    }
    char reason[160];
    if (n <= 0) {
        snprintf(reason, sizeof(reason), "%s",
                 n == 0 ? "Server closed the connection" : strerror(errno));
        store_poll_drop(p, reason);
        return;
    }
    if (!store_poll_count_replies(p, reason, sizeof(reason), data, (size_t)n)) {
        store_poll_drop(p, reason);
        return;
    }
    if (redisReaderFeed(ac->c.reader, data, (size_t)n) != REDIS_OK) {
        snprintf(reason, sizeof(reason), "%s", ac->c.reader->errstr);
        store_poll_drop(p, reason);
        return;
    }
    redisProcessCallbacks(ac); /* may free |ac| */
}

static void store_on_poll(uv_poll_t *handle, int status, int events)
{
    struct store_poll *p = handle->data;
    /* On an error, let hiredis find it with the operation it waits for. */
    int ready = status < 0 ? p->events : events;
    if (p->ac != NULL && (ready & UV_WRITABLE)) {
        redisAsyncHandleWrite(p->ac);
    }
    if (p->ac != NULL && (ready & UV_READABLE)) {
        store_poll_read(p);
    }
}

static void store_poll_update(struct store_poll *p, int events)
{
    p->events = events;
    if (events != 0) {
        uv_poll_start(&p->handle, events, store_on_poll);
    } else {
        uv_poll_stop(&p->handle);
    }
}

static void store_add_read(void *privdata)
{
    struct store_poll *p = privdata;
    store_poll_update(p, p->events | UV_READABLE);
}

static void store_del_read(void *privdata)
{
    struct store_poll *p = privdata;
    store_poll_update(p, p->events & ~UV_READABLE);
}

static void store_add_write(void *privdata)
{
    struct store_poll *p = privdata;
    store_poll_update(p, p->events | UV_WRITABLE);
}

static void store_del_write(void *privdata)
{
    struct store_poll *p = privdata;
    store_poll_update(p, p->events & ~UV_WRITABLE);
}

static void store_on_poll_closed(uv_handle_t *handle)
{
    struct store_poll *p = handle->data;
    redisReaderFree(p->check);
    free(p);
}

static void store_cleanup(void *privdata)
{
    struct store_poll *p = privdata;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->handle, store_on_poll_closed);
}

static bool store_attach(redisAsyncContext *ac, uv_loop_t *loop, bool unref)
{
    struct store_poll *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return false;
    }
    p->check = redisReaderCreate();
    if (p->check == NULL || uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
        redisReaderFree(p->check);
        free(p);
        return false;
    }
    p->handle.data = p;
    p->ac = ac;
    if (unref) {
        uv_unref((uv_handle_t *)&p->handle);
    }
    ac->ev.data = p;
    ac->ev.addRead = store_add_read;
    ac->ev.delRead = store_del_read;
    ac->ev.addWrite = store_add_write;
    ac->ev.delWrite = store_del_write;
    ac->ev.cleanup = store_cleanup;
    return true;
}

/* ---- the connection ----------------------------------------------------------------------- */

static void store_unref_poll(struct store *st)
{
    if (st->ac != NULL && st->ac->ev.data != NULL) {
        uv_unref((uv_handle_t *)&((struct store_poll *)st->ac->ev.data)->handle);
    }
}

static void store_on_retry(uv_timer_t *timer)
{
    store_resolve(timer->data);
}

static void store_schedule_retry(struct store *st)
{
    st->state = STORE_BACKOFF;
    uv_timer_start(&st->timer, store_on_retry, st->backoff_ms, 0);
    st->backoff_ms =
        st->backoff_ms * 2 > STORE_BACKOFF_MAX_MS ? STORE_BACKOFF_MAX_MS : st->backoff_ms * 2;
}

/* store_drop closes the connection (its unanswered commands are answered "unanswered",
 * its writes kept for the next one) and schedules the next attempt. */
static void store_drop(struct store *st, const char *reason)
{
    redisAsyncContext *ac = st->ac;
    st->ac = NULL;
    if (ac != NULL) {
        redisAsyncFree(ac); /* deferred by hiredis when called from one of its callbacks */
    }
    if (st->state == STORE_CLOSED) {
        return;
    }
    store_mark_down(st, reason);
    store_schedule_retry(st);
}

static void store_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct store *st = ac->data;
    (void)status;
    if (st == NULL || st->ac != ac) {
        return; /* a connection we dropped ourselves */
    }
    st->ac = NULL; /* hiredis frees it after this callback */
    if (st->state != STORE_CLOSED) {
        store_mark_down(st, ac->errstr[0] != '\0' ? ac->errstr : "connection closed");
        store_schedule_retry(st);
    }
}

static void store_on_connect(const redisAsyncContext *ac, int status)
{
    struct store *st = ac->data;
    if (st == NULL || st->ac != ac) {
        return;
    }
    if (status != REDIS_OK) {
        st->ac = NULL; /* hiredis frees it after this callback */
        store_mark_down(st, ac->errstr[0] != '\0' ? ac->errstr : "connect failed");
        store_schedule_retry(st);
    }
    /* Connected: READY once AUTH, SELECT and PING are answered. */
}

/* store_on_setup_reply handles the replies to AUTH, SELECT and PING. */
static void store_on_setup_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store *st = privdata;
    const redisReply *reply = r;
    if (st->ac != ac || reply == NULL) {
        return; /* dropped meanwhile */
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        char reason[160];
        snprintf(reason, sizeof(reason), "%.*s", (int)reply->len, reply->str);
        store_drop(st, reason);
        return;
    }
    if (--st->setup_left == 0) {
        store_mark_ready(st);
        store_flush_pending(st);
    }
}

static void store_setup(struct store *st)
{
    redisAsyncContext *ac = st->ac;
    const struct redis_url *u = &st->url;
    st->setup_left = 1;
    if (u->password[0] != '\0') {
        st->setup_left++;
        if (u->user[0] != '\0') {
            redisAsyncCommand(ac, store_on_setup_reply, st, "AUTH %s %s", u->user, u->password);
        } else {
            redisAsyncCommand(ac, store_on_setup_reply, st, "AUTH %s", u->password);
        }
    }
    if (u->db != 0) {
        st->setup_left++;
        redisAsyncCommand(ac, store_on_setup_reply, st, "SELECT %u", u->db);
    }
    redisAsyncCommand(ac, store_on_setup_reply, st, "PING");
}

static void store_on_connect_timeout(uv_timer_t *timer)
{
    struct store *st = timer->data;
    if (st->state == STORE_CONNECTING) {
        store_drop(st, "no answer to connect, AUTH or PING within 2 s");
    }
}

static void store_connect(struct store *st, const char *ip)
{
    st->state = STORE_CONNECTING;
    redisAsyncContext *ac = redisAsyncConnect(ip, st->url.port);
    if (ac == NULL || ac->err != 0) {
        char reason[160];
        snprintf(reason, sizeof(reason), "%s", ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        store_mark_down(st, reason);
        store_schedule_retry(st);
        return;
    }
    ac->data = st;
    if (!store_attach(ac, st->loop, st->unref)) {
        redisAsyncFree(ac);
        store_mark_down(st, "cannot watch the socket");
        store_schedule_retry(st);
        return;
    }
    st->ac = ac;
    redisAsyncSetConnectCallback(ac, store_on_connect);
    redisAsyncSetDisconnectCallback(ac, store_on_disconnect);
    store_setup(st);
    uv_timer_start(&st->timer, store_on_connect_timeout, STORE_CONNECT_TIMEOUT_MS, 0);
}

static void store_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct store *st = req->data;
    st->resolving = false;
    if (st->state == STORE_CLOSED) {
        uv_freeaddrinfo(res);
        st->n_open_handles--;
        return;
    }
    st->n_open_handles--;
    if (status != 0 || res == NULL) {
        char reason[REDIS_URL_HOST_MAX + 96];
        snprintf(reason, sizeof(reason), "cannot resolve %s: %s", st->url.host,
                 uv_strerror(status != 0 ? status : UV_EAI_NONAME));
        uv_freeaddrinfo(res);
        store_mark_down(st, reason);
        store_schedule_retry(st);
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "";
    if (res->ai_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, sizeof(ip));
    } else {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, ip, sizeof(ip));
    }
    uv_freeaddrinfo(res);
    store_connect(st, ip);
}

/* store_resolve starts an attempt: hiredis would resolve a name with a blocking
 * getaddrinfo(), so names are resolved on libuv's thread pool first. */
static void store_resolve(struct store *st)
{
    if (st->state == STORE_CLOSED) {
        return;
    }
    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET, st->url.host, &a4) == 1 || inet_pton(AF_INET6, st->url.host, &a6) == 1) {
        store_connect(st, st->url.host);
        return;
    }
    st->state = STORE_RESOLVING;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
    st->resolve_req.data = st;
    if (uv_getaddrinfo(st->loop, &st->resolve_req, store_on_resolved, st->url.host, NULL, &hints) !=
        0) {
        store_mark_down(st, "cannot start resolving");
        store_schedule_retry(st);
        return;
    }
    st->resolving = true;
    st->n_open_handles++;
}

/* ---- deadlines --------------------------------------------------------------------------- */

static void store_on_deadline(uv_timer_t *timer)
{
    struct store *st = timer->data;
    uint64_t now = store_now(st);
    for (struct store_lookup *q = st->oldest; q != NULL && q->sent_ms + st->timeout_ms <= now;
         q = q->newer) {
        if (q->is_lookup) {
            store_answer(q, STORE_UNANSWERED, "");
        }
    }
    if (st->oldest != NULL && st->oldest->sent_ms + st->dead_ms <= now) {
        char reason[96];
        snprintf(reason, sizeof(reason), "no reply for %" PRIu64 " ms", now - st->oldest->sent_ms);
        store_drop(st, reason);
        return;
    }
    store_arm_deadline(st);
}

/* store_arm_deadline sets the timer for the next lookup to time out, or the oldest command
 * to count as lost. */
static void store_arm_deadline(struct store *st)
{
    if (st->oldest == NULL) {
        uv_timer_stop(&st->deadline);
        return;
    }
    uint64_t due = st->oldest->sent_ms + st->dead_ms;
    for (struct store_lookup *q = st->oldest; q != NULL; q = q->newer) {
        if (q->fn != NULL) {
            uint64_t t = q->sent_ms + st->timeout_ms;
            due = t < due ? t : due;
            break;
        }
        if (q->sent_ms + st->timeout_ms > due) {
            break;
        }
    }
    uint64_t now = store_now(st);
    uv_timer_start(&st->deadline, store_on_deadline, due > now ? due - now : 0, 0);
}

/* ---- the API ---------------------------------------------------------------------------- */

struct store *store_new(uv_loop_t *loop, const struct conf *conf, struct store_shared *shared)
{
    struct store *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        return NULL;
    }
    st->loop = loop;
    st->shared = shared;
    st->url = conf->store.redis;
    memcpy(st->prefix, conf->store.prefix, sizeof(st->prefix));
    bool v6 = strchr(st->url.host, ':') != NULL;
    snprintf(st->name, sizeof(st->name), v6 ? "[%s]:%u" : "%s:%u", st->url.host,
             (unsigned)st->url.port);
    st->timeout_ms = conf->store.timeout_ms;
    st->dead_ms = 20 * st->timeout_ms > STORE_DEAD_MIN_MS ? 20 * st->timeout_ms : STORE_DEAD_MIN_MS;
    st->backoff_ms = STORE_BACKOFF_MIN_MS;
    uv_timer_init(loop, &st->timer);
    uv_timer_init(loop, &st->deadline);
    st->timer.data = st;
    st->deadline.data = st;
    st->n_open_handles = 2;
    store_update_gauge(st);
    store_resolve(st);
    return st;
}

void store_unref(struct store *st)
{
    st->unref = true;
    uv_unref((uv_handle_t *)&st->timer);
    uv_unref((uv_handle_t *)&st->deadline);
    store_unref_poll(st);
}

static void store_on_handle_closed(uv_handle_t *handle)
{
    struct store *st = handle->data;
    st->n_open_handles--;
}

void store_close(struct store *st)
{
    if (st->state == STORE_CLOSED) {
        return;
    }
    st->state = STORE_CLOSED;
    if (st->ac != NULL) {
        redisAsyncContext *ac = st->ac;
        st->ac = NULL;
        redisAsyncFree(ac); /* unanswered lookups are answered; writes are dropped */
    }
    if (st->resolving) {
        uv_cancel((uv_req_t *)&st->resolve_req);
    }
    if (st->ready_counted) {
        st->ready_counted = false;
        atomic_fetch_sub(&st->shared->n_ready, 1);
    }
    if (st->down) {
        st->down = false;
        atomic_fetch_sub(&st->shared->n_down, 1);
    }
    uv_close((uv_handle_t *)&st->timer, store_on_handle_closed);
    uv_close((uv_handle_t *)&st->deadline, store_on_handle_closed);
}

void store_free(struct store *st)
{
    if (st != NULL) {
        /* store_close() and a loop run closed everything; a resolution still running on
         * the thread pool would hold |st|. */
        if (st->n_open_handles != 0) {
            log_error(0, "bug", "store freed with %u handles open", st->n_open_handles);
            return;
        }
        free(st);
    }
}

/* store_key writes "<prefix><kind>:<address>", an IPv4-mapped address as IPv4. */
static bool store_key(const struct store *st, char *out, size_t out_size, enum store_kind kind,
                      const struct sockaddr *sa)
{
    char host[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            inet_ntop(AF_INET, &a6->s6_addr[12], host, sizeof(host));
        } else {
            inet_ntop(AF_INET6, a6, host, sizeof(host));
        }
    } else {
        return false;
    }
    int n = snprintf(out, out_size, "%s%s:%s", st->prefix,
                     kind == STORE_CLIENT ? "client" : "upstream", host);
    return n > 0 && (size_t)n < out_size;
}

struct store_lookup *store_get(struct store *st, enum store_kind kind, const struct sockaddr *sa,
                               store_answer_fn *fn, void *arg)
{
    if (st == NULL || st->state != STORE_READY || st->n_in_flight >= STORE_IN_FLIGHT_MAX) {
        metrics_inc(METRICS_STORE_LOOKUPS_UNAVAILABLE);
        return NULL;
    }
    struct store_lookup *q = store_new_command(st);
    if (q == NULL || !store_key(st, q->key, sizeof(q->key), kind, sa)) {
        free(q);
        return NULL;
    }
    q->is_lookup = true;
    q->fn = fn;
    q->arg = arg;
    if (!store_send(st, q)) {
        free(q);
        metrics_inc(METRICS_STORE_LOOKUPS_UNAVAILABLE);
        return NULL;
    }
    return q;
}

void store_cancel(struct store_lookup *q)
{
    if (q != NULL) {
        q->fn = NULL; /* freed when Redis answers, or when the connection goes */
    }
}

void store_set(struct store *st, enum store_kind kind, const struct sockaddr *sa, const char *value,
               uint64_t ttl_ms)
{
    char key[STORE_KEY_MAX];
    if (st != NULL && store_key(st, key, sizeof(key), kind, sa)) {
        store_write(st, false, key, value, ttl_ms);
    }
}

void store_delete(struct store *st, enum store_kind kind, const struct sockaddr *sa)
{
    char key[STORE_KEY_MAX];
    if (st != NULL && store_key(st, key, sizeof(key), kind, sa)) {
        store_write(st, true, key, "", 0);
    }
}
