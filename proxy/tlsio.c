/*
 * tlsio: TLS for one leg of a session, BoringSSL over memory buffers.
 *
 * Runs one SSL per connection, whose BIO reads and writes the caller's buffers in place,
 * made from a context of tlsio_ctx.c. It never does I/O and never logs: failures are
 * returned as text with BoringSSL's reason.
 */
#include "tlsio.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pool.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "tlsio_impl.h"

static BIO_METHOD *tlsio_bio_method;
static pthread_once_t tlsio_bio_once = PTHREAD_ONCE_INIT;

static size_t tlsio_min(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* tlsio_out: the output buffer lent by tlsio_attach(), or |t|'s own. */
static const struct buf *tlsio_out_const(const struct tlsio *t)
{
    return t->out != NULL ? t->out : &t->own_out;
}

static struct buf *tlsio_out(struct tlsio *t)
{
    return t->out != NULL ? t->out : &t->own_out;
}

/* ---- the BIO: ciphertext read from |in| and written to |out| in place --------------------- */

/*
 * TLS reads records straight from rx, where the socket put them (tlsio_recv_room), and
 * writes them to the tail of t->out (the leg's output queue, or the room tlsio_take_out
 * empties): one copy each way, where a BIO pair took two, and no buffer held while idle.
 */
static int tlsio_bio_read(BIO *bio, char *data, int len)
{
    struct tlsio *t = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    size_t n = tlsio_min(t->rx_end - t->rx_start, (size_t)len);
    if (n == 0) {
        if (t->eof) {
            return 0; /* the end of the peer's stream: SSL_ERROR_SYSCALL or ZERO_RETURN */
        }
        BIO_set_retry_read(bio);
        return -1;
    }
    memcpy(data, t->rx + t->rx_start, n);
    t->rx_start += n;
    if (t->rx_start == t->rx_end) {
        t->rx_start = 0;
        t->rx_end = 0;
        if (!t->rx_keep) {
            tlsio_recv_discard(t); /* the peer paused: hold nothing while it is idle */
        }
    }
    return (int)n;
}

static int tlsio_bio_write(BIO *bio, const char *data, int len)
{
    struct tlsio *t = BIO_get_data(bio);
    struct buf *out = tlsio_out(t);
    BIO_clear_retry_flags(bio);
    size_t used = buf_len(out);
    size_t n = tlsio_min(used < t->out_max ? t->out_max - used : 0, (size_t)len);
    if (n == 0 || buf_append(out, data, n, t->out_max) != 0) {
        BIO_set_retry_write(bio); /* a failed allocation waits too: the caller's cap decides */
        return -1;
    }
    return (int)n;
}

static long tlsio_bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)bio;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static void tlsio_bio_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tlsio");
    if (m != NULL && BIO_meth_set_read(m, tlsio_bio_read) &&
        BIO_meth_set_write(m, tlsio_bio_write) && BIO_meth_set_ctrl(m, tlsio_bio_ctrl)) {
        tlsio_bio_method = m;
    } else {
        BIO_meth_free(m);
    }
}

/* tlsio_cache returns the session cache of |t|'s context when |t| resumes sessions. */
static struct tlsio_resume_cache *tlsio_cache(const struct tlsio *t)
{
    if (t->ssl == NULL || t->cache_key == NULL) {
        return NULL;
    }
    const struct tlsio_ctx *c = tlsio_ctx_of(t->ssl);
    return c != NULL ? c->cache : NULL;
}

/*
 * A session the upstream made (at the end of a TLS 1.2 handshake, with each TLS 1.3
 * ticket) is kept for the next connection with the same key, unless its certificate
 * failed verification: a resumed session is not verified again.
 */
int tlsio_on_new_session(SSL *ssl, SSL_SESSION *session)
{
    const struct tlsio *t = SSL_get_app_data(ssl);
    struct tlsio_resume_cache *cache = tlsio_cache(t);
    if (cache == NULL || t->verify_error != 0 || !SSL_SESSION_is_resumable(session)) {
        return 0;
    }
    (void)tlsio_resume_put(cache, t->cache_key, session);
    return 1; /* the reference is the cache's, or dropped */
}

void tlsio_init(struct tlsio *t)
{
    memset(t, 0, sizeof(*t));
    t->rx = NULL;
    t->out = NULL;
    buf_init(&t->own_out);
    t->out_max = TLSIO_BIO_SIZE;
    t->alert_received = -1;
    t->alert_sent = -1;
}

