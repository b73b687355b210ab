/*
 * tlsio: TLS for one leg of a session, BoringSSL over a pair of bounded memory BIOs.
 *
 * Builds the shared contexts (front: server certificates, possibly self-signed; back:
 * client certificate and verification) and runs one SSL per connection. It never does
 * I/O and never logs: failures are returned as text naming the file and BoringSSL's reason.
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

#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pool.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* One certificate/key pair: the leaf, its chain (maybe empty) and the private key. */
struct tlsio_cert {
    X509 *leaf;
    EVP_PKEY *key;
    struct stack_st_X509 *chain; /* STACK_OF(X509), spelled out for clang-format */
};

/*
 * The SSL_CTX owns this struct through ex_data, so it lives exactly as long as the last
 * SSL made from it, even after main dropped its reference on reload.
 */
struct tlsio_ctx {
    SSL_CTX *ssl_ctx;
    bool front;
    bool verify;
    struct tlsio_cert certs[CONF_CERT_MAX];
    size_t n_certs;
};

/* A plaintext record carries at most 2^14 bytes (RFC 8446 section 5.1). */
#define TLSIO_RECORD_MAX 16384

static int tlsio_ex_index = -1;
static pthread_once_t tlsio_ex_once = PTHREAD_ONCE_INIT;

static size_t tlsio_min(size_t a, size_t b)
{
    return a < b ? a : b;
}

/*
 * tlsio_errf writes the formatted prefix and the reason of the oldest queued BoringSSL
 * error (the root cause: "NO_START_LINE", "No such file or directory") into |out|, then
 * clears the queue.
 */
__attribute__((format(printf, 3, 4))) static void tlsio_errf(char *out, size_t out_len,
                                                             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, out_len, fmt, ap);
    va_end(ap);
    uint32_t e = ERR_get_error();
    const char *why = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (n >= 0 && (size_t)n < out_len) {
        snprintf(out + n, out_len - (size_t)n, ": %s", why != NULL ? why : "unknown error");
    }
    ERR_clear_error();
}

static void tlsio_cert_cleanup(struct tlsio_cert *c)
{
    X509_free(c->leaf);
    sk_X509_pop_free(c->chain, X509_free);
    EVP_PKEY_free(c->key);
    memset(c, 0, sizeof(*c));
}

static void tlsio_ctx_on_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl,
                              void *argp)
{
    (void)parent;
    (void)ad;
    (void)index;
    (void)argl;
    (void)argp;
    struct tlsio_ctx *c = ptr;
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < c->n_certs; i++) {
        tlsio_cert_cleanup(&c->certs[i]);
    }
    free(c);
}

static void tlsio_ex_init(void)
{
    tlsio_ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tlsio_ctx_on_free);
}

/* tlsio_ctx_alloc makes an empty context whose SSL_CTX owns it. */
static struct tlsio_ctx *tlsio_ctx_alloc(char *out_err, size_t out_err_len, bool front)
{
    ERR_clear_error();
    if (pthread_once(&tlsio_ex_once, tlsio_ex_init) != 0 || tlsio_ex_index < 0) {
        tlsio_errf(out_err, out_err_len, "TLS context");
        return NULL;
    }
    struct tlsio_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(out_err, out_err_len, "TLS context: out of memory");
        return NULL;
    }
    c->front = front;
    c->ssl_ctx = SSL_CTX_new(TLS_method());
    if (c->ssl_ctx == NULL || !SSL_CTX_set_ex_data(c->ssl_ctx, tlsio_ex_index, c)) {
        tlsio_errf(out_err, out_err_len, "TLS context");
        SSL_CTX_free(c->ssl_ctx);
        free(c);
        return NULL;
    }
    /* The caller's output buffer may move between a WANT_WRITE and its retry. */
    SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return c;
}

struct tlsio_ctx *tlsio_ctx_ref(struct tlsio_ctx *ctx)
{
    SSL_CTX_up_ref(ctx->ssl_ctx);
    return ctx;
}

