/*
 * fuzz_mtasts: libFuzzer target for mtasts.c. The first byte chooses what the rest is:
 * even, a TXT RRset (records split at LF) and the same bytes as TXT RDATA; odd, a policy
 * body, then after the first empty line ("\n\n") host and certificate names, one a line.
 * Checked: a TXT result of OK carries an id of 1 to 32 letters and digits and exactly one
 * record starts with "v=STSv1"; RDATA concatenation never grows the text; a policy has its
 * required fields, at most MTASTS_MX_MAX normalised patterns, and parses the same with
 * every LF made CRLF; error texts are printable and bounded; matching is case-insensitive,
 * ignores a trailing dot on MX hosts, and agrees with a reference written differently.
 * Every input is a heap copy of its exact length, so ASan sees any read past it.
 */
#include "dnsname.h"
#include "mtasts.h"

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

static char *fuzz_copy(const void *data, size_t len)
{
    char *c = malloc(len == 0 ? 1 : len);
    FUZZ_ASSERT(c != NULL);
    if (len != 0) {
        memcpy(c, data, len);
    }
    return c;
}

static bool fuzz_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static void fuzz_txt(const uint8_t *data, size_t len)
{
    const char *records[16];
    size_t lens[16];
    char *copies[16];
    size_t n = 0;
    size_t start = 0;
    size_t stsv1 = 0;
    for (size_t i = 0; i <= len && n < 16; i++) {
        if (i == len || data[i] == '\n') {
            copies[n] = fuzz_copy(data + start, i - start);
            records[n] = copies[n];
            lens[n] = i - start;
            if (lens[n] >= 7 && memcmp(records[n], "v=STSv1", 7) == 0) {
                stsv1++;
            }
            n++;
            start = i + 1;
        }
    }
    char id[MTASTS_ID_MAX + 1];
    enum mtasts_txt_result r = mtasts_txt_parse(id, records, lens, n);
    size_t id_len = strlen(id);
    switch (r) {
    case MTASTS_TXT_OK:
        FUZZ_ASSERT(stsv1 >= 1);
        FUZZ_ASSERT(id_len >= 1 && id_len <= MTASTS_ID_MAX);
        for (size_t i = 0; i < id_len; i++) {
            FUZZ_ASSERT(fuzz_alnum(id[i]));
        }
        break;
    case MTASTS_TXT_NONE:
    case MTASTS_TXT_INVALID:
    case MTASTS_TXT_MULTIPLE:
        FUZZ_ASSERT(id_len == 0);
        FUZZ_ASSERT(r != MTASTS_TXT_MULTIPLE || stsv1 >= 2);
        break;
    default:
        FUZZ_ASSERT(0);
    }
    FUZZ_ASSERT(strlen(mtasts_txt_result_name(r)) > 0);
    for (size_t i = 0; i < n; i++) {
        free(copies[i]);
    }

    uint8_t *rdata = (uint8_t *)fuzz_copy(data, len);
    char *out = malloc(len + 1);
    FUZZ_ASSERT(out != NULL);
    size_t out_len = 99;
    bool ok = mtasts_txt_from_rdata(out, len, &out_len, rdata, len);
    FUZZ_ASSERT(ok ? out_len < len : out_len == 0);
    if (ok && len > 0) {
        size_t small_len = 99;
        /* One byte less room than the text needs always fails. */
        if (out_len > 0) {
            FUZZ_ASSERT(!mtasts_txt_from_rdata(out, out_len - 1, &small_len, rdata, len));
        }
    }
    free(out);
    free(rdata);
}

/* Reference coverage, written from the suffix side. */
static bool fuzz_covers(const char *pattern, const char *host)
{
    if (strncmp(pattern, "*.", 2) != 0) {
        return strcmp(pattern, host) == 0;
    }
    size_t pl = strlen(pattern) - 1; /* ".suffix" */
    size_t hl = strlen(host);
    if (hl <= pl || strcmp(host + hl - pl, pattern + 1) != 0) {
        return false;
    }
    return memchr(host, '.', hl - pl) == NULL && memchr(host, '*', hl - pl) == NULL;
}

static bool fuzz_overlap(const char *a, const char *b)
{
    bool wa = strncmp(a, "*.", 2) == 0;
    bool wb = strncmp(b, "*.", 2) == 0;
    if (wa && wb) {
        return strcmp(a, b) == 0;
    }
    return wb ? fuzz_covers(b, a) : fuzz_covers(a, b);
}

static void fuzz_check_error(const char *err)
{
    size_t n = strnlen(err, MTASTS_ERROR_MAX);
    FUZZ_ASSERT(n > 0 && n < MTASTS_ERROR_MAX);
    for (size_t i = 0; i < n; i++) {
        FUZZ_ASSERT(err[i] >= 0x20 && err[i] < 0x7f);
    }
}

