/*
 * tlsrpt_text: the texts of TLS-RPT (RFC 8460), declared in tlsrpt.h: a report's JSON
 * (section 4.4), JSON string escaping, TLSA records as policy strings (section 4.5), the
 * report's file name (section 5.1) and the _smtp._tls TXT record (section 3). Pure
 * functions of their arguments: no I/O, no logging, no state; only the JSON allocates.
 */
#include "tlsrpt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* I-JSON (RFC 7493 section 2.2): integers beyond 2^53 - 1 do not survive every parser. */
#define TLSRPT_JSON_INT_MAX UINT64_C(9007199254740991)

/* ---- JSON strings ---- */

/*
 * tlsrpt_utf8 decodes the well-formed UTF-8 sequence at |s| (|len| > 0 bytes, Unicode
 * Table 3-7) into *cp and returns its length; for an ill-formed one it returns 0 and sets
 * *bad to the length of its maximal subpart (at least 1), which becomes one U+FFFD.
 */
static size_t tlsrpt_utf8(uint32_t *cp, size_t *bad, const unsigned char *s, size_t len)
{
    unsigned char b0 = s[0];
    size_t need;
    unsigned char lo = 0x80;
    unsigned char hi = 0xbf;
    if (b0 >= 0xc2 && b0 <= 0xdf) {
        need = 1;
        *cp = b0 & 0x1f;
    } else if (b0 >= 0xe0 && b0 <= 0xef) {
        need = 2;
        *cp = b0 & 0x0f;
        lo = b0 == 0xe0 ? 0xa0 : 0x80; /* no overlong forms */
        hi = b0 == 0xed ? 0x9f : 0xbf; /* no surrogates */
    } else if (b0 >= 0xf0 && b0 <= 0xf4) {
        need = 3;
        *cp = b0 & 0x07;
        lo = b0 == 0xf0 ? 0x90 : 0x80; /* no overlong forms */
        hi = b0 == 0xf4 ? 0x8f : 0xbf; /* nothing above U+10FFFF */
    } else {
        *bad = 1; /* a continuation byte, C0, C1, F5..FF */
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= len || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        *cp = (*cp << 6) | (s[i] & 0x3f);
        lo = 0x80;
        hi = 0xbf;
    }
    return need + 1;
}

static size_t tlsrpt_u_escape(char *out, uint32_t unit)
{
    static const char hex[] = "0123456789abcdef";
    out[0] = '\\';
    out[1] = 'u';
    out[2] = hex[(unit >> 12) & 0xf];
    out[3] = hex[(unit >> 8) & 0xf];
    out[4] = hex[(unit >> 4) & 0xf];
    out[5] = hex[unit & 0xf];
    return 6;
}

bool tlsrpt_json_string(char *out, size_t out_cap, size_t *out_len, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    char tmp[12];
    *out_len = 0;
    if (out_cap < 3) {
        goto too_small;
    }
    out[o++] = '"';
    for (size_t i = 0; i < len;) {
        size_t n = 0;
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            tmp[n++] = (char)c;
            i++;
        } else if (c == '"' || c == '\\') {
            tmp[n++] = '\\';
            tmp[n++] = (char)c;
            i++;
        } else if (c < 0x80) {
            n = tlsrpt_u_escape(tmp, c); /* controls and DEL */
            i++;
        } else {
            uint32_t cp = 0;
            size_t bad = 0;
            size_t used = tlsrpt_utf8(&cp, &bad, u + i, len - i);
            if (used == 0) {
                n = tlsrpt_u_escape(tmp, 0xfffd);
                i += bad;
            } else if (cp > 0xffff) {
                cp -= 0x10000;
                n = tlsrpt_u_escape(tmp, 0xd800 | (cp >> 10));
                n += tlsrpt_u_escape(tmp + n, 0xdc00 | (cp & 0x3ff));
                i += used;
            } else {
                n = tlsrpt_u_escape(tmp, cp);
                i += used;
            }
        }
        if (out_cap - o < n + 2) { /* room for the closing quote and the NUL */
            goto too_small;
        }
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o++] = '"';
    out[o] = '\0';
    *out_len = o;
    return true;
