/*
 * leg: one TCP connection of a session, the bytes waiting in each direction and its TLS.
 *
 * The session's I/O layer: it reads into bounded buffers, writes with one request in
 * flight, and pumps ciphertext through tlsio. It never calls up into the session and never
 * decides anything about SMTP: every function reports what happened with its return value,
 * and the session's libuv callbacks call it.
 */
#ifndef PROXY_LEG_H
#define PROXY_LEG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "tlsio.h"

/* One read takes at most this much; input beyond it waits in the kernel (back-pressure). */
#define LEG_READ_SIZE (64 * 1024)
/* The most one leg's input buffer (plaintext, or ciphertext before TLS) holds. */
#define LEG_IN_MAX (2 * LEG_READ_SIZE)
/* Stop reading the other leg while this leg has this much unsent. */
#define LEG_HIGH_WATER (128 * 1024)

struct leg {
    uv_tcp_t tcp;
    uv_write_t write_req;
    struct buf in;        /* plaintext read, not yet processed */
    struct buf out;       /* handed to uv_write: must not move until its callback */
    struct buf queue;     /* waiting behind |out|: ciphertext once TLS started (TLS writes
                             its records here itself, see tlsio_attach) */
    struct buf tls_plain; /* plaintext waiting to be encrypted */
    struct tlsio tls;     /* once TLS started, reads go into its receive buffer */
    uint64_t bytes_read;  /* over every connection this leg had */
    bool open;            /* tcp is initialised and not yet closing */
    bool reading;         /* uv_read_start is in force */
    bool writing;         /* a uv_write is in flight */
    bool eof;             /* the peer will send no more */
    bool tls_started;     /* reads go to TLS from now on */
    bool tls_active;      /* the handshake is complete */
};

/* What a TLS step came to. */
enum leg_tls {
    LEG_TLS_DONE = 0,  /* the handshake is complete / plaintext was moved */
    LEG_TLS_WANT,      /* more ciphertext from the peer is needed */
    LEG_TLS_CLOSED,    /* the peer sent close_notify (leg_tls_pull) */
    LEG_TLS_TRUNCATED, /* the peer closed without close_notify (leg_tls_pull; eof is set) */
    LEG_TLS_FAILED,    /* see tlsio_failure(&leg->tls) */
};

/* leg_init makes |l| idle: no socket, empty buffers, no TLS. leg_cleanup() is safe after. */
void leg_init(struct leg *l);

/* leg_cleanup frees the buffers and the TLS state (not the socket: uv_close does that). */
void leg_cleanup(struct leg *l);

/* leg_reset readies |l| for a new connection: leg_cleanup() and leg_init(), keeping only
 * bytes_read. The old socket must be closed already. */
void leg_reset(struct leg *l);

/* leg_unsent returns the bytes queued for this leg's peer and not yet written. */
size_t leg_unsent(const struct leg *l);

/*
 * leg_queue appends |len| bytes of plaintext for the peer (encrypted when TLS is active).
 * Returns 0, or -ENOBUFS when the leg would hold more than its hard cap (a bug, not a
 * peer's doing: callers stop producing at LEG_HIGH_WATER), or -ENOMEM.
 */
int leg_queue(struct leg *l, const void *data, size_t len);

/*
 * leg_send writes |len| bytes straight from the caller's memory when nothing is queued
 * ahead of them and TLS is not active (message content, without a copy); what the socket
 * does not take at once is queued. Returns 0 or a negative libuv/errno code.
 */
int leg_send(struct leg *l, const void *data, size_t len);

/* leg_seal turns the plaintext queued on a TLS leg into records at the end of the queue, as
 * much as the queue takes (leg_flush does it too). Returns 0 or UV_EPROTO. */
int leg_seal(struct leg *l);

/*
 * leg_flush encrypts what is waiting and writes the queue: with uv_try_write first, the
 * rest with one uv_write whose callback is |cb| (its req->data is |l|). Sets *out_moved
 * when any byte went to the kernel or into flight. Returns 0 or a negative libuv code.
 */
int leg_flush(struct leg *l, uv_write_cb cb, bool *out_moved);

/* leg_written is called from the write callback: the bytes in flight are gone. */
void leg_written(struct leg *l);

/* leg_alloc hands libuv the free tail of the input buffer (TLS's receive buffer once TLS
 * started), growing it up to LEG_IN_MAX; an empty buffer when full. */
void leg_alloc(struct leg *l, uv_buf_t *out);

/* leg_received keeps the |nread| bytes libuv read into leg_alloc()'s buffer, or marks the
 * end of the stream (nread < 0, also telling TLS). Returns false for nread == 0. */
bool leg_received(struct leg *l, ssize_t nread);

/* leg_wants_read tells whether there is room to read into (the caller adds its own
 * back-pressure conditions). */
bool leg_wants_read(const struct leg *l);

/* leg_set_reading starts or stops libuv reading with |alloc_cb|/|read_cb|. */
void leg_set_reading(struct leg *l, bool want, uv_alloc_cb alloc_cb, uv_read_cb read_cb);

/*
 * leg_tls_handshake runs the handshake on every ciphertext byte received so far (one read
 * may hold a 35 KB certificate flight) and queues what it answers. LEG_TLS_DONE once
 * complete (tls_active is set), LEG_TLS_WANT, or LEG_TLS_FAILED (also when the peer closed
 * mid-handshake).
 */
enum leg_tls leg_tls_handshake(struct leg *l);

/*
 * leg_tls_pull moves received ciphertext through the established TLS into |in|, as much as
 * fits under LEG_READ_SIZE; the rest stays in TLS until |in| is used up (call again then:
 * no socket event will come for it). Sets *out_moved when plaintext was added.
 * LEG_TLS_DONE, LEG_TLS_CLOSED (close_notify; eof is set), LEG_TLS_TRUNCATED (a close
 * without close_notify; eof is set) or LEG_TLS_FAILED.
 */
enum leg_tls leg_tls_pull(struct leg *l, bool *out_moved);

/* leg_tls_has_input tells whether ciphertext or decrypted bytes wait inside the leg. */
bool leg_tls_has_input(const struct leg *l);

/* leg_tls_unread returns the bytes of ciphertext received and not yet read by TLS. */
size_t leg_tls_unread(const struct leg *l);

/* leg_tls_drop_input throws away the ciphertext received and not yet read by TLS. */
void leg_tls_drop_input(struct leg *l);

#endif
