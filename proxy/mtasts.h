/*
 * mtasts: MTA-STS (RFC 8461) as pure functions: the _mta-sts TXT record, the policy body,
 * and whether an MX host or a certificate name is allowed by a policy. No I/O, no logging;
 * the policy parser allocates its result, nothing else allocates. Safe from any thread.
 */
#ifndef PROXY_MTASTS_H
#define PROXY_MTASTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest policy id (RFC 8461 section 3.1: 1*32(ALPHA / DIGIT)). */
#define MTASTS_ID_MAX 32
/* The largest max_age (RFC 8461 section 3.2); a larger value is capped to it. */
#define MTASTS_MAX_AGE_MAX 31557600u
/* The most "mx" lines a policy may have; a policy with more is invalid. RFC 8461 sets no
 * limit; real policies have a handful. */
#define MTASTS_MX_MAX 128
/* The policy size the fetch should accept at most (RFC 8461 section 3.3 suggests 64 KB).
 * mtasts_policy_parse() itself is safe for any length. */
#define MTASTS_POLICY_MAX 65536
/* The size of an error text buffer, its NUL included. */
#define MTASTS_ERROR_MAX 128

enum mtasts_txt_result {
    MTASTS_TXT_OK = 0,   /* exactly one STSv1 record, valid: the id is in out_id */
    MTASTS_TXT_NONE,     /* no record starts with "v=STSv1" */
    MTASTS_TXT_MULTIPLE, /* more than one does */
    MTASTS_TXT_INVALID,  /* exactly one does, but it does not follow the ABNF */
};

/*
 * mtasts_txt_parse judges the TXT RRset of _mta-sts.<domain> (RFC 8461 section 3.1):
 * |n_records| records, record i being the |record_lens[i]| bytes at |records[i]|, each
 * the concatenation of its character-strings (see mtasts_txt_from_rdata). A record is an
 * STSv1 record when it starts with "v=STSv1" followed by ";", a space, a tab or its end
 * (the ABNF's sts-field-delim allows whitespace before the ";", RFC 8461 erratum 6285);
 * others are ignored. Exactly one must remain, and it must follow the ABNF to the letter:
 * "v=STSv1" first, fields separated by *WSP ";" *WSP, an optional delimiter at the end,
 * "id=" with 1 to 32 letters and digits required, other name=value fields (sts-extension)
 * ignored, names and "v=STSv1" case-sensitive. A field named "id" whose value is not a
 * valid id makes the record invalid; of several valid ids the first counts (RFC 8461
 * section 3.2, applied to the record as to the policy). Only MTASTS_TXT_OK means
 * "the domain has a policy"; every other result means "no available policy" (section
 * 3.1), which does not remove a cached one (section 5.1). On OK, |out_id| (MTASTS_ID_MAX
 * + 1 bytes) holds the id, NUL-terminated; otherwise "".
 */
enum mtasts_txt_result mtasts_txt_parse(char *out_id, const char *const *records,
                                        const size_t *record_lens, size_t n_records);

/* mtasts_txt_result_name returns a short static name for |r| ("ok", "none", "multiple",
 * "invalid"). */
const char *mtasts_txt_result_name(enum mtasts_txt_result r);

/*
 * mtasts_txt_from_rdata concatenates the character-strings of one TXT RR's RDATA (RFC 1035
 * section 3.3.14: one or more <length octet><bytes>) into |out| (|out_cap| bytes), without
 * separators (RFC 8461 section 3.1), and sets *out_len. Returns false, with *out_len 0,
 * when the RDATA is empty, a length runs past its end, or the text does not fit (|out_cap|
 * >= |rdata_len| always fits). |out| is not NUL-terminated: a TXT string may hold NULs.
 */
bool mtasts_txt_from_rdata(char *out, size_t out_cap, size_t *out_len, const uint8_t *rdata,
                           size_t rdata_len);

enum mtasts_mode {
    MTASTS_MODE_NONE = 0,
    MTASTS_MODE_TESTING,
    MTASTS_MODE_ENFORCE,
};

/* mtasts_mode_name returns "none", "testing" or "enforce". */
const char *mtasts_mode_name(enum mtasts_mode mode);

/* A parsed policy: one allocation, read-only after parsing, shareable between threads. */
struct mtasts_policy {
    enum mtasts_mode mode;
    uint32_t max_age;    /* seconds, 0..MTASTS_MAX_AGE_MAX */
    bool max_age_capped; /* the policy said more than MTASTS_MAX_AGE_MAX */
    size_t n_mx;         /* 0..MTASTS_MX_MAX; 0 only with mode none */
    /* The patterns in policy order: lowercase, no trailing dot, NUL-terminated, either a
     * host name ("mail.example.com") or "*." and a name ("*.example.net"). */
    const char *const *mx;
};