too_small:
    if (out_cap > 0) {
        out[0] = '\0';
    }
    return false;
}

/* ---- the report's JSON ---- */

/* A growing output; after a failed allocation every append does nothing. */
struct tlsrpt_json {
    char *data;
    size_t len;
    size_t cap;
    bool failed;
};

static bool tlsrpt_json_reserve(struct tlsrpt_json *j, size_t more)
{
    if (j->failed) {
        return false;
    }
    if (more > SIZE_MAX / 2 - j->len) {
        j->failed = true;
        return false;
    }
    if (j->len + more <= j->cap) {
        return true;
    }
    size_t cap = j->cap == 0 ? 1024 : j->cap;
    while (cap < j->len + more) {
        cap *= 2;
    }
    char *data = realloc(j->data, cap);
    if (data == NULL) {
        j->failed = true;
        return false;
    }
    j->data = data;
    j->cap = cap;
    return true;
}

static void tlsrpt_json_raw(struct tlsrpt_json *j, const char *s)
{
    size_t len = strlen(s);
    if (tlsrpt_json_reserve(j, len + 1)) {
        memcpy(j->data + j->len, s, len + 1);
        j->len += len;
    }
}

static void tlsrpt_json_str(struct tlsrpt_json *j, const char *s)
{
    size_t len = strlen(s);
    if (len > (SIZE_MAX - 3) / 6) {
        j->failed = true;
        return;
    }
    size_t need = 6 * len + 3;
    size_t used;
    if (tlsrpt_json_reserve(j, need) && tlsrpt_json_string(j->data + j->len, need, &used, s, len)) {
        j->len += used;
    }
}

/* tlsrpt_json_member writes ',' unless |first|, then "name": and, when |value| is not
 * NULL, the value as a JSON string. */
static void tlsrpt_json_member(struct tlsrpt_json *j, bool first, const char *name,
                               const char *value)
{
    if (!first) {
        tlsrpt_json_raw(j, ",");
    }
    tlsrpt_json_str(j, name);
    tlsrpt_json_raw(j, ":");
    if (value != NULL) {
        tlsrpt_json_str(j, value);
    }
}

static void tlsrpt_json_count(struct tlsrpt_json *j, uint64_t n)
{
    char num[24];
    snprintf(num, sizeof(num), "%" PRIu64, n > TLSRPT_JSON_INT_MAX ? TLSRPT_JSON_INT_MAX : n);
    tlsrpt_json_raw(j, num);
}

static void tlsrpt_json_strings(struct tlsrpt_json *j, const char *name, const char *const *strings,
                                size_t n)
{
    tlsrpt_json_member(j, false, name, NULL);
    tlsrpt_json_raw(j, "[");
    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            tlsrpt_json_raw(j, ",");
        }
        tlsrpt_json_str(j, strings[i]);
    }
    tlsrpt_json_raw(j, "]");
}

/* tlsrpt_datetime writes |t| as RFC 3339's date-time in UTC, "2026-12-01T00:00:00Z". */
static bool tlsrpt_datetime(char out[80], int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t < 0 || gmtime_r(&tt, &tm) == NULL || tm.tm_year + 1900 > 9999) {
        return false;
    }
    snprintf(out, 80, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return true;
}

