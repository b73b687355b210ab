/*
 * test_tlsio: a front and a back tlsio talk to each other in memory, the test moving the
 * ciphertext by hand: good handshakes, plaintext both ways under back-pressure, version
 * and cipher limits, verification, garbage, close_notify and EOF, certificate choice, and
 * context errors. Keys and certificates are made at run time in a temporary directory.
 */
#include "tlsio.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "check.h"
#include "tlsio_impl.h"

#define CHECK_HAS(got, needle)                                                                     \
    do {                                                                                           \
        const char *check_h_ = (got);                                                              \
        check_count++;                                                                             \
        if (strstr(check_h_, (needle)) == NULL) {                                                  \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: %s is \"%s\", want it to contain \"%s\"\n", __FILE__,          \
                    __LINE__, #got, check_h_, (needle));                                           \
        }                                                                                          \
    } while (0)

#define HOST "mx.example.org"

static char dir[] = "/tmp/test_tlsio.XXXXXX";
static char ca_pem[PATH_MAX], other_ca_pem[PATH_MAX], ec_pem[PATH_MAX], ec_key[PATH_MAX],
    rsa_pem[PATH_MAX], rsa_key[PATH_MAX], b_pem[PATH_MAX], b_key[PATH_MAX], garbage_pem[PATH_MAX],
    missing_pem[PATH_MAX], long_pem[PATH_MAX];

/* ---- keys, certificates and files ---- */

static EVP_PKEY *key_ec(void)
{
    EVP_PKEY *key = EVP_PKEY_new();
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    if (key == NULL || ec == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(key, ec)) {
        abort();
    }
    return key;
}

static EVP_PKEY *key_rsa(void)
{
    EVP_PKEY *key = EVP_PKEY_new();
    RSA *rsa = RSA_new();
    BIGNUM *e = BN_new();
    if (key == NULL || rsa == NULL || e == NULL || !BN_set_word(e, RSA_F4) ||
        !RSA_generate_key_ex(rsa, 2048, e, NULL) || !EVP_PKEY_assign_RSA(key, rsa)) {
        abort();
    }
    BN_free(e);
    return key;
}

/* make_cert issues a certificate for |name|: a CA when |issuer| is NULL (self-signed),
 * else a leaf with |name| as its dNSName. Test setup: any failure aborts. */
static X509 *make_cert(EVP_PKEY *key, const char *name, X509 *issuer, EVP_PKEY *issuer_key)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509_NAME *subject = X509_NAME_new();
    if (x == NULL || subject == NULL || !X509_set_version(x, X509_VERSION_3) ||
        !ASN1_INTEGER_set(X509_get_serialNumber(x), serial++) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 86400) || !X509_set_pubkey(x, key) ||
        !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, (const uint8_t *)name, -1, -1,
                                    0) ||
        !X509_set_subject_name(x, subject) ||
        !X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : subject)) {
        abort();
    }
    X509_NAME_free(subject);
    if (issuer == NULL) {
        BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
        if (bc == NULL) {
            abort();
        }
        bc->ca = 1;
        if (X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT) != 1) {
            abort();
        }
        BASIC_CONSTRAINTS_free(bc);
    } else {
        GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
        GENERAL_NAME *dns = GENERAL_NAME_new();
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        if (names == NULL || dns == NULL || ia5 == NULL || !ASN1_STRING_set(ia5, name, -1) ||
            !sk_GENERAL_NAME_push(names, dns)) {
            abort();
        }
        GENERAL_NAME_set0_value(dns, GEN_DNS, ia5);
        if (X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT) != 1) {
            abort();
        }
        GENERAL_NAMES_free(names);
    }
    if (X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) <= 0) {
        abort();
    }
    return x;
}

static void path(char *out, const char *name)
{
    snprintf(out, PATH_MAX, "%s/%s", dir, name);
}

/* write_pem writes |cert| then |chain| (may be NULL) to |cert_path|, |key| to |key_path|. */
static void write_pem(const char *cert_path, X509 *cert, X509 *chain, const char *key_path,
                      EVP_PKEY *key)
{
    FILE *f = fopen(cert_path, "w");
    if (f == NULL || !PEM_write_X509(f, cert) || (chain != NULL && !PEM_write_X509(f, chain)) ||
        fclose(f) != 0) {
        abort();
    }
    if (key_path != NULL) {
        f = fopen(key_path, "w");
        if (f == NULL || !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) ||
            fclose(f) != 0) {
            abort();
        }
    }
}

static void make_files(void)
{
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
    path(ca_pem, "ca.pem");
    path(other_ca_pem, "other_ca.pem");
    path(ec_pem, "ec.pem");
    path(ec_key, "ec.key");
    path(rsa_pem, "rsa.pem");
    path(rsa_key, "rsa.key");
    path(b_pem, "b.pem");
    path(b_key, "b.key");
    path(garbage_pem, "garbage.pem");
    path(missing_pem, "missing.pem");
    path(long_pem, "long.pem");

    EVP_PKEY *ca_key = key_ec();
    X509 *ca = make_cert(ca_key, "Test CA", NULL, NULL);
    EVP_PKEY *other_key = key_ec();
    X509 *other = make_cert(other_key, "Other CA", NULL, NULL);
    EVP_PKEY *ec = key_ec();
    X509 *ec_cert = make_cert(ec, HOST, ca, ca_key);
    EVP_PKEY *rsa = key_rsa();
    X509 *rsa_cert = make_cert(rsa, HOST, ca, ca_key);
    EVP_PKEY *b = key_ec();
    X509 *b_cert = make_cert(b, "b.example.net", ca, ca_key);

    write_pem(ca_pem, ca, NULL, NULL, NULL);
    write_pem(other_ca_pem, other, NULL, NULL, NULL);
    write_pem(ec_pem, ec_cert, ca, ec_key, ec);
    write_pem(rsa_pem, rsa_cert, ca, rsa_key, rsa);
    write_pem(b_pem, b_cert, ca, b_key, b);
    /* A chain longer than the BIO: the handshake's flight leaves in pieces. */
    FILE *f = fopen(long_pem, "w");
    for (int i = 0; f != NULL && i < 80; i++) {
        PEM_write_X509(f, i == 0 ? ec_cert : rsa_cert);
    }
    if (f == NULL || fclose(f) != 0) {
        abort();
    }
    f = fopen(garbage_pem, "w");
    if (f == NULL || fputs("not a certificate\n", f) == EOF || fclose(f) != 0) {
        abort();
    }

    X509 *certs[] = {ca, other, ec_cert, rsa_cert, b_cert};
    EVP_PKEY *keys[] = {ca_key, other_key, ec, rsa, b};
    for (size_t i = 0; i < sizeof(certs) / sizeof(certs[0]); i++) {
        X509_free(certs[i]);
        EVP_PKEY_free(keys[i]);
    }
}

static void remove_files(void)
{
    const char *files[] = {ca_pem,  other_ca_pem, ec_pem, ec_key,      rsa_pem,
                           rsa_key, b_pem,        b_key,  garbage_pem, long_pem};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        unlink(files[i]);
    }
    rmdir(dir);
}