void tlsio_cleanup(struct tlsio *t)
{
    struct buf *out = t->out;
    size_t out_max = t->out_max;
    SSL_free(t->ssl); /* frees the BIO too */
    tlsio_recv_discard(t);
    buf_cleanup(&t->own_out);
    free(t->cache_key);
    free(t->reason);
    tlsio_init(t);
    t->out = out;
    t->out_max = out_max;
}

void tlsio_attach(struct tlsio *t, struct buf *out, size_t out_max)
{
    assert(t->ssl == NULL);
    t->out = out;
    t->out_max = out_max;
}

int tlsio_recv_room(struct tlsio *t, void **out_data, size_t *out_len, size_t want, size_t max)
{
    size_t used = t->rx_end - t->rx_start;
    if (want > max || used > max - want) {
        return -ENOBUFS;
    }
    if (t->rx_cap - t->rx_end < want) {
        if (t->rx_cap - used >= want) {
            memmove(t->rx, t->rx + t->rx_start, used);
        } else {
            char *rx = malloc(used + want);
            if (rx == NULL) {
                return -ENOMEM;
            }
            if (used > 0) {
                memcpy(rx, t->rx + t->rx_start, used);
            }
            free(t->rx);
            t->rx = rx;
            t->rx_cap = used + want;
        }
        t->rx_start = 0;
        t->rx_end = used;
    }
    *out_data = t->rx + t->rx_end;
    *out_len = t->rx_cap - t->rx_end;
    return 0;
}

void tlsio_recv_commit(struct tlsio *t, size_t len)
{
    assert(len <= t->rx_cap - t->rx_end);
    /* A receive that filled its room says the peer streams: the next one reuses it. */
    t->rx_keep = len > 0 && len == t->rx_cap - t->rx_end;
    t->rx_end += len;
}

size_t tlsio_recv_pending(const struct tlsio *t)
{
    return t->rx_end - t->rx_start;
}

void tlsio_recv_discard(struct tlsio *t)
{
    free(t->rx);
    t->rx = NULL;
    t->rx_start = 0;
    t->rx_end = 0;
    t->rx_cap = 0;
    t->rx_keep = false;
}

void tlsio_recv_idle(struct tlsio *t)
{
    t->rx_keep = false;
    if (t->rx_start == t->rx_end) {
        tlsio_recv_discard(t);
    }
}

size_t tlsio_read_bound(const struct tlsio *t)
{
    size_t bound = t->rx_end - t->rx_start;
    if (t->ssl != NULL && SSL_has_pending(t->ssl)) {
        bound += TLSIO_BIO_SIZE; /* one record, part ciphertext or all plaintext */
    }
    return bound;
}

static void tlsio_on_info(const SSL *ssl, int where, int value)
{
    struct tlsio *t = SSL_get_app_data(ssl);
    /* Only fatal alerts end a connection; BoringSSL skips warnings (and close_notify). */
    if ((where & SSL_CB_ALERT) == 0 || (value >> 8) != SSL3_AL_FATAL) {
        return;
    }
    int *slot = (where & SSL_CB_READ) != 0 ? &t->alert_received : &t->alert_sent;
    if (*slot < 0) {
        *slot = value & 0xff;
    }
}

/* Records the first problem of the chain check; |ok| stays BoringSSL's verdict. */
static int tlsio_on_verify(int ok, X509_STORE_CTX *store)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct tlsio *t = SSL_get_app_data(ssl);
    if (!ok && t->verify_error == 0) {
        t->verify_error = X509_STORE_CTX_get_error(store);
    }
    return ok;
}

/* tlsio_start makes the SSL and its BIO over |t|'s buffers, for both sides. */
static int tlsio_start(struct tlsio *t, struct tlsio_ctx *ctx)
{
    assert(t->ssl == NULL);
    if (pthread_once(&tlsio_bio_once, tlsio_bio_init) != 0 || tlsio_bio_method == NULL) {
        return -ENOMEM;
    }
    SSL *ssl = SSL_new(ctx->ssl_ctx);
    BIO *bio = BIO_new(tlsio_bio_method);
    if (ssl == NULL || bio == NULL) {
        SSL_free(ssl);
        BIO_free(bio);
        ERR_clear_error();
        return -ENOMEM;
    }
    BIO_set_data(bio, t);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio); /* one reference for both directions */
    SSL_set_app_data(ssl, t);
    SSL_set_info_callback(ssl, tlsio_on_info);
    /* The handshake's configuration (certificates, verify parameters) is not needed once
     * it is done: an idle connection keeps only its keys and its session. */
    SSL_set_shed_handshake_config(ssl, 1);
    t->ssl = ssl;
    return 0;
}

