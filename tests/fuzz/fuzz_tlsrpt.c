/*
 * fuzz_tlsrpt: libFuzzer target for tlsrpt.c and tlsrpt_text.c. The first byte chooses what
 * the rest is, split at LF into fields:
 * - even: a _smtp._tls TXT RRset, one record a field. Checked: the result agrees with a
 *   count of records starting "v=TLSRPTv1" *WSP ";"; only OK carries destinations, 1 to
 *   TLSRPT_RUA_MAX, each printable with no space, a mailto address one "@" between a
 *   dot-atom and a host name (nothing that could break out of "RCPT TO:<...>"), an https
 *   host non-empty with a port and a path starting "/".
 * - odd: strings for sessions, policies and the report's metadata. The aggregator counts
 *   successes and failures built from them (and from valid values, so that reports exist),
 *   hands out reports by take and snapshot, and renders them with fuzzer-chosen
 *   organization, contact and report id. Checked: every JSON text parses (a strict RFC 8259
 *   parser below, which also rejects lone surrogates as I-JSON does), is printable ASCII,
 *   and its counts add up; every field escaped alone decodes back to its bytes when they
 *   are well-formed UTF-8; file names never hold "/" nor fit a ".." component.
 * Every input is a heap copy of its exact length, so ASan sees any read past it.
 */
#include "tlsrpt.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FUZZ_FIELDS_MAX 24

static char *fuzz_copy(const void *data, size_t len)
{
    char *c = malloc(len + 1);
    FUZZ_ASSERT(c != NULL);
    if (len != 0) {
        memcpy(c, data, len);
    }
    c[len] = '\0';
    return c;
}

/* ---- a strict JSON parser (RFC 8259), decoding strings to UTF-8 ---- */

struct fuzz_json {
    const char *s;
    size_t len;
    size_t i;
    char *out; /* decoded string bytes, when not NULL */
    size_t out_len;
    size_t out_cap;
};

static void fuzz_json_ws(struct fuzz_json *j)
{
    while (j->i < j->len &&
           (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' || j->s[j->i] == '\r')) {
        j->i++;
    }
}

static void fuzz_json_put(struct fuzz_json *j, uint32_t cp)
{
    if (j->out == NULL) {
        return;
    }
    uint8_t b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (uint8_t)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (uint8_t)(0xc0 | cp >> 6);
        b[1] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (uint8_t)(0xe0 | cp >> 12);
        b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (uint8_t)(0xf0 | cp >> 18);
        b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 4;
    }
    FUZZ_ASSERT(j->out_len + n <= j->out_cap);
    memcpy(j->out + j->out_len, b, n);
    j->out_len += n;
}

static bool fuzz_json_hex4(struct fuzz_json *j, uint32_t *out)
{
    *out = 0;
    for (int k = 0; k < 4; k++) {
        if (j->i >= j->len) {
            return false;
        }
        char c = j->s[j->i++];
        uint32_t v;
        if (c >= '0' && c <= '9') {
            v = (uint32_t)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v = (uint32_t)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v = (uint32_t)(c - 'A' + 10);
        } else {
            return false;
        }
        *out = *out << 4 | v;
    }
    return true;
}

static bool fuzz_json_string(struct fuzz_json *j)
{
    if (j->i >= j->len || j->s[j->i] != '"') {
        return false;
    }
    j->i++;
    while (j->i < j->len) {
        unsigned char c = (unsigned char)j->s[j->i++];
        if (c == '"') {
            return true;
        }
        if (c < 0x20 || c >= 0x7f) {
            return false; /* raw controls are not JSON; raw non-ASCII is not our output */
        }
        if (c != '\\') {
            fuzz_json_put(j, c);
            continue;
        }
        if (j->i >= j->len) {
            return false;
        }
        char e = j->s[j->i++];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e != '\0' && simple != NULL) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            fuzz_json_put(j, (unsigned char)map[simple - "\"\\/bfnrt"]);
            continue;
        }
        uint32_t u;
        if (e != 'u' || !fuzz_json_hex4(j, &u)) {
            return false;
        }
        if (u >= 0xdc00 && u <= 0xdfff) {
            return false; /* a lone low surrogate */
        }
        if (u >= 0xd800 && u <= 0xdbff) {
            uint32_t lo;
            if (j->i + 2 > j->len || j->s[j->i] != '\\' || j->s[j->i + 1] != 'u') {
                return false; /* a lone high surrogate */
            }
            j->i += 2;
            if (!fuzz_json_hex4(j, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                return false;
            }
            u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
        }
        fuzz_json_put(j, u);
    }
    return false;
}