/* ---- configuration and contexts ---- */

static struct conf *conf_new(void)
{
    struct conf *conf = calloc(1, sizeof(*conf));
    if (conf == NULL) {
        abort();
    }
    strcpy(conf->hostname, "proxy.example.net");
    return conf;
}

static void conf_add_pair(struct conf *conf, char *cert, char *key)
{
    conf->front_tls.certificate[conf->front_tls.n_certificate] = cert;
    conf->front_tls.key[conf->front_tls.n_certificate++] = key;
}

/* front_ctx builds a front context from |conf| and frees |conf|. */
static struct tlsio_ctx *front_ctx(struct conf *conf)
{
    char err[TLSIO_ERR_MAX] = "";
    bool self_signed = true;
    struct tlsio_ctx *ctx = tlsio_ctx_new_front(err, sizeof(err), &self_signed, conf);
    CHECK(ctx != NULL);
    CHECK_STR(err, "");
    CHECK(self_signed == (conf->front_tls.n_certificate == 0));
    free(conf);
    return ctx;
}

static struct tlsio_ctx *front_ctx_ec(void)
{
    struct conf *conf = conf_new();
    conf_add_pair(conf, ec_pem, ec_key);
    return front_ctx(conf);
}

/* back_ctx builds a back context from |conf| and frees |conf|; NULL |conf|: defaults. */
static struct tlsio_ctx *back_ctx(struct conf *conf)
{
    char err[TLSIO_ERR_MAX] = "";
    if (conf == NULL) {
        conf = conf_new();
    }
    struct tlsio_ctx *ctx = tlsio_ctx_new_back(err, sizeof(err), conf);
    CHECK(ctx != NULL);
    CHECK_STR(err, "");
    free(conf);
    return ctx;
}

static struct tlsio_ctx *back_ctx_verify(const char *ca_file)
{
    struct conf *conf = conf_new();
    conf->back_tls.verify = CONF_VERIFY_CA;
    conf->back_tls.ca_file = (char *)ca_file;
    return back_ctx(conf);
}

/* ---- moving bytes ---- */

/* Ciphertext taken from one side and not yet accepted by the other. */
struct wire {
    unsigned char data[2 * TLSIO_BIO_SIZE];
    size_t len;
};

struct pair {
    struct tlsio front;
    struct tlsio back;
    struct wire to_front;
    struct wire to_back;
    enum tlsio_result front_result;
    enum tlsio_result back_result;
    bool front_wanted_write; /* the front's handshake once filled its output */
};

/* move_bytes moves ciphertext from |from| towards |to|; returns whether any byte moved. */
static bool move_bytes(struct tlsio *from, struct tlsio *to, struct wire *w)
{
    CHECK(tlsio_pending_out(from) <= TLSIO_BIO_SIZE);
    size_t taken = 0;
    tlsio_take_out(from, &taken, w->data + w->len, sizeof(w->data) - w->len);
    w->len += taken;
    size_t fed = 0;
    if (w->len > 0 && tlsio_feed(to, &fed, w->data, w->len) == 0) {
        memmove(w->data, w->data + fed, w->len - fed);
        w->len -= fed;
    }
    return taken > 0 || fed > 0;
}

static bool move_all(struct pair *p)
{
    bool to_front = move_bytes(&p->back, &p->front, &p->to_front);
    bool to_back = move_bytes(&p->front, &p->back, &p->to_back);
    return to_front || to_back;
}

static struct pair *pair_new(struct tlsio_ctx *front, struct tlsio_ctx *back,
                             const struct tlsio_back_options *options)
{
    static const struct tlsio_back_options none = {0};
    struct pair *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        abort();
    }
    tlsio_init(&p->front);
    tlsio_init(&p->back);
    CHECK_INT(tlsio_start_front(&p->front, front), 0);
    CHECK_INT(tlsio_start_back(&p->back, back, options != NULL ? options : &none), 0);
    p->front_result = TLSIO_WANT_READ;
    p->back_result = TLSIO_WANT_READ;
    return p;
}

static void pair_free(struct pair *p)
{
    tlsio_cleanup(&p->front);
    tlsio_cleanup(&p->back);
    free(p);
}

static bool settled(enum tlsio_result r)
{
    return r == TLSIO_OK || r == TLSIO_FAILED;
}

/* handshake runs both sides until both are done or failed, or nothing moves. */
static void handshake(struct pair *p)
{
    for (int i = 0; i < 100; i++) {
        if (!settled(p->back_result)) {
            p->back_result = tlsio_handshake(&p->back);
        }
        if (!settled(p->front_result)) {
            p->front_result = tlsio_handshake(&p->front);
            p->front_wanted_write |= p->front_result == TLSIO_WANT_WRITE;
        }
        bool moved = move_all(p);
        if (!moved && p->front_result != TLSIO_WANT_WRITE && p->back_result != TLSIO_WANT_WRITE &&
            (settled(p->front_result) || settled(p->back_result))) {
            return;
        }
    }
}

static struct pair *connect_ok(struct tlsio_ctx *front, struct tlsio_ctx *back,
                               const struct tlsio_back_options *options)
{
    struct pair *p = pair_new(front, back, options);
    handshake(p);
    CHECK_INT(p->front_result, TLSIO_OK);
    CHECK_INT(p->back_result, TLSIO_OK);
    CHECK_STR(tlsio_reason(&p->front), "");
    CHECK_STR(tlsio_reason(&p->back), "");
    return p;
}

/*
 * transfer sends |len| bytes in writes of at most |piece| from one side to the other and
 * checks they arrive intact. Returns how many writes were accepted only in part.
 */
static size_t transfer(struct pair *p, bool to_front, const unsigned char *data, size_t len,
                       size_t piece)
{
    struct tlsio *from = to_front ? &p->back : &p->front;
    struct tlsio *to = to_front ? &p->front : &p->back;
    unsigned char *got = malloc(len);
    size_t sent = 0;
    size_t received = 0;
    size_t partial = 0;
    for (int guard = 0; received < len && guard < 100000; guard++) {
        if (sent < len) {
            size_t want = piece < len - sent ? piece : len - sent;
            size_t n = 0;
            enum tlsio_result r = tlsio_write(from, &n, data + sent, want);
            CHECK(r == TLSIO_OK || (r == TLSIO_WANT_WRITE && n == 0));
            partial += n < want;
            sent += n;
        }
        move_all(p);
        size_t n = 0;
        enum tlsio_result r;
        while ((r = tlsio_read(to, &n, got + received, len - received)) == TLSIO_OK) {
            received += n;
        }
        CHECK_INT(r, TLSIO_WANT_READ);
    }
    CHECK_MEM(got, received, data, len);
    free(got);
    return partial;
}

/* peer_key_type returns the key type of the certificate the back side received. */
static int peer_key_type(const struct pair *p)
{
    X509 *cert = SSL_get_peer_certificate(p->back.ssl);
    EVP_PKEY *key = cert != NULL ? X509_get_pubkey(cert) : NULL;
    int type = key != NULL ? EVP_PKEY_id(key) : NID_undef;
    EVP_PKEY_free(key);
    X509_free(cert);
    return type;
}