enum mtasts_policy_result {
    MTASTS_POLICY_OK = 0,  /* *out is a policy: free it with mtasts_policy_free() */
    MTASTS_POLICY_INVALID, /* not a valid policy: out_error says why */
    MTASTS_POLICY_NOMEM,   /* out of memory */
};

/*
 * mtasts_policy_parse parses the policy body (RFC 8461 section 3.2), |len| bytes at |body|
 * (any bytes, any length: the caller caps the fetch at MTASTS_POLICY_MAX), to the letter
 * of the section's ABNF:
 * - lines end in LF or CRLF, the last one may end without; no empty lines, no other CR;
 * - each line is name ":" *WSP value *WSP, no space before the ":" nor at the line's
 *   start; names are case-sensitive ("Mode" is an unknown field);
 * - "version" (STSv1), "mode" (enforce, testing or none) and "max_age" (1 to 10 digits)
 *   are required; a repeated one counts the first time and is otherwise ignored, though
 *   it too must be well-formed;
 * - "mx" may repeat, at most MTASTS_MX_MAX times, and is required unless mode is none;
 *   its value is a domain (RFC 5321 sub-domains: letters, digits, inner "-"; A-labels, never
 *   U-labels) or "*." and a domain. One trailing dot is accepted and dropped (our
 *   leniency: it names the same host);
 * - other fields are ignored, but must follow sts-policy-extension (a name of at most 32
 *   characters, a value of printable ASCII or UTF-8 with inner spaces);
 * - a max_age above MTASTS_MAX_AGE_MAX is capped to it (max_age_capped is set): the ABNF
 *   allows 10 digits, and capping keeps the publisher's policy in force.
 * On OK, *out is the policy (caller frees with mtasts_policy_free) and |out_error| holds
 * "". Otherwise *out is NULL and |out_error| (MTASTS_ERROR_MAX bytes) names the line and
 * what is wrong, in printable ASCII that never quotes the body ("line 3: mode is not
 * enforce, testing or none").
 */
enum mtasts_policy_result mtasts_policy_parse(struct mtasts_policy **out, char *out_error,
                                              const char *body, size_t len);

/* mtasts_policy_free frees a policy from mtasts_policy_parse(); NULL does nothing. */
void mtasts_policy_free(struct mtasts_policy *policy);

/*
 * mtasts_mx_matches says whether the MX host name |host| (|host_len| bytes, as the MX
 * record gave it) is allowed by one of |policy|'s mx patterns (RFC 8461 section 4.1):
 * case-insensitive, a trailing dot ignored, "*.example.com" matching exactly one more
 * label ("mail.example.com", never "example.com" or "a.b.example.com"). A host that is
 * not a valid host name (see dnsname_parse: empty labels, NULs, "*", "_") matches nothing.
 */
bool mtasts_mx_matches(const struct mtasts_policy *policy, const char *host, size_t host_len);

/*
 * mtasts_cert_name_matches is for a leg whose MX host name is unknown (transparent mode
 * knows only the address): it says whether some host name allowed by |policy| is also
 * covered by one of the certificate's DNS names, |names[i]| being |name_lens[i]| bytes
 * (SAN dNSNames as the certificate holds them; the caller has verified the chain). The
 * rule, as sets of host names:
 * - a certificate name is a host name or "*." plus at least two labels (RFC 6125 section
 *   6.4.3 wildcards, whole left-most label only; "*.com", "m*.example.com", "a.*.com" and
 *   any name with a NUL, an empty label or a non-LDH byte match nothing);
 * - host name and pattern: equal, or the pattern's "*." covers it (as mtasts_mx_matches);
 * - wildcard and exact pattern: the wildcard covers the pattern ("*.example.com" covers
 *   "mx.example.com");
 * - wildcard and wildcard pattern: equal after "*.": "*.example.com" matches the pattern
 *   "*.example.com" but not "*.com" nor "*.sub.example.com". The MTA-STS drafts'
 *   "strip the wildcard and match label by label until the shorter side is consumed"
 *   would also accept "*.mx.example.com" for "*.example.com", a certificate for hosts
 *   the pattern does not allow; this is stricter.
 * A wildcard never matches an empty label or more than one label. Pass SAN dNSNames only,
 * never the subject CN (RFC 8461 section 4.2 requires a DNS-ID).
 */
bool mtasts_cert_name_matches(const struct mtasts_policy *policy, const char *const *names,
                              const size_t *name_lens, size_t n_names);

#endif