void tlsio_ctx_free(struct tlsio_ctx *ctx)
{
    if (ctx != NULL) {
        SSL_CTX_free(ctx->ssl_ctx); /* frees |ctx| with the last reference */
    }
}

/*
 * tlsio_load_pair reads a PEM certificate chain and its key. BoringSSL's own file readers
 * do the parsing (on a scratch SSL_CTX) so the errors are the library's.
 */
static int tlsio_load_pair(struct tlsio_cert *out, char *out_err, size_t out_err_len,
                           const char *cert_path, const char *key_path)
{
    ERR_clear_error();
    SSL_CTX *scratch = SSL_CTX_new(TLS_method());
    if (scratch == NULL) {
        tlsio_errf(out_err, out_err_len, "certificate %s", cert_path);
        return -ENOMEM;
    }
    int rc = -EINVAL;
    STACK_OF(X509) *chain = NULL;
    if (!SSL_CTX_use_certificate_chain_file(scratch, cert_path)) {
        tlsio_errf(out_err, out_err_len, "certificate %s", cert_path);
    } else if (!SSL_CTX_use_PrivateKey_file(scratch, key_path, SSL_FILETYPE_PEM)) {
        tlsio_errf(out_err, out_err_len, "key %s (for %s)", key_path, cert_path);
    } else if (!SSL_CTX_check_private_key(scratch)) {
        tlsio_errf(out_err, out_err_len, "key %s does not match certificate %s", key_path,
                   cert_path);
    } else if (!SSL_CTX_get0_chain_certs(scratch, &chain)) {
        tlsio_errf(out_err, out_err_len, "certificate %s", cert_path);
    } else {
        out->leaf = SSL_CTX_get0_certificate(scratch);
        out->key = SSL_CTX_get0_privatekey(scratch);
        X509_up_ref(out->leaf); /* both always succeed */
        EVP_PKEY_up_ref(out->key);
        out->chain = chain != NULL ? X509_chain_up_ref(chain) : sk_X509_new_null();
        if (out->chain != NULL) {
            rc = 0;
        } else {
            tlsio_cert_cleanup(out);
            snprintf(out_err, out_err_len, "certificate %s: out of memory", cert_path);
            rc = -ENOMEM;
        }
    }
    SSL_CTX_free(scratch);
    return rc;
}

/* tlsio_add_dns_san adds a subjectAltName extension holding one dNSName, |host|. */
static bool tlsio_add_dns_san(X509 *x, const char *host, bool critical)
{
    GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *dns = GENERAL_NAME_new();
    ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
    bool ok = names != NULL && dns != NULL && ia5 != NULL &&
              ASN1_STRING_set(ia5, host, (int)strlen(host)) && sk_GENERAL_NAME_push(names, dns);
    if (!ok) {
        ASN1_IA5STRING_free(ia5);
        GENERAL_NAME_free(dns);
        GENERAL_NAMES_free(names);
        return false;
    }
    GENERAL_NAME_set0_value(dns, GEN_DNS, ia5);
    ok = X509_add1_ext_i2d(x, NID_subject_alt_name, names, critical, X509V3_ADD_DEFAULT) == 1;
    GENERAL_NAMES_free(names);
    return ok;
}

/*
 * tlsio_fill_self_signed fills |x| for |host| and |key|: valid from an hour ago (clock
 * skew) for a year, with a random positive serial (RFC 5280 section 4.1.2.2).
 */
