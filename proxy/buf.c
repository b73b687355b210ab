/*
 * buf: a growable byte buffer with a consumed head.
 *
 * Memory is released as soon as the buffer empties, so idle sessions hold none; the
 * caller passes a cap to every growth, so no peer can make a buffer grow without limit.
 */
#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Smallest allocation: most SMTP lines and replies fit, so most buffers never regrow. */
#define BUF_MIN_CAP 1024

void buf_init(struct buf *b)
{
    b->data = NULL;
    b->start = 0;
    b->end = 0;
    b->cap = 0;
}

void buf_cleanup(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

size_t buf_len(const struct buf *b)
{
    return b->end - b->start;
}

char *buf_head(const struct buf *b)
{
    return b->data == NULL ? NULL : b->data + b->start;
}

char *buf_tail(const struct buf *b)
{
    return b->data == NULL ? NULL : b->data + b->end;
}

size_t buf_tail_len(const struct buf *b)
{
    return b->cap - b->end;
}

int buf_reserve(struct buf *b, size_t want, size_t max)
{
    if (b->cap - b->end >= want) {
        return 0;
    }
    size_t used = b->end - b->start;
    if (want > max || used > max - want) {
        return -ENOBUFS;
    }
    /* Sliding the unconsumed bytes to the front may be enough. */
    if (b->cap - used >= want) {
        memmove(b->data, b->data + b->start, used);
        b->start = 0;
        b->end = used;
        return 0;
    }
    size_t cap = b->cap < BUF_MIN_CAP ? BUF_MIN_CAP : b->cap;
    while (cap < used + want) {
        cap = cap > max / 2 ? max : cap * 2;
    }
    if (cap > max) {
        cap = max;
    }
    char *data = malloc(cap);
    if (data == NULL) {
        return -ENOMEM;
    }
    if (used > 0) {
        memcpy(data, b->data + b->start, used);
    }
    free(b->data);
    b->data = data;
    b->start = 0;
    b->end = used;
    b->cap = cap;
    return 0;
}

void buf_commit(struct buf *b, size_t len)
{
    b->end += len;
}

int buf_append(struct buf *b, const void *data, size_t len, size_t max)
{
    if (len == 0) {
        return 0;
    }
    int rc = buf_reserve(b, len, max);
    if (rc != 0) {
        return rc;
    }
    memcpy(b->data + b->end, data, len);
    b->end += len;
    return 0;
}

void buf_consume(struct buf *b, size_t len)
{
    b->start += len;
    if (b->start >= b->end) {
        buf_cleanup(b);
    }
}
