/*
 * dane: TLSA records and their matching against a peer's chain (RFC 6698, RFC 7671,
 * RFC 7672). Pure: no I/O, no logging. Hand-written because BoringSSL has no DANE (OpenSSL's
 * SSL_dane_* does not exist there); BoringSSL still does the digests, the DER parsing and
 * the chain verification. Fuzzed by tests/fuzz/fuzz_dane.c.
 */
#include "dane.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "dnsname.h"

bool dane_tlsa_parse(struct dane_tlsa *out, const uint8_t *rdata, size_t rdata_len)
{
    memset(out, 0, sizeof(*out));
    if (rdata_len < 4) {
        return false;
    }
    size_t data_len = rdata_len - 3;
    if ((rdata[2] == DANE_MTYPE_SHA256 && data_len != 32) ||
        (rdata[2] == DANE_MTYPE_SHA512 && data_len != 64)) {
        return false;
    }
    out->usage = rdata[0];
    out->selector = rdata[1];
    out->mtype = rdata[2];
    out->data = rdata + 3;
    out->data_len = data_len;
    return true;
}

bool dane_usable(const struct dane_tlsa *r)
{
    if (r->usage != DANE_USAGE_DANE_TA && r->usage != DANE_USAGE_DANE_EE) {
        return false;
    }
    if (r->selector != DANE_SELECTOR_CERT && r->selector != DANE_SELECTOR_SPKI) {
        return false;
    }
    switch (r->mtype) {
    case DANE_MTYPE_FULL:
        return r->data != NULL && r->data_len > 0;
    case DANE_MTYPE_SHA256:
        return r->data != NULL && r->data_len == 32;
    case DANE_MTYPE_SHA512:
        return r->data != NULL && r->data_len == 64;
    default:
        return false;
    }
}

/* The SubjectPublicKeyInfo element of a DER certificate (RFC 5280 section 4.1), as sent:
 * the bytes a SPKI(1) record describes, not a re-encoding. */
static bool dane_spki(CBS *out, const uint8_t *der, size_t len)
{
    CBS in;
    CBS cert;
    CBS tbs;
    CBS_init(&in, der, len);
    if (!CBS_get_asn1(&in, &cert, CBS_ASN1_SEQUENCE) || CBS_len(&in) != 0 ||
        !CBS_get_asn1(&cert, &tbs, CBS_ASN1_SEQUENCE) ||
        !CBS_get_optional_asn1(&tbs, NULL, NULL,
                               CBS_ASN1_CONTEXT_SPECIFIC | CBS_ASN1_CONSTRUCTED | 0) ||
        !CBS_get_asn1(&tbs, NULL, CBS_ASN1_INTEGER) ||  /* serialNumber */
        !CBS_get_asn1(&tbs, NULL, CBS_ASN1_SEQUENCE) || /* signature */
        !CBS_get_asn1(&tbs, NULL, CBS_ASN1_SEQUENCE) || /* issuer */
        !CBS_get_asn1(&tbs, NULL, CBS_ASN1_SEQUENCE) || /* validity */
        !CBS_get_asn1(&tbs, NULL, CBS_ASN1_SEQUENCE)) { /* subject */
        return false;
    }
    return CBS_get_asn1_element(&tbs, out, CBS_ASN1_SEQUENCE);
}

/* Whether record |r| (usable) describes the certificate |der|. */
static bool dane_matches_cert(const struct dane_tlsa *r, const uint8_t *der, size_t der_len)
{
    const uint8_t *sel = der;
    size_t sel_len = der_len;
    if (r->selector == DANE_SELECTOR_SPKI) {
        CBS spki;
        if (!dane_spki(&spki, der, der_len)) {
            return false;
        }
        sel = CBS_data(&spki);
        sel_len = CBS_len(&spki);
    }
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    switch (r->mtype) {
    case DANE_MTYPE_FULL:
        return sel_len == r->data_len && memcmp(sel, r->data, sel_len) == 0;
    case DANE_MTYPE_SHA256:
        if (!EVP_Digest(sel, sel_len, md, &md_len, EVP_sha256(), NULL)) {
            return false;
        }
        break;
    case DANE_MTYPE_SHA512:
        if (!EVP_Digest(sel, sel_len, md, &md_len, EVP_sha512(), NULL)) {
            return false;
        }
        break;
    default:
        return false;
    }
    return md_len == r->data_len && memcmp(md, r->data, md_len) == 0;
}