static bool tlsio_fill_self_signed(X509 *x, EVP_PKEY *key, const char *host)
{
    uint8_t serial[16];
    if (!RAND_bytes(serial, sizeof(serial))) {
        return false;
    }
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    bool ok = bn != NULL && X509_set_version(x, X509_VERSION_3) &&
              BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL &&
              X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600) != NULL &&
              X509_set_pubkey(x, key);
    BN_free(bn);
    /* A CN holds at most 64 characters (RFC 5280 appendix A); clients check the SAN, which
     * must be critical when the subject is empty (RFC 5280 section 4.2.1.6). */
    bool has_cn = strlen(host) <= 64;
    X509_NAME *name = X509_get_subject_name(x);
    return ok &&
           (!has_cn || X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)host,
                                                  -1, -1, 0)) &&
           X509_set_issuer_name(x, name) && tlsio_add_dns_san(x, host, !has_cn) &&
           X509_sign(x, key, EVP_sha256()) > 0;
}

/* tlsio_self_signed makes an ECDSA P-256 key and a self-signed certificate for |host|. */
static int tlsio_self_signed(struct tlsio_cert *out, char *out_err, size_t out_err_len,
                             const char *host)
{
    ERR_clear_error();
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    out->key = EVP_PKEY_new();
    out->leaf = X509_new();
    out->chain = sk_X509_new_null();
    bool ok = ec != NULL && out->key != NULL && out->leaf != NULL && out->chain != NULL &&
              EC_KEY_generate_key(ec) && EVP_PKEY_assign_EC_KEY(out->key, ec);
    if (!ok) {
        EC_KEY_free(ec); /* not yet owned by out->key */
    }
    if (ok && tlsio_fill_self_signed(out->leaf, out->key, host)) {
        return 0;
    }
    tlsio_errf(out_err, out_err_len, "self-signed certificate for %s", host);
    tlsio_cert_cleanup(out);
    return -ENOMEM;
}

/* tlsio_use_cert makes |cert| the context's default certificate. */
static bool tlsio_use_cert(SSL_CTX *ssl_ctx, const struct tlsio_cert *cert)
{
    return SSL_CTX_use_certificate(ssl_ctx, cert->leaf) &&
           SSL_CTX_use_PrivateKey(ssl_ctx, cert->key) && SSL_CTX_set1_chain(ssl_ctx, cert->chain);
}

/* tlsio_sigalg_curve returns the curve a TLS 1.3 ECDSA algorithm is bound to. */
static int tlsio_sigalg_curve(uint16_t sigalg)
{
    switch (sigalg) {
    case SSL_SIGN_ECDSA_SECP256R1_SHA256:
        return NID_X9_62_prime256v1;
    case SSL_SIGN_ECDSA_SECP384R1_SHA384:
        return NID_secp384r1;
    case SSL_SIGN_ECDSA_SECP521R1_SHA512:
        return NID_secp521r1;
    default:
        return NID_undef;
    }
}

/*
 * tlsio_cert_fits tells whether a client can authenticate |cert|: up to TLS 1.2 it must
 * offer a cipher suite for the key type; from TLS 1.2 on it must accept a signature
 * algorithm for the key (RFC 5246 7.4.1.4.1; in TLS 1.3 only RSA-PSS, and ECDSA bound
 * to the key's curve, RFC 8446 4.2.3).
 */
static bool tlsio_cert_fits(const struct tlsio_cert *cert, const struct tlsio *t, SSL *ssl)
{
    int type = EVP_PKEY_id(cert->key);
    bool tls13 = SSL_version(ssl) >= TLS1_3_VERSION;
    const uint16_t *sigalgs = NULL;
    size_t n_sigalgs = SSL_get0_peer_verify_algorithms(ssl, &sigalgs);
    if (!tls13) {
        if ((type == EVP_PKEY_EC && !t->offered_ecdsa) ||
            (type == EVP_PKEY_RSA && !t->offered_rsa)) {
            return false;
        }
        if (n_sigalgs == 0) {
            return true; /* TLS 1.1 or older, or RFC 5246's defaults */
        }
    }
    int curve = NID_undef;
    if (type == EVP_PKEY_EC) {
        curve = EC_GROUP_get_curve_name(EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(cert->key)));
    }
    for (size_t i = 0; i < n_sigalgs; i++) {
        if (SSL_get_signature_algorithm_key_type(sigalgs[i]) != type) {
            continue;
        }
        if (tls13 && type == EVP_PKEY_RSA && !SSL_is_signature_algorithm_rsa_pss(sigalgs[i])) {
            continue;
        }
        if (tls13 && type == EVP_PKEY_EC && tlsio_sigalg_curve(sigalgs[i]) != curve) {
            continue;
        }
        return true;
    }
    return false;
}

