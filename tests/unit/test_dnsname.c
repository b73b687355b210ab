/*
 * test_dnsname: host name syntax and normalisation (each input a heap copy of its exact
 * length, for ASan), and the covers/overlap rules checked against a brute-force model that
 * enumerates host names over a small alphabet.
 */
#include "dnsname.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static enum dnsname_kind parse_copy(char *out, size_t *out_len, const char *name, size_t len,
                                    unsigned flags)
{
    char *copy = malloc(len == 0 ? 1 : len);
    CHECK(copy != NULL);
    memcpy(copy, name, len);
    enum dnsname_kind k = dnsname_parse(out, out_len, copy, len, flags);
    free(copy);
    return k;
}

static void check_parse(int line, const char *name, size_t len, unsigned flags,
                        enum dnsname_kind want, const char *want_norm)
{
    char out[DNSNAME_BUF];
    size_t out_len = 99;
    enum dnsname_kind k = parse_copy(out, &out_len, name, len, flags);
    if (k != want || strcmp(out, want_norm) != 0) {
        fprintf(stderr, "line %d: \"%.*s\" flags %u: got %d \"%s\"\n", line, (int)len, name, flags,
                (int)k, out);
    }
    CHECK_INT(k, want);
    CHECK_STR(out, want_norm);
    CHECK_INT(out_len, strlen(want_norm));
}

#define PARSE(s, flags, want, norm) check_parse(__LINE__, s, sizeof(s) - 1, flags, want, norm)

static void test_parse(void)
{
    const unsigned any = DNSNAME_ALLOW_WILDCARD | DNSNAME_ALLOW_TRAILING_DOT;
    PARSE("mx.example.com", 0, DNSNAME_HOST, "mx.example.com");
    PARSE("MX.Example.COM", 0, DNSNAME_HOST, "mx.example.com");
    PARSE("localhost", 0, DNSNAME_HOST, "localhost");
    PARSE("a-b.c0.x1", 0, DNSNAME_HOST, "a-b.c0.x1");
    PARSE("xn--bcher-kva.example", 0, DNSNAME_HOST, "xn--bcher-kva.example");
    PARSE("123.45", 0, DNSNAME_HOST, "123.45");
    PARSE("mx.example.com.", 0, DNSNAME_INVALID, "");
    PARSE("mx.example.com.", DNSNAME_ALLOW_TRAILING_DOT, DNSNAME_HOST, "mx.example.com");
    PARSE("mx.example.com..", DNSNAME_ALLOW_TRAILING_DOT, DNSNAME_INVALID, "");
    PARSE(".", DNSNAME_ALLOW_TRAILING_DOT, DNSNAME_INVALID, "");
    PARSE("", any, DNSNAME_INVALID, "");
    PARSE(".example.com", any, DNSNAME_INVALID, "");
    PARSE("a..b", any, DNSNAME_INVALID, "");
    PARSE("-a.b", any, DNSNAME_INVALID, "");
    PARSE("a-.b", any, DNSNAME_INVALID, "");
    PARSE("a.b-", any, DNSNAME_INVALID, "");
    PARSE("a_b.c", any, DNSNAME_INVALID, "");
    PARSE("a b.c", any, DNSNAME_INVALID, "");
    PARSE("a.b\0.evil.com", any, DNSNAME_INVALID, "");
    PARSE("a.b\0", any, DNSNAME_INVALID, "");
    PARSE("b\xc3\xbc"
          "cher.example",
          any, DNSNAME_INVALID, "");
    PARSE("*.example.com", 0, DNSNAME_INVALID, "");
    PARSE("*.example.com", DNSNAME_ALLOW_WILDCARD, DNSNAME_WILDCARD, "*.example.com");
    PARSE("*.EXAMPLE.com.", any, DNSNAME_WILDCARD, "*.example.com");
    PARSE("*.com", DNSNAME_ALLOW_WILDCARD, DNSNAME_WILDCARD, "*.com");
    PARSE("*.com", DNSNAME_CERT_WILDCARD, DNSNAME_INVALID, "");
    PARSE("*.example.com", DNSNAME_CERT_WILDCARD, DNSNAME_WILDCARD, "*.example.com");
    PARSE("*.xn--p1ai", DNSNAME_CERT_WILDCARD, DNSNAME_INVALID, "");
    PARSE("*", any, DNSNAME_INVALID, "");
    PARSE("*.", any, DNSNAME_INVALID, "");
    PARSE("*.*.example.com", any, DNSNAME_INVALID, "");
    PARSE("a.*.example.com", any, DNSNAME_INVALID, "");
    PARSE("m*.example.com", any, DNSNAME_INVALID, "");
    PARSE("*m.example.com", any, DNSNAME_INVALID, "");
    PARSE("xn--*.example.com", any, DNSNAME_INVALID, "");
    PARSE("**.example.com", any, DNSNAME_INVALID, "");

    /* Lengths: a 63-byte label, a 64-byte one; 253 bytes in all, and 254. */
    char name[300];
    memset(name, 'a', 63);
    memcpy(name + 63, ".com", 4);
    CHECK_INT(parse_copy(name, NULL, name, 67, 0), DNSNAME_HOST);
    memset(name, 'a', 64);
    memcpy(name + 64, ".com", 4);
    char out[DNSNAME_BUF];
    CHECK_INT(parse_copy(out, NULL, name, 68, 0), DNSNAME_INVALID);
    /* 4 labels of 61 bytes + dots = 247, then ".abcde" = 253. */
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        memset(name + n, 'b', 61);
        n += 61;
        name[n++] = '.';
    }
    memcpy(name + n, "abcde", 5);
    n += 5;
    CHECK_INT(n, 253);
    CHECK_INT(parse_copy(out, NULL, name, n, 0), DNSNAME_HOST);
    CHECK_INT(strlen(out), 253);
    name[n] = '.';
    CHECK_INT(parse_copy(out, NULL, name, n + 1, DNSNAME_ALLOW_TRAILING_DOT), DNSNAME_HOST);
    name[n] = 'f';
    CHECK_INT(parse_copy(out, NULL, name, n + 1, 0), DNSNAME_INVALID);
    /* "*." and the 251 bytes after the first label: 253 in all; one more is too long. */
    memcpy(name, "*.", 2);
    CHECK_INT(parse_copy(out, NULL, name, 253, DNSNAME_ALLOW_WILDCARD), DNSNAME_WILDCARD);
    CHECK_INT(parse_copy(out, NULL, name, 254, DNSNAME_ALLOW_WILDCARD), DNSNAME_INVALID);
}

