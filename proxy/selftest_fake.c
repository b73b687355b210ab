/*
 * selftest_fake: scripted SMTP upstreams for `--self-test`, one thread each, blocking
 * sockets and BoringSSL on the server side. The failures are played where a real server
 * would fail: the ClientHello is read by BoringSSL, which tells the fake the highest
 * version offered before the fake answers it with an alert, silence or a close.
 *
 * Hand-written because no Debian package offers an in-process fake SMTP/TLS server in C;
 * it has to run inside the proxy's own process, without touching the network.
 */
#include "selftest_fake.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* How long a fake waits for the proxy before it gives up on a connection: far longer than
 * the self-test's tls_handshake, so that the proxy's timeout always comes first. */
#define SELFTEST_FAKE_IDLE_S 15
/* How long a closing fake keeps reading, so that its last bytes are not lost to a reset. */
#define SELFTEST_FAKE_LINGER_S 2
#define SELFTEST_FAKE_LINE_MAX 1024
#define SELFTEST_FAKE_NAME "selftest.invalid"

struct selftest_fake {
    SSL_CTX *ctx;
    enum selftest_failure failure;
    char name[CONF_HOST_MAX + 1];
    int listen_fd;
    uint16_t port;
    pthread_t thread;
    atomic_bool stop;
    struct selftest_conn conns[SELFTEST_CONNS_MAX];
    size_t n_conns;
    size_t n_seen;
};

/* One connection being served: its socket, its TLS once started, unread input. */
struct selftest_fake_conn {
    struct selftest_fake *fake;
    struct selftest_conn *rec;
    int fd;
    SSL *ssl;
    char in[SELFTEST_FAKE_LINE_MAX * 2];
    size_t in_len;
};

/* ---- TLS -------------------------------------------------------------------------------- */

/* selftest_fake_offered_max reads the highest version a ClientHello offers: from
 * supported_versions (RFC 8446 section 4.2.1, GREASE values skipped) when present. */
static uint16_t selftest_fake_offered_max(const SSL_CLIENT_HELLO *hello)
{
    const uint8_t *data = NULL;
    size_t len = 0;
    if (!SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_supported_versions, &data, &len) ||
        len < 1) {
        return hello->version;
    }
    /* A one-byte length, then two bytes per version. */
    size_t list_len = len - 1 < (size_t)data[0] ? len - 1 : (size_t)data[0];
    const uint8_t *list = data + 1;
    uint16_t best = 0;
    for (size_t i = 0; i + 2 <= list_len; i += 2) {
        uint16_t v = (uint16_t)(list[i] << 8 | list[i + 1]);
        if ((v & 0x0f0f) != 0x0a0a && v > best && v <= TLS1_3_VERSION) {
            best = v;
        }
    }
    return best;
}

static enum ssl_select_cert_result_t selftest_fake_on_hello(const SSL_CLIENT_HELLO *hello)
{
    struct selftest_fake_conn *c = SSL_get_app_data(hello->ssl);
    c->rec->offered_max = selftest_fake_offered_max(hello);
    switch (c->fake->failure) {
    case SELFTEST_ALERT:
        return ssl_select_cert_error; /* BoringSSL answers with a handshake_failure alert */
    case SELFTEST_EOF_AFTER_220:
    case SELFTEST_HANDSHAKE_TIMEOUT:
        return ssl_select_cert_retry; /* the handshake stops here: the fake decides */
    default:
        return ssl_select_cert_success;
    }
}

/* Every fake asks for a client certificate, so that it sees whether one was presented. */
static enum ssl_verify_result_t selftest_fake_on_cert(SSL *ssl, uint8_t *out_alert)
{
    struct selftest_fake_conn *c = SSL_get_app_data(ssl);
    c->rec->cert = SELFTEST_CERT_PRESENTED;
    if (c->fake->failure == SELFTEST_CLIENT_CERT_REJECTED) {
        *out_alert = SSL_AD_BAD_CERTIFICATE;
        return ssl_verify_invalid;
    }
    return ssl_verify_ok;
}

