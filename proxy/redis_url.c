/* redis_url: see redis_url.h. */
#include "redis_url.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <string.h>

static int redis_url_hex(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* redis_url_decode copies |len| bytes of |in| to |out| (|cap| bytes with the NUL),
 * decoding %XX. False when too long, on a bad escape, or on a NUL or control byte. */
static bool redis_url_decode(char *out, size_t cap, const char *in, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '%') {
            int hi = len - i >= 3 ? redis_url_hex(in[i + 1]) : -1;
            int lo = len - i >= 3 ? redis_url_hex(in[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                return false;
            }
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        }
        if (c < 0x20 || c == 0x7f || n + 1 >= cap) {
            return false;
        }
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return true;
}

/* redis_url_host_ok accepts a DNS name (letters, digits, '-', '.', '_'), an IPv4 address,
 * or (|bracketed|) an IPv6 address. */
static bool redis_url_host_ok(const char *host, bool bracketed)
{
    if (bracketed) {
        struct in6_addr a6;
        return inet_pton(AF_INET6, host, &a6) == 1;
    }
    if (host[0] == '\0' || host[0] == '.' || host[0] == '-') {
        return false;
    }
    for (const char *p = host; *p != '\0'; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_';
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* redis_url_number parses decimal digits [p, end) no greater than |max|. */
static bool redis_url_number(unsigned long *out, const char *p, const char *end, unsigned long max)
{
    if (p == end || end - p > 10) {
        return false;
    }
    unsigned long v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') {
            return false;
        }
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v > max) {
        return false;
    }
    *out = v;
    return true;
}

static const char *redis_url_userinfo(struct redis_url *out, const char *p, const char *at)
{
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *user_end = colon != NULL ? colon : at;
    if (!redis_url_decode(out->user, sizeof(out->user), p, (size_t)(user_end - p))) {
        return "has a user name that is too long or badly encoded";
    }
    if (colon == NULL) {
        return out->user[0] != '\0' ? "names a user without a password (user:password@)" : NULL;
    }
    if (!redis_url_decode(out->password, sizeof(out->password), colon + 1,
                          (size_t)(at - colon - 1))) {
        return "has a password that is too long or badly encoded";
    }
    if (out->user[0] != '\0' && out->password[0] == '\0') {
        return "names a user without a password (user:password@)";
    }
    return NULL;
}

const char *redis_url_parse(struct redis_url *out, const char *text)
{
    memset(out, 0, sizeof(*out));
    out->port = 6379;
    static const char scheme[] = "redis://";
    if (strncmp(text, scheme, sizeof(scheme) - 1) != 0) {
        return "is not a redis:// URL (redis://[[user]:password@]host[:port][/db])";
    }
    const char *p = text + sizeof(scheme) - 1;
    const char *end = p + strcspn(p, "/?#");
    if (*end == '?' || *end == '#') {
        return "has a query or fragment; expected redis://[[user]:password@]host[:port][/db]";
    }
    const char *at = NULL;
    for (const char *q = p; q < end; q++) {
        if (*q == '@') {
            at = q; /* the last '@': a password may contain one, percent-encoded or not */
        }
    }
    if (at != NULL) {
        const char *error = redis_url_userinfo(out, p, at);
        if (error != NULL) {
            return error;
        }
        p = at + 1;
    }
    const char *host_end;
    const char *after;
    bool bracketed = *p == '[';
    if (bracketed) {
        host_end = memchr(p, ']', (size_t)(end - p));
        if (host_end == NULL) {
            return "has an IPv6 address without its closing ']'";
        }
        p++;
        after = host_end + 1;
    } else {
        host_end = memchr(p, ':', (size_t)(end - p));
        if (host_end == NULL) {
            host_end = end;
        }
        after = host_end;
    }
    size_t host_len = (size_t)(host_end - p);
    if (host_len == 0) {
        return "has no host";
    }
    if (host_len > REDIS_URL_HOST_MAX) {
        return "has a host name longer than 255 characters";
    }
    memcpy(out->host, p, host_len);
    out->host[host_len] = '\0';
    if (!redis_url_host_ok(out->host, bracketed)) {
        return "has an invalid host; expected a name, an IPv4 address or [IPv6]";
    }
    if (after < end) {
        unsigned long port;
        if (*after != ':' || !redis_url_number(&port, after + 1, end, 65535) || port == 0) {
            return "has an invalid port; expected 1 to 65535";
        }
        out->port = (uint16_t)port;
    }
    if (*end == '/' && end[1] != '\0') {
        unsigned long db;
        if (!redis_url_number(&db, end + 1, end + 1 + strlen(end + 1), 1000000)) {
            return "has an invalid database number; expected /0 to /1000000";
        }
        out->db = (unsigned)db;
    }
    return NULL;
}