static void tlsrpt_json_row(struct tlsrpt_json *j, const struct tlsrpt_row *row)
{
    const struct tlsrpt_failure *f = &row->failure;
    tlsrpt_json_member(j, true, "result-type", f->result_type);
    tlsrpt_json_member(j, false, "sending-mta-ip", f->sending_mta_ip);
    if (f->receiving_mx_hostname != NULL) {
        tlsrpt_json_member(j, false, "receiving-mx-hostname", f->receiving_mx_hostname);
    }
    if (f->receiving_mx_helo != NULL) {
        tlsrpt_json_member(j, false, "receiving-mx-helo", f->receiving_mx_helo);
    }
    if (f->receiving_ip != NULL) {
        tlsrpt_json_member(j, false, "receiving-ip", f->receiving_ip);
    }
    tlsrpt_json_member(j, false, "failed-session-count", NULL);
    tlsrpt_json_count(j, row->failed_session_count);
    if (f->additional_information != NULL) {
        tlsrpt_json_member(j, false, "additional-information", f->additional_information);
    }
    if (f->failure_reason_code != NULL) {
        tlsrpt_json_member(j, false, "failure-reason-code", f->failure_reason_code);
    }
}

static void tlsrpt_json_policy(struct tlsrpt_json *j, const struct tlsrpt_report_policy *p,
                               const char *domain)
{
    tlsrpt_json_member(j, true, "policy", NULL);
    tlsrpt_json_raw(j, "{");
    tlsrpt_json_member(j, true, "policy-type", tlsrpt_policy_type_name(p->policy.type));
    if (p->policy.n_policy_strings > 0) {
        tlsrpt_json_strings(j, "policy-string", p->policy.policy_strings,
                            p->policy.n_policy_strings);
    }
    tlsrpt_json_member(j, false, "policy-domain", domain);
    if (p->policy.n_mx_hosts > 0) {
        tlsrpt_json_strings(j, "mx-host", p->policy.mx_hosts, p->policy.n_mx_hosts);
    }
    tlsrpt_json_raw(j, "}");
    tlsrpt_json_member(j, false, "summary", NULL);
    tlsrpt_json_raw(j, "{");
    tlsrpt_json_member(j, true, "total-successful-session-count", NULL);
    tlsrpt_json_count(j, p->total_successful_session_count);
    tlsrpt_json_member(j, false, "total-failure-session-count", NULL);
    tlsrpt_json_count(j, p->total_failure_session_count);
    tlsrpt_json_raw(j, "}");
    if (p->n_rows > 0) {
        tlsrpt_json_member(j, false, "failure-details", NULL);
        tlsrpt_json_raw(j, "[");
        for (size_t r = 0; r < p->n_rows; r++) {
            tlsrpt_json_raw(j, r == 0 ? "{" : ",{");
            tlsrpt_json_row(j, &p->rows[r]);
            tlsrpt_json_raw(j, "}");
        }
        tlsrpt_json_raw(j, "]");
    }
}

int tlsrpt_report_json(const struct tlsrpt_report *report, char **out_json, size_t *out_len,
                       const char *organization, const char *contact, const char *report_id)
{
    *out_json = NULL;
    *out_len = 0;
    char start[80];
    char end[80];
    if (report == NULL || organization == NULL || organization[0] == '\0' || contact == NULL ||
        contact[0] == '\0' || report_id == NULL || report_id[0] == '\0' ||
        report->n_policies == 0 || !tlsrpt_datetime(start, report->begin) ||
        !tlsrpt_datetime(end, report->end)) {
        return -EINVAL;
    }
    struct tlsrpt_json j = {0};
    tlsrpt_json_raw(&j, "{");
    tlsrpt_json_member(&j, true, "organization-name", organization);
    tlsrpt_json_member(&j, false, "date-range", NULL);
    tlsrpt_json_raw(&j, "{");
    tlsrpt_json_member(&j, true, "start-datetime", start);
    tlsrpt_json_member(&j, false, "end-datetime", end);
    tlsrpt_json_raw(&j, "}");
    tlsrpt_json_member(&j, false, "contact-info", contact);
    tlsrpt_json_member(&j, false, "report-id", report_id);
    tlsrpt_json_member(&j, false, "policies", NULL);
    tlsrpt_json_raw(&j, "[");
    for (size_t i = 0; i < report->n_policies; i++) {
        tlsrpt_json_raw(&j, i == 0 ? "{" : ",{");
        tlsrpt_json_policy(&j, &report->policies[i], report->policy_domain);
        tlsrpt_json_raw(&j, "}");
    }
    tlsrpt_json_raw(&j, "]}");
    if (j.failed) {
        free(j.data);
        return -ENOMEM;
    }
    *out_json = j.data;
    *out_len = j.len;
    return 0;
}