static bool fuzz_json_value(struct fuzz_json *j, int depth);

static bool fuzz_json_number(struct fuzz_json *j)
{
    size_t start = j->i;
    if (j->i < j->len && j->s[j->i] == '-') {
        j->i++;
    }
    if (j->i < j->len && j->s[j->i] == '0') {
        j->i++;
    } else if (j->i < j->len && j->s[j->i] >= '1' && j->s[j->i] <= '9') {
        while (j->i < j->len && j->s[j->i] >= '0' && j->s[j->i] <= '9') {
            j->i++;
        }
    } else {
        return false;
    }
    /* Our output has integers only: no fraction, no exponent, at most 2^53 - 1. */
    FUZZ_ASSERT(j->s[start] != '-' && j->i - start <= 16);
    return true;
}

static bool fuzz_json_value(struct fuzz_json *j, int depth)
{
    FUZZ_ASSERT(depth < 16);
    fuzz_json_ws(j);
    if (j->i >= j->len) {
        return false;
    }
    char c = j->s[j->i];
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->i++;
        fuzz_json_ws(j);
        if (j->i < j->len && j->s[j->i] == close) {
            j->i++;
            return true;
        }
        for (;;) {
            if (c == '{') {
                fuzz_json_ws(j);
                if (!fuzz_json_string(j)) {
                    return false;
                }
                fuzz_json_ws(j);
                if (j->i >= j->len || j->s[j->i++] != ':') {
                    return false;
                }
            }
            if (!fuzz_json_value(j, depth + 1)) {
                return false;
            }
            fuzz_json_ws(j);
            if (j->i >= j->len) {
                return false;
            }
            char d = j->s[j->i++];
            if (d == close) {
                return true;
            }
            if (d != ',') {
                return false;
            }
        }
    }
    if (c == '"') {
        return fuzz_json_string(j);
    }
    return fuzz_json_number(j);
}

/* fuzz_json_valid says whether |s| is exactly one JSON value, an object. */
static bool fuzz_json_valid(const char *s, size_t len)
{
    struct fuzz_json j = {.s = s, .len = len};
    if (len == 0 || s[0] != '{' || !fuzz_json_value(&j, 0)) {
        return false;
    }
    fuzz_json_ws(&j);
    return j.i == len;
}

/* fuzz_utf8_valid: well-formed UTF-8 (a reference written apart from tlsrpt_text.c's). */
static bool fuzz_utf8_valid(const uint8_t *s, size_t len)
{
    static const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
    for (size_t i = 0; i < len;) {
        uint8_t c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i <= n) {
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += n + 1;
    }
    return true;
}

