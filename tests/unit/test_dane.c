/*
 * test_dane: TLSA RDATA parsing and usability, and dane_match() against real certificates
 * made here with BoringSSL (a root, an intermediate, leaves with chosen names and dates,
 * a broken signature, a non-CA issuer): DANE-EE and DANE-TA x Cert/SPKI x Full/SHA-256/
 * SHA-512, wrong data, a trust anchor the peer did not send, expiry, names and wildcards,
 * the CN fallback, NULs in names, unusable-only RRsets.
 */
#include "dane.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "check.h"

/* Every certificate is valid from NOW - 1 day to NOW + 1 year unless a test says not. */
static const int64_t NOW = 1800000000; /* 2027-01-15 */
static const int64_t DAY = 86400;

static EVP_PKEY *key_new(void)
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY *key = EVP_PKEY_new();
    CHECK(ec != NULL && key != NULL && EC_KEY_generate_key(ec) && EVP_PKEY_assign_EC_KEY(key, ec));
    return key;
}

struct spec {
    const char *cn;          /* NULL: none */
    const char *const *sans; /* dNSNames, NULL-terminated list; NULL: no SAN extension */
    size_t nul_san_len;      /* > 0: one more dNSName, of this many bytes of nul_san */
    const char *nul_san;
    bool ip_san; /* add an iPAddress SAN */
    bool ca;
    int64_t not_before; /* relative to NOW */
    int64_t not_after;
};

static const struct spec LEAF = {.sans = (const char *const[]){"mx.example.com", NULL},
                                 .not_before = -DAY,
                                 .not_after = 365 * DAY};
static const struct spec CA = {
    .cn = "Test CA", .ca = true, .not_before = -DAY, .not_after = 3650 * DAY};

static long serial = 1;

static void add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    CHECK(ext != NULL && X509_add_ext(x, ext, -1));
    X509_EXTENSION_free(ext);
}

/* A certificate for |key| with |s|, signed by |issuer_key| (|issuer| NULL: self-signed). */
static X509 *cert_new(const struct spec *s, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();
    CHECK(x != NULL && X509_set_version(x, X509_VERSION_3) &&
          ASN1_INTEGER_set(X509_get_serialNumber(x), serial++) &&
          ASN1_TIME_set(X509_getm_notBefore(x), (time_t)(NOW + s->not_before)) &&
          ASN1_TIME_set(X509_getm_notAfter(x), (time_t)(NOW + s->not_after)) &&
          X509_set_pubkey(x, key));
    X509_NAME *name = X509_get_subject_name(x);
    char cn[64];
    snprintf(cn, sizeof(cn), "serial %ld", serial);
    const char *subject = s->cn != NULL ? s->cn : cn;
    CHECK(X509_NAME_add_entry_by_txt(name, s->cn != NULL ? "CN" : "O", MBSTRING_UTF8,
                                     (const uint8_t *)subject, -1, -1, 0));
    CHECK(X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name));
    if (s->ca) {
        add_ext(x, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, NID_basic_constraints, "critical,CA:FALSE");
    }
    if (s->sans != NULL || s->nul_san_len > 0 || s->ip_san) {
        GENERAL_NAMES *names = GENERAL_NAMES_new();
        for (size_t i = 0; s->sans != NULL && s->sans[i] != NULL; i++) {
            GENERAL_NAME *gn = GENERAL_NAME_new();
            ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
            CHECK(ASN1_STRING_set(ia5, s->sans[i], (int)strlen(s->sans[i])));
            GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
            CHECK(sk_GENERAL_NAME_push(names, gn));
        }
        if (s->nul_san_len > 0) {
            GENERAL_NAME *gn = GENERAL_NAME_new();
            ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
            CHECK(ASN1_STRING_set(ia5, s->nul_san, (int)s->nul_san_len));
            GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
            CHECK(sk_GENERAL_NAME_push(names, gn));
        }
        if (s->ip_san) {
            GENERAL_NAME *gn = GENERAL_NAME_new();
            ASN1_OCTET_STRING *ip = ASN1_OCTET_STRING_new();
            CHECK(ASN1_OCTET_STRING_set(ip, (const uint8_t *)"\xc0\x00\x02\x01", 4));
            GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
            CHECK(sk_GENERAL_NAME_push(names, gn));
        }
        CHECK(X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT));
        GENERAL_NAMES_free(names);
    }
    CHECK(X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

/* DER of |x|, in a buffer of its own (freed by test_end). */
struct der {
    uint8_t *p;
    size_t len;
};

static struct der der_of(X509 *x)
{
    struct der d = {NULL, 0};
    int n = i2d_X509(x, &d.p);
    CHECK(n > 0);
    d.len = (size_t)n;
    return d;
}

static struct der spki_of(X509 *x)
{
    struct der d = {NULL, 0};
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &d.p);
    CHECK(n > 0);
    d.len = (size_t)n;
    return d;
}