static bool peer_cert_names(const struct pair *p, const char *name)
{
    X509 *cert = SSL_get_peer_certificate(p->back.ssl);
    bool match = cert != NULL && X509_check_host(cert, name, strlen(name), 0, NULL) == 1;
    X509_free(cert);
    return match;
}

/* ---- tests ---- */

static void test_handshake_and_data(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct tlsio_ctx *back = back_ctx(NULL);
    struct pair *p = connect_ok(front, back, NULL);
    CHECK_STR(tlsio_version(&p->front), "TLSv1.3");
    CHECK_STR(tlsio_version(&p->back), "TLSv1.3");
    CHECK_HAS(tlsio_cipher(&p->back), "TLS_");
    CHECK_STR(tlsio_cipher(&p->front), tlsio_cipher(&p->back));
    CHECK_INT(tlsio_failure(&p->back), TLSIO_FAILURE_NONE);
    const char *text = NULL;
    CHECK_INT(tlsio_verify_result(&p->back, &text), TLSIO_VERIFY_NOT_CHECKED);
    CHECK_STR(text, "");
    CHECK_INT(tlsio_handshake(&p->back), TLSIO_OK);

    /* Nothing to read yet. */
    char buf[64];
    size_t n = 1;
    CHECK_INT(tlsio_read(&p->front, &n, buf, sizeof(buf)), TLSIO_WANT_READ);
    CHECK_INT(n, 0);
    CHECK_INT(tlsio_write(&p->back, &n, "", 0), TLSIO_OK);
    CHECK_INT(n, 0);

    CHECK_INT(transfer(p, true, (const unsigned char *)"EHLO relay\r\n", 12, 100), 0);
    CHECK_INT(transfer(p, false, (const unsigned char *)"250 ok\r\n", 8, 100), 0);

    /* 1 MiB each way: pieces bigger than the BIO are accepted in part. */
    size_t big_len = 1 << 20;
    unsigned char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++) {
        big[i] = (unsigned char)(i * 7 + i / 251);
    }
    CHECK(transfer(p, true, big, big_len, 50000) > 0);
    CHECK(transfer(p, false, big, big_len, 50000) > 0);
    CHECK(transfer(p, true, big, big_len / 4, 1000) == 0);
    free(big);

    /* A full incoming BIO takes only part of a feed. */
    static unsigned char junk[TLSIO_BIO_SIZE + 100];
    CHECK_INT(tlsio_feed(&p->front, &n, junk, sizeof(junk)), 0);
    CHECK_INT(n, TLSIO_BIO_SIZE);
    CHECK_INT(tlsio_feed(&p->front, &n, junk, sizeof(junk)), 0);
    CHECK_INT(n, 0);
    pair_free(p);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

