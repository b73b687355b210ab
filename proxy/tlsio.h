/*
 * tlsio: TLS for one leg of a session, BoringSSL over memory buffers.
 *
 * The caller moves ciphertext between its socket and tlsio, either by copying it
 * (tlsio_feed, tlsio_take_out) or by lending tlsio its own buffers (tlsio_attach), and
 * plaintext between tlsio and the SMTP code (tlsio_read, tlsio_write). tlsio never
 * touches a socket, the event loop or the log: every failure comes back as text.
 */
#ifndef PROXY_TLSIO_H
#define PROXY_TLSIO_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "conf.h"

struct ssl_st;

/* Room for the error text of tlsio_ctx_new_front()/tlsio_ctx_new_back(). */
#define TLSIO_ERR_MAX 512
/* Room for a connection's failure reason. */
#define TLSIO_REASON_MAX 160
/* Without tlsio_attach(), each direction holds at most one largest TLS record (RFC 5246
 * section 6.2.3): what tlsio_feed() takes and what waits for tlsio_take_out(). */
#define TLSIO_BIO_SIZE (5 + 16384 + 2048)

/* The outcome of a step on one connection. */
enum tlsio_result {
    TLSIO_OK = 0,     /* done: handshake complete, bytes read or written, close_notify queued */
    TLSIO_WANT_READ,  /* feed more ciphertext (tlsio_feed), then call again */
    TLSIO_WANT_WRITE, /* the output is full: tlsio_take_out(), then call again */
    TLSIO_CLOSED,     /* tlsio_read: the peer sent close_notify */
    TLSIO_FAILED,     /* see tlsio_failure() and tlsio_reason(); every later call fails too */
};

/* Why a connection failed; a client's address is learned on any of these but NONE. */
enum tlsio_failure {
    TLSIO_FAILURE_NONE = 0,
    TLSIO_FAILURE_PROTOCOL, /* we rejected what the peer sent (our alert, if any, is queued) */
    TLSIO_FAILURE_ALERT,    /* the peer sent a fatal alert */
    TLSIO_FAILURE_EOF,    /* the peer closed: during the handshake, or later without close_notify */
    TLSIO_FAILURE_VERIFY, /* back leg: the upstream's certificate failed verification */
};

/* The back leg's certificate check, with RFC 8460 (TLS-RPT) result types where one fits. */
enum tlsio_verify {
    TLSIO_VERIFY_NOT_CHECKED = 0, /* verify = none, the front leg, or no handshake yet */
    TLSIO_VERIFY_OK,
    TLSIO_VERIFY_HOST_MISMATCH, /* certificate-host-mismatch */
    TLSIO_VERIFY_EXPIRED,       /* certificate-expired */
    TLSIO_VERIFY_NOT_TRUSTED,   /* certificate-not-trusted */
    TLSIO_VERIFY_FAILED,        /* validation-failure: anything else */
};

/*
 * A TLS context built from the configuration: shared read-only by all sessions of all
 * loops. Sessions started from it keep it alive (BoringSSL counts references to the
 * SSL_CTX), so main may free it on reload while handshakes are still running.
 */
struct tlsio_ctx;

/* Per-connection choices on the back leg, for the step-down ladder of issue 4. */
struct tlsio_back_options {
    const char *name;    /* upstream host name or address: SNI (names only) and the name
                            verified with verify = ca; NULL for neither */
    bool no_client_cert; /* answer a certificate request with an empty certificate */
    bool max_tls12;      /* offer TLS 1.2 at most */
    bool verify_soft;    /* verify = ca: record a failure (tlsio_verify_result) but go on */
    const char *address; /* the upstream's address as text ("192.0.2.1:25"): sessions are
                            resumed per address, name and the flags above; NULL for none */
};