/* A TLSA record for |x| as RDATA, parsed into |out|; the RDATA stays in |rdata|. */
static uint8_t rdata_store[64][4096];
static size_t n_rdata;

static struct dane_tlsa tlsa(uint8_t usage, uint8_t selector, uint8_t mtype, X509 *x)
{
    struct der sel = selector == DANE_SELECTOR_SPKI ? spki_of(x) : der_of(x);
    uint8_t *rd = rdata_store[n_rdata++ % 64];
    rd[0] = usage;
    rd[1] = selector;
    rd[2] = mtype;
    size_t len = 3;
    unsigned md_len = 0;
    if (mtype == DANE_MTYPE_SHA256) {
        CHECK(EVP_Digest(sel.p, sel.len, rd + 3, &md_len, EVP_sha256(), NULL));
        len += md_len;
    } else if (mtype == DANE_MTYPE_SHA512) {
        CHECK(EVP_Digest(sel.p, sel.len, rd + 3, &md_len, EVP_sha512(), NULL));
        len += md_len;
    } else {
        CHECK(sel.len <= 4096 - 3);
        memcpy(rd + 3, sel.p, sel.len);
        len += sel.len;
    }
    OPENSSL_free(sel.p);
    struct dane_tlsa r;
    CHECK(dane_tlsa_parse(&r, rd, len));
    return r;
}

/* A chain of up to 4 certificates as DER. */
struct chain {
    struct der der[4];
    const uint8_t *p[4];
    size_t len[4];
    size_t n;
};

static struct chain chain_of(X509 *a, X509 *b, X509 *c)
{
    struct chain ch;
    memset(&ch, 0, sizeof(ch));
    X509 *certs[3] = {a, b, c};
    for (int i = 0; i < 3 && certs[i] != NULL; i++) {
        ch.der[i] = der_of(certs[i]);
        ch.p[i] = ch.der[i].p;
        ch.len[i] = ch.der[i].len;
        ch.n++;
    }
    return ch;
}

static void chain_free(struct chain *ch)
{
    for (size_t i = 0; i < 4; i++) {
        OPENSSL_free(ch->der[i].p);
    }
}

static const char *const MX[] = {"mx.example.com"};

static enum dane_verdict match(struct dane_result *res, const struct dane_tlsa *recs, size_t n,
                               const struct chain *ch, const char *const *refs, size_t n_refs,
                               int64_t now)
{
    /* Each certificate as a heap copy of its exact length, for ASan. */
    uint8_t *copies[4] = {0};
    for (size_t i = 0; i < ch->n; i++) {
        copies[i] = malloc(ch->len[i]);
        CHECK(copies[i] != NULL);
        memcpy(copies[i], ch->p[i], ch->len[i]);
    }
    enum dane_verdict v =
        dane_match(res, recs, n, (const uint8_t *const *)copies, ch->len, ch->n, refs, n_refs, now);
    for (size_t i = 0; i < ch->n; i++) {
        free(copies[i]);
    }
    CHECK_INT(res->verdict, v);
    CHECK(res->reason != NULL && res->reason[0] != '\0');
    CHECK(res->detail != NULL);
    return v;
}

static EVP_PKEY *root_key, *inter_key, *leaf_key, *evil_key;
static X509 *root, *inter, *leaf;