/* The model: every host name of 1 to 3 labels over {a, b}, each label 1 or 2 letters. */
static char hosts[200][16];
static size_t n_hosts;

static void make_hosts(void)
{
    static const char *const labels[] = {"a", "b", "aa", "ab"};
    for (int depth = 1; depth <= 3; depth++) {
        int total = 1;
        for (int i = 0; i < depth; i++) {
            total *= 4;
        }
        for (int k = 0; k < total; k++) {
            char name[16] = "";
            int x = k;
            for (int i = 0; i < depth; i++) {
                if (i > 0) {
                    strcat(name, ".");
                }
                strcat(name, labels[x % 4]);
                x /= 4;
            }
            strcpy(hosts[n_hosts++], name);
        }
    }
}

/* What a name covers, by definition: a host covers itself; "*.s" covers "L.s". */
static bool model_covers(const char *name, const char *host)
{
    if (name[0] != '*') {
        return strcmp(name, host) == 0;
    }
    const char *dot = strchr(host, '.');
    return dot != NULL && strcmp(dot + 1, name + 2) == 0;
}

static void test_against_model(void)
{
    make_hosts();
    /* Names: every host, and "*." before every host. */
    static char names[400][20];
    size_t n_names = 0;
    for (size_t i = 0; i < n_hosts; i++) {
        strcpy(names[n_names++], hosts[i]);
        snprintf(names[n_names++], sizeof(names[0]), "*.%s", hosts[i]);
    }
    int bad = 0;
    for (size_t i = 0; i < n_names; i++) {
        for (size_t j = 0; j < n_names; j++) {
            bool want = false;
            for (size_t h = 0; h < n_hosts && !want; h++) {
                want = model_covers(names[i], hosts[h]) && model_covers(names[j], hosts[h]);
            }
            /* Hosts deeper than the model's enumerate nothing new: a wildcard's suffix
             * has at most 3 labels, so its hosts have 4; add those by construction. */
            if (!want && names[i][0] == '*' && names[j][0] == '*') {
                want = strcmp(names[i] + 2, names[j] + 2) == 0;
            }
            bad += dnsname_overlap(names[i], names[j]) != want;
            bad += dnsname_overlap(names[j], names[i]) != want;
        }
        for (size_t h = 0; h < n_hosts; h++) {
            bad += dnsname_covers(names[i], hosts[h]) != model_covers(names[i], hosts[h]);
        }
    }
    CHECK_INT(bad, 0);
    CHECK(!dnsname_covers("*.a", "*.a"));
    CHECK(!dnsname_covers("", "a"));
    CHECK(!dnsname_covers("a", ""));
    CHECK(!dnsname_overlap("", ""));
}