static void fuzz_names(const struct mtasts_policy *p, const uint8_t *data, size_t len)
{
    size_t start = 0;
    int checked = 0;
    for (size_t i = 0; i <= len && checked < 8; i++) {
        if (i != len && data[i] != '\n') {
            continue;
        }
        size_t n = i - start;
        char *name = fuzz_copy(data + start, n);
        start = i + 1;
        checked++;

        bool mx = mtasts_mx_matches(p, name, n);
        const char *names[1] = {name};
        size_t lens[1] = {n};
        bool cert = mtasts_cert_name_matches(p, names, lens, 1);

        char norm[DNSNAME_BUF];
        bool want_mx = false;
        if (dnsname_parse(norm, NULL, name, n, DNSNAME_ALLOW_TRAILING_DOT) == DNSNAME_HOST) {
            for (size_t k = 0; k < p->n_mx; k++) {
                want_mx = want_mx || fuzz_covers(p->mx[k], norm);
            }
        }
        FUZZ_ASSERT(mx == want_mx);
        bool want_cert = false;
        if (dnsname_parse(norm, NULL, name, n, DNSNAME_CERT_WILDCARD) != DNSNAME_INVALID) {
            for (size_t k = 0; k < p->n_mx; k++) {
                want_cert = want_cert || fuzz_overlap(p->mx[k], norm);
            }
        }
        FUZZ_ASSERT(cert == want_cert);

        /* Case does not matter; a trailing dot does not for MX hosts. */
        char *upper = malloc(n + 1);
        FUZZ_ASSERT(upper != NULL);
        for (size_t k = 0; k < n; k++) {
            char c = name[k];
            upper[k] = c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
        }
        FUZZ_ASSERT(mtasts_mx_matches(p, upper, n) == mx);
        names[0] = upper;
        FUZZ_ASSERT(mtasts_cert_name_matches(p, names, lens, 1) == cert);
        if (n > 0 && name[n - 1] != '.') {
            upper[n] = '.';
            FUZZ_ASSERT(mtasts_mx_matches(p, upper, n + 1) == mx);
        }
        free(upper);
        free(name);
    }
}

static void fuzz_policy(const uint8_t *data, size_t len)
{
    const uint8_t *sep = NULL;
    for (size_t i = 0; i + 1 < len; i++) {
        if (data[i] == '\n' && data[i + 1] == '\n') {
            sep = data + i;
            break;
        }
    }
    size_t body_len = sep != NULL ? (size_t)(sep - data) + 1 : len;
    char *body = fuzz_copy(data, body_len);
    struct mtasts_policy *p = NULL;
    char err[MTASTS_ERROR_MAX];
    enum mtasts_policy_result r = mtasts_policy_parse(&p, err, body, body_len);
    if (r != MTASTS_POLICY_OK) {
        FUZZ_ASSERT(r == MTASTS_POLICY_INVALID && p == NULL);
        fuzz_check_error(err);
    } else {
        FUZZ_ASSERT(p != NULL && err[0] == '\0');
        FUZZ_ASSERT(p->max_age <= MTASTS_MAX_AGE_MAX);
        FUZZ_ASSERT(p->n_mx <= MTASTS_MX_MAX);
        FUZZ_ASSERT(p->n_mx > 0 || p->mode == MTASTS_MODE_NONE);
        FUZZ_ASSERT(p->mode == MTASTS_MODE_NONE || p->mode == MTASTS_MODE_TESTING ||
                    p->mode == MTASTS_MODE_ENFORCE);
        for (size_t i = 0; i < p->n_mx; i++) {
            char norm[DNSNAME_BUF];
            size_t n = strlen(p->mx[i]);
            FUZZ_ASSERT(dnsname_parse(norm, NULL, p->mx[i], n, DNSNAME_ALLOW_WILDCARD) !=
                        DNSNAME_INVALID);
            FUZZ_ASSERT(strcmp(norm, p->mx[i]) == 0);
        }
        FUZZ_ASSERT(strlen(mtasts_mode_name(p->mode)) > 0);
    }

    /* Every LF as CRLF: the same answer, when the body had no CR to begin with. */
    if (memchr(body, '\r', body_len) == NULL) {
        char *crlf = malloc(2 * body_len + 1);
        FUZZ_ASSERT(crlf != NULL);
        size_t n = 0;
        for (size_t i = 0; i < body_len; i++) {
            if (body[i] == '\n') {
                crlf[n++] = '\r';
            }
            crlf[n++] = body[i];
        }
        char *exact = fuzz_copy(crlf, n);
        struct mtasts_policy *q = NULL;
        char err2[MTASTS_ERROR_MAX];
        enum mtasts_policy_result r2 = mtasts_policy_parse(&q, err2, exact, n);
        FUZZ_ASSERT(r2 == r);
        if (r == MTASTS_POLICY_OK) {
            FUZZ_ASSERT(q->mode == p->mode && q->max_age == p->max_age && q->n_mx == p->n_mx);
            for (size_t i = 0; i < p->n_mx; i++) {
                FUZZ_ASSERT(strcmp(p->mx[i], q->mx[i]) == 0);
            }
        } else {
            FUZZ_ASSERT(strcmp(err, err2) == 0);
        }
        mtasts_policy_free(q);
        free(exact);
        free(crlf);
    }

    if (p != NULL && sep != NULL) {
        fuzz_names(p, sep + 2, len - (size_t)(sep - data) - 2);
    }
    mtasts_policy_free(p);
    free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    if ((data[0] & 1) == 0) {
        fuzz_txt(data + 1, size - 1);
    } else {
        fuzz_policy(data + 1, size - 1);
    }
    return 0;
}