static void test_tlsa_parse(void)
{
    struct dane_tlsa r;
    uint8_t rd[80] = {3, 1, 1};
    for (size_t len = 0; len < 4; len++) {
        CHECK(!dane_tlsa_parse(&r, rd, len));
        CHECK(r.data == NULL && r.usage == 0);
    }
    CHECK(!dane_tlsa_parse(&r, rd, 3 + 31));
    CHECK(!dane_tlsa_parse(&r, rd, 3 + 33));
    CHECK(dane_tlsa_parse(&r, rd, 3 + 32));
    CHECK(r.usage == 3 && r.selector == 1 && r.mtype == 1 && r.data == rd + 3 && r.data_len == 32);
    CHECK(dane_usable(&r));
    rd[2] = 2;
    CHECK(!dane_tlsa_parse(&r, rd, 3 + 63));
    CHECK(!dane_tlsa_parse(&r, rd, 3 + 32));
    CHECK(dane_tlsa_parse(&r, rd, 3 + 64) && dane_usable(&r));
    rd[2] = 0;
    CHECK(dane_tlsa_parse(&r, rd, 4) && dane_usable(&r));
    /* Unknown values parse but are unusable; so are PKIX-TA and PKIX-EE. */
    rd[2] = 3;
    CHECK(dane_tlsa_parse(&r, rd, 10) && !dane_usable(&r));
    rd[2] = 255;
    CHECK(dane_tlsa_parse(&r, rd, 4) && !dane_usable(&r));
    rd[2] = 1;
    rd[1] = 2;
    CHECK(dane_tlsa_parse(&r, rd, 35) && !dane_usable(&r));
    rd[1] = 0;
    for (int usage = 0; usage < 256; usage++) {
        rd[0] = (uint8_t)usage;
        CHECK(dane_tlsa_parse(&r, rd, 35));
        CHECK_INT(dane_usable(&r), usage == 2 || usage == 3);
    }
    /* A record built by hand with a wrong length is unusable too. */
    struct dane_tlsa bad = {.usage = 3, .selector = 1, .mtype = 1, .data = rd, .data_len = 31};
    CHECK(!dane_usable(&bad));
    bad.mtype = 0;
    bad.data_len = 0;
    CHECK(!dane_usable(&bad));
}

static void test_ee(void)
{
    struct chain ch = chain_of(leaf, inter, root);
    struct dane_result res;
    for (uint8_t sel = 0; sel <= 1; sel++) {
        for (uint8_t mt = 0; mt <= 2; mt++) {
            struct dane_tlsa recs[2] = {tlsa(2, 0, 1, inter), tlsa(3, sel, mt, leaf)};
            /* The EE record wins even with no name, at any time. */
            CHECK_INT(match(&res, recs, 2, &ch, NULL, 0, NOW + 3650 * DAY), DANE_MATCHED_EE);
            CHECK_INT(res.record, 1);
            CHECK_INT(res.depth, 0);
            /* One byte of data changed: no match. */
            uint8_t *data = (uint8_t *)recs[1].data;
            data[recs[1].data_len / 2] ^= 1;
            struct dane_tlsa only = recs[1];
            CHECK_INT(match(&res, &only, 1, &ch, MX, 1, NOW), DANE_NO_MATCH);
            CHECK_STR(res.reason, "no TLSA record matches the chain");
            /* An EE record for an intermediate matches nothing. */
            struct dane_tlsa other = tlsa(3, sel, mt, inter);
            CHECK_INT(match(&res, &other, 1, &ch, MX, 1, NOW), DANE_NO_MATCH);
        }
    }
    chain_free(&ch);

    /* A self-signed, expired leaf with a name that is not the MX's, and no chain. */
    EVP_PKEY *k = key_new();
    struct spec s = LEAF;
    s.sans = (const char *const[]){"localhost", NULL};
    s.not_before = -10 * DAY;
    s.not_after = -5 * DAY;
    X509 *self = cert_new(&s, k, NULL, NULL);
    struct chain one = chain_of(self, NULL, NULL);
    struct dane_tlsa r = tlsa(3, 1, 1, self);
    CHECK_INT(match(&res, &r, 1, &one, MX, 1, NOW), DANE_MATCHED_EE);
    CHECK_STR(dane_verdict_name(res.verdict), "matched-ee");
    chain_free(&one);
    X509_free(self);
    EVP_PKEY_free(k);
}