static void test_long_chain(void)
{
    struct conf *conf = conf_new();
    conf_add_pair(conf, long_pem, ec_key);
    struct tlsio_ctx *front = front_ctx(conf);
    struct tlsio_ctx *back = back_ctx(NULL);
    struct pair *p = connect_ok(front, back, NULL);
    CHECK(p->front_wanted_write);
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(p->back.ssl);
    CHECK_INT(chain != NULL ? sk_X509_num(chain) : 0, 80);
    pair_free(p);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

static void test_write_backpressure(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct tlsio_ctx *back = back_ctx(NULL);
    struct pair *p = connect_ok(front, back, NULL);
    static unsigned char data[100000];
    size_t n = 0;
    CHECK_INT(tlsio_write(&p->back, &n, data, sizeof(data)), TLSIO_OK);
    CHECK(n > 0 && n < TLSIO_BIO_SIZE);
    CHECK(tlsio_pending_out(&p->back) <= TLSIO_BIO_SIZE);
    size_t more = 0;
    CHECK_INT(tlsio_write(&p->back, &more, data + n, sizeof(data) - n), TLSIO_WANT_WRITE);
    CHECK_INT(more, 0);
    /* Draining the output makes room again. */
    static unsigned char out[TLSIO_BIO_SIZE];
    size_t taken = 0;
    tlsio_take_out(&p->back, &taken, out, sizeof(out));
    CHECK(taken > n);
    CHECK_INT(tlsio_pending_out(&p->back), 0);
    CHECK_INT(tlsio_write(&p->back, &more, data + n, sizeof(data) - n), TLSIO_OK);
    CHECK(more > 0);
    pair_free(p);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

/*
 * A KeyUpdate request (RFC 8446 4.6.3) arrives while the output is full: the answer must
 * wait without losing or reordering plaintext.
 */
static void test_key_update_backpressure(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct tlsio_ctx *back = back_ctx(NULL);
    struct pair *p = connect_ok(front, back, NULL);
    CHECK(SSL_key_update(p->front.ssl, SSL_KEY_UPDATE_REQUESTED));
    size_t n = 0;
    CHECK_INT(tlsio_write(&p->front, &n, "250 ok\r\n", 8), TLSIO_OK);
    move_all(p);

    static unsigned char data[200000];
    for (size_t i = 0; i < sizeof(data); i++) {
        data[i] = (unsigned char)(i % 253);
    }
    size_t sent = 0;
    CHECK_INT(tlsio_write(&p->back, &n, data, sizeof(data)), TLSIO_OK);
    sent += n;
    char buf[16];
    CHECK_INT(tlsio_read(&p->back, &n, buf, sizeof(buf)), TLSIO_OK);
    CHECK_MEM(buf, n, "250 ok\r\n", 8);
    CHECK_INT(tlsio_pending_out(&p->back), TLSIO_BIO_SIZE);

    /* Room for one small record, but the KeyUpdate answer takes it: SSL_write keeps the
     * sealed record, and tlsio must offer exactly those bytes again. */
    size_t room = SSL_max_seal_overhead(p->back.ssl) + 10;
    tlsio_take_out(&p->back, &n, p->to_front.data, room);
    p->to_front.len = n;
    CHECK_INT(tlsio_write(&p->back, &n, data + sent, sizeof(data) - sent), TLSIO_WANT_WRITE);
    CHECK_INT(n, 0);
    CHECK_INT(p->back.write_retry_len, 10); /* white box: the path under test was taken */

    static unsigned char got[sizeof(data)];
    size_t received = 0;
    for (int guard = 0; received < sizeof(data) && guard < 1000; guard++) {
        move_all(p);
        while (tlsio_read(&p->front, &n, got + received, sizeof(got) - received) == TLSIO_OK) {
            received += n;
        }
        CHECK_INT(tlsio_read(&p->back, &n, buf, sizeof(buf)), TLSIO_WANT_READ);
        if (sent < sizeof(data)) {
            enum tlsio_result r = tlsio_write(&p->back, &n, data + sent, sizeof(data) - sent);
            CHECK(r == TLSIO_OK || r == TLSIO_WANT_WRITE);
            sent += n;
        }
    }
    CHECK_MEM(got, received, data, sizeof(data));
    pair_free(p);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

static void test_tls12_cap(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct tlsio_ctx *back = back_ctx(NULL);
    struct tlsio_back_options options = {.max_tls12 = true};
    struct pair *p = connect_ok(front, back, &options);
    CHECK_STR(tlsio_version(&p->front), "TLSv1.2");
    CHECK_STR(tlsio_version(&p->back), "TLSv1.2");
    CHECK_HAS(tlsio_cipher(&p->back), "ECDHE-ECDSA-");
    CHECK_INT(transfer(p, true, (const unsigned char *)"QUIT\r\n", 6, 100), 0);
    pair_free(p);

    /* A front that requires TLS 1.3 refuses it; both sides say why. */
    struct conf *conf = conf_new();
    conf_add_pair(conf, ec_pem, ec_key);
    conf->front_tls.min_protocol = CONF_TLS_1_3;
    struct tlsio_ctx *strict = front_ctx(conf);
    p = pair_new(strict, back, &options);
    handshake(p);
    CHECK_INT(p->front_result, TLSIO_FAILED);
    CHECK_INT(p->back_result, TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->front), TLSIO_FAILURE_PROTOCOL);
    CHECK_HAS(tlsio_reason(&p->front), "UNSUPPORTED_PROTOCOL");
    CHECK_HAS(tlsio_reason(&p->front), "protocol version");
    CHECK_INT(tlsio_failure(&p->back), TLSIO_FAILURE_ALERT);
    CHECK_STR(tlsio_reason(&p->back), "received alert: protocol version");
    CHECK_STR(tlsio_version(&p->back), "");
    /* Failures stick. */
    CHECK_INT(tlsio_handshake(&p->back), TLSIO_FAILED);
    CHECK_STR(tlsio_reason(&p->back), "received alert: protocol version");
    pair_free(p);
    tlsio_ctx_free(strict);

    /* TLS 1.0 still works where configured: opportunistic TLS beats cleartext. */
    p = pair_new(front, back, NULL);
    CHECK(SSL_set_max_proto_version(p->back.ssl, TLS1_VERSION));
    handshake(p);
    CHECK_INT(p->back_result, TLSIO_OK);
    CHECK_STR(tlsio_version(&p->back), "TLSv1");
    CHECK_INT(transfer(p, false, (const unsigned char *)"220 hi\r\n", 8, 3), 0);
    pair_free(p);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

static void test_verify(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    const char *text = NULL;

    /* Wrong CA: the back refuses and tells the front why. */
    struct tlsio_ctx *back = back_ctx_verify(other_ca_pem);
    struct tlsio_back_options options = {.name = HOST};
    struct pair *p = pair_new(front, back, &options);
    handshake(p);
    CHECK_INT(p->back_result, TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->back), TLSIO_FAILURE_VERIFY);
    CHECK_STR(tlsio_reason(&p->back),
              "certificate verify failed: self signed certificate in certificate chain");
    CHECK_INT(tlsio_verify_result(&p->back, &text), TLSIO_VERIFY_NOT_TRUSTED);
    CHECK_STR(text, "self signed certificate in certificate chain");
    CHECK_INT(p->front_result, TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->front), TLSIO_FAILURE_ALERT);
    CHECK_STR(tlsio_reason(&p->front), "received alert: unknown CA");
    pair_free(p);

    /* Soft verification records the problem and goes on. */
    options.verify_soft = true;
    p = connect_ok(front, back, &options);
    CHECK_INT(tlsio_verify_result(&p->back, &text), TLSIO_VERIFY_NOT_TRUSTED);
    pair_free(p);
    tlsio_ctx_free(back);

    /* Right CA, right name; SNI names the upstream. */
    back = back_ctx_verify(ca_pem);
    options.verify_soft = false;
    p = connect_ok(front, back, &options);
    CHECK_INT(tlsio_verify_result(&p->back, &text), TLSIO_VERIFY_OK);
    CHECK_STR(text, "");
    CHECK_STR(SSL_get_servername(p->front.ssl, TLSEXT_NAMETYPE_host_name), HOST);
    pair_free(p);

    /* Right CA, wrong name. */
    options.name = "other.example.org";
    p = pair_new(front, back, &options);
    handshake(p);
    CHECK_INT(p->back_result, TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->back), TLSIO_FAILURE_VERIFY);
    CHECK_INT(tlsio_verify_result(&p->back, &text), TLSIO_VERIFY_HOST_MISMATCH);
    CHECK_STR(text, "Hostname mismatch");
    CHECK_STR(tlsio_reason(&p->back), "certificate verify failed: Hostname mismatch");
    CHECK_INT(p->front_result, TLSIO_FAILED);
    pair_free(p);

    /* An address: no SNI, checked against IP SANs (there are none). */
    options.name = "192.0.2.25";
    options.verify_soft = true;
    p = connect_ok(front, back, &options);
    CHECK(SSL_get_servername(p->front.ssl, TLSEXT_NAMETYPE_host_name) == NULL);
    CHECK_INT(tlsio_verify_result(&p->back, &text), TLSIO_VERIFY_HOST_MISMATCH);
    pair_free(p);
    tlsio_ctx_free(back);
    tlsio_ctx_free(front);
}

static int accept_any_cert(int ok, X509_STORE_CTX *store)
{
    (void)ok;
    (void)store;
    return 1;
}

static void test_client_certificate(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct conf *conf = conf_new();
    conf->back_tls.certificate = b_pem;
    conf->back_tls.key = b_key;
    struct tlsio_ctx *back = back_ctx(conf);
    for (int no_cert = 0; no_cert <= 1; no_cert++) {
        struct tlsio_back_options options = {.no_client_cert = no_cert};
        struct pair *p = pair_new(front, back, &options);
        SSL_set_verify(p->front.ssl, SSL_VERIFY_PEER, accept_any_cert);
        handshake(p);
        CHECK_INT(p->front_result, TLSIO_OK);
        CHECK_INT(p->back_result, TLSIO_OK);
        X509 *cert = SSL_get_peer_certificate(p->front.ssl);
        CHECK(no_cert ? cert == NULL : cert != NULL);
        X509_free(cert);
        pair_free(p);
    }
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

static void test_garbage(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct tlsio_ctx *back = back_ctx(NULL);
    struct pair *p = pair_new(front, back, NULL);
    static const char junk[] = "RSET\r\nMAIL FROM:<a@example.org>\r\n";
    size_t n = 0;
    CHECK_INT(tlsio_feed(&p->front, &n, junk, sizeof(junk) - 1), 0);
    CHECK_INT(n, sizeof(junk) - 1);
    CHECK_INT(tlsio_handshake(&p->front), TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->front), TLSIO_FAILURE_PROTOCOL);
    CHECK_STR(tlsio_reason(&p->front), "WRONG_VERSION_NUMBER, sent alert: protocol version");
    CHECK(tlsio_pending_out(&p->front) > 0); /* the alert */
    CHECK_INT(tlsio_read(&p->front, &n, (char[8]){0}, 8), TLSIO_FAILED);
    pair_free(p);

    /* Garbage answering the back's ClientHello. */
    p = pair_new(front, back, NULL);
    CHECK_INT(tlsio_handshake(&p->back), TLSIO_WANT_READ);
    CHECK(tlsio_pending_out(&p->back) > 0);
    static const char reply[] = "250 injected\r\n250 more\r\n";
    CHECK_INT(tlsio_feed(&p->back, &n, reply, sizeof(reply) - 1), 0);
    CHECK_INT(tlsio_handshake(&p->back), TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->back), TLSIO_FAILURE_PROTOCOL);
    CHECK_STR(tlsio_reason(&p->back), "WRONG_VERSION_NUMBER, sent alert: protocol version");
    pair_free(p);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

