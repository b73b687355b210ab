/*
 * fuzz_dane: libFuzzer target for dane.c. A few real certificates are made once (a root,
 * an intermediate, leaves under it, an unrelated self-signed one); the input is a program
 * that builds a TLSA RRset (records for those certificates with any usage, selector and
 * matching type, possibly corrupted, or raw RDATA), a chain (those certificates in any
 * order, corrupted copies, raw bytes), reference identifiers and a time, then runs
 * dane_match(). Checked: the verdict agrees with dane_usable() and with a DANE-EE reference
 * computed here; a match names a record of the right usage and a possible depth; the same
 * call gives the same answer; every chain certificate is a heap copy of its exact length.
 */
#include "dane.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FUZZ_NOW 1800000000
#define FUZZ_CERTS 5

struct fuzz_cert {
    uint8_t *der;
    size_t der_len;
    uint8_t *spki;
    size_t spki_len;
};

static struct fuzz_cert certs[FUZZ_CERTS];

static EVP_PKEY *fuzz_key(void)
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY *key = EVP_PKEY_new();
    FUZZ_ASSERT(ec != NULL && key != NULL && EC_KEY_generate_key(ec) &&
                EVP_PKEY_assign_EC_KEY(key, ec));
    return key;
}

static X509 *fuzz_cert_new(const char *cn, const char *san, bool ca, EVP_PKEY *key, X509 *issuer,
                           EVP_PKEY *issuer_key, long serial)
{
    X509 *x = X509_new();
    FUZZ_ASSERT(x != NULL && X509_set_version(x, X509_VERSION_3) &&
                ASN1_INTEGER_set(X509_get_serialNumber(x), serial) &&
                ASN1_TIME_set(X509_getm_notBefore(x), FUZZ_NOW - 86400) &&
                ASN1_TIME_set(X509_getm_notAfter(x), FUZZ_NOW + 86400 * 30) &&
                X509_set_pubkey(x, key));
    X509_NAME *name = X509_get_subject_name(x);
    FUZZ_ASSERT(
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0));
    FUZZ_ASSERT(X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name));
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_basic_constraints,
                                               ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    FUZZ_ASSERT(ext != NULL && X509_add_ext(x, ext, -1));
    X509_EXTENSION_free(ext);
    if (san != NULL) {
        ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_subject_alt_name, san);
        FUZZ_ASSERT(ext != NULL && X509_add_ext(x, ext, -1));
        X509_EXTENSION_free(ext);
    }
    FUZZ_ASSERT(X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void fuzz_keep(struct fuzz_cert *c, X509 *x)
{
    c->der = NULL;
    int n = i2d_X509(x, &c->der);
    FUZZ_ASSERT(n > 0);
    c->der_len = (size_t)n;
    c->spki = NULL;
    n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &c->spki);
    FUZZ_ASSERT(n > 0);
    c->spki_len = (size_t)n;
}

static void fuzz_init(void)
{
    EVP_PKEY *root_key = fuzz_key();
    EVP_PKEY *inter_key = fuzz_key();
    EVP_PKEY *leaf_key = fuzz_key();
    EVP_PKEY *other_key = fuzz_key();
    X509 *root = fuzz_cert_new("Root", NULL, true, root_key, NULL, NULL, 1);
    X509 *inter = fuzz_cert_new("Inter", NULL, true, inter_key, root, root_key, 2);
    X509 *leaf =
        fuzz_cert_new("mx.example.com", "DNS:mx.example.com", false, leaf_key, inter, inter_key, 3);
    X509 *wild =
        fuzz_cert_new("wild", "DNS:*.example.com,DNS:*.com", false, leaf_key, inter, inter_key, 4);
    X509 *other = fuzz_cert_new("mx.example.com", NULL, false, other_key, NULL, NULL, 5);
    X509 *all[FUZZ_CERTS] = {root, inter, leaf, wild, other};
    for (int i = 0; i < FUZZ_CERTS; i++) {
        fuzz_keep(&certs[i], all[i]);
        X509_free(all[i]);
    }
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(inter_key);
    EVP_PKEY_free(leaf_key);
    EVP_PKEY_free(other_key);
}

/* The input, read a byte at a time; zeros once it runs out. */
struct fuzz_in {
    const uint8_t *p;
    size_t len;
};

