/*
 * test_mtasts: the _mta-sts TXT record (RFC 8461 section 3.1), TXT RDATA, the policy body
 * (section 3.2) with the exact error for each fault, and the MX and certificate name
 * matchers (section 4.1) including the attacks listed in mtasts.h. Every input is a heap
 * copy of its exact length, so ASan sees any read past it.
 */
#include "mtasts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static char *copy_of(const char *s, size_t len)
{
    char *c = malloc(len == 0 ? 1 : len);
    CHECK(c != NULL);
    memcpy(c, s, len);
    return c;
}

/* ---- TXT records ---- */

static enum mtasts_txt_result txt(char *out_id, const char *const *recs, const size_t *lens,
                                  size_t n)
{
    char *copies[8] = {0};
    for (size_t i = 0; i < n; i++) {
        copies[i] = copy_of(recs[i], lens[i]);
    }
    enum mtasts_txt_result r = mtasts_txt_parse(out_id, (const char *const *)copies, lens, n);
    for (size_t i = 0; i < n; i++) {
        free(copies[i]);
    }
    return r;
}

static void check_txt1(int line, const char *rec, size_t len, enum mtasts_txt_result want,
                       const char *want_id)
{
    char id[MTASTS_ID_MAX + 1] = "junk";
    const char *recs[1] = {rec};
    size_t lens[1] = {len};
    enum mtasts_txt_result r = txt(id, recs, lens, 1);
    if (r != want || strcmp(id, want_id) != 0) {
        fprintf(stderr, "line %d: \"%.*s\": got %s \"%s\"\n", line, (int)len, rec,
                mtasts_txt_result_name(r), id);
    }
    CHECK_INT(r, want);
    CHECK_STR(id, want_id);
}

#define TXT_OK(s, id) check_txt1(__LINE__, s, sizeof(s) - 1, MTASTS_TXT_OK, id)
#define TXT_BAD(s) check_txt1(__LINE__, s, sizeof(s) - 1, MTASTS_TXT_INVALID, "")
#define TXT_NONE(s) check_txt1(__LINE__, s, sizeof(s) - 1, MTASTS_TXT_NONE, "")