static void test_ta(void)
{
    struct dane_result res;
    struct chain full = chain_of(leaf, inter, root);
    struct chain no_root = chain_of(leaf, inter, NULL);
    for (uint8_t sel = 0; sel <= 1; sel++) {
        for (uint8_t mt = 0; mt <= 2; mt++) {
            /* The root as TA, sent; the intermediate as TA, root sent or not. */
            struct dane_tlsa r = tlsa(2, sel, mt, root);
            CHECK_INT(match(&res, &r, 1, &full, MX, 1, NOW), DANE_MATCHED_TA);
            CHECK_INT(res.depth, 2);
            r = tlsa(2, sel, mt, inter);
            CHECK_INT(match(&res, &r, 1, &full, MX, 1, NOW), DANE_MATCHED_TA);
            CHECK_INT(res.depth, 1);
            CHECK_INT(match(&res, &r, 1, &no_root, MX, 1, NOW), DANE_MATCHED_TA);
            CHECK_INT(res.depth, 1);
            CHECK_STR(dane_verdict_name(res.verdict), "matched-ta");
            /* The root not sent: only a Cert(0) Full(0) record brings its own. */
            r = tlsa(2, sel, mt, root);
            bool own = sel == DANE_SELECTOR_CERT && mt == DANE_MTYPE_FULL;
            CHECK_INT(match(&res, &r, 1, &no_root, MX, 1, NOW),
                      own ? DANE_MATCHED_TA : DANE_NO_MATCH);
            CHECK_INT(res.depth, own ? -1 : 0);
            /* Wrong data. (A Cert Full record with another signature byte would still
             * be a certificate for the same key, so that one is not "wrong".) */
            if (!own) {
                ((uint8_t *)r.data)[r.data_len - 1] ^= 0x80;
                CHECK_INT(match(&res, &r, 1, &full, MX, 1, NOW), DANE_NO_MATCH);
            }
            /* A TA record that matches only the leaf: the leaf is never its own anchor. */
            r = tlsa(2, sel, mt, leaf);
            CHECK_INT(match(&res, &r, 1, &full, MX, 1, NOW), DANE_NO_MATCH);
        }
    }
    /* Nor when the peer sends the leaf twice. */
    struct chain twice = chain_of(leaf, leaf, NULL);
    struct dane_tlsa r = tlsa(2, 0, 0, leaf);
    CHECK_INT(match(&res, &r, 1, &twice, MX, 1, NOW), DANE_NO_MATCH);
    chain_free(&twice);

    /* Names: case and a trailing dot do not matter; another host's name fails. */
    r = tlsa(2, 0, 1, root);
    const char *const upper[] = {"MX.Example.COM."};
    CHECK_INT(match(&res, &r, 1, &full, upper, 1, NOW), DANE_MATCHED_TA);
    const char *const other[] = {"other.example.com"};
    CHECK_INT(match(&res, &r, 1, &full, other, 1, NOW), DANE_NO_MATCH);
    CHECK_STR(res.reason, "a DANE-TA record matches and the chain verifies, but no certificate "
                          "name matches the MX host name");
    CHECK_INT(match(&res, &r, 1, &full, NULL, 0, NOW), DANE_NO_MATCH);
    const char *const two[] = {"bad..name", "other.example.com", "mx.example.com"};
    CHECK_INT(match(&res, &r, 1, &full, two, 3, NOW), DANE_MATCHED_TA);

    /* Dates: the leaf expired, or not yet valid; the TA path fails, with the reason. */
    CHECK_INT(match(&res, &r, 1, &full, MX, 1, NOW + 400 * DAY), DANE_NO_MATCH);
    CHECK_STR(res.reason, "a DANE-TA record matches, but the leaf does not chain to it");
    CHECK_STR(res.detail, X509_verify_cert_error_string(X509_V_ERR_CERT_HAS_EXPIRED));
    CHECK_INT(match(&res, &r, 1, &full, MX, 1, NOW - 2 * DAY), DANE_NO_MATCH);
    CHECK_STR(res.detail, X509_verify_cert_error_string(X509_V_ERR_CERT_NOT_YET_VALID));
    /* An intermediate that expired, named as the TA: the anchor's dates count too. */
    struct spec old_ca = CA;
    old_ca.cn = "Test Intermediate"; /* the same name and key as |inter| */
    old_ca.not_after = -DAY / 2;
    X509 *old = cert_new(&old_ca, inter_key, root, root_key);
    struct chain stale = chain_of(leaf, old, NULL);
    struct dane_tlsa ro = tlsa(2, 1, 1, old);
    CHECK_INT(match(&res, &ro, 1, &stale, MX, 1, NOW), DANE_NO_MATCH);
    CHECK_STR(res.detail, X509_verify_cert_error_string(X509_V_ERR_CERT_HAS_EXPIRED));
    CHECK_INT(match(&res, &ro, 1, &stale, MX, 1, NOW - DAY * 3 / 4), DANE_MATCHED_TA);
    chain_free(&stale);
    X509_free(old);
    /* ... while an EE record for the same leaf still matches then. */
    struct dane_tlsa both[2] = {r, tlsa(3, 1, 1, leaf)};
    CHECK_INT(match(&res, both, 2, &full, MX, 1, NOW + 400 * DAY), DANE_MATCHED_EE);
    chain_free(&full);
    chain_free(&no_root);
}