/* A whole DER certificate, or NULL (trailing bytes are refused too). */
static X509 *dane_x509(const uint8_t *der, size_t len)
{
    const uint8_t *p = der;
    if (len > LONG_MAX) {
        return NULL;
    }
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x != NULL && p != der + len) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* Whether one presented name (|len| bytes, any bytes) matches a reference identifier. */
static bool dane_name_matches(const char *name, size_t len, char refs[][DNSNAME_BUF], size_t n_refs)
{
    char norm[DNSNAME_BUF];
    if (dnsname_parse(norm, NULL, name, len, DNSNAME_CERT_WILDCARD) == DNSNAME_INVALID) {
        return false;
    }
    for (size_t i = 0; i < n_refs; i++) {
        if (dnsname_covers(norm, refs[i])) {
            return true;
        }
    }
    return false;
}

/* RFC 7672 section 3.2.3: SAN dNSNames when there is at least one, else subject CNs. */
static bool dane_leaf_names_match(X509 *leaf, const char *const *ref_ids, size_t n_ref_ids)
{
    char refs[DANE_REF_IDS_MAX][DNSNAME_BUF];
    size_t n_refs = 0;
    for (size_t i = 0; i < n_ref_ids && n_refs < DANE_REF_IDS_MAX; i++) {
        if (dnsname_parse(refs[n_refs], NULL, ref_ids[i], strlen(ref_ids[i]),
                          DNSNAME_ALLOW_TRAILING_DOT) == DNSNAME_HOST) {
            n_refs++;
        }
    }
    if (n_refs == 0) {
        return false;
    }
    int crit = 0;
    GENERAL_NAMES *sans = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
    if (sans == NULL && crit != -1) {
        return false; /* present but broken, or repeated: trust no name */
    }
    bool have_dns = false;
    bool matched = false;
    for (size_t i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans) && !matched; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_DNS) {
            continue;
        }
        have_dns = true;
        const ASN1_STRING *s = gn->d.dNSName;
        matched = dane_name_matches((const char *)ASN1_STRING_get0_data(s),
                                    (size_t)ASN1_STRING_length(s), refs, n_refs);
    }
    GENERAL_NAMES_free(sans);
    if (have_dns || matched) {
        return matched;
    }
    X509_NAME *subject = X509_get_subject_name(leaf);
    for (int j = -1; (j = X509_NAME_get_index_by_NID(subject, NID_commonName, j)) >= 0;) {
        unsigned char *utf8 = NULL;
        int n =
            ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, j)));
        if (n >= 0) {
            matched = dane_name_matches((const char *)utf8, (size_t)n, refs, n_refs);
        }
        OPENSSL_free(utf8);
        if (matched) {
            return true;
        }
    }
    return false;
}

/* Verifies |leaf| to |anchor| alone (partial chains allowed), |untrusted| as
 * intermediates, at |now|. Returns the X509_V_* result (X509_V_OK on success). */
static int dane_verify(X509 *leaf, X509 *anchor, STACK_OF(X509) * untrusted, int64_t now)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int err = X509_V_ERR_OUT_OF_MEM;
    if (store != NULL && ctx != NULL && X509_STORE_add_cert(store, anchor) &&
        X509_STORE_CTX_init(ctx, store, leaf, untrusted)) {
        X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_PARTIAL_CHAIN);
        X509_STORE_CTX_set_time(ctx, 0, (time_t)now);
        err = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
        if (err == X509_V_OK) {
            /* The store holds only |anchor|, so a verified chain ends there. */
            STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(ctx);
            size_t n = sk_X509_num(chain);
            if (n == 0 || X509_cmp(sk_X509_value(chain, n - 1), anchor) != 0) {
                err = X509_V_ERR_UNSPECIFIED;
            }
        }
    }
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return err;
}

/* The state of the DANE-TA(2) search: the parsed leaf and intermediates, and how far the
 * best attempt got, for the reason. */
struct dane_ta {
    X509 *leaf;
    STACK_OF(X509) * untrusted;
    const char *const *ref_ids;
    size_t n_ref_ids;
    int64_t now;
    int progress; /* 0 nothing matched, 1 matched but no valid chain, 2 chain but no name */
    int verify_error;
};

/* Tries |anchor| (not owned) as the trust anchor; true when the leaf is authenticated. */
static bool dane_try_anchor(struct dane_ta *ta, X509 *anchor)
{
    if (X509_cmp(anchor, ta->leaf) == 0) {
        return false; /* the leaf is never its own trust anchor */
    }
    if (ta->progress < 1) {
        ta->progress = 1;
    }
    int err = dane_verify(ta->leaf, anchor, ta->untrusted, ta->now);
    if (err != X509_V_OK) {
        if (ta->progress == 1) {
            ta->verify_error = err;
        }
        return false;
    }
    ta->progress = 2;
    ta->verify_error = X509_V_OK;
    return dane_leaf_names_match(ta->leaf, ta->ref_ids, ta->n_ref_ids);
}

