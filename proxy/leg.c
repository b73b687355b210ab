/*
 * leg: one connection's bytes and TLS pump. Reads land in bounded buffers, writes go out
 * with uv_try_write and at most one uv_write in flight. Once TLS started, the socket reads
 * into tlsio's receive buffer and TLS writes its records into the queue, both in place.
 * Nothing here knows SMTP or calls up into the session; the session owns the struct and
 * every callback.
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
    buf_init(&l->tls_plain);
    tlsio_init(&l->tls);
    tlsio_attach(&l->tls, &l->queue, LEG_OUT_MAX);
    l->open = false;
    l->reading = false;
    l->writing = false;
    l->eof = false;
    l->tls_started = false;
    l->tls_active = false;
}

void leg_cleanup(struct leg *l)
{
    tlsio_cleanup(&l->tls);
    buf_cleanup(&l->in);
    buf_cleanup(&l->out);
    buf_cleanup(&l->queue);
    buf_cleanup(&l->tls_plain);
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

int leg_seal(struct leg *l)
{
    size_t len = buf_len(&l->tls_plain);
    if (len == 0) {
        return 0;
    }
    /* Room for all of it at once: growing the queue record by record would copy it again. */
    (void)buf_reserve(&l->queue, tlsio_sealed_max(&l->tls, len), LEG_OUT_MAX);
    size_t n = 0;
    enum tlsio_result r = tlsio_write(&l->tls, &n, buf_head(&l->tls_plain), len);
    if (r == TLSIO_FAILED || r == TLSIO_CLOSED) {
        return UV_EPROTO;
    }
    buf_consume(&l->tls_plain, n); /* the rest once the queue drained (the next event) */
    return 0;
}

int leg_flush(struct leg *l, uv_write_cb cb, bool *out_moved)
{
    *out_moved = false;
    if (!l->open) {
        return 0;
    }
    if (l->tls_active) {
        int rc = leg_seal(l);
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
    if (l->tls_started) {
        void *room = NULL;
        size_t room_len = 0;
        if (tlsio_recv_room(&l->tls, &room, &room_len, LEG_READ_SIZE, LEG_IN_MAX) != 0) {
            *out = uv_buf_init(NULL, 0);
            return;
        }
        *out = uv_buf_init(room, (unsigned)room_len);
        return;
    }
    if (buf_reserve(&l->in, LEG_READ_SIZE, LEG_IN_MAX) != 0) {
        *out = uv_buf_init(NULL, 0);
        return;
    }
    *out = uv_buf_init(buf_tail(&l->in), (unsigned)buf_tail_len(&l->in));
}

bool leg_received(struct leg *l, ssize_t nread)
{
    if (nread == 0) {
        /* EAGAIN, not the end of the stream: the peer paused, so TLS holds no buffer for
         * it once it has read what came (a full read had asked to keep it). */
        if (l->tls_started) {
            tlsio_recv_idle(&l->tls);
        }
        return false;
    }
    if (nread > 0) {
        if (l->tls_started) {
            tlsio_recv_commit(&l->tls, (size_t)nread);
        } else {
            buf_commit(&l->in, (size_t)nread);
        }
        l->bytes_read += (uint64_t)nread;
        return true;
    }
    l->eof = true; /* TLS hears of it (leg_tls_*) after every byte received before it */
    return true;
}

bool leg_wants_read(const struct leg *l)
{
    return l->open && !l->eof && buf_len(&l->in) < LEG_READ_SIZE &&
           tlsio_recv_pending(&l->tls) < LEG_READ_SIZE;
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

enum leg_tls leg_tls_handshake(struct leg *l)
{
    if (l->eof) {
        tlsio_feed_eof(&l->tls); /* TLS reads every byte received before the end first */
    }
    switch (tlsio_handshake(&l->tls)) {
    case TLSIO_OK:
        l->tls_active = true;
        return LEG_TLS_DONE;
    case TLSIO_WANT_READ:
        return l->eof ? LEG_TLS_FAILED : LEG_TLS_WANT;
    case TLSIO_WANT_WRITE:
        return LEG_TLS_WANT; /* the queue is at its cap: again once it drained */
    case TLSIO_CLOSED:
    case TLSIO_FAILED:
        break;
    }
    return LEG_TLS_FAILED;
}

enum leg_tls leg_tls_pull(struct leg *l, bool *out_moved)
{
    *out_moved = false;
    if (l->eof) {
        tlsio_feed_eof(&l->tls);
    }
    while (buf_len(&l->in) < LEG_READ_SIZE) {
        /* Room for what the received bytes can yield, not a whole read's worth: a command
         * line costs a small buffer, and nothing is allocated when nothing came. */
        size_t bound = tlsio_read_bound(&l->tls);
        if (bound == 0 && !l->eof) {
            break;
        }
        size_t want = bound < LEG_READ_SIZE ? bound : LEG_READ_SIZE;
        if (buf_reserve(&l->in, want > 0 ? want : 1, LEG_IN_MAX) != 0) {
            return LEG_TLS_FAILED;
        }
        size_t n = 0;
        enum tlsio_result r = tlsio_read(&l->tls, &n, buf_tail(&l->in), buf_tail_len(&l->in));
        buf_commit(&l->in, n);
        if (n > 0) {
            *out_moved = true;
        }
        if (r == TLSIO_CLOSED) {
            /* Nothing after close_notify counts: what came with it is dropped, or it would
             * look like input still to process and hide the end of the stream. */
            l->eof = true;
            tlsio_recv_discard(&l->tls);
            return LEG_TLS_CLOSED;
        }
        if (r == TLSIO_FAILED) {
            if (tlsio_failure(&l->tls) == TLSIO_FAILURE_EOF) {
                l->eof = true;
                return LEG_TLS_TRUNCATED;
            }
            return LEG_TLS_FAILED; /* its alert, if any, is in the queue */
        }
        if (n == 0) {
            break; /* TLS wants more, or the queue is full (a KeyUpdate to answer) */
        }
    }
    return LEG_TLS_DONE;
}

bool leg_tls_has_input(const struct leg *l)
{
    return tlsio_recv_pending(&l->tls) > 0;
}

size_t leg_tls_unread(const struct leg *l)
{
    return tlsio_recv_pending(&l->tls);
}

void leg_tls_drop_input(struct leg *l)
{
    tlsio_recv_discard(&l->tls);
}
