/*
 * tlsio_ctx: the shared TLS contexts, built from the configuration: front (server
 * certificates, possibly self-signed, picked per handshake; session tickets), back (client
 * certificate, verification, the session cache) and the gate's WebPKI roots. Never does
 * I/O and never logs: failures are returned as text naming the file and BoringSSL's reason.
 */
#include "tlsio_impl.h"

#include <assert.h>
#include <errno.h>
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
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static int tlsio_ctx_ex_index = -1;
static pthread_once_t tlsio_ctx_ex_once = PTHREAD_ONCE_INIT;

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
    tlsio_resume_cache_free(c->cache);
    free(c);
}

static void tlsio_ctx_ex_init(void)
{
    tlsio_ctx_ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tlsio_ctx_on_free);
}

/* tlsio_ctx_alloc makes an empty context whose SSL_CTX owns it. */
static struct tlsio_ctx *tlsio_ctx_alloc(char *out_err, size_t out_err_len, bool front)
{
    ERR_clear_error();
    if (pthread_once(&tlsio_ctx_ex_once, tlsio_ctx_ex_init) != 0 || tlsio_ctx_ex_index < 0) {
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
    if (c->ssl_ctx == NULL || !SSL_CTX_set_ex_data(c->ssl_ctx, tlsio_ctx_ex_index, c)) {
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
    /* Resumption by session tickets only (RFC 5077, RFC 8446 section 4.6.1): no state on
     * our side. The keys are the process's (tlsio_resume.c), so a client resumes on any
     * worker and after a reload; a ticket lives as long as its key decrypts for sure. One
     * ticket per handshake: an MTA keeps one session per destination. */
    SSL_CTX_set_session_cache_mode(ssl_ctx, SSL_SESS_CACHE_OFF);
    static const uint8_t sid_ctx[] = "smtp-tls-proxy";
    if (!SSL_CTX_set_session_id_context(ssl_ctx, sid_ctx, sizeof(sid_ctx) - 1) ||
        !SSL_CTX_set_tlsext_ticket_key_cb(ssl_ctx, tlsio_resume_ticket_cb) ||
        !SSL_CTX_set_num_tickets(ssl_ctx, 1)) {
        tlsio_errf(out_err, out_err_len, "session tickets");
        goto fail;
    }
    SSL_CTX_set_timeout(ssl_ctx, TLSIO_RESUME_KEY_SECONDS);
    SSL_CTX_set_session_psk_dhe_timeout(ssl_ctx, TLSIO_RESUME_KEY_SECONDS);

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
    /* Sessions to resume, per upstream (tlsio_start_back); BoringSSL keeps no client cache
     * itself, it hands each new session to tlsio_on_new_session(). */
    c->cache = tlsio_resume_cache_new();
    if (c->cache == NULL) {
        snprintf(out_err, out_err_len, "TLS session cache: out of memory");
        goto fail;
    }
    SSL_CTX_set_session_cache_mode(c->ssl_ctx, SSL_SESS_CACHE_CLIENT);
    SSL_CTX_sess_set_new_cb(c->ssl_ctx, tlsio_on_new_session);
    return c;
fail:
    tlsio_ctx_free(c);
    return NULL;
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

struct tlsio_ctx *tlsio_ctx_of(const SSL *ssl)
{
    return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tlsio_ctx_ex_index);
}