static enum dane_verdict dane_done(struct dane_result *out, enum dane_verdict verdict,
                                   const char *reason)
{
    out->verdict = verdict;
    out->reason = reason;
    return verdict;
}

enum dane_verdict dane_match(struct dane_result *out, const struct dane_tlsa *records,
                             size_t n_records, const uint8_t *const *chain,
                             const size_t *chain_lens, size_t n_chain, const char *const *ref_ids,
                             size_t n_ref_ids, int64_t now)
{
    out->detail = "";
    out->record = 0;
    out->depth = 0;
    bool usable = false;
    for (size_t i = 0; i < n_records; i++) {
        usable = usable || dane_usable(&records[i]);
    }
    if (!usable) {
        return dane_done(out, DANE_NO_USABLE_RECORDS, "no usable TLSA record");
    }
    if (n_chain == 0) {
        return dane_done(out, DANE_NO_MATCH, "no certificate presented");
    }

    /* DANE-EE(3): the leaf alone, no other check (RFC 7672 section 3.1.1). */
    for (size_t i = 0; i < n_records; i++) {
        if (records[i].usage == DANE_USAGE_DANE_EE && dane_usable(&records[i]) &&
            dane_matches_cert(&records[i], chain[0], chain_lens[0])) {
            out->record = i;
            return dane_done(out, DANE_MATCHED_EE, "a DANE-EE record matches the leaf");
        }
    }

    /* DANE-TA(2) (RFC 7672 section 3.1.2). */
    struct dane_ta ta = {.ref_ids = ref_ids, .n_ref_ids = n_ref_ids, .now = now};
    if (n_chain > DANE_CHAIN_MAX) {
        n_chain = DANE_CHAIN_MAX;
    }
    ta.leaf = dane_x509(chain[0], chain_lens[0]);
    bool leaf_parsed = ta.leaf != NULL;
    ta.untrusted = sk_X509_new_null();
    X509 **parsed = calloc(n_chain, sizeof(X509 *));
    bool found = false;
    if (ta.leaf != NULL && ta.untrusted != NULL && parsed != NULL) {
        for (size_t c = 1; c < n_chain; c++) {
            parsed[c] = dane_x509(chain[c], chain_lens[c]);
            if (parsed[c] != NULL && !sk_X509_push(ta.untrusted, parsed[c])) {
                X509_free(parsed[c]);
                parsed[c] = NULL;
            }
        }
        for (size_t i = 0; i < n_records && !found; i++) {
            const struct dane_tlsa *r = &records[i];
            if (r->usage != DANE_USAGE_DANE_TA || !dane_usable(r)) {
                continue;
            }
            for (size_t c = 1; c < n_chain && !found; c++) {
                if (parsed[c] != NULL && dane_matches_cert(r, chain[c], chain_lens[c]) &&
                    dane_try_anchor(&ta, parsed[c])) {
                    found = true;
                    out->record = i;
                    out->depth = (int)c;
                }
            }
            if (!found && r->selector == DANE_SELECTOR_CERT && r->mtype == DANE_MTYPE_FULL) {
                X509 *own = dane_x509(r->data, r->data_len);
                if (own != NULL && dane_try_anchor(&ta, own)) {
                    found = true;
                    out->record = i;
                    out->depth = -1;
                }
                X509_free(own);
            }
        }
    }
    int progress = ta.progress;
    int verify_error = ta.verify_error;
    sk_X509_pop_free(ta.untrusted, X509_free); /* owns parsed[1..] */
    free(parsed);
    X509_free(ta.leaf);

    if (found) {
        return dane_done(out, DANE_MATCHED_TA,
                         "a DANE-TA record matches a trust anchor of the chain, and a name");
    }
    out->record = 0;
    out->depth = 0;
    if (progress == 2) {
        return dane_done(out, DANE_NO_MATCH,
                         "a DANE-TA record matches and the chain verifies, but no certificate "
                         "name matches the MX host name");
    }
    if (progress == 1) {
        out->detail = X509_verify_cert_error_string(verify_error);
        return dane_done(out, DANE_NO_MATCH,
                         "a DANE-TA record matches, but the leaf does not chain to it");
    }
    if (!leaf_parsed) {
        return dane_done(out, DANE_NO_MATCH,
                         "no DANE-EE record matches, and the leaf does not parse");
    }
    return dane_done(out, DANE_NO_MATCH, "no TLSA record matches the chain");
}

const char *dane_verdict_name(enum dane_verdict verdict)
{
    switch (verdict) {
    case DANE_NO_MATCH:
        return "no-match";
    case DANE_MATCHED_EE:
        return "matched-ee";
    case DANE_MATCHED_TA:
        return "matched-ta";
    case DANE_NO_USABLE_RECORDS:
        return "no-usable-records";
    }
    return "?";
}
