/*
 * dane: DANE for SMTP (RFC 6698, RFC 7671, RFC 7672) as pure functions: TLSA RDATA, which
 * records are usable, and whether a peer's certificate chain matches them. No I/O, no
 * logging; BoringSSL does the digests and the chain verification. Safe from any thread.
 */
#ifndef PROXY_DANE_H
#define PROXY_DANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* dane_match() uses at most this many chain certificates and reference identifiers; the
 * rest are ignored. */
#define DANE_CHAIN_MAX 32
#define DANE_REF_IDS_MAX 8

/* RFC 6698 section 2.1 field values, with RFC 7218's names. */
enum dane_usage {
    DANE_USAGE_PKIX_TA = 0,
    DANE_USAGE_PKIX_EE = 1,
    DANE_USAGE_DANE_TA = 2,
    DANE_USAGE_DANE_EE = 3,
};

enum dane_selector {
    DANE_SELECTOR_CERT = 0, /* the whole certificate, DER */
    DANE_SELECTOR_SPKI = 1, /* its SubjectPublicKeyInfo, DER */
};

enum dane_mtype {
    DANE_MTYPE_FULL = 0,   /* the selected bytes themselves */
    DANE_MTYPE_SHA256 = 1, /* their SHA-256, 32 bytes */
    DANE_MTYPE_SHA512 = 2, /* their SHA-512, 64 bytes */
};

/* One TLSA record. |data| is borrowed from the RDATA given to dane_tlsa_parse(). */
struct dane_tlsa {
    uint8_t usage;    /* enum dane_usage, or another value (unusable) */
    uint8_t selector; /* enum dane_selector, or another value */
    uint8_t mtype;    /* enum dane_mtype, or another value */
    const uint8_t *data;
    size_t data_len;
};

/*
 * dane_tlsa_parse reads one TLSA RDATA in wire format (RFC 6698 section 2.1: usage,
 * selector and matching type octets, then the certificate association data to the end),
 * |rdata_len| bytes at |rdata|. Returns false for a malformed record: shorter than 4 bytes
 * (no data), SHA2-256 data that is not 32 bytes, SHA2-512 data that is not 64. Unknown
 * usage, selector or matching type values are not malformed, only unusable. On success
 * |out->data| points into |rdata|, which must outlive |out|; on failure |out| is zeroed.
 * A malformed record is unusable (RFC 7672 section 2.2).
 */
bool dane_tlsa_parse(struct dane_tlsa *out, const uint8_t *rdata, size_t rdata_len);

/*
 * dane_usable says whether an SMTP client may use |r| (RFC 7672 section 3.1): usage
 * DANE-TA(2) or DANE-EE(3), selector Cert(0) or SPKI(1), matching type Full(0),
 * SHA2-256(1) or SHA2-512(2), with data of the right length. PKIX-TA(0) and PKIX-EE(1)
 * (section 3.1.3) and unknown values are unusable.
 */
bool dane_usable(const struct dane_tlsa *r);

enum dane_verdict {
    DANE_NO_MATCH = 0,      /* usable records, none matched: authentication failed */
    DANE_MATCHED_EE,        /* a DANE-EE(3) record matched the leaf */
    DANE_MATCHED_TA,        /* a DANE-TA(2) record matched a trust anchor of a valid chain */
    DANE_NO_USABLE_RECORDS, /* the RRset has no usable record (RFC 7672 section 2.2:
                             * TLS is still required, authentication is not) */
};

struct dane_result {
    enum dane_verdict verdict;
    const char *reason; /* static text: why this verdict, for the log */
    const char *detail; /* static text: the chain verification error of the best DANE-TA
                         * attempt (BoringSSL's words), or "" */
    size_t record;      /* MATCHED_*: the index of the record that matched */
    int depth;          /* MATCHED_*: the chain index of the certificate it matched;
                         * -1 when it was the record's own certificate (TA not sent) */
};

/*
 * dane_match authenticates a peer's certificate chain with a TLSA RRset (RFC 7672
 * section 3): |n_records| records (unusable ones are skipped), the chain as the peer sent
 * it, |n_chain| DER certificates with |chain[0]| the leaf, and |n_ref_ids| reference
 * identifiers (NUL-terminated host names: the TLSA base domain, i.e. the MX host name,
 * and any other name RFC 7672 section 3.2.2 allows; a trailing dot is ignored).
 * - DANE-EE(3): the leaf's certificate or SPKI matches; no name, expiry or chain checks
 *   (section 3.1.1). Tried first.
 * - DANE-TA(2): a certificate of the chain other than the leaf matches, or, for a
 *   Cert(0) Full(0) record, the record's own certificate is the trust anchor even when the
 *   peer did not send it (RFC 7671 section 5.2.2). The leaf must chain to that anchor alone
 *   with valid signatures, every certificate valid at |now| (seconds since the epoch),
 *   intermediates CAs (the anchor need not be one: the record names it, and an RFC 5280
 *   trust anchor is a key and a name); no EKU is required. Then the leaf's names must match
 *   a reference identifier (section 3.2.3): SAN dNSNames, or the subject CNs only when the
 *   certificate has no SAN dNSName; a wildcard only as the whole left-most label, with two
 *   labels after it, matching exactly one label. A record matching only the leaf is never
 *   a trust anchor, nor is a SPKI(1) Full(0) record whose certificate was not sent.
 * Returns the verdict, also stored in |out| with the reason; never fails otherwise
 * (out of memory reads as a failed attempt, so at worst NO_MATCH).
 */
enum dane_verdict dane_match(struct dane_result *out, const struct dane_tlsa *records,
                             size_t n_records, const uint8_t *const *chain,
                             const size_t *chain_lens, size_t n_chain, const char *const *ref_ids,
                             size_t n_ref_ids, int64_t now);

/* dane_verdict_name returns "no-match", "matched-ee", "matched-ta" or "no-usable-records". */
const char *dane_verdict_name(enum dane_verdict verdict);

#endif