/* fuzz_escape: tlsrpt_json_string on raw bytes decodes back to them when they are UTF-8. */
static void fuzz_escape(const char *s, size_t len)
{
    size_t cap = 6 * len + 3;
    char *out = malloc(cap);
    FUZZ_ASSERT(out != NULL);
    size_t out_len;
    FUZZ_ASSERT(tlsrpt_json_string(out, cap, &out_len, s, len));
    FUZZ_ASSERT(out_len == strlen(out) && out_len < cap);
    struct fuzz_json j = {.s = out, .len = out_len, .out = malloc(4 * len + 1), .out_cap = 4 * len};
    FUZZ_ASSERT(j.out != NULL);
    FUZZ_ASSERT(fuzz_json_string(&j) && j.i == out_len);
    if (fuzz_utf8_valid((const uint8_t *)s, len)) {
        FUZZ_ASSERT(j.out_len == len && memcmp(j.out, s, len) == 0);
    } else {
        FUZZ_ASSERT(memmem(j.out, j.out_len, "\xef\xbf\xbd", 3) != NULL); /* U+FFFD */
    }
    /* One byte less than needed fails cleanly. */
    if (out_len > 2) {
        FUZZ_ASSERT(!tlsrpt_json_string(out, out_len, &out_len, s, len) && out[0] == '\0');
    }
    free(j.out);
    free(out);
}

/* ---- the TXT record ---- */

static bool fuzz_is_record(const char *s, size_t len)
{
    if (len < 10 || memcmp(s, "v=TLSRPTv1", 10) != 0) {
        return false;
    }
    for (size_t i = 10; i < len; i++) {
        if (s[i] == ';') {
            return true;
        }
        if (s[i] != ' ' && s[i] != '\t') {
            return false;
        }
    }
    return false;
}

static void fuzz_printable(const char *s, bool space_ok)
{
    for (; *s != '\0'; s++) {
        FUZZ_ASSERT(*s > 0x20 - space_ok && *s < 0x7f);
    }
}

static void fuzz_rua(char **fields, const size_t *lens, size_t n)
{
    size_t records = 0;
    for (size_t i = 0; i < n; i++) {
        records += fuzz_is_record(fields[i], lens[i]);
    }
    struct tlsrpt_rua *out = malloc(sizeof(*out));
    FUZZ_ASSERT(out != NULL);
    enum tlsrpt_rua_result r = tlsrpt_rua_parse(out, (const char *const *)fields, lens, n);
    FUZZ_ASSERT(strcmp(tlsrpt_rua_result_name(r), "?") != 0);
    FUZZ_ASSERT(r == TLSRPT_RUA_NONE ? records == 0 : true);
    FUZZ_ASSERT(r == TLSRPT_RUA_MULTIPLE ? records >= 2 : true);
    FUZZ_ASSERT(r == TLSRPT_RUA_NONE || r == TLSRPT_RUA_MULTIPLE || records == 1);
    FUZZ_ASSERT(r == TLSRPT_RUA_OK ? out->n_uris >= 1 && out->n_uris <= TLSRPT_RUA_MAX
                                   : out->n_uris == 0);
    for (size_t i = 0; i < out->n_uris; i++) {
        const struct tlsrpt_rua_uri *u = &out->uris[i];
        fuzz_printable(u->uri, false);
        fuzz_printable(u->address, false);
        fuzz_printable(u->host, false);
        fuzz_printable(u->path, false);
        FUZZ_ASSERT(strlen(u->uri) > 6 && strlen(u->uri) <= TLSRPT_RUA_URI_MAX);
        if (u->scheme == TLSRPT_RUA_MAILTO) {
            const char *at = strchr(u->address, '@');
            FUZZ_ASSERT(at != NULL && at != u->address && strchr(at + 1, '@') == NULL);
            FUZZ_ASSERT(strpbrk(u->address, "<>\"(),:;[]\\") == NULL);
            FUZZ_ASSERT(u->host[0] == '\0' && u->path[0] == '\0' && u->port == 0);
        } else {
            FUZZ_ASSERT(u->scheme == TLSRPT_RUA_HTTPS);
            FUZZ_ASSERT(u->host[0] != '\0' && u->port != 0 && u->path[0] == '/');
            FUZZ_ASSERT(u->address[0] == '\0' && strchr(u->path, '#') == NULL);
        }
        for (size_t k = 0; k < i; k++) {
            FUZZ_ASSERT(strcmp(out->uris[k].address, u->address) != 0 ||
                        strcmp(out->uris[k].host, u->host) != 0 ||
                        strcmp(out->uris[k].path, u->path) != 0 || out->uris[k].port != u->port);
        }
    }
    free(out);
}