static uint8_t fuzz_byte(struct fuzz_in *in)
{
    if (in->len == 0) {
        return 0;
    }
    in->len--;
    return *in->p++;
}

static size_t fuzz_take(struct fuzz_in *in, const uint8_t **out, size_t want)
{
    size_t n = want < in->len ? want : in->len;
    *out = in->p;
    in->p += n;
    in->len -= n;
    return n;
}

/* Reference: the selected bytes of certificate bytes |der| for selector |sel|, when they
 * are one of ours (raw bytes have no SPKI we know). */
static bool fuzz_ee_matches(const struct dane_tlsa *r, const uint8_t *der, size_t len)
{
    const uint8_t *sel = der;
    size_t sel_len = len;
    if (r->selector == DANE_SELECTOR_SPKI) {
        sel = NULL;
        for (int i = 0; i < FUZZ_CERTS; i++) {
            if (certs[i].der_len == len && memcmp(certs[i].der, der, len) == 0) {
                sel = certs[i].spki;
                sel_len = certs[i].spki_len;
            }
        }
        if (sel == NULL) {
            return false; /* unknown: no claim either way */
        }
    }
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    if (r->mtype == DANE_MTYPE_FULL) {
        return sel_len == r->data_len && memcmp(sel, r->data, sel_len) == 0;
    }
    FUZZ_ASSERT(EVP_Digest(sel, sel_len, md, &md_len,
                           r->mtype == DANE_MTYPE_SHA256 ? EVP_sha256() : EVP_sha512(), NULL));
    return md_len == r->data_len && memcmp(md, r->data, md_len) == 0;
}