static void check_path(int line, const char *path, size_t len, enum dnsname_path want,
                       const char *want_domain)
{
    char out[DNSNAME_BUF];
    char *copy = malloc(len == 0 ? 1 : len);
    CHECK(copy != NULL);
    memcpy(copy, path, len);
    enum dnsname_path k = dnsname_path_domain(out, copy, len);
    free(copy);
    if (k != want || strcmp(out, want_domain) != 0) {
        fprintf(stderr, "line %d: %.*s: got %d \"%s\"\n", line, (int)len, path, (int)k, out);
    }
    CHECK_INT(k, want);
    CHECK_STR(out, want_domain);
}

#define PATH(s, want, domain) check_path(__LINE__, s, sizeof(s) - 1, want, domain)

/* The domain of a RCPT path: a plain mailbox gets one; whatever Postfix would route
 * elsewhere than the gate reads (percent hack, bang path, '@' in quotes, two '@',
 * comments, spaces, quoted-pairs) is unclear, so the gate refuses it. */
static void test_path(void)
{
    const char *d = "sts-enforce.test";
    PATH("<b@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d);
    PATH("<b@STS-Enforce.TEST.>", DNSNAME_PATH_DOMAIN, d);
    PATH("<b.c+tag@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d);
    PATH("<#$&'*+-/=?^_`{|}~.x@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d);
    PATH("<\xc3\xa9t\xc3\xa9@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d); /* RFC 6531 */
    PATH("<@nopolicy.test:b@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d);
    PATH("<@a.nopolicy.test,@b.nopolicy.test.:b@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d);
    PATH("<\"john smith\"@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d);
    PATH("<\"b>x\"@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d);
    PATH("<\"\"@sts-enforce.test>", DNSNAME_PATH_DOMAIN, d);
    /* No domain: the upstream's own local parts, and address literals. */
    PATH("<postmaster>", DNSNAME_PATH_LOCAL, "");
    PATH("<Postmaster>", DNSNAME_PATH_LOCAL, "");
    PATH("<\"postmaster\">", DNSNAME_PATH_LOCAL, "");
    PATH("<>", DNSNAME_PATH_LOCAL, "");
    PATH("<a@[192.0.2.1]>", DNSNAME_PATH_LITERAL, "");
    PATH("<a@[IPv6:2001:db8::1]>", DNSNAME_PATH_LITERAL, "");
    PATH("<a@[ipv6:::ffff:192.0.2.1]>", DNSNAME_PATH_LITERAL, "");
    PATH("<@r.test:a@[192.0.2.1]>", DNSNAME_PATH_LITERAL, "");
    PATH("<b@st\xc5\x9b-enforce.test>", DNSNAME_PATH_NON_ASCII, "");
    /* Routing characters in the local part (Postfix: allow_percent_hack, swap_bangpath,
     * an '@' in a quoted local part, "a@b@c" read as "a@b"@c). */
    PATH("<b%sts-enforce.test@relay.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b%sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<sts-enforce.test!b@relay.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<sts-enforce.test!b>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b@sts-enforce.test\"@relay.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b@sts-enforce.test\">", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b%sts-enforce.test\"@relay.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b!x\"@relay.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b@nopolicy.test\"@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b>@nopolicy.test\"@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts-enforce.test@relay.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts-enforce.test.@relay.test>", DNSNAME_PATH_UNCLEAR, "");
    /* Comments, whitespace, quoted-pairs, half-quoted local parts. */
    PATH("<b@sts-enforce.test >", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts-enforce.test\t>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b @sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("< b@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts-enforce.test(comment)>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b(c)@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts-enforce.test (x@relay.test)>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts-enforce\\.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b\\@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b\\\"x\"@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b\tx\"@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b\"x@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<x\"b\"@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<\"b@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b:c@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b,c@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b<c@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b\0@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    /* Domains that are neither host names nor literals. */
    PATH("<b@>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts_enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts-enforce..test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@[sts-enforce.test]>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@[192.0.2.1] >", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@[192.0.2.256]>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@[IPv6:192.0.2.1]>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@[192.0.2.1\0]>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@st\xc5\x9b-enforce.test (x@relay.test)>", DNSNAME_PATH_UNCLEAR, "");
    /* Source routes: host names only, ended by ':', followed by a mailbox. */
    PATH("<@a.test:b>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<@a.test,b@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<@a.test;b@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<@:b@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<@a.test,:b@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<@a%b.test:b@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    PATH("<@a.test:b%c@sts-enforce.test>", DNSNAME_PATH_UNCLEAR, "");
    /* Not a path at all. */
    PATH("b@sts-enforce.test", DNSNAME_PATH_UNCLEAR, "");
    PATH("<b@sts-enforce.test", DNSNAME_PATH_UNCLEAR, "");
    PATH("<", DNSNAME_PATH_UNCLEAR, "");
    PATH("", DNSNAME_PATH_UNCLEAR, "");
}

int main(void)
{
    test_parse();
    test_against_model();
    test_path();
    return check_exit("test_dnsname");
}