/* ---- the aggregator and the JSON ---- */

static const char *fuzz_pick(char **fields, size_t n, size_t k, const char *fallback)
{
    return k < n && fields[k][0] != '\0' ? fields[k] : fallback;
}

static void fuzz_check_report(const struct tlsrpt_report *r, const char *org, const char *contact,
                              const char *id)
{
    FUZZ_ASSERT(r->n_policies >= 1 && r->n_policies <= TLSRPT_POLICIES_MAX);
    FUZZ_ASSERT(r->begin == r->day_start && r->end >= r->begin &&
                r->end < r->day_start + TLSRPT_DAY_SECONDS);
    size_t rows = 0;
    for (size_t i = 0; i < r->n_policies; i++) {
        const struct tlsrpt_report_policy *p = &r->policies[i];
        uint64_t sum = p->n_unlisted;
        for (size_t k = 0; k < p->n_rows; k++) {
            FUZZ_ASSERT(p->rows[k].failed_session_count >= 1);
            FUZZ_ASSERT(tlsrpt_result_type_valid(p->rows[k].failure.result_type));
            sum += p->rows[k].failed_session_count;
        }
        FUZZ_ASSERT(sum == p->total_failure_session_count);
        rows += p->n_rows;
    }
    FUZZ_ASSERT(rows <= TLSRPT_ROWS_MAX);
    char *json = NULL;
    size_t len = 0;
    int rc = tlsrpt_report_json(r, &json, &len, org, contact, id);
    if (org[0] == '\0' || contact[0] == '\0' || id[0] == '\0') {
        FUZZ_ASSERT(rc == -EINVAL && json == NULL);
        return;
    }
    FUZZ_ASSERT(rc == 0 && json != NULL && strlen(json) == len);
    fuzz_printable(json, true);
    FUZZ_ASSERT(fuzz_json_valid(json, len));
    free(json);

    char name[TLSRPT_FILE_NAME_BUF];
    rc = tlsrpt_file_name(name, sizeof(name), "reporter.example", r->policy_domain, r->begin,
                          r->end, NULL, false);
    FUZZ_ASSERT(rc == 0 || rc == -ENAMETOOLONG);
}