int tlsio_start_front(struct tlsio *t, struct tlsio_ctx *ctx)
{
    assert(ctx->front);
    int rc = tlsio_start(t, ctx);
    if (rc == 0) {
        SSL_set_accept_state(t->ssl);
    }
    return rc;
}

/*
 * tlsio_offer_session sets the key |t|'s sessions are kept under and offers the newest of
 * them. The key holds everything a session depends on: the upstream's address, the name
 * verified and sent as SNI, and the attempt (a session of a fallback step is never offered
 * on a first attempt, nor one that skipped verification where it is required).
 */
static int tlsio_offer_session(struct tlsio *t, struct tlsio_resume_cache *cache,
                               const struct tlsio_back_options *options)
{
    char key[TLSIO_RESUME_KEY_MAX];
    int n =
        snprintf(key, sizeof(key), "%s %s %s%s%s", options->address,
                 options->name != NULL ? options->name : "-", options->no_client_cert ? "n" : "c",
                 options->max_tls12 ? "2" : "3", options->verify_soft ? "s" : "h");
    if (n < 0 || (size_t)n >= sizeof(key)) {
        return 0; /* no resumption for this one */
    }
    t->cache_key = strdup(key);
    if (t->cache_key == NULL) {
        return -ENOMEM;
    }
    SSL_SESSION *session = tlsio_resume_take(cache, key);
    if (session != NULL) {
        int ok = SSL_set_session(t->ssl, session); /* takes its own reference */
        SSL_SESSION_free(session);
        if (!ok) {
            return -ENOMEM;
        }
    }
    return 0;
}

int tlsio_start_back(struct tlsio *t, struct tlsio_ctx *ctx,
                     const struct tlsio_back_options *options)
{
    assert(!ctx->front);
    int rc = tlsio_start(t, ctx);
    if (rc != 0) {
        return rc;
    }
    SSL *ssl = t->ssl;
    SSL_set_connect_state(ssl);
    if (options->no_client_cert) {
        SSL_certs_clear(ssl);
    }
    if (options->max_tls12 && !SSL_set_max_proto_version(ssl, TLS1_2_VERSION)) {
        rc = -ENOMEM;
    }
    const char *name = options->name;
    uint8_t ip[16];
    bool is_ip =
        name != NULL && (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1);
    /* SNI carries host names only (RFC 6066 section 3). */
    if (rc == 0 && name != NULL && !is_ip && !SSL_set_tlsext_host_name(ssl, name)) {
        rc = -EINVAL;
    }
    if (rc == 0 && ctx->verify) {
        t->verify = true;
        t->verify_hard = !options->verify_soft;
        SSL_set_verify(ssl, options->verify_soft ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
                       tlsio_on_verify);
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (name != NULL && !(is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, name)
                                    : X509_VERIFY_PARAM_set1_host(param, name, strlen(name)))) {
            rc = -EINVAL;
        }
    }
    if (rc == 0 && options->address != NULL && ctx->cache != NULL) {
        rc = tlsio_offer_session(t, ctx->cache, options);
    }
    if (rc != 0) {
        ERR_clear_error();
        tlsio_cleanup(t);
    }
    return rc;
}

int tlsio_feed(struct tlsio *t, size_t *out_len, const void *data, size_t len)
{
    *out_len = 0;
    if (t->eof) {
        return -EPIPE;
    }
    size_t used = t->rx_end - t->rx_start;
    size_t n = tlsio_min(used < TLSIO_BIO_SIZE ? TLSIO_BIO_SIZE - used : 0, len);
    if (n > 0) {
        void *room = NULL;
        size_t room_len = 0;
        int rc = tlsio_recv_room(t, &room, &room_len, n, TLSIO_BIO_SIZE);
        if (rc != 0) {
            return rc;
        }
        memcpy(room, data, n);
        tlsio_recv_commit(t, n);
    }
    *out_len = n;
    return 0;
}

void tlsio_feed_eof(struct tlsio *t)
{
    t->eof = true;
}