static void test_txt(void)
{
    TXT_OK("v=STSv1; id=20160831085700Z;", "20160831085700Z");
    TXT_OK("v=STSv1;id=abc", "abc");
    TXT_OK("v=STSv1; id=abc", "abc");
    TXT_OK("v=STSv1 ; id=abc ; ", "abc");
    TXT_OK("v=STSv1;\tid=abc;\t", "abc");
    TXT_OK("v=STSv1\t;id=abc", "abc");
    TXT_OK("v=STSv1; ext=x; id=abc", "abc");
    TXT_OK("v=STSv1; id=abc; a.b_c-d=!\"#$%&'()*+,-./0:<>?@[\\]^_`{|}~", "abc");
    TXT_OK("v=STSv1; id=ABCdef0123456789abcdefABCDEF0123", "ABCdef0123456789abcdefABCDEF0123");
    TXT_OK("v=STSv1; v=STSv2; id=x", "x"); /* a later "v" is an extension */
    TXT_OK("v=STSv1; ID=x; id=y", "y");    /* names are case-sensitive */
    /* Of two valid ids the first counts. */
    TXT_OK("v=STSv1; id=first; id=second", "first");
    TXT_OK("v=STSv1; abcdefghijklmnopqrstuvwxyz012345=1; id=x", "x"); /* a 32-byte name */

    TXT_BAD("v=STSv1");
    TXT_BAD("v=STSv1;");
    TXT_BAD("v=STSv1; ");
    TXT_BAD("v=STSv1;;id=abc");
    TXT_BAD("v=STSv1; id=abc;;");
    TXT_BAD("v=STSv1; id=abc ");  /* trailing space without ";": not in the ABNF */
    TXT_BAD("v=STSv1; id=abc\t"); /* likewise */
    TXT_BAD("v=STSv1; id=");
    TXT_BAD("v=STSv1; id");
    TXT_BAD("v=STSv1; id =abc");
    TXT_BAD("v=STSv1; id= abc");
    TXT_BAD("v=STSv1; id=ab-c");
    TXT_BAD("v=STSv1; id=ab.c");
    TXT_BAD("v=STSv1; id=ABCdef0123456789abcdefABCDEF01234"); /* 33 */
    TXT_BAD("v=STSv1; id=a; id=b-c");                         /* a broken second id */
    TXT_BAD("v=STSv1; ID=abc");                               /* no id */
    TXT_BAD("v=STSv1; ext=x");
    TXT_BAD("v=STSv1; id=abc; a=b=c");
    TXT_BAD("v=STSv1; id=abc; a=b c");
    TXT_BAD("v=STSv1; id=abc; a=");
    TXT_BAD("v=STSv1; id=abc; =x");
    TXT_BAD("v=STSv1; id=abc; _a=x");
    TXT_BAD("v=STSv1; id=abc; abcdefghijklmnopqrstuvwxyz0123456=1"); /* a 33-byte name */
    TXT_BAD("v=STSv1; id=abc; a=\x7f");
    TXT_BAD("v=STSv1; id=abc; a=\xc3\xa9");
    TXT_BAD("v=STSv1; id=ab\0c");
    TXT_BAD("v=STSv1; id=abc\0");
    TXT_BAD("v=STSv1; id=abc\r\n");
    TXT_BAD("v=STSv1 id=abc");

    TXT_NONE("");
    TXT_NONE(" v=STSv1; id=abc");
    TXT_NONE("v=stsv1; id=abc");
    TXT_NONE("V=STSv1; id=abc");
    TXT_NONE("v=STSv10; id=abc");
    TXT_NONE("v=STSv1x; id=abc");
    TXT_NONE("v=STSv");
    TXT_NONE("v=spf1 -all");
    TXT_NONE("\0v=STSv1; id=abc");

    /* RRsets: other records are ignored; two STSv1 records are no policy, even when only
     * one of them is valid. */
    char id[MTASTS_ID_MAX + 1];
    const char *set1[] = {"v=spf1 -all", "v=STSv1; id=one", "google-site-verification=x"};
    size_t lens1[] = {11, 15, 26};
    CHECK_INT(txt(id, set1, lens1, 3), MTASTS_TXT_OK);
    CHECK_STR(id, "one");
    const char *set2[] = {"v=STSv1; id=one", "v=STSv1; id=two"};
    size_t lens2[] = {15, 15};
    CHECK_INT(txt(id, set2, lens2, 2), MTASTS_TXT_MULTIPLE);
    CHECK_STR(id, "");
    const char *set3[] = {"v=STSv1; id=one", "v=STSv1 broken"};
    size_t lens3[] = {15, 14};
    CHECK_INT(txt(id, set3, lens3, 2), MTASTS_TXT_MULTIPLE);
    const char *set4[] = {"v=STSv1; id=one", "v=STSv1"};
    size_t lens4[] = {15, 7};
    CHECK_INT(txt(id, set4, lens4, 2), MTASTS_TXT_MULTIPLE);
    CHECK_INT(txt(id, set1, lens1, 0), MTASTS_TXT_NONE);
    CHECK_STR(mtasts_txt_result_name(MTASTS_TXT_OK), "ok");
    CHECK_STR(mtasts_txt_result_name(MTASTS_TXT_NONE), "none");
    CHECK_STR(mtasts_txt_result_name(MTASTS_TXT_MULTIPLE), "multiple");
    CHECK_STR(mtasts_txt_result_name(MTASTS_TXT_INVALID), "invalid");
}