static void test_close(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct tlsio_ctx *back = back_ctx(NULL);
    char buf[16];
    size_t n = 0;

    /* close_notify both ways. */
    struct pair *p = connect_ok(front, back, NULL);
    CHECK_INT(tlsio_shutdown(&p->back), TLSIO_OK);
    CHECK(tlsio_pending_out(&p->back) > 0);
    move_all(p);
    CHECK_INT(tlsio_read(&p->front, &n, buf, sizeof(buf)), TLSIO_CLOSED);
    CHECK_INT(tlsio_failure(&p->front), TLSIO_FAILURE_NONE);
    CHECK_INT(tlsio_shutdown(&p->front), TLSIO_OK);
    move_all(p);
    CHECK_INT(tlsio_read(&p->back, &n, buf, sizeof(buf)), TLSIO_CLOSED);
    pair_free(p);

    /* Data, then close_notify, in one flight: the data comes first. */
    p = connect_ok(front, back, NULL);
    CHECK_INT(tlsio_write(&p->front, &n, "221 bye\r\n", 9), TLSIO_OK);
    CHECK_INT(tlsio_shutdown(&p->front), TLSIO_OK);
    move_all(p);
    CHECK_INT(tlsio_read(&p->back, &n, buf, sizeof(buf)), TLSIO_OK);
    CHECK_MEM(buf, n, "221 bye\r\n", 9);
    CHECK_INT(tlsio_read(&p->back, &n, buf, sizeof(buf)), TLSIO_CLOSED);
    pair_free(p);

    /* The connection ends without close_notify. */
    p = connect_ok(front, back, NULL);
    tlsio_feed_eof(&p->front);
    CHECK_INT(tlsio_feed(&p->front, &n, "x", 1), -EPIPE);
    CHECK_INT(tlsio_read(&p->front, &n, buf, sizeof(buf)), TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->front), TLSIO_FAILURE_EOF);
    CHECK_STR(tlsio_reason(&p->front), "peer closed the connection without close_notify");
    pair_free(p);

    /* ... or during the handshake, on either side. */
    p = pair_new(front, back, NULL);
    CHECK_INT(tlsio_handshake(&p->back), TLSIO_WANT_READ);
    move_all(p);
    CHECK_INT(tlsio_handshake(&p->front), TLSIO_WANT_READ);
    tlsio_feed_eof(&p->back);
    CHECK_INT(tlsio_handshake(&p->back), TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->back), TLSIO_FAILURE_EOF);
    CHECK_STR(tlsio_reason(&p->back), "peer closed the connection during the handshake");
    tlsio_feed_eof(&p->front);
    CHECK_INT(tlsio_handshake(&p->front), TLSIO_FAILED);
    CHECK_INT(tlsio_failure(&p->front), TLSIO_FAILURE_EOF);
    pair_free(p);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

static void test_self_signed(void)
{
    char err[TLSIO_ERR_MAX] = "";
    bool self_signed = false;
    struct conf *conf = conf_new();
    struct tlsio_ctx *front = tlsio_ctx_new_front(err, sizeof(err), &self_signed, conf);
    CHECK(front != NULL);
    CHECK(self_signed);
    struct tlsio_ctx *back = back_ctx(NULL);
    struct pair *p = connect_ok(front, back, NULL);
    CHECK(peer_cert_names(p, "proxy.example.net"));
    CHECK(!peer_cert_names(p, HOST));
    CHECK_INT(peer_key_type(p), EVP_PKEY_EC);
    X509 *cert = SSL_get_peer_certificate(p->back.ssl);
    char cn[128] = "";
    CHECK(cert != NULL && X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn,
                                                    sizeof(cn)) > 0);
    CHECK_STR(cn, "proxy.example.net");
    CHECK(cert != NULL && X509_cmp_current_time(X509_get0_notBefore(cert)) < 0);
    CHECK(cert != NULL && X509_cmp_current_time(X509_get0_notAfter(cert)) > 0);
    X509_free(cert);
    pair_free(p);
    tlsio_ctx_free(front);

    /* A name too long for a CN still gets a working certificate, named in its SAN. */
    memset(conf->hostname, 'a', 70);
    strcpy(conf->hostname + 70, ".example.net");
    front = tlsio_ctx_new_front(err, sizeof(err), &self_signed, conf);
    CHECK(front != NULL);
    p = connect_ok(front, back, NULL);
    CHECK(peer_cert_names(p, conf->hostname));
    pair_free(p);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
    free(conf);
}

/* Offer only |sigalg| (TLS 1.3) or only |ciphers| (TLS 1.2) and see which key serves. */
static int served_key(struct tlsio_ctx *front, struct tlsio_ctx *back, uint16_t sigalg,
                      const char *ciphers)
{
    struct tlsio_back_options options = {.max_tls12 = ciphers != NULL};
    struct pair *p = pair_new(front, back, &options);
    if (sigalg != 0) {
        CHECK(SSL_set_verify_algorithm_prefs(p->back.ssl, &sigalg, 1));
    }
    if (ciphers != NULL) {
        CHECK(SSL_set_strict_cipher_list(p->back.ssl, ciphers));
    }
    handshake(p);
    CHECK_INT(p->back_result, TLSIO_OK);
    CHECK_STR(tlsio_version(&p->back), ciphers != NULL ? "TLSv1.2" : "TLSv1.3");
    int type = peer_key_type(p);
    pair_free(p);
    return type;
}

