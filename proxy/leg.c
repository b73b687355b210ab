/*
 * leg: one connection's bytes and TLS pump. Reads land in bounded buffers, writes go out
 * with uv_try_write and at most one uv_write in flight, and TLS runs over tlsio's BIO pair,
 * fed in a loop until every received ciphertext byte is taken. Nothing here knows SMTP or
 * calls up into the session; the session owns the struct and every callback.
 */
#include "leg.h"

#include <errno.h>

/* Hard cap of one direction's buffers: reaching it is a bug, since producers stop at
 * LEG_HIGH_WATER and add at most one input buffer or one edited EHLO reply after it. */
#define LEG_OUT_MAX (LEG_HIGH_WATER + LEG_IN_MAX + 64 * 1024)

void leg_init(struct leg *l)
{
    buf_init(&l->in);
    buf_init(&l->out);
    buf_init(&l->queue);
    buf_init(&l->tls_raw);
    buf_init(&l->tls_plain);
    tlsio_init(&l->tls);
    l->open = false;
    l->reading = false;
    l->writing = false;
    l->eof = false;
    l->tls_started = false;
    l->tls_active = false;
}

void leg_cleanup(struct leg *l)
{
    buf_cleanup(&l->in);
    buf_cleanup(&l->out);
    buf_cleanup(&l->queue);
    buf_cleanup(&l->tls_raw);
    buf_cleanup(&l->tls_plain);
    tlsio_cleanup(&l->tls);
}

void leg_reset(struct leg *l)
{
    uint64_t bytes_read = l->bytes_read;
    leg_cleanup(l);
    leg_init(l);
    l->bytes_read = bytes_read;
}

size_t leg_unsent(const struct leg *l)
{
    return buf_len(&l->out) + buf_len(&l->queue) + buf_len(&l->tls_plain);
}

int leg_queue(struct leg *l, const void *data, size_t len)
{
    if (len == 0) {
        return 0;
    }
    return buf_append(l->tls_active ? &l->tls_plain : &l->queue, data, len, LEG_OUT_MAX);
}

int leg_send(struct leg *l, const void *data, size_t len)
{
    if (!l->tls_active && !l->writing && buf_len(&l->queue) == 0 && len > 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&l->tcp, &b, 1);
        if (n > 0) {
            data = (const char *)data + n;
            len -= (size_t)n;
        } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
            return n;
        }
    }
    return leg_queue(l, data, len);
}

/* leg_take_tls_out moves the ciphertext TLS has made into the queue. */
static int leg_take_tls_out(struct leg *l)
{
    size_t pending;
    while ((pending = tlsio_pending_out(&l->tls)) > 0) {
        int rc = buf_reserve(&l->queue, pending, LEG_OUT_MAX);
        if (rc != 0) {
            return rc;
        }
        size_t n = 0;
        tlsio_take_out(&l->tls, &n, buf_tail(&l->queue), buf_tail_len(&l->queue));
        buf_commit(&l->queue, n);
    }
    return 0;
}

/* leg_encrypt turns the queued plaintext into ciphertext in the queue. */
static int leg_encrypt(struct leg *l)
{
    while (buf_len(&l->tls_plain) > 0) {
        size_t n = 0;
        enum tlsio_result r =
            tlsio_write(&l->tls, &n, buf_head(&l->tls_plain), buf_len(&l->tls_plain));
        if (r == TLSIO_FAILED || r == TLSIO_CLOSED) {
            return UV_EPROTO;
        }
        buf_consume(&l->tls_plain, n);
        int rc = leg_take_tls_out(l);
        if (rc != 0) {
            return rc;
        }
        if (n == 0 && tlsio_pending_out(&l->tls) == 0) {
            return 0; /* nothing moves: again after the next event */
        }
    }
    return 0;
}

int leg_flush(struct leg *l, uv_write_cb cb, bool *out_moved)
{
    *out_moved = false;
    if (!l->open) {
        return 0;
    }
    if (l->tls_active) {
        int rc = leg_encrypt(l);
        if (rc != 0) {
            return rc;
        }
    }
    if (l->tls_started) {
        int rc = leg_take_tls_out(l); /* handshake messages, alerts, close_notify */
        if (rc != 0) {
            return rc;
        }
    }
    if (l->writing || buf_len(&l->queue) == 0) {
        return 0;
    }
    /* Most writes fit in the socket buffer: try without a request first. */
    uv_buf_t b = uv_buf_init(buf_head(&l->queue), (unsigned)buf_len(&l->queue));
    int n = uv_try_write((uv_stream_t *)&l->tcp, &b, 1);
    if (n > 0) {
        *out_moved = true;
        buf_consume(&l->queue, (size_t)n);
        if (buf_len(&l->queue) == 0) {
            return 0;
        }
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
        return n;
    }
    /* The rest goes in flight from |out|, which nothing touches until the callback. */
    struct buf tmp = l->out;
    l->out = l->queue;
    l->queue = tmp;
    b = uv_buf_init(buf_head(&l->out), (unsigned)buf_len(&l->out));
    l->write_req.data = l;
    int rc = uv_write(&l->write_req, (uv_stream_t *)&l->tcp, &b, 1, cb);
    if (rc != 0) {
        return rc;
    }
    l->writing = true;
    *out_moved = true;
    return 0;
}