__attribute__((format(printf, 3, 4))) static enum tlsio_result
tlsio_fail(struct tlsio *t, enum tlsio_failure failure, const char *fmt, ...)
{
    if (t->reason == NULL) {
        t->reason = malloc(TLSIO_REASON_MAX); /* NULL: the log says "" */
    }
    if (t->reason != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->reason, TLSIO_REASON_MAX, fmt, ap);
        va_end(ap);
    }
    t->failure = failure;
    ERR_clear_error();
    /* Whatever made the connection fail may be in the sessions we keep for it (a server
     * that resumes badly): the next connection starts afresh. A close after a complete
     * handshake is no fault of the session. */
    struct tlsio_resume_cache *cache = tlsio_cache(t);
    if (cache != NULL && (SSL_in_init(t->ssl) || failure != TLSIO_FAILURE_EOF)) {
        tlsio_resume_forget(cache, t->cache_key);
    }
    return TLSIO_FAILED;
}

/* tlsio_outcome turns a call's return value |rc| <= 0 into a result, per SSL_get_error. */
static enum tlsio_result tlsio_outcome(struct tlsio *t, int rc, bool in_handshake)
{
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        return TLSIO_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLSIO_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        if (in_handshake) {
            return tlsio_fail(t, TLSIO_FAILURE_EOF, "peer sent close_notify during the handshake");
        }
        return TLSIO_CLOSED;
    case SSL_ERROR_SYSCALL:
        /* With a BIO pair, a bare SYSCALL error is the end of the fed ciphertext. */
        if (ERR_peek_error() == 0) {
            return tlsio_fail(t, TLSIO_FAILURE_EOF, "%s",
                              in_handshake ? "peer closed the connection during the handshake"
                                           : "peer closed the connection without close_notify");
        }
        break;
    default:
        break;
    }
    if (t->alert_received >= 0) {
        return tlsio_fail(t, TLSIO_FAILURE_ALERT, "received alert: %s",
                          SSL_alert_desc_string_long(t->alert_received));
    }
    if (t->verify_error != 0 && t->verify_hard) {
        return tlsio_fail(t, TLSIO_FAILURE_VERIFY, "certificate verify failed: %s",
                          X509_verify_cert_error_string(t->verify_error));
    }
    uint32_t e = ERR_get_error();
    const char *why = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (t->alert_sent >= 0) {
        return tlsio_fail(t, TLSIO_FAILURE_PROTOCOL, "%s, sent alert: %s",
                          why != NULL ? why : "error", SSL_alert_desc_string_long(t->alert_sent));
    }
    return tlsio_fail(t, TLSIO_FAILURE_PROTOCOL, "%s", why != NULL ? why : "unknown TLS error");
}

enum tlsio_result tlsio_handshake(struct tlsio *t)
{
    if (t->failure != TLSIO_FAILURE_NONE) {
        return TLSIO_FAILED;
    }
    ERR_clear_error();
    int rc = SSL_do_handshake(t->ssl);
    if (rc != 1) {
        return tlsio_outcome(t, rc, true);
    }
    /* verify_soft went on with a certificate that failed: sessions kept from when it
     * passed are not offered again, since a resumed session is not verified. */
    struct tlsio_resume_cache *cache = tlsio_cache(t);
    if (cache != NULL && t->verify_error != 0) {
        tlsio_resume_forget(cache, t->cache_key);
    }
    return TLSIO_OK;
}

enum tlsio_result tlsio_read(struct tlsio *t, size_t *out_len, void *data, size_t len)
{
    *out_len = 0;
    if (t->failure != TLSIO_FAILURE_NONE) {
        return TLSIO_FAILED;
    }
    assert(!SSL_in_init(t->ssl));
    ERR_clear_error();
    int n = SSL_read(t->ssl, data, (int)tlsio_min(len, INT_MAX));
    if (n > 0) {
        *out_len = (size_t)n;
        return TLSIO_OK;
    }
    return tlsio_outcome(t, n, false);
}