/* selftest_fake_self_signed makes a P-256 key and a self-signed certificate for |host|. */
static bool selftest_fake_self_signed(EVP_PKEY **out_key, X509 **out_cert, const char *host)
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY *key = EVP_PKEY_new();
    X509 *x = X509_new();
    uint8_t serial[16];
    bool ok = ec != NULL && key != NULL && x != NULL && EC_KEY_generate_key(ec) &&
              EVP_PKEY_assign_EC_KEY(key, ec);
    if (!ok) {
        EC_KEY_free(ec); /* not owned by |key| yet */
    }
    ok = ok && RAND_bytes(serial, sizeof(serial));
    serial[0] &= 0x7f;
    BIGNUM *bn = ok ? BN_bin2bn(serial, sizeof(serial), NULL) : NULL;
    X509_NAME *name = x != NULL ? X509_get_subject_name(x) : NULL;
    ok = ok && bn != NULL && X509_set_version(x, X509_VERSION_3) &&
         BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
         X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL &&
         X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600) != NULL && X509_set_pubkey(x, key) &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)host, -1, -1, 0) &&
         X509_set_issuer_name(x, name) && X509_sign(x, key, EVP_sha256()) > 0;
    BN_free(bn);
    if (!ok) {
        EVP_PKEY_free(key);
        X509_free(x);
        return false;
    }
    *out_key = key;
    *out_cert = x;
    return true;
}

struct ssl_ctx_st *selftest_fake_ctx_new(char *out_err, size_t out_err_len)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    bool ok = ctx != NULL && SSL_CTX_set_min_proto_version(ctx, TLS1_VERSION) &&
              SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
              selftest_fake_self_signed(&key, &cert, SELFTEST_FAKE_NAME) &&
              SSL_CTX_use_certificate(ctx, cert) && SSL_CTX_use_PrivateKey(ctx, key);
    EVP_PKEY_free(key);
    X509_free(cert);
    if (!ok) {
        char reason[128];
        ERR_error_string_n(ERR_get_error(), reason, sizeof(reason));
        snprintf(out_err, out_err_len, "fake upstreams' TLS context: %s", reason);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_select_certificate_cb(ctx, selftest_fake_on_hello);
    return ctx;
}

void selftest_fake_ctx_free(struct ssl_ctx_st *ctx)
{
    SSL_CTX_free(ctx);
}

/* ---- bytes and lines --------------------------------------------------------------------- */

static bool selftest_fake_send(struct selftest_fake_conn *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n;
        if (c->ssl != NULL) {
            int w = SSL_write(c->ssl, data, len > INT32_MAX ? INT32_MAX : (int)len);
            n = w > 0 ? w : -1;
        } else {
            n = send(c->fd, data, len, MSG_NOSIGNAL);
        }
        if (n <= 0) {
            if (n == -1 && errno == EINTR && c->ssl == NULL) {
                continue;
            }
            return false;
        }
        data += n;
        len -= (size_t)n;
    }
    return true;
}

__attribute__((format(printf, 2, 3))) static bool selftest_fake_reply(struct selftest_fake_conn *c,
                                                                      const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(text)) {
        return false;
    }
    return selftest_fake_send(c, text, (size_t)n);
}

/* selftest_fake_line reads one line (CRLF or LF removed) into |out|. Returns false at the
 * end of the connection, on an error, a timeout, or a line longer than |out|. */
static bool selftest_fake_line(struct selftest_fake_conn *c, char *out, size_t out_size)
{
    for (;;) {
        char *lf = memchr(c->in, '\n', c->in_len);
        if (lf != NULL) {
            size_t len = (size_t)(lf - c->in);
            size_t used = len + 1;
            if (len > 0 && c->in[len - 1] == '\r') {
                len--;
            }
            if (len >= out_size) {
                return false;
            }
            memcpy(out, c->in, len);
            out[len] = '\0';
            memmove(c->in, c->in + used, c->in_len - used);
            c->in_len -= used;
            return true;
        }
        if (c->in_len == sizeof(c->in)) {
            return false;
        }
        ssize_t n;
        if (c->ssl != NULL) {
            int r = SSL_read(c->ssl, c->in + c->in_len, (int)(sizeof(c->in) - c->in_len));
            n = r > 0 ? r : -1;
        } else {
            n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
            if (n == -1 && errno == EINTR) {
                continue;
            }
        }
        if (n <= 0) {
            return false;
        }
        c->in_len += (size_t)n;
    }
}