static void test_txt_rdata(void)
{
    char out[64];
    size_t n = 99;
    static const uint8_t two[] = "\x07v=STSv1\x08; id=abc";
    CHECK(mtasts_txt_from_rdata(out, sizeof(out), &n, two, sizeof(two) - 1));
    CHECK_MEM(out, n, "v=STSv1; id=abc", 15);
    /* Empty strings are strings. */
    static const uint8_t empties[] = "\x00\x01x\x00";
    CHECK(mtasts_txt_from_rdata(out, sizeof(out), &n, empties, 4));
    CHECK_MEM(out, n, "x", 1);
    /* Exactly enough room, then one byte too little. */
    CHECK(mtasts_txt_from_rdata(out, 15, &n, two, sizeof(two) - 1));
    CHECK(!mtasts_txt_from_rdata(out, 14, &n, two, sizeof(two) - 1));
    CHECK_INT(n, 0);
    /* A length past the end; no RDATA at all. */
    static const uint8_t overrun[] = "\x05"
                                     "abcd";
    CHECK(!mtasts_txt_from_rdata(out, sizeof(out), &n, overrun, 5));
    CHECK(!mtasts_txt_from_rdata(out, sizeof(out), &n, overrun, 0));
    uint8_t max[256];
    max[0] = 255;
    memset(max + 1, 'z', 255);
    char big[255];
    CHECK(mtasts_txt_from_rdata(big, sizeof(big), &n, max, sizeof(max)));
    CHECK_INT(n, 255);
    CHECK(!mtasts_txt_from_rdata(big, sizeof(big), &n, max, sizeof(max) - 1));
}

/* ---- policies ---- */

static enum mtasts_policy_result parse(struct mtasts_policy **out, char *err, const char *body,
                                       size_t len)
{
    char *c = copy_of(body, len);
    enum mtasts_policy_result r = mtasts_policy_parse(out, err, c, len);
    free(c);
    return r;
}

/* Parses |body|, expecting an error |want_err| ("" for success); returns the policy. */
static struct mtasts_policy *check_policy(int line, const char *body, size_t len,
                                          const char *want_err)
{
    struct mtasts_policy *p = (struct mtasts_policy *)1;
    char err[MTASTS_ERROR_MAX] = "junk";
    enum mtasts_policy_result r = parse(&p, err, body, len);
    bool want_ok = want_err[0] == '\0';
    if ((r == MTASTS_POLICY_OK) != want_ok || strcmp(err, want_err) != 0) {
        fprintf(stderr, "line %d: policy \"%.*s\": got %d \"%s\"\n", line, (int)len, body, (int)r,
                err);
    }
    CHECK_INT(r, want_ok ? MTASTS_POLICY_OK : MTASTS_POLICY_INVALID);
    CHECK_STR(err, want_err);
    CHECK(want_ok ? p != NULL : p == NULL);
    return p;
}

#define POLICY(s, err) check_policy(__LINE__, s, sizeof(s) - 1, err)
#define POLICY_OK(s) POLICY(s, "")
#define POLICY_BAD(s, err) mtasts_policy_free(POLICY(s, err))

#define GOOD "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n"

static void check_mx(const struct mtasts_policy *p, size_t n, const char *const *want)
{
    CHECK(p != NULL);
    if (p == NULL) {
        return;
    }
    CHECK_INT(p->n_mx, n);
    for (size_t i = 0; i < n && i < p->n_mx; i++) {
        CHECK_STR(p->mx[i], want[i]);
    }
}

