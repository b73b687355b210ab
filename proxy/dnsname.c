/*
 * dnsname: host name syntax, normalisation and wildcard matching for MTA-STS and DANE.
 * Pure: no I/O, no allocation, no logging. Every comparison works on names this file
 * normalised, so case, trailing dots and embedded NULs are settled in one place.
 */
#include "dnsname.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

static bool dnsname_ldh(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

enum dnsname_kind dnsname_parse(char *out, size_t *out_len, const char *name, size_t len,
                                unsigned flags)
{
    out[0] = '\0';
    if (out_len != NULL) {
        *out_len = 0;
    }
    if ((flags & DNSNAME_ALLOW_TRAILING_DOT) && len > 1 && name[len - 1] == '.') {
        len--;
    }
    enum dnsname_kind kind = DNSNAME_HOST;
    size_t start = 0;
    if (len >= 2 && name[0] == '*' && name[1] == '.' &&
        (flags & (DNSNAME_ALLOW_WILDCARD | DNSNAME_CERT_WILDCARD))) {
        kind = DNSNAME_WILDCARD;
        start = 2;
    }
    if (len == 0 || len > DNSNAME_MAX) {
        return DNSNAME_INVALID;
    }
    size_t labels = 0;
    size_t label_len = 0;
    for (size_t i = start; i <= len; i++) {
        if (i == len || name[i] == '.') {
            /* RFC 5321 sub-domain: Let-dig [Ldh-str], so no "-" at either end. */
            if (label_len == 0 || label_len > DNSNAME_LABEL_MAX || name[i - label_len] == '-' ||
                name[i - 1] == '-') {
                return DNSNAME_INVALID;
            }
            labels++;
            label_len = 0;
            continue;
        }
        if (!dnsname_ldh((unsigned char)name[i])) {
            return DNSNAME_INVALID; /* "*" elsewhere, NUL, space, "_", non-ASCII */
        }
        label_len++;
    }
    if (kind == DNSNAME_WILDCARD && (flags & DNSNAME_CERT_WILDCARD) && labels < 2) {
        return DNSNAME_INVALID;
    }
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        out[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    out[len] = '\0';
    if (out_len != NULL) {
        *out_len = len;
    }
    return kind;
}

/* The part after the first label, without its dot; NULL for a single-label name. */
static const char *dnsname_parent(const char *name)
{
    const char *dot = strchr(name, '.');
    return dot != NULL ? dot + 1 : NULL;
}

static bool dnsname_is_wildcard(const char *name)
{
    return name[0] == '*' && name[1] == '.';
}

bool dnsname_covers(const char *pattern, const char *host)
{
    if (host[0] == '\0' || dnsname_is_wildcard(host) || pattern[0] == '\0') {
        return false;
    }
    if (!dnsname_is_wildcard(pattern)) {
        return strcmp(pattern, host) == 0;
    }
    const char *parent = dnsname_parent(host);
    return parent != NULL && strcmp(pattern + 2, parent) == 0;
}

bool dnsname_overlap(const char *a, const char *b)
{
    if (a[0] == '\0' || b[0] == '\0') {
        return false;
    }
    bool wa = dnsname_is_wildcard(a);
    bool wb = dnsname_is_wildcard(b);
    if (wa && wb) {
        return strcmp(a + 2, b + 2) == 0;
    }
    if (wa) {
        return dnsname_covers(a, b);
    }
    if (wb) {
        return dnsname_covers(b, a);
    }
    return strcmp(a, b) == 0;
}

/* ---- the domain of a RCPT path ------------------------------------------------------------ */

/* RFC 5321 atext, without the routing characters '%' (the percent hack) and '!' (bang
 * paths); bytes 0x80 or more are UTF-8 mailbox names (RFC 6531), which nobody routes on. */
static bool dnsname_path_atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c >= 0x80 || (c != '\0' && strchr("#$&'*+-/=?^_`{|}~", c) != NULL);
}

/* RFC 5321 qtextSMTP (space included), without '@', '%' and '!', which Postfix routes on
 * inside quotes too; no quoted-pair ('\\' is not qtextSMTP). */
static bool dnsname_path_qtext(unsigned char c)
{
    return c >= 32 && c <= 126 && c != '"' && c != '\\' && c != '@' && c != '%' && c != '!';
}

/* dnsname_path_local skips a plain local part at |p|: a quoted string, or atext and dots.
 * Returns its length, or 0 when it is not one (an empty unquoted local part included). */
static size_t dnsname_path_local(const char *p, size_t len)
{
    size_t i = 0;
    if (len > 0 && p[0] == '"') {
        for (i = 1; i < len && dnsname_path_qtext((unsigned char)p[i]); i++) {
        }
        return i < len && p[i] == '"' ? i + 1 : 0;
    }
    while (i < len && (p[i] == '.' || dnsname_path_atext((unsigned char)p[i]))) {
        i++;
    }
    return i;
}

/* dnsname_path_literal: an IPv4 address literal, or "IPv6:" and an IPv6 address (RFC 5321
 * section 4.1.3), between the brackets at |p|. */
static bool dnsname_path_literal(const char *p, size_t len)
{
    char text[INET6_ADDRSTRLEN];
    uint8_t addr[sizeof(struct in6_addr)];
    if (len < 2 || p[0] != '[' || p[len - 1] != ']') {
        return false;
    }
    p++;
    len -= 2;
    int family = AF_INET;
    if (len > 5 && strncasecmp(p, "IPv6:", 5) == 0) {
        family = AF_INET6;
        p += 5;
        len -= 5;
    }
    if (len == 0 || len >= sizeof(text) || memchr(p, '\0', len) != NULL) {
        return false;
    }
    memcpy(text, p, len);
    text[len] = '\0';
    return inet_pton(family, text, addr) == 1;
}

/* dnsname_path_route skips a source route ("@a,@b:", RFC 5321 section 4.1.2 A-d-l) of host
 * names at |p|. Returns its length with the ':', or 0 when it is not one. */
static size_t dnsname_path_route(const char *p, size_t len)
{
    char name[DNSNAME_BUF];
    size_t i = 0;
    while (i < len && p[i] == '@') {
        size_t start = ++i;
        while (i < len && p[i] != ',' && p[i] != ':') {
            i++;
        }
        if (i == len || dnsname_parse(name, NULL, p + start, i - start,
                                      DNSNAME_ALLOW_TRAILING_DOT) != DNSNAME_HOST) {
            return 0;
        }
        if (p[i++] == ':') {
            return i;
        }
    }
    return 0;
}

enum dnsname_path dnsname_path_domain(char *out, const char *path, size_t len)
{
    out[0] = '\0';
    if (len < 2 || path[0] != '<' || path[len - 1] != '>') {
        return DNSNAME_PATH_UNCLEAR;
    }
    const char *p = path + 1;
    len -= 2;
    if (len > 0 && p[0] == '@') {
        size_t route = dnsname_path_route(p, len);
        if (route == 0) {
            return DNSNAME_PATH_UNCLEAR;
        }
        p += route;
        len -= route;
    }
    size_t local = dnsname_path_local(p, len);
    if (local == len) {
        /* No '@' at all: a local part of the upstream itself ("<postmaster>"), unless a
         * source route came first ("<@a:b>" would go to a, or be refused). */
        return p == path + 1 ? DNSNAME_PATH_LOCAL : DNSNAME_PATH_UNCLEAR;
    }
    if (local == 0 || p[local] != '@') {
        return DNSNAME_PATH_UNCLEAR;
    }
    const char *domain = p + local + 1;
    size_t domain_len = len - local - 1;
    if (domain_len > 0 && domain[0] == '[') {
        return dnsname_path_literal(domain, domain_len) ? DNSNAME_PATH_LITERAL
                                                        : DNSNAME_PATH_UNCLEAR;
    }
    if (dnsname_parse(out, NULL, domain, domain_len, DNSNAME_ALLOW_TRAILING_DOT) == DNSNAME_HOST) {
        return DNSNAME_PATH_DOMAIN;
    }
    /* A U-label domain: a policy lives under its A-label, which we cannot compute. Only
     * letters, digits, '-', '.' and such bytes: anything else hides the domain. */
    bool non_ascii = false;
    for (size_t i = 0; i < domain_len; i++) {
        unsigned char c = (unsigned char)domain[i];
        if (c < 0x80 && !dnsname_ldh(c) && c != '.') {
            return DNSNAME_PATH_UNCLEAR;
        }
        non_ascii |= c >= 0x80;
    }
    return non_ascii ? DNSNAME_PATH_NON_ASCII : DNSNAME_PATH_UNCLEAR;
}
