/*
 * dnsname: host names as MTA-STS and DANE compare them: syntax checks, normalisation
 * (lowercase, no trailing dot) and the RFC 6125 / RFC 8461 / RFC 7672 wildcard rules; and
 * the domain of a RCPT path, as the downgrade gate must read it.
 * Pure functions: no I/O, no allocation, no logging; safe from any thread.
 */
#ifndef PROXY_DNSNAME_H
#define PROXY_DNSNAME_H

#include <stdbool.h>
#include <stddef.h>

/* The longest name in presentation form without the trailing dot (RFC 1035 section 2.3.4:
 * 255 octets on the wire), and a buffer that holds one with its NUL. */
#define DNSNAME_MAX 253
#define DNSNAME_BUF (DNSNAME_MAX + 1)
/* The longest label (RFC 1035 section 2.3.4). */
#define DNSNAME_LABEL_MAX 63

enum dnsname_kind {
    DNSNAME_INVALID = 0, /* not a name these rules accept */
    DNSNAME_HOST,        /* "mx.example.com" */
    DNSNAME_WILDCARD,    /* "*.example.com": "*" as the whole left-most label */
};

/* Flags for dnsname_parse(). */
#define DNSNAME_ALLOW_WILDCARD 0x1u /* accept "*." + name */
/* A wildcard needs at least two labels after "*." ("*.com" is refused), the rule browsers
 * and OpenSSL apply to certificates so that no certificate can cover a whole top-level
 * domain. For certificate names only, not for MTA-STS patterns (the policy's own choice). */
#define DNSNAME_CERT_WILDCARD 0x2u
#define DNSNAME_ALLOW_TRAILING_DOT 0x4u /* accept and drop one trailing "." */

/*
 * dnsname_parse checks the |len| bytes at |name| (any bytes, NUL included) and writes the
 * normalised name to |out| (DNSNAME_BUF bytes): ASCII lowercased, NUL-terminated, without
 * the trailing dot. A name is labels of letters, digits and "-" (RFC 5321 section 4.1.2
 * sub-domain: not starting or ending with "-"), 1 to DNSNAME_LABEL_MAX bytes each, at most
 * DNSNAME_MAX bytes in all, joined by single dots. A-labels ("xn--...") are ordinary labels;
 * any byte outside those (a NUL, a space, "_", UTF-8) makes the name invalid. "*" is
 * accepted only as the whole first label and only with DNSNAME_ALLOW_WILDCARD (partial
 * wildcards such as "m*.example.com" are invalid, RFC 7672 section 3.2.3). Returns the
 * kind; on DNSNAME_INVALID |out| holds "" and *out_len is 0. |out_len| may be NULL.
 */
enum dnsname_kind dnsname_parse(char *out, size_t *out_len, const char *name, size_t len,
                                unsigned flags);

/*
 * dnsname_covers says whether |pattern| (a normalised host name or wildcard, from
 * dnsname_parse) matches the normalised host name |host| (no wildcard): equal, or
 * "*.rest" with |host| being exactly one more label followed by ".rest" (RFC 6125 section
 * 6.4.3, RFC 8461 section 4.1: "*.example.com" matches "mail.example.com" but neither
 * "example.com" nor "a.b.example.com"). A |host| that is itself a wildcard matches
 * nothing.
 */
bool dnsname_covers(const char *pattern, const char *host);

/*
 * dnsname_overlap says whether some host name is matched by both |a| and |b|, normalised
 * names of which either or both may be wildcards: the rule for a certificate name against
 * an MTA-STS pattern when no host name is known (see mtasts.h). Two host names overlap
 * when equal; a wildcard and a host name when the wildcard covers the host; two wildcards
 * when their suffixes after "*." are equal ("*.example.com" and "*.mx.example.com" cover
 * disjoint sets: nothing is both one label under example.com and under mx.example.com).
 */
bool dnsname_overlap(const char *a, const char *b);

/* What dnsname_path_domain() found in a RCPT path. */
enum dnsname_path {
    DNSNAME_PATH_UNCLEAR = 0, /* which domain a lax server would route it to is not certain */
    DNSNAME_PATH_DOMAIN,      /* local-part@host-name: the host name is written out */
    DNSNAME_PATH_LOCAL,       /* a plain local part alone: "<postmaster>", "<>" */
    DNSNAME_PATH_LITERAL,     /* a plain local part at an address literal: "<a@[192.0.2.1]>" */
    DNSNAME_PATH_NON_ASCII,   /* a plain local part at a domain holding bytes 0x80 or more */
};

/*
 * dnsname_path_domain reads the |len| bytes of an SMTP path, angle brackets included
 * ("<a@b>", "<@r1,@r2:a@b>"), for the downgrade gate, which must judge the domain the
 * upstream will route the recipient to. Postfix (and others like it) read far more than
 * RFC 5321 allows, and route on what they read: the percent hack ("a%d@relay" goes to d),
 * bang paths ("d!a@relay"), an '@' inside a quoted local part ("\"a@d\"@relay", "\"a@d\""),
 * two '@' ("a@d@relay"), RFC 822 comments, spaces and quoted-pairs ("a@d (x@relay)",
 * "a@d >", "a@d\\.x"). So only a plain mailbox is given a domain: an optional source route
 * of host names, then a local part of atext and dots (RFC 5321 section 4.1.2, without '%'
 * and '!'; bytes 0x80 or more allowed, RFC 6531) or a quoted string of qtextSMTP (space
 * included) without '@', '%', '!' or '\\', then '@' and a host name (one trailing dot
 * allowed), an IPv4 literal or an "IPv6:" literal. A plain local part without '@' is
 * DNSNAME_PATH_LOCAL; anything else is DNSNAME_PATH_UNCLEAR. On DNSNAME_PATH_DOMAIN |out|
 * (DNSNAME_BUF bytes) holds the normalised host name (dnsname_parse()), otherwise "".
 */
enum dnsname_path dnsname_path_domain(char *out, const char *path, size_t len);

#endif