/* ---- TLSA records, file names ---- */

bool tlsrpt_tlsa_string(char *out, size_t out_cap, uint8_t usage, uint8_t selector, uint8_t mtype,
                        const uint8_t *data, size_t data_len)
{
    static const char hex[] = "0123456789ABCDEF";
    int n = snprintf(out, out_cap, "%u %u %u ", usage, selector, mtype);
    size_t need = (size_t)n + (data_len == 0 ? 1 : 2 * data_len) + 1;
    if (n < 0 || data_len > (SIZE_MAX - 16) / 2 || out_cap < need) {
        if (out_cap > 0) {
            out[0] = '\0';
        }
        return false;
    }
    char *o = out + n;
    if (data_len == 0) {
        *o++ = '-';
    }
    for (size_t i = 0; i < data_len; i++) {
        *o++ = hex[data[i] >> 4];
        *o++ = hex[data[i] & 0xf];
    }
    *o = '\0';
    return true;
}

int tlsrpt_file_name(char *out, size_t out_cap, const char *sender, const char *policy_domain,
                     int64_t begin, int64_t end, const char *unique_id, bool gzip)
{
    char s[DNSNAME_BUF];
    char d[DNSNAME_BUF];
    if (out_cap > 0) {
        out[0] = '\0';
    }
    if (sender == NULL || policy_domain == NULL || begin < 0 || end < 0 ||
        dnsname_parse(s, NULL, sender, strlen(sender), DNSNAME_ALLOW_TRAILING_DOT) !=
            DNSNAME_HOST ||
        dnsname_parse(d, NULL, policy_domain, strlen(policy_domain), DNSNAME_ALLOW_TRAILING_DOT) !=
            DNSNAME_HOST) {
        return -EINVAL;
    }
    if (unique_id != NULL) {
        size_t len = strlen(unique_id);
        if (len == 0 || len > TLSRPT_UNIQUE_ID_MAX) {
            return -EINVAL;
        }
        for (size_t i = 0; i < len; i++) {
            char c = unique_id[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) {
                return -EINVAL;
            }
        }
    }
    char name[DNSNAME_BUF * 2 + TLSRPT_UNIQUE_ID_MAX + 64];
    int n = snprintf(name, sizeof(name), "%s!%s!%" PRId64 "!%" PRId64 "%s%s.%s", s, d, begin, end,
                     unique_id != NULL ? "!" : "", unique_id != NULL ? unique_id : "",
                     gzip ? "json.gz" : "json");
    if (n < 0 || (size_t)n >= sizeof(name)) {
        return -ENAMETOOLONG;
    }
    if ((size_t)n > TLSRPT_FILE_NAME_MAX || (size_t)n >= out_cap) {
        return -ENAMETOOLONG;
    }
    memcpy(out, name, (size_t)n + 1);
    return 0;
}

/* ---- the _smtp._tls TXT record ---- */

const char *tlsrpt_rua_result_name(enum tlsrpt_rua_result r)
{
    switch (r) {
    case TLSRPT_RUA_OK:
        return "ok";
    case TLSRPT_RUA_NONE:
        return "none";
    case TLSRPT_RUA_MULTIPLE:
        return "multiple";
    case TLSRPT_RUA_INVALID:
        return "invalid";
    case TLSRPT_RUA_UNUSABLE:
        return "unusable";
    }
    return "?";
}

static bool tlsrpt_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool tlsrpt_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool tlsrpt_wsp(char c)
{
    return c == ' ' || c == '\t';
}