static bool fuzz_is_ours(const uint8_t *der, size_t len)
{
    for (int i = 0; i < FUZZ_CERTS; i++) {
        if (certs[i].der_len == len && memcmp(certs[i].der, der, len) == 0) {
            return true;
        }
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        fuzz_init();
        ready = true;
    }
    struct fuzz_in in = {data, size};
    static const int64_t times[4] = {FUZZ_NOW, FUZZ_NOW - 2 * 86400, FUZZ_NOW + 40 * 86400, 0};
    int64_t now = times[fuzz_byte(&in) & 3];

    static uint8_t arena[16][4096];
    struct dane_tlsa records[16];
    size_t n_records = 0;
    uint8_t *chain[8];
    size_t chain_lens[8];
    size_t n_chain = 0;
    char refs[4][64];
    const char *ref_ptrs[4];
    size_t n_refs = 0;
    static const char *const names[] = {"mx.example.com", "MX.EXAMPLE.COM.", "a.example.com",
                                        "example.com",    "a.b.example.com", "evil.org"};

    for (int ops = 0; in.len > 0 && ops < 40; ops++) {
        uint8_t op = fuzz_byte(&in) % 7;
        if (op == 0 || op == 1 || op == 6) { /* a chain certificate */
            if (n_chain == 8) {
                continue;
            }
            const uint8_t *src;
            size_t len;
            if (op == 1) {
                len = fuzz_take(&in, &src, fuzz_byte(&in));
            } else {
                const struct fuzz_cert *c = &certs[fuzz_byte(&in) % FUZZ_CERTS];
                src = c->der;
                len = c->der_len;
            }
            chain[n_chain] = malloc(len == 0 ? 1 : len);
            FUZZ_ASSERT(chain[n_chain] != NULL);
            memcpy(chain[n_chain], src, len);
            if (op == 6 && len > 0) {
                size_t at = ((size_t)fuzz_byte(&in) << 8 | fuzz_byte(&in)) % len;
                chain[n_chain][at] ^= (uint8_t)(fuzz_byte(&in) | 1);
            }
            chain_lens[n_chain++] = len;
        } else if (op == 2 || op == 3) { /* a record */
            if (n_records == 16) {
                continue;
            }
            uint8_t *rd = arena[n_records];
            size_t len;
            if (op == 3) {
                const uint8_t *src;
                len = fuzz_take(&in, &src, fuzz_byte(&in));
                memcpy(rd, src, len);
            } else {
                rd[0] = fuzz_byte(&in) % 5;
                rd[1] = fuzz_byte(&in) % 3;
                rd[2] = fuzz_byte(&in) % 4;
                const struct fuzz_cert *c = &certs[fuzz_byte(&in) % FUZZ_CERTS];
                const uint8_t *sel = rd[1] == 1 ? c->spki : c->der;
                size_t sel_len = rd[1] == 1 ? c->spki_len : c->der_len;
                unsigned md_len = 0;
                if (rd[2] == 1 || rd[2] == 2) {
                    FUZZ_ASSERT(EVP_Digest(sel, sel_len, rd + 3, &md_len,
                                           rd[2] == 1 ? EVP_sha256() : EVP_sha512(), NULL));
                    len = 3 + md_len;
                } else {
                    memcpy(rd + 3, sel, sel_len);
                    len = 3 + sel_len;
                }
                uint8_t flip = fuzz_byte(&in);
                if (flip != 0 && len > 3) {
                    rd[3 + flip % (len - 3)] ^= flip;
                }
            }
            struct dane_tlsa r;
            bool ok = dane_tlsa_parse(&r, rd, len);
            FUZZ_ASSERT(ok ==
                        (len >= 4 && !(rd[2] == 1 && len != 35) && !(rd[2] == 2 && len != 67)));
            if (ok) {
                FUZZ_ASSERT(r.data == rd + 3 && r.data_len == len - 3);
                records[n_records++] = r;
            } else {
                FUZZ_ASSERT(r.data == NULL && r.data_len == 0);
            }
        } else if (op == 4 || op == 5) { /* a reference identifier */
            if (n_refs == 4) {
                continue;
            }
            if (op == 4) {
                strcpy(refs[n_refs], names[fuzz_byte(&in) % 6]);
            } else {
                const uint8_t *src;
                size_t len = fuzz_take(&in, &src, fuzz_byte(&in) % 63);
                memcpy(refs[n_refs], src, len);
                refs[n_refs][len] = '\0';
            }
            ref_ptrs[n_refs] = refs[n_refs];
            n_refs++;
        }
    }

    struct dane_result res;
    enum dane_verdict v = dane_match(&res, records, n_records, (const uint8_t *const *)chain,
                                     chain_lens, n_chain, ref_ptrs, n_refs, now);
    FUZZ_ASSERT(res.verdict == v && res.reason != NULL && res.detail != NULL);
    FUZZ_ASSERT(strlen(dane_verdict_name(v)) > 0);

    bool usable = false;
    bool ee = false;
    bool ee_known = n_chain > 0;
    for (size_t i = 0; i < n_records; i++) {
        usable = usable || dane_usable(&records[i]);
        if (n_chain > 0 && records[i].usage == DANE_USAGE_DANE_EE && dane_usable(&records[i])) {
            if (records[i].selector == DANE_SELECTOR_SPKI &&
                !fuzz_is_ours(chain[0], chain_lens[0])) {
                ee_known = false;
            } else {
                ee = ee || fuzz_ee_matches(&records[i], chain[0], chain_lens[0]);
            }
        }
    }
    FUZZ_ASSERT((v == DANE_NO_USABLE_RECORDS) == !usable);
    if (usable && ee_known) {
        FUZZ_ASSERT((v == DANE_MATCHED_EE) == ee);
    }
    if (v == DANE_MATCHED_EE) {
        FUZZ_ASSERT(res.record < n_records && records[res.record].usage == DANE_USAGE_DANE_EE);
        FUZZ_ASSERT(res.depth == 0);
    }
    if (v == DANE_MATCHED_TA) {
        FUZZ_ASSERT(res.record < n_records && records[res.record].usage == DANE_USAGE_DANE_TA);
        FUZZ_ASSERT(res.depth == -1 || (res.depth >= 1 && (size_t)res.depth < n_chain));
        FUZZ_ASSERT(n_refs > 0);
    }
    struct dane_result again;
    FUZZ_ASSERT(dane_match(&again, records, n_records, (const uint8_t *const *)chain, chain_lens,
                           n_chain, ref_ptrs, n_refs, now) == v);
    FUZZ_ASSERT(again.record == res.record && again.depth == res.depth);

    for (size_t i = 0; i < n_chain; i++) {
        free(chain[i]);
    }
    return 0;
}