static void test_rsa_and_ecdsa(void)
{
    struct tlsio_ctx *back = back_ctx(NULL);
    for (int order = 0; order < 2; order++) {
        struct conf *conf = conf_new();
        if (order == 0) {
            conf_add_pair(conf, ec_pem, ec_key);
            conf_add_pair(conf, rsa_pem, rsa_key);
        } else {
            conf_add_pair(conf, rsa_pem, rsa_key);
            conf_add_pair(conf, ec_pem, ec_key);
        }
        struct tlsio_ctx *front = front_ctx(conf);
        int first = order == 0 ? EVP_PKEY_EC : EVP_PKEY_RSA;
        CHECK_INT(served_key(front, back, 0, NULL), first);
        CHECK_INT(served_key(front, back, SSL_SIGN_ECDSA_SECP256R1_SHA256, NULL), EVP_PKEY_EC);
        CHECK_INT(served_key(front, back, SSL_SIGN_RSA_PSS_RSAE_SHA256, NULL), EVP_PKEY_RSA);
        CHECK_INT(served_key(front, back, 0, "ECDHE-ECDSA-AES128-GCM-SHA256"), EVP_PKEY_EC);
        CHECK_INT(served_key(front, back, 0, "ECDHE-RSA-AES128-GCM-SHA256"), EVP_PKEY_RSA);
        CHECK_INT(served_key(front, back, SSL_SIGN_RSA_PKCS1_SHA256,
                             "ECDHE-ECDSA-AES128-GCM-SHA256:"
                             "ECDHE-RSA-AES128-GCM-SHA256"),
                  EVP_PKEY_RSA);
        /* TLS 1.0 has no signature algorithms: the cipher suites decide. */
        struct pair *p = pair_new(front, back, NULL);
        CHECK(SSL_set_max_proto_version(p->back.ssl, TLS1_VERSION));
        CHECK(SSL_set_strict_cipher_list(p->back.ssl, "ECDHE-RSA-AES128-SHA"));
        handshake(p);
        CHECK_INT(p->back_result, TLSIO_OK);
        CHECK_INT(peer_key_type(p), EVP_PKEY_RSA);
        pair_free(p);
        tlsio_ctx_free(front);
    }
    tlsio_ctx_free(back);
}