static void test_policy_good(void)
{
    /* RFC 8461 section 3.2's example, with LF, CRLF, mixed and no final line end. */
    const char *const rfc_mx[] = {"mail.example.com", "*.example.net", "backupmx.example.com"};
    struct mtasts_policy *p = POLICY_OK("version: STSv1\nmode: enforce\nmx: mail.example.com\n"
                                        "mx: *.example.net\nmx: backupmx.example.com\n"
                                        "max_age: 604800\n");
    check_mx(p, 3, rfc_mx);
    CHECK_INT(p->mode, MTASTS_MODE_ENFORCE);
    CHECK_INT(p->max_age, 604800);
    CHECK(!p->max_age_capped);
    mtasts_policy_free(p);
    p = POLICY_OK("version: STSv1\r\nmode: testing\r\nmx: mail.example.com\r\n"
                  "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800");
    check_mx(p, 3, rfc_mx);
    CHECK_INT(p->mode, MTASTS_MODE_TESTING);
    mtasts_policy_free(p);
    p = POLICY_OK("mx: MAIL.Example.COM.\nmax_age:0\r\nmode:none\nversion:\t STSv1 \t\r\n"
                  "mx: *.EXAMPLE.net\t\nmx:backupmx.example.com  ");
    check_mx(p, 3, rfc_mx);
    CHECK_INT(p->mode, MTASTS_MODE_NONE);
    CHECK_INT(p->max_age, 0);
    mtasts_policy_free(p);

    /* mode none needs no mx. */
    p = POLICY_OK("version: STSv1\nmode: none\nmax_age: 86400\n");
    CHECK_INT(p->n_mx, 0);
    CHECK(!mtasts_mx_matches(p, "mx.example.com", 14));
    mtasts_policy_free(p);

    /* Repeated fields: the first counts; all must be well-formed. */
    p = POLICY_OK("version: STSv1\nmode: enforce\nmode: testing\nmax_age: 5\nmax_age: 6\n"
                  "version: STSv1\nmx: a.b\nmx: a.b\n");
    CHECK_INT(p->mode, MTASTS_MODE_ENFORCE);
    CHECK_INT(p->max_age, 5);
    CHECK_INT(p->n_mx, 2);
    mtasts_policy_free(p);
    p = POLICY_OK("version: STSv1\nmode: none\nmode: enforce\nmax_age: 5\n");
    CHECK_INT(p->mode, MTASTS_MODE_NONE);
    mtasts_policy_free(p);

    /* max_age: leading zeros, the limit, capped above it. */
    p = POLICY_OK("version: STSv1\nmode: none\nmax_age: 0000086400\n");
    CHECK_INT(p->max_age, 86400);
    mtasts_policy_free(p);
    p = POLICY_OK("version: STSv1\nmode: none\nmax_age: 31557600\n");
    CHECK_INT(p->max_age, 31557600);
    CHECK(!p->max_age_capped);
    mtasts_policy_free(p);
    p = POLICY_OK("version: STSv1\nmode: none\nmax_age: 31557601\n");
    CHECK_INT(p->max_age, MTASTS_MAX_AGE_MAX);
    CHECK(p->max_age_capped);
    mtasts_policy_free(p);
    p = POLICY_OK("version: STSv1\nmode: none\nmax_age: 9999999999\n");
    CHECK_INT(p->max_age, MTASTS_MAX_AGE_MAX);
    CHECK(p->max_age_capped);
    mtasts_policy_free(p);

    /* Extensions are ignored, and so are names in another case. */
    p = POLICY_OK("version: STSv1\nMode: none\nmode: enforce\nfoo: bar baz\n"
                  "x.y-z_0: b\xc3\xa4r \xe2\x82\xac \xf0\x9f\x93\xa7\nmx: *.com\n"
                  "abcdefghijklmnopqrstuvwxyz012345: !~\nmax_age: 1\n");
    const char *const star_com[] = {"*.com"};
    check_mx(p, 1, star_com);
    CHECK_INT(p->mode, MTASTS_MODE_ENFORCE);
    mtasts_policy_free(p);
    p = POLICY_OK("version: STSv1\nmode: enforce\nmx: xn--bcher-kva.example\nmax_age: 1");
    const char *const idn[] = {"xn--bcher-kva.example"};
    check_mx(p, 1, idn);
    mtasts_policy_free(p);

    CHECK_STR(mtasts_mode_name(MTASTS_MODE_NONE), "none");
    CHECK_STR(mtasts_mode_name(MTASTS_MODE_TESTING), "testing");
    CHECK_STR(mtasts_mode_name(MTASTS_MODE_ENFORCE), "enforce");
    mtasts_policy_free(NULL);
}