/* One TLS connection, embedded in a session. Fields are private to tlsio.c. */
struct tlsio {
    struct ssl_st *ssl;
    char *rx; /* ciphertext from the peer not yet read by TLS: [rx_start, rx_end) */
    size_t rx_start;
    size_t rx_end;
    size_t rx_cap;
    bool rx_keep;    /* the last receive filled its room: keep rx for the next one */
    struct buf *out; /* lent by tlsio_attach(): ciphertext for the peer, appended by
                        TLS; NULL: own_out, emptied by tlsio_take_out() */
    size_t out_max;  /* what |out| may hold */
    struct buf own_out;
    char *cache_key;        /* back leg: the key its sessions are resumed and kept under */
    size_t write_retry_len; /* plaintext sealed in a record |out| could not take yet */
    bool eof;               /* tlsio_feed_eof() was called */
    bool verify;            /* the back context verifies certificates */
    bool verify_hard;       /* ... and a failure fails the handshake */
    bool offered_ecdsa;     /* front: the ClientHello offers ECDSA / RSA cipher suites */
    bool offered_rsa;
    int alert_received; /* alert descriptions, -1 for none */
    int alert_sent;
    long verify_error; /* first X509_V_ERR_* seen while verifying, 0 for none */
    enum tlsio_failure failure;
    char *reason; /* allocated at the failure (TLSIO_REASON_MAX): most sessions have none */
};

/*
 * tlsio_ctx_new_front builds the leg-1 server context from conf->front_tls: every
 * certificate/key pair (each certificate file may hold a chain), min_protocol and
 * ciphers (a typo is an error). With several pairs, each handshake gets the first pair
 * that the client can use (its cipher suites and signature algorithms), preferring one
 * whose names match the client's SNI. With no pair, it makes a self-signed ECDSA P-256
 * certificate for conf->hostname and sets |*out_self_signed| (else clears it). Returns
 * the context (free with tlsio_ctx_free()), or NULL with |out_err| naming the file or
 * key and BoringSSL's reason.
 */
struct tlsio_ctx *tlsio_ctx_new_front(char *out_err, size_t out_err_len, bool *out_self_signed,
                                      const struct conf *conf);

/*
 * tlsio_ctx_new_back builds the leg-2 client context from conf->back_tls: the optional
 * client certificate and key, and with verify = ca the CA file. Returns the context, or
 * NULL with |out_err| as for tlsio_ctx_new_front().
 */
struct tlsio_ctx *tlsio_ctx_new_back(char *out_err, size_t out_err_len, const struct conf *conf);

/*
 * tlsio_ctx_new_webpki builds a client context for the downgrade gate: TLS 1.2 or newer,
 * certificates verified against the WebPKI roots in |ca_file| (the MTA-STS policy fetch
 * verifies the server's name too: set tlsio_back_options.name). The same roots judge
 * leg 2's certificates (tlsio_peer_webpki()). Returns NULL with |out_err| on failure.
 */
struct tlsio_ctx *tlsio_ctx_new_webpki(char *out_err, size_t out_err_len, const char *ca_file);

/* tlsio_ctx_ref adds a reference (for one more owner, such as a fetch that outlives a
 * reload) and returns |ctx|. */
struct tlsio_ctx *tlsio_ctx_ref(struct tlsio_ctx *ctx);

/* tlsio_ctx_free drops the caller's reference. tlsio_ctx_free(NULL) does nothing. */
void tlsio_ctx_free(struct tlsio_ctx *ctx);

/* tlsio_init makes |t| idle, with its own buffers; tlsio_cleanup() is safe afterwards. */
void tlsio_init(struct tlsio *t);

/* tlsio_cleanup frees the connection and its unread ciphertext; |t| is idle again and may
 * be started anew, still with the output buffer tlsio_attach() lent it (its bytes stay the
 * lender's). */
void tlsio_cleanup(struct tlsio *t);

/*
 * tlsio_attach lends |t| the caller's output buffer, for good: TLS appends the ciphertext
 * it makes to |out| while |out| holds less than |out_max| bytes, and the caller writes it
 * to its socket and consumes it, with no copy in between; tlsio_pending_out() and
 * tlsio_take_out() then work on |out|. |out| must stay where it is for as long as |t| is
 * used; call it on an idle |t|.
 */
void tlsio_attach(struct tlsio *t, struct buf *out, size_t out_max);

/*
 * tlsio_recv_room points |*out_data| at room for at least |want| bytes of ciphertext from
 * the peer, without letting |t| hold more than |max| unread (TLS reads them from there in
 * place), and sets |*out_len| to the room's size. Returns 0, -ENOMEM, or -ENOBUFS when
 * |want| does not fit under |max|. The room lives until the next call on |t|.
 */