enum tlsio_result tlsio_write(struct tlsio *t, size_t *out_len, const void *data, size_t len)
{
    *out_len = 0;
    /* A peer that closed its side without close_notify (a TCP half-close after its last
     * command) may still read what we owe it. */
    if (t->failure != TLSIO_FAILURE_NONE &&
        !(t->failure == TLSIO_FAILURE_EOF && !SSL_in_init(t->ssl))) {
        return TLSIO_FAILED;
    }
    assert(!SSL_in_init(t->ssl));
    const uint8_t *bytes = data;
    while (*out_len < len) {
        /* Seal only what the BIO can take, so SSL_write never holds a record back; if it
         * does anyway (a pending post-handshake message), it must be offered again. */
        size_t chunk = t->write_retry_len;
        if (chunk == 0) {
            size_t used = buf_len(tlsio_out(t));
            size_t room = used < t->out_max ? t->out_max - used : 0;
            size_t overhead = SSL_max_seal_overhead(t->ssl);
            if (room <= overhead) {
                break;
            }
            chunk = tlsio_min(tlsio_min(len - *out_len, room - overhead), TLSIO_RECORD_MAX);
        }
        assert(chunk <= len - *out_len);
        ERR_clear_error();
        int n = SSL_write(t->ssl, bytes + *out_len, (int)chunk);
        if (n > 0) {
            t->write_retry_len = 0;
            *out_len += (size_t)n;
            continue;
        }
        enum tlsio_result r = tlsio_outcome(t, n, false);
        if (r == TLSIO_WANT_WRITE) {
            t->write_retry_len = chunk;
            break;
        }
        if (r == TLSIO_FAILED) {
            return r;
        }
        return tlsio_fail(t, TLSIO_FAILURE_PROTOCOL, "SSL_write: unexpected result %d", r);
    }
    return *out_len > 0 || len == 0 ? TLSIO_OK : TLSIO_WANT_WRITE;
}

size_t tlsio_sealed_max(const struct tlsio *t, size_t len)
{
    return len + (len / TLSIO_RECORD_MAX + 1) * SSL_max_seal_overhead(t->ssl);
}

size_t tlsio_pending_out(const struct tlsio *t)
{
    return buf_len(tlsio_out_const(t));
}

void tlsio_take_out(struct tlsio *t, size_t *out_len, void *data, size_t len)
{
    struct buf *out = tlsio_out(t);
    size_t n = tlsio_min(len, buf_len(out));
    if (n > 0) {
        memcpy(data, buf_head(out), n);
        buf_consume(out, n);
    }
    *out_len = n;
}

enum tlsio_result tlsio_shutdown(struct tlsio *t)
{
    if (t->failure != TLSIO_FAILURE_NONE &&
        !(t->failure == TLSIO_FAILURE_EOF && !SSL_in_init(t->ssl))) {
        return TLSIO_FAILED;
    }
    ERR_clear_error();
    int rc = SSL_shutdown(t->ssl);
    return rc >= 0 ? TLSIO_OK : tlsio_outcome(t, rc, false);
}

enum tlsio_failure tlsio_failure(const struct tlsio *t)
{
    return t->failure;
}

const char *tlsio_reason(const struct tlsio *t)
{
    return t->reason != NULL ? t->reason : "";
}

const char *tlsio_version(const struct tlsio *t)
{
    return t->ssl != NULL && !SSL_in_init(t->ssl) ? SSL_get_version(t->ssl) : "";
}

const char *tlsio_cipher(const struct tlsio *t)
{
    const SSL_CIPHER *cipher =
        t->ssl != NULL && !SSL_in_init(t->ssl) ? SSL_get_current_cipher(t->ssl) : NULL;
    return cipher != NULL ? SSL_CIPHER_get_name(cipher) : "";
}

enum tlsio_verify tlsio_verify_result(const struct tlsio *t, const char **out_text)
{
    const char *unused;
    if (out_text == NULL) {
        out_text = &unused;
    }
    *out_text = "";
    if (!t->verify || t->ssl == NULL) {
        return TLSIO_VERIFY_NOT_CHECKED;
    }
    if (t->verify_error == 0) {
        return SSL_in_init(t->ssl) ? TLSIO_VERIFY_NOT_CHECKED : TLSIO_VERIFY_OK;
    }
    *out_text = X509_verify_cert_error_string(t->verify_error);
    switch (t->verify_error) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        return TLSIO_VERIFY_HOST_MISMATCH;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return TLSIO_VERIFY_EXPIRED;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
        return TLSIO_VERIFY_NOT_TRUSTED;
    default:
        return TLSIO_VERIFY_FAILED;
    }
}

