/*
 * buf: a growable byte buffer with a consumed head, for one direction of one leg.
 *
 * Bytes live in data[start, end). buf never grows past the cap the caller passes, and an
 * empty buf owns no memory, so an idle connection costs nothing here.
 */
#ifndef PROXY_BUF_H
#define PROXY_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
    char *data;
    size_t start;
    size_t end;
    size_t cap;
};

/* buf_init makes an empty buffer that owns no memory. */
void buf_init(struct buf *b);

/* buf_cleanup frees the memory; the buffer is empty afterwards and may be reused. */
void buf_cleanup(struct buf *b);

/* buf_len returns the number of unconsumed bytes. */
size_t buf_len(const struct buf *b);

/* buf_head returns a pointer to the first unconsumed byte (NULL when none were ever held). */
char *buf_head(const struct buf *b);

/*
 * buf_reserve makes room for at least |want| more bytes after the end, without letting
 * the buffer exceed |max| bytes of capacity. Returns 0, or -ENOMEM (allocation failed)
 * or -ENOBUFS (|want| does not fit under |max| even after compaction). On success
 * buf_tail() points at the free space.
 */
int buf_reserve(struct buf *b, size_t want, size_t max);

/* buf_tail returns the free space after the end; buf_tail_len its length. */
char *buf_tail(const struct buf *b);
size_t buf_tail_len(const struct buf *b);

/* buf_commit records that |len| bytes were written at buf_tail(). */
void buf_commit(struct buf *b, size_t len);

/* buf_append copies |len| bytes to the end. Same return values as buf_reserve(). */
int buf_append(struct buf *b, const void *data, size_t len, size_t max);

/* buf_consume drops |len| bytes from the head; an emptied buffer releases its memory. */
void buf_consume(struct buf *b, size_t len);

#endif