static void selftest_fake_timeout(int fd, int seconds)
{
    struct timeval tv = {.tv_sec = seconds};
    /* Cannot fail on a valid socket; without them only the proxy's timeouts would end it. */
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* selftest_fake_drain reads and drops until the proxy closes its side (or |seconds|). */
static void selftest_fake_drain(int fd, int seconds)
{
    char scratch[4096];
    selftest_fake_timeout(fd, seconds);
    while (recv(fd, scratch, sizeof(scratch), 0) > 0) {
    }
}

/* ---- SMTP --------------------------------------------------------------------------------- */

/*
 * selftest_fake_starttls runs the server side of the handshake after the 220 and plays the
 * failure. Returns true when the connection goes on inside TLS.
 */
static bool selftest_fake_starttls(struct selftest_fake_conn *c)
{
    /* Whatever came after the STARTTLS line was not protected by TLS (RFC 3207 section 6). */
    c->in_len = 0;
    SSL *ssl = SSL_new(c->fake->ctx);
    if (ssl == NULL || !SSL_set_fd(ssl, c->fd)) {
        SSL_free(ssl);
        return false;
    }
    SSL_set_app_data(ssl, c);
    SSL_set_custom_verify(ssl, SSL_VERIFY_PEER, selftest_fake_on_cert);
    ERR_clear_error();
    int rc = SSL_accept(ssl);
    if (rc == 1) {
        snprintf(c->rec->tls_version, sizeof(c->rec->tls_version), "%s", SSL_get_version(ssl));
        if (c->rec->cert == SELFTEST_CERT_UNKNOWN) {
            c->rec->cert = SELFTEST_CERT_NONE; /* asked for one, got an empty message */
        }
        c->ssl = ssl;
        return true;
    }
    if (SSL_get_error(ssl, rc) == SSL_ERROR_PENDING_CERTIFICATE &&
        c->fake->failure == SELFTEST_HANDSHAKE_TIMEOUT) {
        /* The ClientHello is read; say nothing until the proxy gives up and closes. */
        selftest_fake_drain(c->fd, SELFTEST_FAKE_IDLE_S);
    }
    SSL_free(ssl);
    return false;
}

/* selftest_fake_ehlo answers EHLO: STARTTLS offered in cleartext unless the fake has none;
 * inside TLS the post-tls-403 fake refuses it the way Microsoft's servers do. */
static bool selftest_fake_ehlo(struct selftest_fake_conn *c)
{
    if (c->ssl != NULL && c->fake->failure == SELFTEST_POST_TLS_403) {
        return selftest_fake_reply(c, "403 4.7.0 TLS handshake failed\r\n");
    }
    bool offer = c->ssl == NULL && c->fake->failure != SELFTEST_NO_STARTTLS;
    return selftest_fake_reply(c, "250-%s\r\n250-8BITMIME\r\n%s250 ENHANCEDSTATUSCODES\r\n",
                               c->fake->name, offer ? "250-STARTTLS\r\n" : "");
}

static void selftest_fake_envelope(struct selftest_fake_conn *c)
{
    if (c->ssl != NULL) {
        c->rec->envelope_tls = true;
    } else {
        c->rec->envelope_clear = true;
    }
}

/* selftest_fake_data reads the message up to its end-of-data line and accepts it. */
static bool selftest_fake_data(struct selftest_fake_conn *c)
{
    selftest_fake_envelope(c);
    if (!selftest_fake_reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n")) {
        return false;
    }
    char line[SELFTEST_FAKE_LINE_MAX];
    for (;;) {
        if (!selftest_fake_line(c, line, sizeof(line))) {
            return false;
        }
        if (strcmp(line, ".") == 0) {
            break;
        }
    }
    c->rec->message = true;
    c->rec->message_tls = c->ssl != NULL;
    return selftest_fake_reply(c, "250 2.0.0 Ok: queued by the self-test\r\n");
}

static bool selftest_fake_verb(const char *line, const char *verb)
{
    size_t len = strlen(verb);
    return strncasecmp(line, verb, len) == 0 && (line[len] == '\0' || line[len] == ' ');
}

/* selftest_fake_command answers one command line; false ends the connection. */
static bool selftest_fake_command(struct selftest_fake_conn *c, const char *line)
{
    struct selftest_conn *rec = c->rec;
    if (selftest_fake_verb(line, "EHLO")) {
        return selftest_fake_ehlo(c);
    }
    if (selftest_fake_verb(line, "HELO")) {
        return selftest_fake_reply(c, "250 %s\r\n", c->fake->name);
    }
    if (selftest_fake_verb(line, "STARTTLS")) {
        rec->starttls = true;
        if (c->ssl != NULL) {
            return selftest_fake_reply(c, "503 5.5.1 TLS already active\r\n");
        }
        switch (c->fake->failure) {
        case SELFTEST_NO_STARTTLS:
            rec->starttls_reply = 502;
            return selftest_fake_reply(c, "502 5.5.1 STARTTLS not offered\r\n");
        case SELFTEST_REFUSE_454:
            rec->starttls_reply = 454;
            return selftest_fake_reply(c,
                                       "454 4.7.0 TLS not available due to temporary reason\r\n");
        default:
            rec->starttls_reply = 220;
            return selftest_fake_reply(c, "220 2.0.0 Ready to start TLS\r\n") &&
                   selftest_fake_starttls(c);
        }
    }
    if (selftest_fake_verb(line, "MAIL") || selftest_fake_verb(line, "RCPT")) {
        selftest_fake_envelope(c);
        return selftest_fake_reply(c, "250 2.1.0 Ok\r\n");
    }
    if (selftest_fake_verb(line, "DATA")) {
        return selftest_fake_data(c);
    }
    if (selftest_fake_verb(line, "RSET") || selftest_fake_verb(line, "NOOP")) {
        return selftest_fake_reply(c, "250 2.0.0 Ok\r\n");
    }
    if (selftest_fake_verb(line, "QUIT")) {
        selftest_fake_reply(c, "221 2.0.0 Bye\r\n");
        return false;
    }
    return selftest_fake_reply(c, "502 5.5.2 Command not recognized\r\n");
}

static void selftest_fake_serve(struct selftest_fake *f, int fd, struct selftest_conn *rec)
{
    struct selftest_fake_conn c = {.fake = f, .rec = rec, .fd = fd};
    selftest_fake_timeout(fd, SELFTEST_FAKE_IDLE_S);
    char line[SELFTEST_FAKE_LINE_MAX];
    if (selftest_fake_reply(&c, "220 %s ESMTP smtp-tls-proxy self-test fake (%s)\r\n", f->name,
                            selftest_failure_name(f->failure))) {
        while (selftest_fake_line(&c, line, sizeof(line)) && selftest_fake_command(&c, line)) {
        }
    }
    if (c.ssl != NULL) {
        SSL_shutdown(c.ssl);
        SSL_free(c.ssl);
    }
    /* Close our side, then read until the proxy closes its own, so that an alert or a
     * reply it has not read yet is never lost to a reset. */
    shutdown(fd, SHUT_WR);
    selftest_fake_drain(fd, SELFTEST_FAKE_LINGER_S);
    close(fd);
}

static void *selftest_fake_main(void *arg)
{
    struct selftest_fake *f = arg;
    while (!atomic_load(&f->stop)) {
        struct pollfd p = {.fd = f->listen_fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) {
            continue;
        }
        int fd = accept4(f->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd == -1) {
            continue;
        }
        struct selftest_conn scratch;
        struct selftest_conn *rec =
            f->n_conns < SELFTEST_CONNS_MAX ? &f->conns[f->n_conns++] : &scratch;
        memset(rec, 0, sizeof(*rec));
        f->n_seen++;
        selftest_fake_serve(f, fd, rec);
    }
    return NULL;
}

struct selftest_fake *selftest_fake_start(char *out_err, size_t out_err_len, struct ssl_ctx_st *ctx,
                                          enum selftest_failure failure, const char *name)
{
    struct selftest_fake *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        snprintf(out_err, out_err_len, "out of memory");
        return NULL;
    }
    f->ctx = ctx;
    f->failure = failure;
    snprintf(f->name, sizeof(f->name), "%s", name);
    atomic_init(&f->stop, false);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    f->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (f->listen_fd == -1 || bind(f->listen_fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
        listen(f->listen_fd, 16) == -1 ||
        getsockname(f->listen_fd, (struct sockaddr *)&sin, &len) == -1) {
        snprintf(out_err, out_err_len, "fake upstream: cannot listen on 127.0.0.1: %s",
                 strerror(errno));
        goto fail;
    }
    f->port = ntohs(sin.sin_port);
    int rc = pthread_create(&f->thread, NULL, selftest_fake_main, f);
    if (rc != 0) {
        snprintf(out_err, out_err_len, "fake upstream: cannot start a thread: %s", strerror(rc));
        goto fail;
    }
    return f;
fail:
    if (f->listen_fd >= 0) {
        close(f->listen_fd);
    }
    free(f);
    return NULL;
}

uint16_t selftest_fake_port(const struct selftest_fake *f)
{
    return f->port;
}

void selftest_fake_stop(struct selftest_fake *f, struct selftest_cell *out)
{
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
    memcpy(out->conns, f->conns, sizeof(out->conns));
    out->n_conns = f->n_conns;
    out->n_conns_seen = f->n_seen;
    free(f);
}