/* Runs on the ClientHello, before the version is chosen: note the offered suites' keys. */
static enum ssl_select_cert_result_t tlsio_on_client_hello(const SSL_CLIENT_HELLO *hello)
{
    struct tlsio *t = SSL_get_app_data(hello->ssl);
    for (size_t i = 0; i + 1 < hello->cipher_suites_len; i += 2) {
        uint16_t value = (uint16_t)(hello->cipher_suites[i] << 8 | hello->cipher_suites[i + 1]);
        const SSL_CIPHER *cipher = SSL_get_cipher_by_value(value);
        int auth = cipher != NULL ? SSL_CIPHER_get_auth_nid(cipher) : NID_undef;
        t->offered_ecdsa = t->offered_ecdsa || auth == NID_auth_ecdsa;
        t->offered_rsa = t->offered_rsa || auth == NID_auth_rsa;
    }
    return ssl_select_cert_success;
}

/*
 * Runs after the version is chosen: pick the first pair the client can use, preferring
 * one named by its SNI; if none fits, the first, and BoringSSL reports why it fails.
 */
static int tlsio_on_cert(SSL *ssl, void *arg)
{
    const struct tlsio_ctx *c = arg;
    const struct tlsio *t = SSL_get_app_data(ssl);
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    const struct tlsio_cert *pick = &c->certs[0];
    int best = -1;
    for (size_t i = 0; i < c->n_certs; i++) {
        const struct tlsio_cert *cert = &c->certs[i];
        int score = tlsio_cert_fits(cert, t, ssl) ? 2 : 0;
        if (sni != NULL && X509_check_host(cert->leaf, sni, strlen(sni), 0, NULL) == 1) {
            score++;
        }
        if (score > best) {
            best = score;
            pick = cert;
        }
    }
    return SSL_use_certificate(ssl, pick->leaf) && SSL_use_PrivateKey(ssl, pick->key) &&
           SSL_set1_chain(ssl, pick->chain);
}

/* A client certificate is taken as it is: opportunistic TLS never rejects one. */
static enum ssl_verify_result_t tlsio_accept_any_certificate(SSL *ssl, uint8_t *out_alert)
{
    (void)ssl;
    (void)out_alert;
    return ssl_verify_ok;
}