int tlsio_recv_room(struct tlsio *t, void **out_data, size_t *out_len, size_t want, size_t max);

/*
 * tlsio_recv_commit records that |len| bytes were received into tlsio_recv_room()'s room.
 * The memory is kept between receives that fill their room (a peer sending a stream) and
 * released once TLS has read everything after one that did not.
 */
void tlsio_recv_commit(struct tlsio *t, size_t len);

/* tlsio_recv_pending returns the bytes of ciphertext received and not yet read by TLS. */
size_t tlsio_recv_pending(const struct tlsio *t);

/* tlsio_recv_discard drops them, and releases the memory. */
void tlsio_recv_discard(struct tlsio *t);

/* tlsio_recv_idle says that the peer paused (a receive found nothing): the memory is
 * released now if TLS has read everything, else once it has. */
void tlsio_recv_idle(struct tlsio *t);

/*
 * tlsio_read_bound returns an upper bound of the plaintext that what |t| has received can
 * yield now: the unread ciphertext, and a record's worth if TLS holds a part of one or
 * decrypted bytes not yet read. 0 means tlsio_read() would want more input.
 */
size_t tlsio_read_bound(const struct tlsio *t);

/*
 * tlsio_start_front makes idle |t| the server side of a handshake with |ctx| (a front
 * context). Returns 0, or -ENOMEM with |t| still idle. |t| must not move while started.
 */
int tlsio_start_front(struct tlsio *t, struct tlsio_ctx *ctx);

/*
 * tlsio_start_back makes idle |t| the client side of a handshake with |ctx| (a back
 * context) and |options| (borrowed for this call). Returns 0, -ENOMEM, or -EINVAL when
 * BoringSSL refuses options->name; on failure |t| is still idle.
 */
int tlsio_start_back(struct tlsio *t, struct tlsio_ctx *ctx,
                     const struct tlsio_back_options *options);

/*
 * tlsio_feed copies ciphertext received from the peer into |t|, as much as fits (up to
 * TLSIO_BIO_SIZE bytes not yet read by TLS), and sets |*out_len| to the bytes taken (maybe
 * 0); the caller keeps the rest and feeds it after tlsio_handshake() or tlsio_read() made
 * room. Returns 0, -ENOMEM, or -EPIPE after tlsio_feed_eof(). (tlsio_recv_room() takes
 * the bytes without a copy.)
 */
int tlsio_feed(struct tlsio *t, size_t *out_len, const void *data, size_t len);

/* tlsio_feed_eof tells |t| that the peer closed its side: no more ciphertext comes than
 * what was fed or received already. */
void tlsio_feed_eof(struct tlsio *t);

/*
 * tlsio_handshake runs the handshake as far as the fed bytes allow. Returns TLSIO_OK once
 * it is complete (also on later calls), TLSIO_WANT_READ, TLSIO_WANT_WRITE, or
 * TLSIO_FAILED. After each call, send what tlsio_pending_out() reports: even a failure
 * may leave an alert to send.
 */
enum tlsio_result tlsio_handshake(struct tlsio *t);

/*
 * tlsio_read decrypts up to |len| bytes of plaintext into |data| and sets |*out_len|.
 * Returns TLSIO_OK (*out_len > 0; call again, more may be buffered), TLSIO_WANT_READ,
 * TLSIO_WANT_WRITE, TLSIO_CLOSED or TLSIO_FAILED. Only after a completed handshake.
 */
enum tlsio_result tlsio_read(struct tlsio *t, size_t *out_len, void *data, size_t len);

/*
 * tlsio_write encrypts as much of |data| as the output has room for and sets
 * |*out_len| to the bytes accepted. The rest must be offered again, unchanged and
 * starting at the same byte, once tlsio_take_out() made room. Returns TLSIO_OK
 * (something was accepted, or |len| is 0), TLSIO_WANT_WRITE (nothing was) or
 * TLSIO_FAILED. Only after a completed handshake. Writing goes on after the peer closed
 * its side without close_notify (TLSIO_FAILURE_EOF): it may still read.
 */
enum tlsio_result tlsio_write(struct tlsio *t, size_t *out_len, const void *data, size_t len);

/* tlsio_sealed_max returns the most ciphertext tlsio_write() makes of |len| bytes of
 * plaintext. Only after a completed handshake. */