static void test_ta_attacks(void)
{
    struct dane_result res;
    struct dane_tlsa r = tlsa(2, 1, 1, root);

    /* A broken signature on the leaf. */
    struct chain broken = chain_of(leaf, inter, root);
    broken.der[0].p[broken.der[0].len - 1] ^= 0x01;
    CHECK_INT(match(&res, &r, 1, &broken, MX, 1, NOW), DANE_NO_MATCH);
    CHECK_STR(res.reason, "a DANE-TA record matches, but the leaf does not chain to it");
    CHECK(res.detail[0] != '\0');
    chain_free(&broken);

    /* A leaf from another CA, with the right root sent beside it. */
    X509 *evil_ca = cert_new(&CA, evil_key, NULL, NULL);
    X509 *evil_leaf = cert_new(&LEAF, leaf_key, evil_ca, evil_key);
    struct chain mixed = chain_of(evil_leaf, evil_ca, root);
    CHECK_INT(match(&res, &r, 1, &mixed, MX, 1, NOW), DANE_NO_MATCH);
    chain_free(&mixed);

    /* A leaf issued by a certificate that is not a CA (a stolen server key), under the
     * real intermediate: the intermediate as TA does not bless it. */
    struct spec not_ca = LEAF;
    not_ca.sans = (const char *const[]){"issuer.example.com", NULL};
    X509 *fake = cert_new(&not_ca, evil_key, inter, inter_key);
    X509 *under = cert_new(&LEAF, leaf_key, fake, evil_key);
    struct chain via_fake = chain_of(under, fake, inter);
    struct dane_tlsa ri = tlsa(2, 0, 1, inter);
    CHECK_INT(match(&res, &ri, 1, &via_fake, MX, 1, NOW), DANE_NO_MATCH);
    CHECK_STR(res.detail, X509_verify_cert_error_string(X509_V_ERR_INVALID_CA));
    /* Named by the record itself, it is a trust anchor: RFC 5280 anchors are a key and a
     * name, and the domain chose this one. */
    struct dane_tlsa rf = tlsa(2, 0, 1, fake);
    CHECK_INT(match(&res, &rf, 1, &via_fake, MX, 1, NOW), DANE_MATCHED_TA);
    chain_free(&via_fake);

    /* Garbage as the leaf: an EE Cert Full record of those bytes matches them, nothing
     * else does. */
    static uint8_t garbage_rd[] = {3, 0, 0, 'n', 'o', 't', ' ', 'd', 'e', 'r'};
    struct dane_tlsa g;
    CHECK(dane_tlsa_parse(&g, garbage_rd, sizeof(garbage_rd)));
    struct chain junk;
    memset(&junk, 0, sizeof(junk));
    junk.p[0] = garbage_rd + 3;
    junk.len[0] = 7;
    junk.n = 1;
    CHECK_INT(match(&res, &g, 1, &junk, MX, 1, NOW), DANE_MATCHED_EE);
    struct dane_tlsa spki_ee = tlsa(3, 1, 1, leaf);
    CHECK_INT(match(&res, &spki_ee, 1, &junk, MX, 1, NOW), DANE_NO_MATCH);
    CHECK_INT(match(&res, &r, 1, &junk, MX, 1, NOW), DANE_NO_MATCH);
    CHECK_STR(res.reason, "no DANE-EE record matches, and the leaf does not parse");
    junk.len[0] = 0;
    CHECK_INT(match(&res, &r, 1, &junk, MX, 1, NOW), DANE_NO_MATCH);

    /* No certificate at all. */
    struct chain none;
    memset(&none, 0, sizeof(none));
    CHECK_INT(match(&res, &r, 1, &none, MX, 1, NOW), DANE_NO_MATCH);
    CHECK_STR(res.reason, "no certificate presented");

    X509_free(under);
    X509_free(fake);
    X509_free(evil_leaf);
    X509_free(evil_ca);
}