static void test_policy_bad(void)
{
    POLICY_BAD("", "line 1: the policy is empty");
    POLICY_BAD("\n", "line 1: empty line");
    POLICY_BAD("\r\n", "line 1: empty line");
    POLICY_BAD("\n" GOOD, "line 1: empty line");
    POLICY_BAD("version: STSv1\n\nmode: enforce\nmx: a.b\nmax_age: 1\n", "line 2: empty line");
    POLICY_BAD(GOOD "\n", "line 5: empty line");
    POLICY_BAD(GOOD "\r\n", "line 5: empty line");
    POLICY_BAD(" version: STSv1\n", "line 1: not a \"name: value\" field");
    POLICY_BAD("version : STSv1\n", "line 1: not a \"name: value\" field");
    POLICY_BAD("version STSv1\n", "line 1: not a \"name: value\" field");
    POLICY_BAD("version\n", "line 1: not a \"name: value\" field");
    POLICY_BAD("_x: y\n" GOOD, "line 1: not a \"name: value\" field");
    POLICY_BAD("abcdefghijklmnopqrstuvwxyz0123456: x\n" GOOD,
               "line 1: not a \"name: value\" field");
    POLICY_BAD("version: STSv1\rmode: enforce\n", "line 1: version is not STSv1");
    POLICY_BAD("version: STSv1\r\r\n", "line 1: version is not STSv1");
    POLICY_BAD("version: stsv1\n", "line 1: version is not STSv1");
    POLICY_BAD("version: STSv2\n", "line 1: version is not STSv1");
    POLICY_BAD("version:\n", "line 1: version is not STSv1");
    POLICY_BAD("version: STSv1\nversion: STSv2\n", "line 2: version is not STSv1");
    POLICY_BAD("version: STSv1\0\n", "line 1: version is not STSv1");
    POLICY_BAD("version: STSv1\nmode: Enforce\n", "line 2: mode is not enforce, testing or none");
    POLICY_BAD("version: STSv1\nmode: report\n", "line 2: mode is not enforce, testing or none");
    POLICY_BAD("version: STSv1\nmode: enforce\nmode: strict\n",
               "line 3: mode is not enforce, testing or none");
    POLICY_BAD("version: STSv1\nmode: enforce enforce\n",
               "line 2: mode is not enforce, testing or none");
    POLICY_BAD("max_age: -1\n", "line 1: max_age is not 1 to 10 digits");
    POLICY_BAD("max_age: +1\n", "line 1: max_age is not 1 to 10 digits");
    POLICY_BAD("max_age: 1e5\n", "line 1: max_age is not 1 to 10 digits");
    POLICY_BAD("max_age: 12345678901\n", "line 1: max_age is not 1 to 10 digits");
    POLICY_BAD("max_age:\n", "line 1: max_age is not 1 to 10 digits");
    POLICY_BAD("max_age: 1 2\n", "line 1: max_age is not 1 to 10 digits");
    POLICY_BAD("mx:\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: *\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: *.\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: .example.com\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: a..b\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: *.*.b\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: m*.b.c\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: a.com b.com\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: a.com,b.com\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: [192.0.2.1]\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: b\xc3\xbc"
               "cher.example\n",
               "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: mx_1.example\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: a.com\0.evil.org\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("mx: a.com.\t.\n", "line 1: mx is not a domain or *. and a domain");
    POLICY_BAD("foo:\n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo:   \n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: a\tb\n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: a\x7f\n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: \xff\n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: \xc0\xaf\n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: \xed\xa0\x80\n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: \xf4\x90\x80\x80\n" GOOD,
               "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: \xe2\x82\n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: a\rb\n" GOOD, "line 1: field value is empty or not printable text");
    POLICY_BAD("foo: a\0\n" GOOD, "line 1: field value is empty or not printable text");

    POLICY_BAD("mode: enforce\nmx: a.b\nmax_age: 1\n", "no version field");
    POLICY_BAD("version: STSv1\nmx: a.b\nmax_age: 1\n", "no mode field");
    POLICY_BAD("version: STSv1\nMode: none\nmx: a.b\nmax_age: 1\n", "no mode field");
    POLICY_BAD("version: STSv1\nmode: enforce\nmx: a.b\n", "no max_age field");
    POLICY_BAD("version: STSv1\nmode: enforce\nmax_age: 1\n",
               "no mx field (required unless mode is none)");
    POLICY_BAD("version: STSv1\nmode: testing\nmax_age: 1\nMX: a.b\n",
               "no mx field (required unless mode is none)");

    /* MTASTS_MX_MAX patterns, then one more. */
    static char big[128 + MTASTS_MX_MAX * 20];
    size_t n = (size_t)snprintf(big, sizeof(big), "version: STSv1\nmode: enforce\nmax_age: 1\n");
    for (int i = 0; i < MTASTS_MX_MAX; i++) {
        n += (size_t)snprintf(big + n, sizeof(big) - n, "mx: m%d.example\n", i);
    }
    struct mtasts_policy *p = check_policy(__LINE__, big, n, "");
    CHECK_INT(p != NULL ? p->n_mx : 0, MTASTS_MX_MAX);
    CHECK(p != NULL && mtasts_mx_matches(p, "m127.example", 12));
    mtasts_policy_free(p);
    n += (size_t)snprintf(big + n, sizeof(big) - n, "mx: last.example\n");
    char want[MTASTS_ERROR_MAX];
    snprintf(want, sizeof(want), "line %d: more than %d mx fields", MTASTS_MX_MAX + 4,
             MTASTS_MX_MAX);
    check_policy(__LINE__, big, n, want);
}

/* ---- matching ---- */

static struct mtasts_policy *policy_of(const char *mx_lines)
{
    char body[1024];
    int n = snprintf(body, sizeof(body), "version: STSv1\nmode: enforce\nmax_age: 1\n%s", mx_lines);
    struct mtasts_policy *p = NULL;
    char err[MTASTS_ERROR_MAX];
    CHECK_INT(parse(&p, err, body, (size_t)n), MTASTS_POLICY_OK);
    return p;
}

static bool mx(const struct mtasts_policy *p, const char *host, size_t len)
{
    char *c = copy_of(host, len);
    bool r = mtasts_mx_matches(p, c, len);
    free(c);
    return r;
}

#define MX(p, s) mx(p, s, sizeof(s) - 1)

static bool cert1(const struct mtasts_policy *p, const char *name, size_t len)
{
    char *c = copy_of(name, len);
    const char *names[1] = {c};
    size_t lens[1] = {len};
    bool r = mtasts_cert_name_matches(p, names, lens, 1);
    free(c);
    return r;
}

#define CERT(p, s) cert1(p, s, sizeof(s) - 1)

static void test_match(void)
{
    struct mtasts_policy *p =
        policy_of("mx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\n");
    CHECK(MX(p, "mail.example.com"));
    CHECK(MX(p, "MAIL.EXAMPLE.COM."));
    CHECK(MX(p, "backupmx.example.com"));
    CHECK(MX(p, "x.example.net"));
    CHECK(MX(p, "X.Example.Net."));
    CHECK(MX(p, "xn--bcher-kva.example.net"));
    CHECK(!MX(p, "mail.example.com.."));
    CHECK(!MX(p, "example.net"));
    CHECK(!MX(p, "a.b.example.net"));
    CHECK(!MX(p, "*.example.net"));
    CHECK(!MX(p, ".example.net"));
    CHECK(!MX(p, "x..example.net"));
    CHECK(!MX(p, "mail.example.com\0.evil.org"));
    CHECK(!MX(p, "mail.example.com\0"));
    CHECK(!MX(p, ""));
    CHECK(!MX(p, "."));
    CHECK(!MX(p, "mail.example.co"));
    CHECK(!MX(p, "xmail.example.com"));
    CHECK(!MX(p, "mail.example.com.evil.org"));
    CHECK(!MX(p, "x.example.net.evil.org"));
    CHECK(!MX(p, "x_y.example.net"));
    CHECK(!MX(p, "x y.example.net"));

    /* Certificate names against the patterns, MX host name unknown. */
    CHECK(CERT(p, "mail.example.com"));
    CHECK(CERT(p, "MAIL.example.COM"));
    CHECK(CERT(p, "*.example.com"));      /* covers mail.example.com */
    CHECK(CERT(p, "x.example.net"));      /* covered by *.example.net */
    CHECK(CERT(p, "*.example.net"));      /* wildcard to wildcard */
    CHECK(!CERT(p, "*.sub.example.net")); /* covers only hosts two labels down */
    CHECK(!CERT(p, "example.net"));
    CHECK(!CERT(p, "a.b.example.net"));
    CHECK(!CERT(p, "*.com")); /* never: a whole top-level domain */
    CHECK(!CERT(p, "*.net"));
    CHECK(!CERT(p, "other.example.com"));
    CHECK(!CERT(p, "mail.example.com."));
    CHECK(!CERT(p, "mail.example.com\0.evil.org"));
    CHECK(!CERT(p, "evil.org\0mail.example.com"));
    CHECK(!CERT(p, "mail.example.com\0"));
    CHECK(!CERT(p, "m*.example.com"));
    CHECK(!CERT(p, "*ail.example.com"));
    CHECK(!CERT(p, "*.*.example.net"));
    CHECK(!CERT(p, "x.*.example.net"));
    CHECK(!CERT(p, "*"));
    CHECK(!CERT(p, ""));
    CHECK(!CERT(p, "x..example.net"));
    CHECK(!CERT(p, ".example.net"));
    /* Several names: one good one is enough; none is nothing. */
    const char *names[] = {"evil.org", "*.com", "backupmx.example.com"};
    size_t lens[] = {8, 5, 20};
    CHECK(mtasts_cert_name_matches(p, names, lens, 3));
    CHECK(!mtasts_cert_name_matches(p, names, lens, 2));
    CHECK(!mtasts_cert_name_matches(p, names, lens, 0));
    mtasts_policy_free(p);

    /* A policy's own "*.com" allows any one-label name under com, no deeper. */
    p = policy_of("mx: *.com\n");
    CHECK(MX(p, "example.com"));
    CHECK(!MX(p, "mx.example.com"));
    CHECK(!MX(p, "com"));
    CHECK(CERT(p, "example.com"));
    CHECK(!CERT(p, "*.com"));
    CHECK(!CERT(p, "*.example.com"));
    mtasts_policy_free(p);

    /* A-labels are compared as ASCII; a wildcard needs two labels after it. */
    p = policy_of("mx: xn--bcher-kva.example\nmx: *.xn--p1ai.example\n");
    CHECK(CERT(p, "XN--BCHER-KVA.example"));
    CHECK(!CERT(p, "*.example"));
    CHECK(CERT(p, "*.xn--p1ai.example"));
    CHECK(CERT(p, "xn--d1acufc.xn--p1ai.example"));
    CHECK(!CERT(p, "b\xc3\xbc"
                   "cher.example"));
    CHECK(MX(p, "xn--d1acufc.xn--p1ai.example."));
    mtasts_policy_free(p);
}

int main(void)
{
    test_txt();
    test_txt_rdata();
    test_policy_good();
    test_policy_bad();
    test_match();
    return check_exit("test_mtasts");
}