static int tlsrpt_hex(char c)
{
    if (tlsrpt_digit(c)) {
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

/* RFC 3986's characters (unreserved, gen-delims, sub-delims) less ",", "!" and ";", which
 * a tlsrpt-uri MUST percent-encode; "%" is checked apart. */
static bool tlsrpt_uri_char(char c)
{
    return tlsrpt_alpha(c) || tlsrpt_digit(c) || (c != '\0' && strchr("-._~:/?#[]@$&'()*+=", c));
}

/* tlsrpt_uri_end returns the length of the URI at |s| (|len| bytes): RFC 3986 characters
 * with well-formed percent-encoding, starting with a scheme and ":". 0 when there is
 * none there. */
static size_t tlsrpt_uri_end(const char *s, size_t len)
{
    size_t i = 0;
    if (len == 0 || !tlsrpt_alpha(s[0])) {
        return 0;
    }
    while (i < len && (tlsrpt_alpha(s[i]) || tlsrpt_digit(s[i]) || s[i] == '+' || s[i] == '-' ||
                       s[i] == '.')) {
        i++;
    }
    if (i == len || s[i] != ':') {
        return 0;
    }
    while (i < len) {
        if (s[i] == '%') {
            if (i + 2 >= len || tlsrpt_hex(s[i + 1]) < 0 || tlsrpt_hex(s[i + 2]) < 0) {
                return 0;
            }
            i += 3;
        } else if (tlsrpt_uri_char(s[i])) {
            i++;
        } else {
            break;
        }
    }
    return i;
}

static bool tlsrpt_prefix_ci(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    if (len < n) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] - 'A' + 'a') : s[i];
        if (c != prefix[i]) {
            return false;
        }
    }
    return true;
}