/* A leaf under |inter| with |s|, checked against the references. */
static enum dane_verdict names_case(const struct spec *s, const char *ref)
{
    X509 *x = cert_new(s, leaf_key, inter, inter_key);
    struct chain ch = chain_of(x, inter, root);
    struct dane_tlsa r = tlsa(2, 0, 1, root);
    struct dane_result res;
    const char *const refs[] = {ref};
    enum dane_verdict v = match(&res, &r, 1, &ch, refs, 1, NOW);
    chain_free(&ch);
    X509_free(x);
    return v;
}

static void test_names(void)
{
    struct spec s = LEAF;
    s.sans = (const char *const[]){"*.example.com", NULL};
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_MATCHED_TA);
    CHECK_INT(names_case(&s, "example.com"), DANE_NO_MATCH);
    CHECK_INT(names_case(&s, "a.mx.example.com"), DANE_NO_MATCH);
    s.sans = (const char *const[]){"*.com", NULL};
    CHECK_INT(names_case(&s, "example.com"), DANE_NO_MATCH);
    s.sans = (const char *const[]){"m*.example.com", "mx.*.com", NULL};
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_NO_MATCH);
    s.sans = (const char *const[]){"a.example.org", "MX.EXAMPLE.COM", NULL};
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_MATCHED_TA);

    /* A NUL inside a name: never "mx.example.com". */
    s.sans = NULL;
    s.nul_san = "mx.example.com\0.evil.org";
    s.nul_san_len = 24;
    s.cn = "mx.example.com"; /* not used: the certificate has a dNSName */
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_NO_MATCH);

    /* The CN only when there is no SAN dNSName (RFC 7672 section 3.2.3). */
    s = LEAF;
    s.sans = NULL;
    s.cn = "mx.example.com";
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_MATCHED_TA);
    s.cn = "*.example.com";
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_MATCHED_TA);
    s.cn = "mx.example.com";
    s.ip_san = true; /* a SAN extension without a dNSName */
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_MATCHED_TA);
    s.ip_san = false;
    s.sans = (const char *const[]){"other.example.com", NULL};
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_NO_MATCH);
    s.sans = NULL;
    s.cn = NULL;
    CHECK_INT(names_case(&s, "mx.example.com"), DANE_NO_MATCH);
}

static void test_unusable(void)
{
    struct dane_result res;
    struct chain ch = chain_of(leaf, inter, root);
    /* PKIX-TA and PKIX-EE records that would match are unusable for SMTP. */
    struct dane_tlsa pkix[2] = {tlsa(0, 0, 1, root), tlsa(1, 1, 1, leaf)};
    CHECK_INT(match(&res, pkix, 2, &ch, MX, 1, NOW), DANE_NO_USABLE_RECORDS);
    CHECK_STR(res.reason, "no usable TLSA record");
    CHECK_STR(dane_verdict_name(res.verdict), "no-usable-records");
    CHECK_INT(match(&res, pkix, 0, &ch, MX, 1, NOW), DANE_NO_USABLE_RECORDS);
    struct chain none;
    memset(&none, 0, sizeof(none));
    CHECK_INT(match(&res, pkix, 2, &none, MX, 1, NOW), DANE_NO_USABLE_RECORDS);
    /* One usable record among them decides alone. */
    struct dane_tlsa mixed[3] = {pkix[0], pkix[1], tlsa(3, 1, 2, leaf)};
    CHECK_INT(match(&res, mixed, 3, &ch, MX, 1, NOW), DANE_MATCHED_EE);
    CHECK_INT(res.record, 2);
    mixed[2] = tlsa(3, 1, 2, inter);
    CHECK_INT(match(&res, mixed, 3, &ch, MX, 1, NOW), DANE_NO_MATCH);
    CHECK_STR(dane_verdict_name(res.verdict), "no-match");
    chain_free(&ch);
}

int main(void)
{
    root_key = key_new();
    inter_key = key_new();
    leaf_key = key_new();
    evil_key = key_new();
    root = cert_new(&CA, root_key, NULL, NULL);
    struct spec is = CA;
    is.cn = "Test Intermediate";
    inter = cert_new(&is, inter_key, root, root_key);
    leaf = cert_new(&LEAF, leaf_key, inter, inter_key);

    test_tlsa_parse();
    test_ee();
    test_ta();
    test_ta_attacks();
    test_names();
    test_unusable();

    X509_free(leaf);
    X509_free(inter);
    X509_free(root);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(inter_key);
    EVP_PKEY_free(leaf_key);
    EVP_PKEY_free(evil_key);
    return check_exit("test_dane");
}