static void fuzz_report(char **fields, size_t n, uint8_t ops)
{
    struct tlsrpt *agg = tlsrpt_new(3);
    FUZZ_ASSERT(agg != NULL);
    static const char *const types[] = {"starttls-not-supported", "validation-failure",
                                        "sts-webpki-invalid", "tlsa-invalid"};
    const char *strings[FUZZ_FIELDS_MAX];
    for (size_t i = 0; i < n; i++) {
        strings[i] = fields[i];
    }
    int64_t day = 1796083200;
    for (int op = 0; op < 24; op++) {
        unsigned bit = (ops >> (op % 8)) & 1;
        size_t k = (size_t)op % (n + 1);
        struct tlsrpt_policy p = {
            .type = (enum tlsrpt_policy_type)(op % 3),
            .policy_domain = bit ? fuzz_pick(fields, n, k, "example.com") : "example.com",
            .policy_strings = strings,
            .n_policy_strings = op % 3 == 0 ? 0 : (n > 0 ? 1 + (size_t)op % n : 0),
            .mx_hosts = strings + (n > 1 ? 1 : 0),
            .n_mx_hosts = op % 3 == 1 && bit && n > 1 ? 1 : 0,
        };
        struct tlsrpt_failure f = {
            .result_type = op % 5 == 4 ? fuzz_pick(fields, n, k, "x") : types[op % 4],
            .sending_mta_ip = op % 7 == 6 ? fuzz_pick(fields, n, k + 1, "x") : "192.0.2.1",
            .receiving_ip = op % 2 ? "2001:db8::1" : "198.51.100.1",
            .receiving_mx_hostname = bit ? fuzz_pick(fields, n, k + 2, NULL) : NULL,
            .receiving_mx_helo = fuzz_pick(fields, n, k + 3, NULL),
            .additional_information = op % 4 == 3 ? fuzz_pick(fields, n, k + 4, NULL) : NULL,
            .failure_reason_code = fuzz_pick(fields, n, k + 5, NULL),
        };
        int64_t now = day + (op % 3) * TLSRPT_DAY_SECONDS + op;
        int rc = op % 2 ? tlsrpt_failure(agg, &p, &f, now) : tlsrpt_success(agg, &p, now);
        FUZZ_ASSERT(rc == 0 || rc == -EINVAL || rc == -ENOSPC);
    }
    const char *org = fuzz_pick(fields, n, 0, "");
    const char *contact = fuzz_pick(fields, n, 1, "tlsrpt@reporter.example");
    const char *id = fuzz_pick(fields, n, 2, "id");
    struct tlsrpt_report **reports;
    size_t n_reports;
    FUZZ_ASSERT(tlsrpt_snapshot(agg, &reports, &n_reports, day + 3600) == 0);
    for (size_t i = 0; i < n_reports; i++) {
        fuzz_check_report(reports[i], org, contact, id);
    }
    tlsrpt_reports_free(reports, n_reports);
    FUZZ_ASSERT(tlsrpt_take(agg, &reports, &n_reports, day + TLSRPT_DAY_SECONDS) == 0);
    for (size_t i = 0; i < n_reports; i++) {
        FUZZ_ASSERT(reports[i]->day_start == day && !reports[i]->partial);
        fuzz_check_report(reports[i], org, contact, id);
    }
    tlsrpt_reports_free(reports, n_reports);
    tlsrpt_free(agg);

    for (size_t i = 0; i + 1 < n; i += 2) {
        char name[TLSRPT_FILE_NAME_BUF];
        int rc = tlsrpt_file_name(name, sizeof(name), fields[i], fields[i + 1], 0, 86399,
                                  i + 2 < n ? fields[i + 2] : NULL, ops & 1);
        FUZZ_ASSERT(rc == 0 || rc == -EINVAL || rc == -ENAMETOOLONG);
        if (rc == 0) {
            FUZZ_ASSERT(strlen(name) <= TLSRPT_FILE_NAME_MAX && strchr(name, '/') == NULL);
            FUZZ_ASSERT(strcmp(name, "..") != 0 && strcmp(name, ".") != 0);
        } else {
            FUZZ_ASSERT(name[0] == '\0');
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    uint8_t mode = data[0];
    data++;
    size--;
    char *fields[FUZZ_FIELDS_MAX];
    size_t lens[FUZZ_FIELDS_MAX];
    size_t n = 0;
    size_t start = 0;
    for (size_t i = 0; i <= size && n < FUZZ_FIELDS_MAX; i++) {
        if (i == size || data[i] == '\n') {
            lens[n] = i - start;
            fields[n++] = fuzz_copy(data + start, i - start);
            start = i + 1;
        }
    }
    if (mode % 2 == 0) {
        /* Records are lengths, not C strings: give the parser exact-length copies. */
        char *exact[FUZZ_FIELDS_MAX];
        for (size_t i = 0; i < n; i++) {
            exact[i] = malloc(lens[i] == 0 ? 1 : lens[i]);
            FUZZ_ASSERT(exact[i] != NULL);
            memcpy(exact[i], fields[i], lens[i]);
        }
        fuzz_rua(exact, lens, n);
        for (size_t i = 0; i < n; i++) {
            free(exact[i]);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            fuzz_escape(fields[i], lens[i]);
        }
        fuzz_report(fields, n, mode);
    }
    for (size_t i = 0; i < n; i++) {
        free(fields[i]);
    }
    return 0;
}