struct tlsio_ctx *tlsio_ctx_new_front(char *out_err, size_t out_err_len, bool *out_self_signed,
                                      const struct conf *conf)
{
    static const uint16_t versions[] = {
        [CONF_TLS_1_0] = TLS1_VERSION,
        [CONF_TLS_1_1] = TLS1_1_VERSION,
        [CONF_TLS_1_2] = TLS1_2_VERSION,
        [CONF_TLS_1_3] = TLS1_3_VERSION,
    };
    *out_self_signed = false;
    struct tlsio_ctx *c = tlsio_ctx_alloc(out_err, out_err_len, true);
    if (c == NULL) {
        return NULL;
    }
    SSL_CTX *ssl_ctx = c->ssl_ctx;
    assert(conf->front_tls.min_protocol <= CONF_TLS_1_3);
    if (!SSL_CTX_set_min_proto_version(ssl_ctx, versions[conf->front_tls.min_protocol]) ||
        !SSL_CTX_set_max_proto_version(ssl_ctx, TLS1_3_VERSION)) {
        tlsio_errf(out_err, out_err_len, "min_protocol");
        goto fail;
    }
    if (conf->front_tls.ciphers != NULL &&
        !SSL_CTX_set_strict_cipher_list(ssl_ctx, conf->front_tls.ciphers)) {
        tlsio_errf(out_err, out_err_len, "ciphers \"%s\"", conf->front_tls.ciphers);
        goto fail;
    }
    SSL_CTX_set_options(ssl_ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* No server-side session cache: a shared, locked cache buys little for SMTP; TLS 1.3
     * tickets still allow resumption without state. */
    SSL_CTX_set_session_cache_mode(ssl_ctx, SSL_SESS_CACHE_OFF);

    assert(conf->front_tls.n_certificate <= CONF_CERT_MAX);
    for (size_t i = 0; i < conf->front_tls.n_certificate; i++) {
        if (tlsio_load_pair(&c->certs[i], out_err, out_err_len, conf->front_tls.certificate[i],
                            conf->front_tls.key[i]) != 0) {
            goto fail;
        }
        c->n_certs++;
    }
    if (c->n_certs == 0) {
        if (tlsio_self_signed(&c->certs[0], out_err, out_err_len, conf->hostname) != 0) {
            goto fail;
        }
        c->n_certs = 1;
        *out_self_signed = true;
    }
    ERR_clear_error();
    if (!tlsio_use_cert(ssl_ctx, &c->certs[0])) {
        tlsio_errf(out_err, out_err_len, "certificate %s",
                   *out_self_signed ? "(self-signed)" : conf->front_tls.certificate[0]);
        goto fail;
    }
    if (c->n_certs > 1) {
        SSL_CTX_set_select_certificate_cb(ssl_ctx, tlsio_on_client_hello);
        SSL_CTX_set_cert_cb(ssl_ctx, tlsio_on_cert, c);
    }
    if (conf->front_tls.ask_client_certificate) {
        /* Asked for, never verified and never required (Postfix's smtpd_tls_ask_ccert):
         * only its fingerprint is logged. */
        SSL_CTX_set_custom_verify(ssl_ctx, SSL_VERIFY_PEER, tlsio_accept_any_certificate);
        /* Keep only its SHA-256: a session (and a TLS 1.3 ticket) carrying a client's chain
         * of tens of kilobytes would not fit the records BoringSSL writes after the
         * handshake. */
        SSL_CTX_set_retain_only_sha256_of_client_certs(ssl_ctx, 1);
    }
    return c;
fail:
    tlsio_ctx_free(c);
    return NULL;
}

struct tlsio_ctx *tlsio_ctx_new_back(char *out_err, size_t out_err_len, const struct conf *conf)
{
    struct tlsio_ctx *c = tlsio_ctx_alloc(out_err, out_err_len, false);
    if (c == NULL) {
        return NULL;
    }
    /* Opportunistic TLS towards the upstream: any version beats cleartext. */
    if (!SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_VERSION) ||
        !SSL_CTX_set_max_proto_version(c->ssl_ctx, TLS1_3_VERSION)) {
        tlsio_errf(out_err, out_err_len, "TLS versions");
        goto fail;
    }
    if (conf->back_tls.certificate != NULL) {
        if (tlsio_load_pair(&c->certs[0], out_err, out_err_len, conf->back_tls.certificate,
                            conf->back_tls.key) != 0) {
            goto fail;
        }
        c->n_certs = 1;
        ERR_clear_error();
        if (!tlsio_use_cert(c->ssl_ctx, &c->certs[0])) {
            tlsio_errf(out_err, out_err_len, "certificate %s", conf->back_tls.certificate);
            goto fail;
        }
    }
    if (conf->back_tls.verify == CONF_VERIFY_CA) {
        ERR_clear_error();
        if (conf->back_tls.ca_file == NULL ||
            !SSL_CTX_load_verify_locations(c->ssl_ctx, conf->back_tls.ca_file, NULL)) {
            tlsio_errf(out_err, out_err_len, "ca_file %s",
                       conf->back_tls.ca_file != NULL ? conf->back_tls.ca_file : "(none)");
            goto fail;
        }
        c->verify = true;
    }
    return c;
fail:
    tlsio_ctx_free(c);
    return NULL;
}