/* RFC 5322 atext. */
static bool tlsrpt_atext(char c)
{
    return tlsrpt_alpha(c) || tlsrpt_digit(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* tlsrpt_mailto fills |u| from "mailto:" + |to| (up to "?" or "#"): one addr-spec after
 * percent-decoding, its local part a dot-atom and its domain a host name. */
static bool tlsrpt_mailto(struct tlsrpt_rua_uri *u, const char *to, size_t len)
{
    char addr[TLSRPT_RUA_ADDRESS_MAX + 1];
    size_t n = 0;
    for (size_t i = 0; i < len && to[i] != '?' && to[i] != '#'; i++) {
        char c = to[i];
        if (c == '%') {
            c = (char)(tlsrpt_hex(to[i + 1]) << 4 | tlsrpt_hex(to[i + 2]));
            i += 2;
        }
        if (n == TLSRPT_RUA_ADDRESS_MAX) {
            return false;
        }
        addr[n++] = c;
    }
    addr[n] = '\0';
    const char *at = memchr(addr, '@', n);
    if (at == NULL) {
        return false;
    }
    size_t local = (size_t)(at - addr);
    if (local == 0 || local > 64 || addr[0] == '.' || addr[local - 1] == '.') {
        return false;
    }
    for (size_t i = 0; i < local; i++) {
        if (!(tlsrpt_atext(addr[i]) || (addr[i] == '.' && addr[i + 1] != '.'))) {
            return false;
        }
    }
    char domain[DNSNAME_BUF];
    size_t domain_len;
    if (dnsname_parse(domain, &domain_len, at + 1, n - local - 1, 0) != DNSNAME_HOST ||
        local + 1 + domain_len > TLSRPT_RUA_ADDRESS_MAX) {
        return false;
    }
    u->scheme = TLSRPT_RUA_MAILTO;
    memcpy(u->address, addr, local + 1);
    memcpy(u->address + local + 1, domain, domain_len + 1);
    return true;
}

/* tlsrpt_https fills |u| from "https:" + |rest|: "//" authority (a host name, dotted IPv4 or
 * "[" IPv6 "]", an optional port, no userinfo), then the path and query. */
static bool tlsrpt_https(struct tlsrpt_rua_uri *u, const char *rest, size_t len)
{
    if (len < 2 || rest[0] != '/' || rest[1] != '/') {
        return false;
    }
    size_t a = 2;
    size_t e = a;
    while (e < len && rest[e] != '/' && rest[e] != '?' && rest[e] != '#') {
        e++;
    }
    if (memchr(rest + a, '@', e - a) != NULL) {
        return false; /* userinfo: RFC 9110 section 4.2.4 forbids it in https URIs */
    }
    size_t host_end;
    if (a < e && rest[a] == '[') {
        const char *close = memchr(rest + a, ']', e - a);
        char v6[INET6_ADDRSTRLEN + 1];
        unsigned char bin[16];
        size_t n = close != NULL ? (size_t)(close - rest) - a - 1 : 0;
        if (close == NULL || n == 0 || n >= sizeof(v6)) {
            return false;
        }
        memcpy(v6, rest + a + 1, n);
        v6[n] = '\0';
        if (inet_pton(AF_INET6, v6, bin) != 1 ||
            inet_ntop(AF_INET6, bin, u->host, sizeof(u->host)) == NULL) {
            return false;
        }
        host_end = (size_t)(close - rest) + 1;
    } else {
        host_end = a;
        while (host_end < e && rest[host_end] != ':') {
            host_end++;
        }
        if (dnsname_parse(u->host, NULL, rest + a, host_end - a, DNSNAME_ALLOW_TRAILING_DOT) !=
            DNSNAME_HOST) {
            return false;
        }
    }
    u->port = 443;
    if (host_end < e) {
        if (rest[host_end] != ':') {
            return false;
        }
        unsigned long port = 0;
        for (size_t i = host_end + 1; i < e; i++) {
            if (!tlsrpt_digit(rest[i]) || i - host_end > 5) {
                return false;
            }
            port = port * 10 + (unsigned long)(rest[i] - '0');
        }
        if (host_end + 1 < e) { /* "host:" is the default port (RFC 3986 section 3.2.3) */
            if (port == 0 || port > 65535) {
                return false;
            }
            u->port = (uint16_t)port;
        }
    }
    size_t p = e;
    size_t q = p;
    while (q < len && rest[q] != '#') {
        q++;
    }
    if (p == q || rest[p] != '/') {
        u->path[0] = '/';
        memcpy(u->path + 1, rest + p, q - p);
        u->path[q - p + 1] = '\0';
    } else {
        memcpy(u->path, rest + p, q - p);
        u->path[q - p] = '\0';
    }
    u->scheme = TLSRPT_RUA_HTTPS;
    return true;
}

static bool tlsrpt_rua_same(const struct tlsrpt_rua_uri *a, const struct tlsrpt_rua_uri *b)
{
    return a->scheme == b->scheme && strcmp(a->address, b->address) == 0 &&
           strcmp(a->host, b->host) == 0 && a->port == b->port && strcmp(a->path, b->path) == 0;
}

/* tlsrpt_rua_add keeps the URI |s| (|len| bytes, its syntax checked) when it is usable,
 * new, and there is room. */
static void tlsrpt_rua_add(struct tlsrpt_rua *out, const char *s, size_t len)
{
    if (out->n_uris == TLSRPT_RUA_MAX || len > TLSRPT_RUA_URI_MAX) {
        return;
    }
    struct tlsrpt_rua_uri *u = &out->uris[out->n_uris];
    memset(u, 0, sizeof(*u));
    bool ok = false;
    if (tlsrpt_prefix_ci(s, len, "mailto:")) {
        ok = tlsrpt_mailto(u, s + 7, len - 7);
    } else if (tlsrpt_prefix_ci(s, len, "https:")) {
        ok = tlsrpt_https(u, s + 6, len - 6);
    }
    if (!ok) {
        memset(u, 0, sizeof(*u));
        return;
    }
    memcpy(u->uri, s, len);
    u->uri[len] = '\0';
    for (size_t i = 0; i < out->n_uris; i++) {
        if (tlsrpt_rua_same(&out->uris[i], u)) {
            memset(u, 0, sizeof(*u));
            return;
        }
    }
    out->n_uris++;
}

/* tlsrpt_is_record says whether a record starts with "v=TLSRPTv1" *WSP ";". */
static bool tlsrpt_is_record(const char *s, size_t len)
{
    static const char v[] = "v=TLSRPTv1";
    size_t i = sizeof(v) - 1;
    if (len < i || memcmp(s, v, i) != 0) {
        return false;
    }
    while (i < len && tlsrpt_wsp(s[i])) {
        i++;
    }
    return i < len && s[i] == ';';
}

/* tlsrpt_rua_record parses the record after "v=TLSRPTv1" (RFC 8460 section 3's ABNF). */
static enum tlsrpt_rua_result tlsrpt_rua_record(struct tlsrpt_rua *out, const char *s, size_t len)
{
    size_t i = 0;
    bool rua = false;
    for (;;) {
        /* field-delim = *WSP ";" *WSP, then a field or, after at least one, the end. */
        while (i < len && tlsrpt_wsp(s[i])) {
            i++;
        }
        if (i == len || s[i] != ';') {
            return TLSRPT_RUA_INVALID;
        }
        i++;
        while (i < len && tlsrpt_wsp(s[i])) {
            i++;
        }
        if (i == len) {
            break;
        }
        if (len - i >= 4 && memcmp(s + i, "rua=", 4) == 0) {
            i += 4;
            for (;;) {
                size_t n = tlsrpt_uri_end(s + i, len - i);
                if (n == 0) {
                    return TLSRPT_RUA_INVALID;
                }
                tlsrpt_rua_add(out, s + i, n);
                i += n;
                size_t j = i;
                while (j < len && tlsrpt_wsp(s[j])) {
                    j++;
                }
                if (j == len || s[j] != ',') {
                    break;
                }
                i = j + 1;
                while (i < len && tlsrpt_wsp(s[i])) {
                    i++;
                }
            }
            rua = true;
        } else {
            /* tlsrpt-ext-name "=" tlsrpt-ext-value */
            size_t name = i;
            if (!(tlsrpt_alpha(s[i]) || tlsrpt_digit(s[i]))) {
                return TLSRPT_RUA_INVALID;
            }
            while (i < len && (tlsrpt_alpha(s[i]) || tlsrpt_digit(s[i]) || s[i] == '_' ||
                               s[i] == '-' || s[i] == '.')) {
                i++;
            }
            if (i - name > 32 || i == len || s[i] != '=') {
                return TLSRPT_RUA_INVALID;
            }
            size_t value = ++i;
            while (i < len && s[i] >= 0x21 && s[i] <= 0x7e && s[i] != '=' && s[i] != ';') {
                i++;
            }
            if (i == value) {
                return TLSRPT_RUA_INVALID;
            }
        }
        if (i == len) {
            break;
        }
    }
    if (!rua) {
        return TLSRPT_RUA_INVALID;
    }
    return out->n_uris > 0 ? TLSRPT_RUA_OK : TLSRPT_RUA_UNUSABLE;
}

enum tlsrpt_rua_result tlsrpt_rua_parse(struct tlsrpt_rua *out, const char *const *records,
                                        const size_t *record_lens, size_t n_records)
{
    memset(out, 0, sizeof(*out));
    size_t found = n_records;
    for (size_t r = 0; r < n_records; r++) {
        if (tlsrpt_is_record(records[r], record_lens[r])) {
            if (found != n_records) {
                return TLSRPT_RUA_MULTIPLE;
            }
            found = r;
        }
    }
    if (found == n_records) {
        return TLSRPT_RUA_NONE;
    }
    enum tlsrpt_rua_result res =
        tlsrpt_rua_record(out, records[found] + 10, record_lens[found] - 10);
    if (res != TLSRPT_RUA_OK) {
        memset(out, 0, sizeof(*out));
    }
    return res;
}
