/*
 * mtasts: the MTA-STS TXT record and policy parsers and the MX and certificate name
 * matchers (RFC 8461 sections 3.1, 3.2, 4.1). Pure: no I/O, no logging; only the policy
 * parser allocates (its result, in one block). Hand-written because no Debian library
 * parses MTA-STS; fuzzed by tests/fuzz/fuzz_mtasts.c.
 */
#include "mtasts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnsname.h"

static bool mtasts_wsp(char c)
{
    return c == ' ' || c == '\t';
}

static bool mtasts_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* sts-ext-name and sts-policy-ext-name: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" /
 * "."). Returns its length at |s| (0: none), stopping before any other byte. */
static size_t mtasts_ext_name(const char *s, size_t len)
{
    if (len == 0 || !mtasts_alnum(s[0])) {
        return 0;
    }
    size_t n = 1;
    while (n < len && n < 32 && (mtasts_alnum(s[n]) || s[n] == '_' || s[n] == '-' || s[n] == '.')) {
        n++;
    }
    return n;
}

/* sts-field-delim = *WSP ";" *WSP. */
static bool mtasts_txt_delim(const char *s, size_t len, size_t *pos)
{
    size_t p = *pos;
    while (p < len && mtasts_wsp(s[p])) {
        p++;
    }
    if (p == len || s[p] != ';') {
        return false;
    }
    p++;
    while (p < len && mtasts_wsp(s[p])) {
        p++;
    }
    *pos = p;
    return true;
}

/* sts-ext-value characters: %x21-3A / %x3C / %x3E-7E (no "=", ";", SP or controls). */
static bool mtasts_txt_value_char(char c)
{
    unsigned char u = (unsigned char)c;
    return u >= 0x21 && u <= 0x7e && u != '=' && u != ';';
}

/* Parses one STSv1 record (RFC 8461 section 3.1 ABNF); fills out_id on success. */
static bool mtasts_txt_record(char *out_id, const char *s, size_t len)
{
    size_t pos = 7; /* after "v=STSv1" */
    size_t n_fields = 0;
    bool have_id = false;
    while (pos < len) {
        if (!mtasts_txt_delim(s, len, &pos)) {
            return false;
        }
        if (pos == len) {
            break; /* [sts-field-delim] at the end */
        }
        size_t name = pos;
        size_t name_len = mtasts_ext_name(s + pos, len - pos);
        pos += name_len;
        if (name_len == 0 || pos == len || s[pos] != '=') {
            return false;
        }
        pos++;
        size_t value = pos;
        while (pos < len && mtasts_txt_value_char(s[pos])) {
            pos++;
        }
        size_t value_len = pos - value;
        if (value_len == 0) {
            return false;
        }
        if (name_len == 2 && memcmp(s + name, "id", 2) == 0) {
            /* sts-id = %s"id=" 1*32(ALPHA / DIGIT); an "id" that is not one is not
             * taken for an extension: the record is broken. */
            if (value_len > MTASTS_ID_MAX) {
                return false;
            }
            for (size_t i = 0; i < value_len; i++) {
                if (!mtasts_alnum(s[value + i])) {
                    return false;
                }
            }
            if (!have_id) {
                memcpy(out_id, s + value, value_len);
                out_id[value_len] = '\0';
                have_id = true;
            }
        }
        n_fields++;
    }
    return n_fields > 0 && have_id;
}

enum mtasts_txt_result mtasts_txt_parse(char *out_id, const char *const *records,
                                        const size_t *record_lens, size_t n_records)
{
    out_id[0] = '\0';
    size_t found = 0;
    size_t which = 0;
    for (size_t i = 0; i < n_records; i++) {
        const char *s = records[i];
        size_t len = record_lens[i];
        if (len >= 7 && memcmp(s, "v=STSv1", 7) == 0 &&
            (len == 7 || s[7] == ';' || mtasts_wsp(s[7]))) {
            found++;
            which = i;
        }
    }
    if (found == 0) {
        return MTASTS_TXT_NONE;
    }
    if (found > 1) {
        return MTASTS_TXT_MULTIPLE;
    }
    if (!mtasts_txt_record(out_id, records[which], record_lens[which])) {
        out_id[0] = '\0';
        return MTASTS_TXT_INVALID;
    }
    return MTASTS_TXT_OK;
}

const char *mtasts_txt_result_name(enum mtasts_txt_result r)
{
    switch (r) {
    case MTASTS_TXT_OK:
        return "ok";
    case MTASTS_TXT_NONE:
        return "none";
    case MTASTS_TXT_MULTIPLE:
        return "multiple";
    case MTASTS_TXT_INVALID:
        return "invalid";
    }
    return "?";
}

bool mtasts_txt_from_rdata(char *out, size_t out_cap, size_t *out_len, const uint8_t *rdata,
                           size_t rdata_len)
{
    *out_len = 0;
    if (rdata_len == 0) {
        return false;
    }
    size_t pos = 0;
    size_t n = 0;
    while (pos < rdata_len) {
        size_t piece = rdata[pos++];
        if (piece > rdata_len - pos || piece > out_cap - n) {
            return false;
        }
        memcpy(out + n, rdata + pos, piece);
        n += piece;
        pos += piece;
    }
    *out_len = n;
    return true;
}

