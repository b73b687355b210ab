/*
 * dnsname: host name syntax, normalisation and wildcard matching for MTA-STS and DANE.
 * Pure: no I/O, no allocation, no logging. Every comparison works on names this file
 * normalised, so case, trailing dots and embedded NULs are settled in one place.
 */
#include "dnsname.h"

#include <string.h>

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