void leg_written(struct leg *l)
{
    l->writing = false;
    buf_cleanup(&l->out);
}

void leg_alloc(struct leg *l, uv_buf_t *out)
{
    struct buf *to = l->tls_started ? &l->tls_raw : &l->in;
    if (buf_reserve(to, LEG_READ_SIZE, LEG_IN_MAX) != 0) {
        *out = uv_buf_init(NULL, 0);
        return;
    }
    *out = uv_buf_init(buf_tail(to), (unsigned)buf_tail_len(to));
}

bool leg_received(struct leg *l, ssize_t nread)
{
    if (nread == 0) {
        return false; /* EAGAIN, not the end of the stream */
    }
    if (nread > 0) {
        buf_commit(l->tls_started ? &l->tls_raw : &l->in, (size_t)nread);
        l->bytes_read += (uint64_t)nread;
        return true;
    }
    l->eof = true; /* TLS hears of it once every byte before it was fed (leg_feed) */
    return true;
}

bool leg_wants_read(const struct leg *l)
{
    return l->open && !l->eof && buf_len(&l->in) < LEG_READ_SIZE &&
           buf_len(&l->tls_raw) < LEG_READ_SIZE;
}

void leg_set_reading(struct leg *l, bool want, uv_alloc_cb alloc_cb, uv_read_cb read_cb)
{
    if (!l->open || want == l->reading) {
        return;
    }
    if (want) {
        if (uv_read_start((uv_stream_t *)&l->tcp, alloc_cb, read_cb) == 0) {
            l->reading = true;
        }
    } else {
        uv_read_stop((uv_stream_t *)&l->tcp);
        l->reading = false;
    }
}

/* leg_feed gives TLS as much received ciphertext as its BIO takes now, and the peer's EOF
 * once nothing received before it is left. Returns the bytes taken. */
static size_t leg_feed(struct leg *l)
{
    size_t total = 0;
    while (buf_len(&l->tls_raw) > 0) {
        size_t n = 0;
        if (tlsio_feed(&l->tls, &n, buf_head(&l->tls_raw), buf_len(&l->tls_raw)) != 0 || n == 0) {
            break;
        }
        buf_consume(&l->tls_raw, n);
        total += n;
    }
    if (l->eof && buf_len(&l->tls_raw) == 0) {
        tlsio_feed_eof(&l->tls);
    }
    return total;
}

enum leg_tls leg_tls_handshake(struct leg *l)
{
    bool starved = false;
    for (;;) {
        size_t fed = leg_feed(l);
        if (starved && fed == 0) {
            return LEG_TLS_FAILED; /* TLS wants bytes it will not take: never loop */
        }
        enum tlsio_result r;
        do {
            r = tlsio_handshake(&l->tls);
            if (leg_take_tls_out(l) != 0) {
                return LEG_TLS_FAILED;
            }
        } while (r == TLSIO_WANT_WRITE);
        if (r == TLSIO_OK) {
            l->tls_active = true;
            return LEG_TLS_DONE;
        }
        if (r != TLSIO_WANT_READ) {
            return LEG_TLS_FAILED;
        }
        /* The handshake read the BIO dry; more of what arrived may be waiting (a large
         * first flight comes in more pieces than the BIO pair holds at once). */
        if (buf_len(&l->tls_raw) == 0) {
            return l->eof ? LEG_TLS_FAILED : LEG_TLS_WANT;
        }
        starved = true;
    }
}

enum leg_tls leg_tls_pull(struct leg *l, bool *out_moved)
{
    *out_moved = false;
    for (;;) {
        size_t fed = leg_feed(l);
        bool progress = false;
        while (buf_len(&l->in) < LEG_READ_SIZE) {
            if (buf_reserve(&l->in, LEG_READ_SIZE, LEG_IN_MAX) != 0) {
                return LEG_TLS_FAILED;
            }
            size_t n = 0;
            enum tlsio_result r = tlsio_read(&l->tls, &n, buf_tail(&l->in), buf_tail_len(&l->in));
            buf_commit(&l->in, n);
            if (n > 0) {
                progress = true;
                *out_moved = true;
            }
            if (r == TLSIO_CLOSED) {
                l->eof = true;
                return LEG_TLS_CLOSED;
            }
            if (r == TLSIO_FAILED) {
                (void)leg_take_tls_out(l); /* an alert, if TLS made one */
                if (tlsio_failure(&l->tls) == TLSIO_FAILURE_EOF) {
                    l->eof = true;
                    return LEG_TLS_TRUNCATED;
                }
                return LEG_TLS_FAILED;
            }
            if (n == 0) {
                break;
            }
        }
        if (leg_take_tls_out(l) != 0) { /* e.g. a key update */
            return LEG_TLS_FAILED;
        }
        if (buf_len(&l->in) >= LEG_READ_SIZE || buf_len(&l->tls_raw) == 0 ||
            (!progress && fed == 0)) {
            return LEG_TLS_DONE;
        }
    }
}

bool leg_tls_has_input(const struct leg *l)
{
    return buf_len(&l->tls_raw) > 0;
}