void tlsio_init(struct tlsio *t)
{
    memset(t, 0, sizeof(*t));
    t->alert_received = -1;
    t->alert_sent = -1;
}

void tlsio_cleanup(struct tlsio *t)
{
    SSL_free(t->ssl); /* frees the SSL's end of the pair */
    BIO_free(t->net);
    tlsio_init(t);
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

/* tlsio_start makes the SSL and the BIO pair shared by both sides. */
static int tlsio_start(struct tlsio *t, struct tlsio_ctx *ctx)
{
    assert(t->ssl == NULL);
    BIO *inner = NULL;
    SSL *ssl = SSL_new(ctx->ssl_ctx);
    if (ssl == NULL || !BIO_new_bio_pair(&inner, TLSIO_BIO_SIZE, &t->net, TLSIO_BIO_SIZE)) {
        SSL_free(ssl);
        return -ENOMEM;
    }
    SSL_set_bio(ssl, inner, inner);
    SSL_set_app_data(ssl, t);
    SSL_set_info_callback(ssl, tlsio_on_info);
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
        SSL_set_verify(ssl, options->verify_soft ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
                       tlsio_on_verify);
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (name != NULL && !(is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, name)
                                    : X509_VERIFY_PARAM_set1_host(param, name, strlen(name)))) {
            rc = -EINVAL;
        }
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
    size_t room = tlsio_min(BIO_ctrl_get_write_guarantee(t->net), len);
    if (room > 0) {
        int n = BIO_write(t->net, data, (int)room);
        *out_len = n > 0 ? (size_t)n : 0;
    }
    return 0;
}

void tlsio_feed_eof(struct tlsio *t)
{
    if (!t->eof) {
        BIO_shutdown_wr(t->net);
        t->eof = true;
    }
}

__attribute__((format(printf, 3, 4))) static enum tlsio_result
tlsio_fail(struct tlsio *t, enum tlsio_failure failure, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->reason, sizeof(t->reason), fmt, ap);
    va_end(ap);
    t->failure = failure;
    ERR_clear_error();
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
    if (t->verify_error != 0 && SSL_get_verify_mode(t->ssl) != SSL_VERIFY_NONE) {
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
    return rc == 1 ? TLSIO_OK : tlsio_outcome(t, rc, true);
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
            size_t room = BIO_ctrl_get_write_guarantee(SSL_get_wbio(t->ssl));
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

size_t tlsio_pending_out(const struct tlsio *t)
{
    return t->net != NULL ? BIO_ctrl_pending(t->net) : 0;
}

void tlsio_take_out(struct tlsio *t, size_t *out_len, void *data, size_t len)
{
    int n = BIO_read(t->net, data, (int)tlsio_min(len, INT_MAX));
    *out_len = n > 0 ? (size_t)n : 0;
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
    return t->reason;
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

struct tlsio_ctx *tlsio_ctx_new_webpki(char *out_err, size_t out_err_len, const char *ca_file)
{
    struct tlsio_ctx *c = tlsio_ctx_alloc(out_err, out_err_len, false);
    if (c == NULL) {
        return NULL;
    }
    /* RFC 8461 section 3.3 and RFC 7672 section 4: TLS 1.2 at least. */
    ERR_clear_error();
    if (!SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(c->ssl_ctx, TLS1_3_VERSION) ||
        !SSL_CTX_load_verify_locations(c->ssl_ctx, ca_file, NULL)) {
        tlsio_errf(out_err, out_err_len, "WebPKI roots %s", ca_file);
        tlsio_ctx_free(c);
        return NULL;
    }
    c->verify = true;
    return c;
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