const char *mtasts_mode_name(enum mtasts_mode mode)
{
    switch (mode) {
    case MTASTS_MODE_NONE:
        return "none";
    case MTASTS_MODE_TESTING:
        return "testing";
    case MTASTS_MODE_ENFORCE:
        return "enforce";
    }
    return "?";
}

/* RFC 3629 UTF8-2 / UTF8-3 / UTF8-4 at |s|: the sequence's length, 0 if none. */
static size_t mtasts_utf8(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80;
    unsigned char hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80; /* no overlong forms */
        hi = c == 0xed ? 0x9f : 0xbf; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf; /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (len < n || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf) {
            return 0;
        }
    }
    return n;
}

/* sts-policy-ext-value = sts-policy-vchar [*(%x20 / sts-policy-vchar) sts-policy-vchar],
 * given without the surrounding whitespace (so it starts and ends with a vchar). */
static bool mtasts_ext_value(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        if (u[i] >= 0x20 && u[i] <= 0x7e) {
            i++;
            continue;
        }
        size_t n = mtasts_utf8(u + i, len - i);
        if (n == 0) {
            return false;
        }
        i += n;
    }
    return len > 0;
}

/* The state of one pass over a policy. The first pass (fill == NULL) validates and
 * counts; the second writes the patterns into the allocated policy. */
struct mtasts_walk {
    struct mtasts_policy *fill;
    char **fill_mx;
    char *fill_strings;
    size_t n_mx;
    size_t mx_bytes;
    bool have_version;
    bool have_mode;
    bool have_max_age;
    enum mtasts_mode mode;
    uint32_t max_age;
    bool max_age_capped;
};

static bool mtasts_value_is(const char *value, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(value, want, len) == 0;
}

/* One line, without its line end. Returns false with |err| set. */
static bool mtasts_policy_line(struct mtasts_walk *w, char *err, size_t line_no, const char *line,
                               size_t len)
{
    size_t name_len = mtasts_ext_name(line, len);
    if (name_len == 0 || name_len == len || line[name_len] != ':') {
        snprintf(err, MTASTS_ERROR_MAX, "line %zu: not a \"name: value\" field", line_no);
        return false;
    }
    /* sts-policy-field-delim = ":" *WSP; the line may end with *WSP. */
    size_t start = name_len + 1;
    while (start < len && mtasts_wsp(line[start])) {
        start++;
    }
    size_t end = len;
    while (end > start && mtasts_wsp(line[end - 1])) {
        end--;
    }
    const char *value = line + start;
    size_t value_len = end - start;

    if (mtasts_value_is(line, name_len, "version")) {
        if (!mtasts_value_is(value, value_len, "STSv1")) {
            snprintf(err, MTASTS_ERROR_MAX, "line %zu: version is not STSv1", line_no);
            return false;
        }
        w->have_version = true;
        return true;
    }
    if (mtasts_value_is(line, name_len, "mode")) {
        enum mtasts_mode mode;
        if (mtasts_value_is(value, value_len, "enforce")) {
            mode = MTASTS_MODE_ENFORCE;
        } else if (mtasts_value_is(value, value_len, "testing")) {
            mode = MTASTS_MODE_TESTING;
        } else if (mtasts_value_is(value, value_len, "none")) {
            mode = MTASTS_MODE_NONE;
        } else {
            snprintf(err, MTASTS_ERROR_MAX, "line %zu: mode is not enforce, testing or none",
                     line_no);
            return false;
        }
        if (!w->have_mode) { /* RFC 8461 section 3.2: the first occurrence counts */
            w->mode = mode;
            w->have_mode = true;
        }
        return true;
    }
    if (mtasts_value_is(line, name_len, "max_age")) {
        uint64_t v = 0;
        if (value_len == 0 || value_len > 10) {
            snprintf(err, MTASTS_ERROR_MAX, "line %zu: max_age is not 1 to 10 digits", line_no);
            return false;
        }
        for (size_t i = 0; i < value_len; i++) {
            if (value[i] < '0' || value[i] > '9') {
                snprintf(err, MTASTS_ERROR_MAX, "line %zu: max_age is not 1 to 10 digits", line_no);
                return false;
            }
            v = v * 10 + (uint64_t)(value[i] - '0');
        }
        if (!w->have_max_age) {
            w->max_age_capped = v > MTASTS_MAX_AGE_MAX;
            w->max_age = w->max_age_capped ? MTASTS_MAX_AGE_MAX : (uint32_t)v;
            w->have_max_age = true;
        }
        return true;
    }
    if (mtasts_value_is(line, name_len, "mx")) {
        char pattern[DNSNAME_BUF];
        size_t pattern_len;
        if (dnsname_parse(pattern, &pattern_len, value, value_len,
                          DNSNAME_ALLOW_WILDCARD | DNSNAME_ALLOW_TRAILING_DOT) == DNSNAME_INVALID) {
            snprintf(err, MTASTS_ERROR_MAX, "line %zu: mx is not a domain or *. and a domain",
                     line_no);
            return false;
        }
        if (w->n_mx == MTASTS_MX_MAX) {
            snprintf(err, MTASTS_ERROR_MAX, "line %zu: more than %d mx fields", line_no,
                     MTASTS_MX_MAX);
            return false;
        }
        if (w->fill != NULL) {
            char *copy = w->fill_strings + w->mx_bytes;
            memcpy(copy, pattern, pattern_len + 1);
            w->fill_mx[w->n_mx] = copy;
        }
        w->n_mx++;
        w->mx_bytes += pattern_len + 1;
        return true;
    }
    /* An extension: ignored, but it must be one (RFC 8461 section 3.2). */
    if (!mtasts_ext_value(value, value_len)) {
        snprintf(err, MTASTS_ERROR_MAX, "line %zu: field value is empty or not printable text",
                 line_no);
        return false;
    }
    return true;
}