size_t tlsio_sealed_max(const struct tlsio *t, size_t len);

/* tlsio_pending_out returns the number of ciphertext bytes waiting to be sent. */
size_t tlsio_pending_out(const struct tlsio *t);

/* tlsio_take_out moves up to |len| ciphertext bytes into |data|, setting |*out_len|. */
void tlsio_take_out(struct tlsio *t, size_t *out_len, void *data, size_t len);

/*
 * tlsio_shutdown queues our close_notify. Returns TLSIO_OK, TLSIO_WANT_WRITE (take the
 * output, call again) or TLSIO_FAILED. Only after a completed handshake.
 */
enum tlsio_result tlsio_shutdown(struct tlsio *t);

/* tlsio_failure returns why |t| failed, TLSIO_FAILURE_NONE if it has not. */
enum tlsio_failure tlsio_failure(const struct tlsio *t);

/*
 * tlsio_reason returns the failure's text for the log, e.g. "received alert: protocol
 * version" or "NO_SHARED_CIPHER, sent alert: handshake failure"; "" if none. It lives
 * as long as |t| is not cleaned up.
 */
const char *tlsio_reason(const struct tlsio *t);

/* tlsio_version returns the negotiated version ("TLSv1.3"), tlsio_cipher the cipher
 * suite ("TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"); static strings, ""
 * before the handshake completed. */
const char *tlsio_version(const struct tlsio *t);
const char *tlsio_cipher(const struct tlsio *t);

/*
 * tlsio_verify_result tells how the upstream's certificate fared (back leg, verify = ca):
 * a problem as soon as one was found (also when it failed the handshake), TLSIO_VERIFY_OK
 * once the handshake completed without one. Sets |*out_text| to BoringSSL's description
 * of the first problem ("Hostname mismatch"), or "" when there was none; |out_text| may
 * be NULL.
 */
enum tlsio_verify tlsio_verify_result(const struct tlsio *t, const char **out_text);

/* Room for tlsio_peer_fingerprint()'s text: "sha256:" and 64 hex digits, NUL included. */
#define TLSIO_FINGERPRINT_MAX 72

/*
 * tlsio_peer_fingerprint writes "sha256:<hex>" of the peer's leaf certificate (DER) into
 * |out| (at least TLSIO_FINGERPRINT_MAX bytes). Returns false when the peer presented none
 * (or |out| is too small).
 */
bool tlsio_peer_fingerprint(const struct tlsio *t, char *out, size_t out_size);

/* tlsio_resumed tells whether the completed handshake resumed an earlier session (no
 * certificate was sent: the peer's chain is the one of that session). */
bool tlsio_resumed(const struct tlsio *t);

/* tlsio_protocol returns the negotiated version as BoringSSL's number (TLS1_2_VERSION,
 * 0x0303), or 0 before the handshake completed. */
int tlsio_protocol(const struct tlsio *t);

/*
 * tlsio_peer_chain points |der[i]|/|len[i]| at the peer's certificates as it presented
 * them, leaf first, up to |max|; returns how many. Valid until |t| is cleaned up. Kept
 * for every handshake, whatever [upstream_tls] verify says, so the gate can judge later.
 */
size_t tlsio_peer_chain(const struct tlsio *t, const uint8_t **der, size_t *len, size_t max);

/*
 * tlsio_peer_webpki verifies the peer's chain now, against |webpki|'s roots (from
 * tlsio_ctx_new_webpki()), as a TLS server certificate valid at this time; no name is
 * checked (see tlsio_peer_dns_names()). Returns true when it is valid; else sets
 * |*out_why| to BoringSSL's reason ("certificate has expired").
 */
bool tlsio_peer_webpki(const struct tlsio *t, const struct tlsio_ctx *webpki, const char **out_why);

/* Room for one DNS name of a certificate, NUL included. */
#define TLSIO_DNS_NAME_MAX 256

/* tlsio_peer_dns_names copies the leaf's subjectAltName dNSName entries (lower case; those
 * with a NUL byte or too long are skipped), up to |max|; returns how many. */
size_t tlsio_peer_dns_names(const struct tlsio *t, char (*out)[TLSIO_DNS_NAME_MAX], size_t max);

#endif