static void test_sni(void)
{
    struct conf *conf = conf_new();
    conf_add_pair(conf, ec_pem, ec_key);
    conf_add_pair(conf, b_pem, b_key);
    struct tlsio_ctx *front = front_ctx(conf);
    struct tlsio_ctx *back = back_ctx(NULL);
    const char *names[] = {"b.example.net", HOST, "unknown.example.com", NULL};
    const char *want[] = {"b.example.net", HOST, HOST, HOST};
    for (size_t i = 0; i < 4; i++) {
        struct tlsio_back_options options = {.name = names[i]};
        struct pair *p = connect_ok(front, back, &options);
        CHECK(peer_cert_names(p, want[i]));
        pair_free(p);
    }
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

/* The context may be freed (a reload) while a handshake that uses it is running. */
static void test_ctx_lifetime(void)
{
    struct conf *conf = conf_new();
    conf_add_pair(conf, ec_pem, ec_key);
    conf_add_pair(conf, rsa_pem, rsa_key);
    struct tlsio_ctx *front = front_ctx(conf);
    struct tlsio_ctx *back = back_ctx(NULL);
    struct pair *p = pair_new(front, back, NULL);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
    handshake(p);
    CHECK_INT(p->front_result, TLSIO_OK);
    CHECK_INT(p->back_result, TLSIO_OK);
    pair_free(p);

    /* cleanup is safe after init, twice, and after a failed start. */
    struct tlsio t;
    tlsio_init(&t);
    tlsio_cleanup(&t);
    tlsio_cleanup(&t);
    CHECK_INT(tlsio_pending_out(&t), 0);
    CHECK_STR(tlsio_version(&t), "");
    CHECK_STR(tlsio_cipher(&t), "");
    tlsio_ctx_free(NULL);
}

/* ---- buffers lent to tlsio ---- */

/* lent_move moves the ciphertext |from| made into |out| over to |to|'s receive room. */
static bool lent_move(struct buf *out, struct tlsio *to)
{
    bool moved = false;
    while (buf_len(out) > 0) {
        void *room = NULL;
        size_t room_len = 0;
        CHECK_INT(tlsio_recv_room(to, &room, &room_len, 4096, 4 << 20), 0);
        size_t n = buf_len(out) < room_len ? buf_len(out) : room_len;
        memcpy(room, buf_head(out), n);
        tlsio_recv_commit(to, n);
        buf_consume(out, n);
        moved = true;
    }
    return moved;
}

/*
 * The socket's side of the leg: TLS reads records from where they were received and
 * writes its own into the lent queue, and while idle it holds no buffer at all.
 */
static void test_lent_buffers(void)
{
    struct tlsio_ctx *front_c = front_ctx_ec();
    struct tlsio_ctx *back_c = back_ctx(NULL);
    struct buf front_out;
    struct buf back_out;
    buf_init(&front_out);
    buf_init(&back_out);
    struct tlsio front;
    struct tlsio back;
    tlsio_init(&front);
    tlsio_init(&back);
    tlsio_attach(&front, &front_out, 4 << 20);
    tlsio_attach(&back, &back_out, 4 << 20);
    static const struct tlsio_back_options none = {0};
    CHECK_INT(tlsio_start_front(&front, front_c), 0);
    CHECK_INT(tlsio_start_back(&back, back_c, &none), 0);
    CHECK_INT(tlsio_read_bound(&front), 0);
    enum tlsio_result fr = TLSIO_WANT_READ;
    enum tlsio_result br = TLSIO_WANT_READ;
    for (int i = 0; i < 20 && (fr != TLSIO_OK || br != TLSIO_OK); i++) {
        br = br == TLSIO_OK ? br : tlsio_handshake(&back);
        lent_move(&back_out, &front);
        fr = fr == TLSIO_OK ? fr : tlsio_handshake(&front);
        lent_move(&front_out, &back);
    }
    CHECK_INT(fr, TLSIO_OK);
    CHECK_INT(br, TLSIO_OK);
    CHECK_INT(tlsio_pending_out(&front), buf_len(&front_out));

    /* 1 MiB in one write: every record goes straight into the lent queue. */
    size_t big_len = 1 << 20;
    unsigned char *big = malloc(big_len);
    unsigned char *got = malloc(big_len);
    for (size_t i = 0; i < big_len; i++) {
        big[i] = (unsigned char)(i * 13 + i / 509);
    }
    size_t n = 0;
    CHECK_INT(tlsio_write(&back, &n, big, big_len), TLSIO_OK);
    CHECK_INT(n, big_len);
    CHECK(buf_len(&back_out) <= tlsio_sealed_max(&back, big_len));
    CHECK(buf_len(&back_out) > big_len);
    lent_move(&back_out, &front);
    CHECK(tlsio_read_bound(&front) >= tlsio_recv_pending(&front));
    size_t received = 0;
    enum tlsio_result r;
    while ((r = tlsio_read(&front, &n, got + received, big_len - received)) == TLSIO_OK) {
        received += n;
    }
    CHECK_INT(r, TLSIO_WANT_READ);
    CHECK_MEM(got, received, big, big_len);
    CHECK_INT(tlsio_recv_pending(&front), 0);
    CHECK_INT(tlsio_read_bound(&front), 0);

    /* A small command after the stream: once read, nothing is held. */
    CHECK_INT(tlsio_write(&back, &n, "QUIT\r\n", 6), TLSIO_OK);
    lent_move(&back_out, &front);
    CHECK_INT(tlsio_read(&front, &n, got, big_len), TLSIO_OK);
    CHECK_MEM(got, n, "QUIT\r\n", 6);
    CHECK_INT(tlsio_read(&front, &n, got, big_len), TLSIO_WANT_READ);
    CHECK(front.rx == NULL); /* white box: the receive buffer is gone */
    CHECK_INT(buf_len(&front_out), 0);

    /* A stream whose last receive filled its room keeps the room for the next receive,
     * even once read; the receive that finds nothing (the peer paused) releases it. */
    CHECK_INT(tlsio_write(&back, &n, big, 64 << 10), TLSIO_OK);
    size_t sent = 0;
    while (buf_len(&back_out) > 0) {
        void *r_room = NULL;
        size_t r_len = 0;
        CHECK_INT(tlsio_recv_room(&front, &r_room, &r_len, 1024, 4 << 20), 0);
        size_t take = buf_len(&back_out) < r_len ? buf_len(&back_out) : r_len;
        memcpy(r_room, buf_head(&back_out), take);
        tlsio_recv_commit(&front, take);
        buf_consume(&back_out, take);
        if (take < r_len) {
            break; /* the last piece did not fill its room: not kept */
        }
        size_t got_n = 0;
        while (tlsio_read(&front, &got_n, got + sent, big_len - sent) == TLSIO_OK) {
            sent += got_n;
        }
    }
    size_t got_n = 0;
    while (tlsio_read(&front, &got_n, got + sent, big_len - sent) == TLSIO_OK) {
        sent += got_n;
    }
    CHECK_MEM(got, sent, big, (size_t)64 << 10);
    CHECK(front.rx == NULL); /* a partial last receive: released once read */
    /* Now the same with a last receive that fills its room exactly. */
    CHECK_INT(tlsio_write(&back, &n, "NOOP\r\n", 6), TLSIO_OK);
    void *f_room = NULL;
    size_t f_len = 0;
    CHECK_INT(tlsio_recv_room(&front, &f_room, &f_len, buf_len(&back_out), 4 << 20), 0);
    CHECK_INT(f_len, buf_len(&back_out));
    memcpy(f_room, buf_head(&back_out), f_len);
    tlsio_recv_commit(&front, f_len);
    buf_cleanup(&back_out);
    CHECK_INT(tlsio_read(&front, &got_n, got, big_len), TLSIO_OK);
    CHECK_MEM(got, got_n, "NOOP\r\n", 6);
    CHECK_INT(tlsio_read(&front, &got_n, got, big_len), TLSIO_WANT_READ);
    CHECK(front.rx != NULL); /* kept: the peer seemed to stream */
    tlsio_recv_idle(&front);
    CHECK(front.rx == NULL);

    /* A full receive room is kept for the next receive; a partial one is released. */
    void *room = NULL;
    size_t room_len = 0;
    CHECK_INT(tlsio_recv_room(&front, &room, &room_len, 100, 1000), 0);
    CHECK_INT(room_len, 100);
    CHECK_INT(tlsio_recv_room(&front, &room, &room_len, 1001, 1000), -ENOBUFS);
    tlsio_recv_discard(&front);
    CHECK(front.rx == NULL);

    /* cleanup keeps the lent buffer (and what it holds: the lender's). */
    CHECK_INT(buf_append(&front_out, "x", 1, 10), 0);
    tlsio_cleanup(&front);
    CHECK(front.out == &front_out);
    CHECK_INT(tlsio_pending_out(&front), 1);
    free(big);
    free(got);
    tlsio_cleanup(&front);
    tlsio_cleanup(&back);
    buf_cleanup(&front_out);
    buf_cleanup(&back_out);
    tlsio_ctx_free(front_c);
    tlsio_ctx_free(back_c);
}

/* ---- resumption ---- */

/* settle lets the back read what the front sends after the handshake: its TLS 1.3 ticket
 * goes out with its first write (BoringSSL holds it back until then). */
static void settle(struct pair *p)
{
    CHECK_INT(transfer(p, false, (const unsigned char *)"250 ok\r\n", 8, 100), 0);
}

/* resumed connects with |options| and tells whether the handshake resumed (both sides
 * agree); the back has read its new ticket when it returns. */
static bool resumed(struct tlsio_ctx *front, struct tlsio_ctx *back,
                    const struct tlsio_back_options *options)
{
    struct pair *p = connect_ok(front, back, options);
    settle(p);
    bool r = tlsio_resumed(&p->back);
    CHECK(tlsio_resumed(&p->front) == r);
    pair_free(p);
    return r;
}

/* cached returns the number of sessions the back context keeps for |options|. */
static size_t cached(struct tlsio_ctx *back, const struct tlsio_back_options *options)
{
    char key[TLSIO_RESUME_KEY_MAX];
    snprintf(key, sizeof(key), "%s %s %s%s%s", options->address,
             options->name != NULL ? options->name : "-", options->no_client_cert ? "n" : "c",
             options->max_tls12 ? "2" : "3", options->verify_soft ? "s" : "h");
    return tlsio_resume_count(back->cache, key);
}

static void test_resume_back(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct tlsio_ctx *back = back_ctx_verify(ca_pem);
    struct tlsio_back_options options = {.name = HOST, .address = "192.0.2.25:25"};

    /* No address: nothing kept, nothing resumed. */
    struct tlsio_back_options anonymous = {.name = HOST};
    CHECK(!resumed(front, back, &anonymous));
    CHECK(!resumed(front, back, &anonymous));

    struct pair *first = connect_ok(front, back, &options);
    settle(first);
    CHECK(!tlsio_resumed(&first->back));
    CHECK_INT(cached(back, &options), 1);
    char fingerprint[TLSIO_FINGERPRINT_MAX];
    CHECK(tlsio_peer_fingerprint(&first->back, fingerprint, sizeof(fingerprint)));

    /* The next connection resumes; the session carries the upstream's chain, so the gate
     * judges a resumed leg as it judged the first one. */
    struct pair *p = connect_ok(front, back, &options);
    CHECK(tlsio_resumed(&p->back));
    CHECK(tlsio_resumed(&p->front));
    CHECK_INT(cached(back, &options), 0); /* a TLS 1.3 session is used once */
    CHECK_INT(tlsio_verify_result(&p->back, NULL), TLSIO_VERIFY_OK);
    const uint8_t *der[4];
    size_t len[4];
    const uint8_t *der1[4];
    size_t len1[4];
    CHECK_INT(tlsio_peer_chain(&p->back, der, len, 4), 2);
    CHECK_INT(tlsio_peer_chain(&first->back, der1, len1, 4), 2);
    CHECK_MEM(der[0], len[0], der1[0], len1[0]);
    char fp[TLSIO_FINGERPRINT_MAX];
    CHECK(tlsio_peer_fingerprint(&p->back, fp, sizeof(fp)));
    CHECK_STR(fp, fingerprint);
    char names[2][TLSIO_DNS_NAME_MAX];
    CHECK_INT(tlsio_peer_dns_names(&p->back, names, 2), 1);
    CHECK_STR(names[0], HOST);
    struct tlsio_ctx *webpki = NULL;
    char err[TLSIO_ERR_MAX] = "";
    webpki = tlsio_ctx_new_webpki(err, sizeof(err), ca_pem);
    const char *why = NULL;
    CHECK(tlsio_peer_webpki(&p->back, webpki, &why));
    tlsio_ctx_free(webpki);
    settle(p);
    CHECK_INT(cached(back, &options), 1); /* the resumed connection's own ticket */
    pair_free(p);
    pair_free(first);

    /* A session is offered only where everything it depends on is the same: another
     * address, name, or attempt of the ladder starts afresh (and keeps its own). */
    struct tlsio_back_options other[] = {
        {.name = HOST, .address = "192.0.2.26:25"},
        {.name = "b.example.net", .address = "192.0.2.25:25", .verify_soft = true},
        {.name = HOST, .address = "192.0.2.25:25", .no_client_cert = true},
        {.name = HOST, .address = "192.0.2.25:25", .max_tls12 = true},
        {.name = HOST, .address = "192.0.2.25:25", .verify_soft = true},
    };
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        CHECK(!resumed(front, back, &other[i]));
    }
    CHECK_INT(cached(back, &options), 1);
    CHECK(resumed(front, back, &options));

    /* TLS 1.2: the session may be used again; it stays. */
    CHECK(resumed(front, back, &other[3]));
    CHECK_INT(cached(back, &other[3]), 1);
    CHECK(resumed(front, back, &other[3]));

    /* verify_soft with a certificate that fails: nothing kept (a resumed session is not
     * verified again), and what was kept from before is dropped. */
    CHECK_INT(cached(back, &other[1]), 0);
    CHECK(!resumed(front, back, &other[1]));
    CHECK_INT(cached(back, &other[1]), 0);

    /* A failed handshake drops the sessions of its key. */
    CHECK_INT(cached(back, &options), 1);
    CHECK(resumed(front, back, &options)); /* leaves one again */
    struct pair *bad = pair_new(front, back, &options);
    CHECK_INT(tlsio_handshake(&bad->back), TLSIO_WANT_READ);
    static const char junk[] = "220 not TLS at all\r\n";
    size_t n = 0;
    CHECK_INT(tlsio_feed(&bad->back, &n, junk, sizeof(junk) - 1), 0);
    CHECK_INT(tlsio_handshake(&bad->back), TLSIO_FAILED);
    pair_free(bad);
    CHECK_INT(cached(back, &options), 0);
    CHECK(!resumed(front, back, &options));

    /* A reload's new back context starts with an empty cache. */
    struct tlsio_ctx *back2 = back_ctx_verify(ca_pem);
    CHECK(!resumed(front, back2, &options));
    tlsio_ctx_free(back2);
    tlsio_ctx_free(back);
    tlsio_ctx_free(front);
}