static bool mtasts_policy_walk(struct mtasts_walk *w, char *err, const char *body, size_t len)
{
    if (len == 0) {
        snprintf(err, MTASTS_ERROR_MAX, "line 1: the policy is empty");
        return false;
    }
    size_t pos = 0;
    size_t line_no = 0;
    while (pos < len) {
        line_no++;
        const char *nl = memchr(body + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - body) : len;
        size_t next = nl != NULL ? end + 1 : len;
        /* sts-policy-term = LF / CRLF; any other CR fails the value checks. */
        if (nl != NULL && end > pos && body[end - 1] == '\r') {
            end--;
        }
        if (end == pos) {
            snprintf(err, MTASTS_ERROR_MAX, "line %zu: empty line", line_no);
            return false;
        }
        if (!mtasts_policy_line(w, err, line_no, body + pos, end - pos)) {
            return false;
        }
        pos = next;
    }
    if (!w->have_version) {
        snprintf(err, MTASTS_ERROR_MAX, "no version field");
        return false;
    }
    if (!w->have_mode) {
        snprintf(err, MTASTS_ERROR_MAX, "no mode field");
        return false;
    }
    if (!w->have_max_age) {
        snprintf(err, MTASTS_ERROR_MAX, "no max_age field");
        return false;
    }
    if (w->n_mx == 0 && w->mode != MTASTS_MODE_NONE) {
        snprintf(err, MTASTS_ERROR_MAX, "no mx field (required unless mode is none)");
        return false;
    }
    return true;
}

enum mtasts_policy_result mtasts_policy_parse(struct mtasts_policy **out, char *out_error,
                                              const char *body, size_t len)
{
    *out = NULL;
    out_error[0] = '\0';
    struct mtasts_walk count = {0};
    if (!mtasts_policy_walk(&count, out_error, body, len)) {
        return MTASTS_POLICY_INVALID;
    }
    size_t array = count.n_mx * sizeof(char *);
    struct mtasts_policy *p = malloc(sizeof(*p) + array + count.mx_bytes);
    if (p == NULL) {
        snprintf(out_error, MTASTS_ERROR_MAX, "out of memory");
        return MTASTS_POLICY_NOMEM;
    }
    char **mx = (char **)(p + 1);
    struct mtasts_walk fill = {.fill = p, .fill_mx = mx, .fill_strings = (char *)(mx + count.n_mx)};
    /* The same bytes, so the same answer; only now the patterns are written. */
    bool ok = mtasts_policy_walk(&fill, out_error, body, len);
    if (!ok || fill.n_mx != count.n_mx || fill.mx_bytes != count.mx_bytes) {
        free(p);
        snprintf(out_error, MTASTS_ERROR_MAX, "internal error");
        return MTASTS_POLICY_INVALID;
    }
    p->mode = fill.mode;
    p->max_age = fill.max_age;
    p->max_age_capped = fill.max_age_capped;
    p->n_mx = fill.n_mx;
    p->mx = (const char *const *)mx;
    *out = p;
    return MTASTS_POLICY_OK;
}

void mtasts_policy_free(struct mtasts_policy *policy)
{
    free(policy);
}

bool mtasts_mx_matches(const struct mtasts_policy *policy, const char *host, size_t host_len)
{
    char name[DNSNAME_BUF];
    if (dnsname_parse(name, NULL, host, host_len, DNSNAME_ALLOW_TRAILING_DOT) != DNSNAME_HOST) {
        return false;
    }
    for (size_t i = 0; i < policy->n_mx; i++) {
        if (dnsname_covers(policy->mx[i], name)) {
            return true;
        }
    }
    return false;
}

bool mtasts_cert_name_matches(const struct mtasts_policy *policy, const char *const *names,
                              const size_t *name_lens, size_t n_names)
{
    for (size_t i = 0; i < n_names; i++) {
        char name[DNSNAME_BUF];
        if (dnsname_parse(name, NULL, names[i], name_lens[i], DNSNAME_CERT_WILDCARD) ==
            DNSNAME_INVALID) {
            continue;
        }
        for (size_t j = 0; j < policy->n_mx; j++) {
            if (dnsname_overlap(policy->mx[j], name)) {
                return true;
            }
        }
    }
    return false;
}