bool tlsio_peer_fingerprint(const struct tlsio *t, char *out, size_t out_size)
{
    if (t->ssl == NULL || out_size < 2 * SHA256_DIGEST_LENGTH + sizeof("sha256:")) {
        return false;
    }
    uint8_t digest[SHA256_DIGEST_LENGTH];
    const SSL_SESSION *session = SSL_get_session(t->ssl);
    const STACK_OF(CRYPTO_BUFFER) *chain = SSL_get0_peer_certificates(t->ssl);
    if (session != NULL && SSL_SESSION_has_peer_sha256(session)) {
        const uint8_t *hash = NULL;
        size_t hash_len = 0;
        SSL_SESSION_get0_peer_sha256(session, &hash, &hash_len);
        if (hash_len != sizeof(digest)) {
            return false;
        }
        memcpy(digest, hash, sizeof(digest));
    } else if (chain != NULL && sk_CRYPTO_BUFFER_num(chain) > 0) {
        const CRYPTO_BUFFER *leaf = sk_CRYPTO_BUFFER_value(chain, 0);
        SHA256(CRYPTO_BUFFER_data(leaf), CRYPTO_BUFFER_len(leaf), digest);
    } else {
        return false;
    }
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "sha256:", 7);
    for (size_t i = 0; i < sizeof(digest); i++) {
        out[7 + 2 * i] = hex[digest[i] >> 4];
        out[8 + 2 * i] = hex[digest[i] & 15];
    }
    out[7 + 2 * sizeof(digest)] = '\0';
    return true;
}

bool tlsio_resumed(const struct tlsio *t)
{
    return t->ssl != NULL && !SSL_in_init(t->ssl) && SSL_session_reused(t->ssl);
}

int tlsio_protocol(const struct tlsio *t)
{
    if (t->ssl == NULL || !SSL_is_init_finished(t->ssl)) {
        return 0;
    }
    return SSL_version(t->ssl);
}

size_t tlsio_peer_chain(const struct tlsio *t, const uint8_t **der, size_t *len, size_t max)
{
    const STACK_OF(CRYPTO_BUFFER) *chain =
        t->ssl != NULL ? SSL_get0_peer_certificates(t->ssl) : NULL;
    size_t n = chain != NULL ? sk_CRYPTO_BUFFER_num(chain) : 0;
    if (n > max) {
        n = max;
    }
    for (size_t i = 0; i < n; i++) {
        const CRYPTO_BUFFER *b = sk_CRYPTO_BUFFER_value(chain, i);
        der[i] = CRYPTO_BUFFER_data(b);
        len[i] = CRYPTO_BUFFER_len(b);
    }
    return n;
}

bool tlsio_peer_webpki(const struct tlsio *t, const struct tlsio_ctx *webpki, const char **out_why)
{
    *out_why = "no certificate";
    STACK_OF(X509) *chain = t->ssl != NULL ? SSL_get_peer_full_cert_chain(t->ssl) : NULL;
    if (chain == NULL || sk_X509_num(chain) == 0) {
        return false;
    }
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (ctx == NULL ||
        !X509_STORE_CTX_init(ctx, SSL_CTX_get_cert_store(webpki->ssl_ctx), sk_X509_value(chain, 0),
                             chain) ||
        !X509_STORE_CTX_set_default(ctx, "ssl_server")) {
        X509_STORE_CTX_free(ctx);
        *out_why = "out of memory";
        ERR_clear_error();
        return false;
    }
    bool ok = X509_verify_cert(ctx) == 1;
    if (!ok) {
        *out_why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
    }
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

size_t tlsio_peer_dns_names(const struct tlsio *t, char (*out)[TLSIO_DNS_NAME_MAX], size_t max)
{
    STACK_OF(X509) *chain = t->ssl != NULL ? SSL_get_peer_full_cert_chain(t->ssl) : NULL;
    if (chain == NULL || sk_X509_num(chain) == 0) {
        return 0;
    }
    GENERAL_NAMES *names =
        X509_get_ext_d2i(sk_X509_value(chain, 0), NID_subject_alt_name, NULL, NULL);
    size_t n = 0;
    for (size_t i = 0; names != NULL && i < sk_GENERAL_NAME_num(names) && n < max; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_DNS) {
            continue;
        }
        const unsigned char *data = ASN1_STRING_get0_data(g->d.dNSName);
        size_t len = (size_t)ASN1_STRING_length(g->d.dNSName);
        if (len == 0 || len >= TLSIO_DNS_NAME_MAX || memchr(data, '\0', len) != NULL) {
            continue;
        }
        for (size_t j = 0; j < len; j++) {
            unsigned char c = data[j];
            out[n][j] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        }
        out[n][len] = '\0';
        n++;
    }
    GENERAL_NAMES_free(names);
    ERR_clear_error();
    return n;
}