static void test_resume_front(void)
{
    struct tlsio_ctx *front = front_ctx_ec();
    struct tlsio_ctx *back = back_ctx(NULL);
    struct tlsio_back_options options = {.address = "192.0.2.25:25"};
    CHECK(!resumed(front, back, &options));
    CHECK(resumed(front, back, &options));

    /* The keys are the process's: another front context (a reload, another worker's
     * reference) takes the tickets of the first. */
    struct tlsio_ctx *front2 = front_ctx_ec();
    CHECK(resumed(front2, back, &options));

    /* Rotation: a ticket of the previous key still resumes (and is renewed); one of the
     * key before that does not. */
    CHECK(tlsio_resume_rotate());
    CHECK(resumed(front, back, &options));
    CHECK(tlsio_resume_rotate());
    CHECK(tlsio_resume_rotate());
    CHECK(!resumed(front, back, &options));
    CHECK(resumed(front, back, &options));

    /* TLS 1.2 tickets too. */
    struct tlsio_back_options tls12 = {.address = "192.0.2.25:25", .max_tls12 = true};
    CHECK(!resumed(front, back, &tls12));
    CHECK(resumed(front2, back, &tls12));
    tlsio_ctx_free(front2);
    tlsio_ctx_free(front);
    tlsio_ctx_free(back);
}

/* ctx_error expects building a context from |conf| to fail; returns the message. */
static const char *ctx_error(struct conf *conf, bool front)
{
    static char err[TLSIO_ERR_MAX];
    bool self_signed = false;
    struct tlsio_ctx *ctx = front ? tlsio_ctx_new_front(err, sizeof(err), &self_signed, conf)
                                  : tlsio_ctx_new_back(err, sizeof(err), conf);
    CHECK(ctx == NULL);
    CHECK(!self_signed);
    tlsio_ctx_free(ctx);
    free(conf);
    return err;
}

static void test_ctx_errors(void)
{
    struct conf *conf = conf_new();
    char typo[] = "ECDHE-RSA-AES128-GCM-SHA257";
    conf->front_tls.ciphers = typo;
    CHECK_STR(ctx_error(conf, true), "ciphers \"ECDHE-RSA-AES128-GCM-SHA257\": INVALID_COMMAND");

    conf = conf_new();
    conf_add_pair(conf, ec_pem, ec_key);
    conf_add_pair(conf, garbage_pem, ec_key);
    const char *err = ctx_error(conf, true);
    CHECK_HAS(err, garbage_pem);
    CHECK_HAS(err, "NO_START_LINE");

    conf = conf_new();
    conf_add_pair(conf, missing_pem, ec_key);
    err = ctx_error(conf, true);
    CHECK_HAS(err, missing_pem);
    CHECK_HAS(err, "No such file or directory");

    conf = conf_new();
    conf_add_pair(conf, ec_pem, garbage_pem);
    err = ctx_error(conf, true);
    CHECK_HAS(err, "key ");
    CHECK_HAS(err, garbage_pem);

    conf = conf_new();
    conf_add_pair(conf, ec_pem, rsa_key);
    err = ctx_error(conf, true);
    CHECK_HAS(err, rsa_key);
    CHECK_HAS(err, ec_pem);
    CHECK_HAS(err, "KEY_TYPE_MISMATCH");

    conf = conf_new();
    conf->back_tls.certificate = ec_pem;
    conf->back_tls.key = missing_pem;
    err = ctx_error(conf, false);
    CHECK_HAS(err, missing_pem);

    conf = conf_new();
    conf->back_tls.verify = CONF_VERIFY_CA;
    conf->back_tls.ca_file = garbage_pem;
    err = ctx_error(conf, false);
    CHECK_HAS(err, "ca_file ");
    CHECK_HAS(err, garbage_pem);

    conf = conf_new();
    conf->back_tls.verify = CONF_VERIFY_CA;
    conf->back_tls.ca_file = missing_pem;
    CHECK_HAS(ctx_error(conf, false), missing_pem);
}

int main(void)
{
    make_files();
    test_handshake_and_data();
    test_long_chain();
    test_write_backpressure();
    test_key_update_backpressure();
    test_tls12_cap();
    test_verify();
    test_client_certificate();
    test_garbage();
    test_close();
    test_self_signed();
    test_rsa_and_ecdsa();
    test_sni();
    test_ctx_lifetime();
    test_ctx_errors();
    test_lent_buffers();
    test_resume_back();
    test_resume_front();
    remove_files();
    return check_exit("test_tlsio");
}
