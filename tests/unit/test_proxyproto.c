/*
 * test_proxyproto: PROXY protocol headers. Every valid header is also fed cut at every
 * byte and followed by SMTP bytes; every malformed one is checked to stay refused however
 * much follows it. Inputs are copied to buffers of their exact size, so ASan sees any read
 * past the length. Formatting is checked byte for byte and by parsing its output back.
 */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "check.h"

/* A string literal as (pointer, length), so embedded NUL bytes count. */
#define LIT(s) (s), (sizeof(s) - 1)

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/* Prints |data| escaped, to say which case failed. */
static void print_case(const char *why, const void *data, size_t len)
{
    const uint8_t *p = data;
    fprintf(stderr, "  %s: \"", why);
    for (size_t i = 0; i < len && i < 160; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') {
            fputc(p[i], stderr);
        } else {
            fprintf(stderr, "\\x%02x", p[i]);
        }
    }
    fprintf(stderr, "%s\" (%zu bytes)\n", len > 160 ? "..." : "", len);
}

/* proxyproto_parse on a heap copy of exactly |len| bytes. */
static enum proxyproto_result parse_copy(struct proxyproto_header *out, size_t *out_len,
                                         const void *data, size_t len, enum proxyproto_version mode)
{
    uint8_t *copy = malloc(len == 0 ? 1 : len);
    if (copy == NULL) {
        abort();
    }
    if (len != 0) {
        memcpy(copy, data, len);
    }
    enum proxyproto_result r = proxyproto_parse(out, out_len, copy, len, mode);
    free(copy);
    return r;
}

static bool header_is_zero(const struct proxyproto_header *h)
{
    static const struct proxyproto_header zero;
    return memcmp(h, &zero, sizeof(zero)) == 0;
}

/*
 * |data| is a valid header of |want_len| bytes, followed by |len - want_len| other bytes.
 * Every prefix shorter than the header needs more; the header alone and the header
 * followed by anything give the same answer. *out receives it.
 */
static bool parses_ok(struct proxyproto_header *out, const void *data, size_t len,
                      enum proxyproto_version mode, size_t want_len)
{
    size_t out_len;
    enum proxyproto_result r = parse_copy(out, &out_len, data, len, mode);
    if (r != PROXYPROTO_OK || out_len != want_len) {
        print_case("not OK or wrong length", data, len);
        fprintf(stderr, "  result %d, out_len %zu, want %zu\n", (int)r, out_len, want_len);
        return false;
    }
    for (size_t k = 0; k < want_len; k++) {
        struct proxyproto_header h;
        size_t h_len = 99;
        if (parse_copy(&h, &h_len, data, k, mode) != PROXYPROTO_NEED_MORE || h_len != 0 ||
            !header_is_zero(&h)) {
            print_case("a prefix is not NEED_MORE", data, k);
            return false;
        }
    }
    /* The same header followed by an SMTP command, then by every possible byte value. */
    static const char tails[][8] = {"EHLO x\r\n", "\r\n\r\n\0\r\nQ", "PROXY \r\n"};
    for (size_t t = 0; t < sizeof(tails) / sizeof(tails[0]) + 256; t++) {
        uint8_t buf[PROXYPROTO_HEADER_MAX + 16];
        size_t tail_len = t < 3 ? sizeof(tails[t]) : 1;
        if (want_len + tail_len > sizeof(buf)) {
            abort();
        }
        memcpy(buf, data, want_len);
        if (t < 3) {
            memcpy(buf + want_len, tails[t], tail_len);
        } else {
            buf[want_len] = (uint8_t)(t - 3);
        }
        struct proxyproto_header h;
        size_t h_len;
        if (parse_copy(&h, &h_len, buf, want_len + tail_len, mode) != PROXYPROTO_OK ||
            h_len != want_len || memcmp(&h, out, sizeof(h)) != 0) {
            print_case("different answer with bytes after the header", buf, want_len + tail_len);
            return false;
        }
    }
    return true;
}

/*
 * |data| is refused: every prefix either needs more or is refused, and once refused stays
 * refused; bytes after it change nothing. Returns the length at which it was refused in
 * *out_at, to check that refusal comes early.
 */
static bool parses_bad_at(size_t *out_at, const void *data, size_t len,
                          enum proxyproto_version mode)
{
    bool refused = false;
    *out_at = 0;
    for (size_t k = 0; k <= len; k++) {
        struct proxyproto_header h;
        size_t h_len = 99;
        enum proxyproto_result r = parse_copy(&h, &h_len, data, k, mode);
        if (h_len != 0 || !header_is_zero(&h) || r == PROXYPROTO_OK ||
            (refused && r != PROXYPROTO_BAD)) {
            print_case("a prefix is accepted or the answer goes back", data, k);
            return false;
        }
        if (r == PROXYPROTO_BAD && !refused) {
            refused = true;
            *out_at = k;
        }
    }
    if (!refused) {
        print_case("not refused", data, len);
        return false;
    }
    uint8_t buf[PROXYPROTO_HEADER_MAX + 16];
    if (len + 8 <= sizeof(buf)) {
        memcpy(buf, data, len);
        memcpy(buf + len, "EHLO x\r\n", 8);
        struct proxyproto_header h;
        size_t h_len;
        if (parse_copy(&h, &h_len, buf, len + 8, mode) != PROXYPROTO_BAD) {
            print_case("accepted once followed by more bytes", buf, len + 8);
            return false;
        }
    }
    return true;
}

static bool parses_bad(const void *data, size_t len, enum proxyproto_version mode)
{
    size_t at;
    return parses_bad_at(&at, data, len, mode);
}

/* Whether |ss| is the AF_INET address |text|:|port|, every other byte zero. */
static bool is_v4(const struct sockaddr_storage *ss, const char *text, unsigned port)
{
    struct sockaddr_storage want;
    struct sockaddr_in sin;
    memset(&want, 0, sizeof(want));
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, text, &sin.sin_addr) != 1) {
        abort();
    }
    memcpy(&want, &sin, sizeof(sin));
    return memcmp(ss, &want, sizeof(want)) == 0;
}

static bool is_v6(const struct sockaddr_storage *ss, const char *text, unsigned port)
{
    struct sockaddr_storage want;
    struct sockaddr_in6 sin6;
    memset(&want, 0, sizeof(want));
    memset(&sin6, 0, sizeof(sin6));
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, text, &sin6.sin6_addr) != 1) {
        abort();
    }
    memcpy(&want, &sin6, sizeof(sin6));
    return memcmp(ss, &want, sizeof(want)) == 0;
}

static bool is_unspec(const struct sockaddr_storage *ss)
{
    static const struct sockaddr_storage zero;
    return memcmp(ss, &zero, sizeof(zero)) == 0;
}

/* ---- version 1 ---- */

/* A valid v1 line must parse the same in mode V1 and ANY, and be refused in mode V2. */
static void check_v1_ok(struct proxyproto_header *out, const char *line, size_t len)
{
    struct proxyproto_header any;
    CHECK(parses_ok(out, line, len, PROXYPROTO_V1, len));
    CHECK(parses_ok(&any, line, len, PROXYPROTO_ANY, len));
    CHECK(memcmp(out, &any, sizeof(any)) == 0);
    CHECK_INT(out->version, PROXYPROTO_V1);
    size_t at;
    CHECK(parses_bad_at(&at, line, len, PROXYPROTO_V2));
    CHECK_INT(at, 1);
}

static void check_v1_bad(const char *line, size_t len)
{
    CHECK(parses_bad(line, len, PROXYPROTO_V1));
    CHECK(parses_bad(line, len, PROXYPROTO_ANY));
}

static void test_v1_valid(void)
{
    struct proxyproto_header h;

    check_v1_ok(&h, LIT("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"));
    CHECK_INT(h.family, PROXYPROTO_TCP4);
    CHECK(is_v4(&h.src, "192.0.2.1", 56324));
    CHECK(is_v4(&h.dst, "198.51.100.2", 25));

    /* The longest TCP4 line (56 bytes) and the smallest numbers. */
    check_v1_ok(&h, LIT("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"));
    CHECK_INT(h.family, PROXYPROTO_TCP4);
    CHECK(is_v4(&h.src, "255.255.255.255", 65535));
    CHECK(is_v4(&h.dst, "255.255.255.255", 65535));
    check_v1_ok(&h, LIT("PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n"));
    CHECK(is_v4(&h.src, "0.0.0.0", 0));
    CHECK(is_v4(&h.dst, "10.0.0.1", 1));

    check_v1_ok(&h, LIT("PROXY TCP6 2001:db8::1 2001:db8::2 1234 25\r\n"));
    CHECK_INT(h.family, PROXYPROTO_TCP6);
    CHECK(is_v6(&h.src, "2001:db8::1", 1234));
    CHECK(is_v6(&h.dst, "2001:db8::2", 25));

    /* The longest TCP6 line (104 bytes). */
    check_v1_ok(&h, LIT("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"));
    CHECK_INT(h.family, PROXYPROTO_TCP6);
    CHECK(is_v6(&h.src, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535));

    /* Upper case hex, full groups with leading zeros, "::", and an embedded IPv4. */
    check_v1_ok(&h, LIT("PROXY TCP6 2001:DB8:0000:0000:0000:0000:0000:000A :: 1 2\r\n"));
    CHECK(is_v6(&h.src, "2001:db8::a", 1));
    CHECK(is_v6(&h.dst, "::", 2));
    check_v1_ok(&h, LIT("PROXY TCP6 ::ffff:192.0.2.1 ::1 65535 0\r\n"));
    CHECK(is_v6(&h.src, "::ffff:192.0.2.1", 65535));
    CHECK(is_v6(&h.dst, "::1", 0));

    check_v1_ok(&h, LIT("PROXY UNKNOWN\r\n"));
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
    CHECK(is_unspec(&h.src));
    CHECK(is_unspec(&h.dst));
    /* After UNKNOWN and a space, anything printable is ignored (spec section 2.1). */
    check_v1_ok(&h, LIT("PROXY UNKNOWN \r\n"));
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
    check_v1_ok(&h, LIT("PROXY UNKNOWN 1.2.3.4 whatever  ~!@#$%^&*() 99999999\r\n"));
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
    CHECK(is_unspec(&h.src));
    /* The spec's worst case: exactly 107 bytes. */
    static const char longest[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                                  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CHECK_INT(sizeof(longest) - 1, PROXYPROTO_V1_MAX);
    check_v1_ok(&h, LIT(longest));
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
}

static void test_v1_malformed(void)
{
    /* The line must end in CRLF: not a bare LF, not a lone CR. */
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n"));
    check_v1_bad(LIT("PROXY UNKNOWN\n"));
    check_v1_bad(LIT("PROXY UNKNOWN\n\r\n"));
    check_v1_bad(LIT("PROXY UNKNOWN x\ry\r\n"));
    check_v1_bad(LIT("PROXY\r\n"));
    check_v1_bad(LIT("PROXY \r\n"));
    CHECK(parses_bad(LIT("\r\n"), PROXYPROTO_V1)); /* in mode ANY, a v2 beginning */

    /* No CRLF in the first 107 bytes: refused at byte 107, not later. */
    char line[PROXYPROTO_V1_MAX + 16];
    memset(line, 'a', sizeof(line));
    memcpy(line, "PROXY UNKNOWN ", 14);
    size_t at;
    CHECK(parses_bad_at(&at, line, sizeof(line), PROXYPROTO_V1));
    CHECK_INT(at, PROXYPROTO_V1_MAX);
    /* A 108-byte line: its CR is the 107th byte, so the LF cannot fit. */
    memcpy(line + 106, "\r\n", 2);
    CHECK(parses_bad_at(&at, line, 108, PROXYPROTO_V1));
    CHECK_INT(at, PROXYPROTO_V1_MAX);
    /* One byte shorter fits exactly. */
    memcpy(line + 105, "\r\n", 2);
    struct proxyproto_header h;
    CHECK(parses_ok(&h, line, 107, PROXYPROTO_V1, 107));
    /* A TCP6 line with the mixed notation may be valid text but is too long. */
    check_v1_bad(LIT("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
                     "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n"));

    /* Not a PROXY line at all, and refused at the first wrong byte. */
    check_v1_bad(LIT("EHLO example.org\r\n"));
    CHECK(parses_bad_at(&at, LIT("EHLO example.org\r\n"), PROXYPROTO_V1));
    CHECK_INT(at, 1);
    CHECK(parses_bad_at(&at, LIT("PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), PROXYPROTO_ANY));
    CHECK_INT(at, 5);
    CHECK(parses_bad_at(&at, LIT("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), PROXYPROTO_ANY));
    CHECK_INT(at, 10);
    CHECK(parses_bad_at(&at, LIT("PROXY UNKNOWNX\r\n"), PROXYPROTO_ANY));
    CHECK_INT(at, 14);

    /* Keywords are upper case. */
    check_v1_bad(LIT("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY Tcp6 ::1 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY unknown\r\n"));
    check_v1_bad(LIT("PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"));

    /* Exactly one space between fields. */
    check_v1_bad(LIT("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT(" PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"));
    check_v1_bad(LIT("PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY UNKNOWN\t\r\n"));

    /* Missing or extra fields. */
    check_v1_bad(LIT("PROXY TCP4\r\n"));
    check_v1_bad(LIT("PROXY TCP4 \r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 1 2\r\n"));

    /* Ports: decimal 0-65535, no sign, no leading zero. */
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 25 65536\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 99999 25\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 123456 25\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 4294967321 25\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 025 25\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 25 00\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 25 065535\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 -1 25\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 +1 25\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 0x19 25\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 2a 25\r\n"));
    check_v1_bad(LIT("PROXY TCP6 ::1 ::1 65536 25\r\n"));

    /* IPv4: four decimal numbers 0-255, no leading zero (octal confusion). */
    check_v1_bad(LIT("PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.1000 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.00 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 .1.2.3 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.-4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4/32 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 16909060 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 localhost 5.6.7.8 1 2\r\n"));

    /* The address must match the announced family. */
    check_v1_bad(LIT("PROXY TCP4 ::1 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 ::1 5.6.7.8 1 2\r\n"));

    /* IPv6 text inet_pton() refuses, and what we refuse before it. */
    check_v1_bad(LIT("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 [::1] ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 ::: ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 : ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 1::2::3 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 12345::1 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 g::1 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 ::ffff:1.2.3.04 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP6 ::ffff:1.2.3 ::1 1 2\r\n"));

    /* NUL bytes, other control bytes and non-ASCII bytes, even where UNKNOWN ignores. */
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\0\r\n"));
    check_v1_bad(LIT("PROXY TCP6 ::1\0 ::1 1 2\r\n"));
    check_v1_bad(LIT("PROXY\0TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
    check_v1_bad(LIT("PROXY UNKNOWN\0\r\n"));
    check_v1_bad(LIT("PROXY UNKNOWN x\0y\r\n"));
    check_v1_bad(LIT("PROXY UNKNOWN \x7f\r\n"));
    check_v1_bad(LIT("PROXY UNKNOWN \xc3\xa9\r\n"));
    check_v1_bad(LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x80\r\n"));
    check_v1_bad(LIT("PROXY UNKNOWN \x1b[0m\r\n"));

    /* A v2 header is not a v1 line. */
    CHECK(parses_bad_at(&at, LIT("\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"), PROXYPROTO_V1));
    CHECK_INT(at, 1);

    /* Truncated lines are never accepted: every cut needs more. */
    static const char full[] = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n";
    for (size_t k = 0; k < sizeof(full) - 1; k++) {
        size_t h_len;
        CHECK_INT(parse_copy(&h, &h_len, full, k, PROXYPROTO_ANY), PROXYPROTO_NEED_MORE);
    }
}

/* ---- version 2 ---- */

/* Builds a v2 header: signature, |ver_cmd|, |fam|, the length of |block|, |block|. */
static size_t v2_build(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const void *block,
                       size_t block_len)
{
    memcpy(out, v2_sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)(block_len >> 8);
    out[15] = (uint8_t)block_len;
    if (block_len != 0) {
        memcpy(out + 16, block, block_len);
    }
    return 16 + block_len;
}

static void check_v2_ok(struct proxyproto_header *out, const void *data, size_t len)
{
    struct proxyproto_header any;
    CHECK(parses_ok(out, data, len, PROXYPROTO_V2, len));
    CHECK(parses_ok(&any, data, len, PROXYPROTO_ANY, len));
    CHECK(memcmp(out, &any, sizeof(any)) == 0);
    CHECK_INT(out->version, PROXYPROTO_V2);
    size_t at;
    CHECK(parses_bad_at(&at, data, len, PROXYPROTO_V1));
    CHECK_INT(at, 1);
}

static void check_v2_bad(const void *data, size_t len)
{
    CHECK(parses_bad(data, len, PROXYPROTO_V2));
    CHECK(parses_bad(data, len, PROXYPROTO_ANY));
}

/* 192.0.2.1:56324 -> 198.51.100.2:25 */
static const uint8_t v2_tcp4_block[12] = {192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0, 25};
/* [2001:db8::1]:56324 -> [2001:db8::2]:25 */
static const uint8_t v2_tcp6_block[36] = {
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    1,    0x20, 0x01,
    0x0d, 0xb8, 0,    0,    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0xdc, 0x04, 0,    25};

static void test_v2_valid(void)
{
    uint8_t buf[PROXYPROTO_HEADER_MAX + 64];
    uint8_t block[PROXYPROTO_V2_LEN_MAX + 64];
    struct proxyproto_header h;
    size_t n;

    n = v2_build(buf, 0x21, 0x11, v2_tcp4_block, sizeof(v2_tcp4_block));
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_TCP4);
    CHECK(is_v4(&h.src, "192.0.2.1", 56324));
    CHECK(is_v4(&h.dst, "198.51.100.2", 25));

    n = v2_build(buf, 0x21, 0x21, v2_tcp6_block, sizeof(v2_tcp6_block));
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_TCP6);
    CHECK(is_v6(&h.src, "2001:db8::1", 56324));
    CHECK(is_v6(&h.dst, "2001:db8::2", 25));

    /* With TLVs: ALPN "smtp", an empty NOOP, an AWS-style custom TLV, and an SSL TLV. */
    static const uint8_t tlvs[] = {
        0x01, 0x00, 0x04, 's',  'm',  't',  'p',       /* PP2_TYPE_ALPN */
        0x04, 0x00, 0x00,                              /* PP2_TYPE_NOOP, empty */
        0xea, 0x00, 0x05, 0x01, 'v',  'p',  'c',  'e', /* custom range */
        0x20, 0x00, 0x0a, 0x01, 0x00, 0x00, 0x00, 0x00, 0x21, 0x00, 0x02, '1', '3', /* SSL */
    };
    memcpy(block, v2_tcp4_block, 12);
    memcpy(block + 12, tlvs, sizeof(tlvs));
    n = v2_build(buf, 0x21, 0x11, block, 12 + sizeof(tlvs));
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_TCP4);
    CHECK(is_v4(&h.src, "192.0.2.1", 56324));
    CHECK(is_v4(&h.dst, "198.51.100.2", 25));
    memcpy(block, v2_tcp6_block, 36);
    memcpy(block + 36, tlvs, sizeof(tlvs));
    n = v2_build(buf, 0x21, 0x21, block, 36 + sizeof(tlvs));
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_TCP6);
    CHECK(is_v6(&h.src, "2001:db8::1", 56324));

    /* The largest block accepted: one NOOP TLV padding it to PROXYPROTO_V2_LEN_MAX. */
    memset(block, 0, sizeof(block));
    memcpy(block, v2_tcp4_block, 12);
    size_t pad = PROXYPROTO_V2_LEN_MAX - 12 - 3;
    block[12] = 0x04;
    block[13] = (uint8_t)(pad >> 8);
    block[14] = (uint8_t)pad;
    n = v2_build(buf, 0x21, 0x11, block, PROXYPROTO_V2_LEN_MAX);
    CHECK_INT(n, PROXYPROTO_HEADER_MAX);
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_TCP4);

    /* LOCAL (a health check): real addresses. The family and block are ignored. */
    n = v2_build(buf, 0x20, 0x00, NULL, 0);
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_LOCAL);
    CHECK(is_unspec(&h.src));
    CHECK(is_unspec(&h.dst));
    n = v2_build(buf, 0x20, 0x11, v2_tcp4_block, sizeof(v2_tcp4_block));
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_LOCAL);
    CHECK(is_unspec(&h.src));
    n = v2_build(buf, 0x20, 0xff, "\x01\x02\x03", 3);
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_LOCAL);
    n = v2_build(buf, 0x20, 0x21, v2_tcp4_block, 5); /* a short block: ignored too */
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_LOCAL);

    /* PROXY for what we cannot use: fall back to the real addresses (UNKNOWN). */
    n = v2_build(buf, 0x21, 0x00, NULL, 0);
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
    n = v2_build(buf, 0x21, 0x00, "\xff\xff", 2); /* AF_UNSPEC: the block is ignored */
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
    n = v2_build(buf, 0x21, 0x12, v2_tcp4_block, 12); /* UDP over IPv4 */
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
    CHECK(is_unspec(&h.src));
    n = v2_build(buf, 0x21, 0x22, v2_tcp6_block, 36); /* UDP over IPv6 */
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
    memset(block, 'u', 216);
    block[216] = 0x04;
    block[217] = 0x00;
    block[218] = 0x00;
    n = v2_build(buf, 0x21, 0x31, block, 219); /* AF_UNIX stream, with a TLV */
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
    n = v2_build(buf, 0x21, 0x32, block, 216); /* AF_UNIX datagram */
    check_v2_ok(&h, buf, n);
    CHECK_INT(h.family, PROXYPROTO_UNKNOWN);
}

static void test_v2_malformed(void)
{
    uint8_t buf[PROXYPROTO_HEADER_MAX + 64];
    uint8_t block[PROXYPROTO_V2_LEN_MAX + 64];
    size_t n;
    size_t at;

    /* A wrong byte anywhere in the signature is refused at that byte. */
    n = v2_build(buf, 0x21, 0x11, v2_tcp4_block, 12);
    for (size_t i = 0; i < 12; i++) {
        uint8_t saved = buf[i];
        buf[i] ^= 0x01;
        CHECK(parses_bad_at(&at, buf, n, PROXYPROTO_V2));
        CHECK_INT(at, i + 1);
        CHECK(parses_bad(buf, n, PROXYPROTO_ANY));
        buf[i] = saved == 0x00 ? 0xff : 0x00;
        CHECK(parses_bad(buf, n, PROXYPROTO_ANY));
        buf[i] = saved;
    }
    check_v2_bad(LIT("EHLO example.org\r\n"));
    check_v2_bad(LIT("\r\n\r\n"
                     "QUIT\r\n"));

    /* Version 2 only; commands LOCAL and PROXY only. Refused at byte 13. */
    static const uint8_t bad_ver_cmd[] = {0x01, 0x10, 0x11, 0x12, 0x22, 0x2f,
                                          0x31, 0xf1, 0x00, 0x02, 0xff};
    for (size_t i = 0; i < sizeof(bad_ver_cmd); i++) {
        n = v2_build(buf, bad_ver_cmd[i], 0x11, v2_tcp4_block, 12);
        CHECK(parses_bad_at(&at, buf, n, PROXYPROTO_V2));
        CHECK_INT(at, 13);
        CHECK(parses_bad(buf, n, PROXYPROTO_ANY));
    }

    /* PROXY with a family byte the spec does not list. Refused at byte 14. */
    static const uint8_t bad_fam[] = {0x01, 0x02, 0x03, 0x10, 0x13, 0x20, 0x23,
                                      0x30, 0x33, 0x40, 0x41, 0x1f, 0xf1, 0xff};
    for (size_t i = 0; i < sizeof(bad_fam); i++) {
        n = v2_build(buf, 0x21, bad_fam[i], v2_tcp6_block, 36);
        CHECK(parses_bad_at(&at, buf, n, PROXYPROTO_V2));
        CHECK_INT(at, 14);
    }

    /* A block too short for the family's addresses, refused at byte 16. */
    n = v2_build(buf, 0x21, 0x11, v2_tcp4_block, 11);
    CHECK(parses_bad_at(&at, buf, n, PROXYPROTO_V2));
    CHECK_INT(at, 16);
    n = v2_build(buf, 0x21, 0x11, NULL, 0);
    check_v2_bad(buf, n);
    n = v2_build(buf, 0x21, 0x21, v2_tcp4_block, 12); /* an IPv4 block announced as IPv6 */
    CHECK(parses_bad_at(&at, buf, n, PROXYPROTO_V2));
    CHECK_INT(at, 16);
    n = v2_build(buf, 0x21, 0x21, v2_tcp6_block, 35);
    check_v2_bad(buf, n);
    memset(block, 'u', 216);
    n = v2_build(buf, 0x21, 0x31, block, 215);
    check_v2_bad(buf, n);

    /* A length over the cap is refused at once, not waited for. */
    memset(block, 0, sizeof(block));
    memcpy(block, v2_tcp4_block, 12);
    block[12] = 0x04;
    block[13] = (uint8_t)((PROXYPROTO_V2_LEN_MAX + 1 - 15) >> 8);
    block[14] = (uint8_t)(PROXYPROTO_V2_LEN_MAX + 1 - 15);
    n = v2_build(buf, 0x21, 0x11, block, PROXYPROTO_V2_LEN_MAX + 1);
    CHECK(parses_bad_at(&at, buf, n, PROXYPROTO_V2));
    CHECK_INT(at, 16);
    n = v2_build(buf, 0x20, 0x00, block, PROXYPROTO_V2_LEN_MAX + 1); /* LOCAL too */
    CHECK(parses_bad_at(&at, buf, n, PROXYPROTO_V2));
    CHECK_INT(at, 16);
    n = v2_build(buf, 0x21, 0x11, v2_tcp4_block, 12);
    buf[14] = 0xff;
    buf[15] = 0xff;
    CHECK(parses_bad_at(&at, buf, 16, PROXYPROTO_ANY));
    CHECK_INT(at, 16);

    /* TLVs that do not exactly fill the block. */
    static const struct {
        char tlvs[12];
        uint8_t len; /* a small type, so that GCC's -O2 overflow analysis sees the bound */
    } bad_tlvs[] = {
        {"\x01", 1},                        /* one byte: no room for type and length */
        {"\x01\x00", 2},                    /* two bytes */
        {"\x01\x00\x01", 3},                /* a value of 1 byte missing */
        {"\x01\x00\x05xxxx", 7},            /* value one byte short */
        {"\x01\x00\x02xxx", 6},             /* one stray byte after the TLV */
        {"\x04\x00\x00\x04", 4},            /* a second TLV cut after its type */
        {"\x01\xff\xffxxxxxxxx", 11},       /* a length far past the block */
        {"\x20\x00\x02xx\x01\x00\x03x", 9}, /* the second TLV overruns */
    };
    for (size_t i = 0; i < sizeof(bad_tlvs) / sizeof(bad_tlvs[0]); i++) {
        memcpy(block, v2_tcp4_block, 12);
        memcpy(block + 12, bad_tlvs[i].tlvs, bad_tlvs[i].len);
        n = v2_build(buf, 0x21, 0x11, block, 12 + bad_tlvs[i].len);
        check_v2_bad(buf, n);
        memcpy(block, v2_tcp6_block, 36);
        memcpy(block + 36, bad_tlvs[i].tlvs, bad_tlvs[i].len);
        n = v2_build(buf, 0x21, 0x21, block, 36 + bad_tlvs[i].len);
        check_v2_bad(buf, n);
        memset(block, 'u', 216);
        memcpy(block + 216, bad_tlvs[i].tlvs, bad_tlvs[i].len);
        n = v2_build(buf, 0x21, 0x31, block, 216 + bad_tlvs[i].len);
        check_v2_bad(buf, n);
    }

    /* A v1 line is not a v2 header. */
    CHECK(parses_bad_at(&at, LIT("PROXY UNKNOWN\r\n"), PROXYPROTO_V2));
    CHECK_INT(at, 1);

    /* Truncated headers are never accepted, however they end. */
    struct proxyproto_header h;
    size_t h_len;
    memcpy(block, v2_tcp6_block, 36);
    memcpy(block + 36, "\x01\x00\x04smtp", 7);
    n = v2_build(buf, 0x21, 0x21, block, 43);
    for (size_t k = 0; k < n; k++) {
        CHECK_INT(parse_copy(&h, &h_len, buf, k, PROXYPROTO_V2), PROXYPROTO_NEED_MORE);
        CHECK_INT(parse_copy(&h, &h_len, buf, k, PROXYPROTO_ANY), PROXYPROTO_NEED_MORE);
    }
}

static void test_modes(void)
{
    struct proxyproto_header h;
    size_t h_len = 99;

    /* Nothing yet: wait, in every mode. */
    CHECK_INT(proxyproto_parse(&h, &h_len, NULL, 0, PROXYPROTO_ANY), PROXYPROTO_NEED_MORE);
    CHECK_INT(proxyproto_parse(&h, &h_len, NULL, 0, PROXYPROTO_V1), PROXYPROTO_NEED_MORE);
    CHECK_INT(proxyproto_parse(&h, &h_len, NULL, 0, PROXYPROTO_V2), PROXYPROTO_NEED_MORE);
    CHECK_INT(h_len, 0);
    /* A mode that does not exist refuses everything. */
    CHECK_INT(proxyproto_parse(&h, &h_len, LIT("PROXY UNKNOWN\r\n"), (enum proxyproto_version)7),
              PROXYPROTO_BAD);
    CHECK_INT(proxyproto_parse(&h, &h_len, NULL, 0, (enum proxyproto_version)7), PROXYPROTO_BAD);

    /* Every first byte other than 'P' and '\r' is refused at once in mode ANY. */
    for (unsigned c = 0; c < 256; c++) {
        uint8_t b = (uint8_t)c;
        enum proxyproto_result want = c == 'P' || c == '\r' ? PROXYPROTO_NEED_MORE : PROXYPROTO_BAD;
        CHECK_INT(proxyproto_parse(&h, &h_len, &b, 1, PROXYPROTO_ANY), want);
    }
    /* Common first bytes of the things that really arrive on port 25. */
    CHECK_INT(proxyproto_parse(&h, &h_len, LIT("\x16\x03\x01"), PROXYPROTO_ANY), PROXYPROTO_BAD);
    CHECK_INT(proxyproto_parse(&h, &h_len, LIT("HELO x\r\n"), PROXYPROTO_ANY), PROXYPROTO_BAD);
    CHECK_INT(proxyproto_parse(&h, &h_len, LIT("\r\n"), PROXYPROTO_ANY), PROXYPROTO_NEED_MORE);
    CHECK_INT(proxyproto_parse(&h, &h_len, LIT("\r\nQUIT\r\n"), PROXYPROTO_ANY), PROXYPROTO_BAD);
}

/* ---- formatting ---- */

static struct sockaddr_storage sa4(const char *text, unsigned port)
{
    struct sockaddr_storage ss;
    struct sockaddr_in sin;
    memset(&ss, 0, sizeof(ss));
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, text, &sin.sin_addr) != 1) {
        abort();
    }
    memcpy(&ss, &sin, sizeof(sin));
    return ss;
}

static struct sockaddr_storage sa6(const char *text, unsigned port)
{
    struct sockaddr_storage ss;
    struct sockaddr_in6 sin6;
    memset(&ss, 0, sizeof(ss));
    memset(&sin6, 0, sizeof(sin6));
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, text, &sin6.sin6_addr) != 1) {
        abort();
    }
    memcpy(&ss, &sin6, sizeof(sin6));
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

/*
 * Formats src/dst as |version| and checks the bytes against |want|; then that every
 * smaller buffer is refused and left untouched, and that the output parses back.
 */
static void check_format(enum proxyproto_version version, const struct sockaddr_storage *src,
                         const struct sockaddr_storage *dst, const void *want, size_t want_len,
                         enum proxyproto_family want_family)
{
    uint8_t out[PROXYPROTO_FORMAT_MAX];
    size_t out_len = 99;
    CHECK_INT(proxyproto_format(out, &out_len, sizeof(out), version, (const struct sockaddr *)src,
                                (const struct sockaddr *)dst),
              0);
    CHECK_MEM(out, out_len, want, want_len);
    for (size_t cap = 0; cap < want_len; cap++) {
        uint8_t small[PROXYPROTO_FORMAT_MAX + 1];
        memset(small, 0xaa, sizeof(small));
        size_t small_len = 99;
        CHECK_INT(proxyproto_format(small, &small_len, cap, version, (const struct sockaddr *)src,
                                    (const struct sockaddr *)dst),
                  -ENOBUFS);
        CHECK_INT(small_len, 0);
        CHECK(small[0] == 0xaa && small[want_len - 1] == 0xaa);
    }
    /* Exactly enough room. */
    uint8_t *exact = malloc(want_len);
    if (exact == NULL) {
        abort();
    }
    CHECK_INT(proxyproto_format(exact, &out_len, want_len, version, (const struct sockaddr *)src,
                                (const struct sockaddr *)dst),
              0);
    CHECK_MEM(exact, out_len, want, want_len);
    free(exact);

    struct proxyproto_header h;
    CHECK(parses_ok(&h, want, want_len, version, want_len));
    CHECK_INT(h.version, version);
    CHECK_INT(h.family, want_family);
}

static void test_format(void)
{
    struct sockaddr_storage s4 = sa4("192.0.2.1", 56324);
    struct sockaddr_storage d4 = sa4("198.51.100.2", 25);
    struct sockaddr_storage s6 = sa6("2001:db8::1", 56324);
    struct sockaddr_storage d6 = sa6("2001:db8::2", 25);
    uint8_t want[PROXYPROTO_FORMAT_MAX];
    size_t n;

    check_format(PROXYPROTO_V1, &s4, &d4, LIT("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"),
                 PROXYPROTO_TCP4);
    check_format(PROXYPROTO_V1, &s6, &d6, LIT("PROXY TCP6 2001:db8::1 2001:db8::2 56324 25\r\n"),
                 PROXYPROTO_TCP6);
    n = v2_build(want, 0x21, 0x11, v2_tcp4_block, 12);
    check_format(PROXYPROTO_V2, &s4, &d4, want, n, PROXYPROTO_TCP4);
    n = v2_build(want, 0x21, 0x21, v2_tcp6_block, 36);
    check_format(PROXYPROTO_V2, &s6, &d6, want, n, PROXYPROTO_TCP6);

    /* One IPv4 and one IPv6 address: both as IPv6, the IPv4 one mapped. */
    check_format(PROXYPROTO_V1, &s4, &d6,
                 LIT("PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 56324 25\r\n"), PROXYPROTO_TCP6);
    check_format(PROXYPROTO_V1, &s6, &d4,
                 LIT("PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 56324 25\r\n"), PROXYPROTO_TCP6);
    uint8_t mixed[36];
    memset(mixed, 0, sizeof(mixed));
    memcpy(mixed, v2_tcp6_block, 16);
    mixed[26] = 0xff;
    mixed[27] = 0xff;
    memcpy(mixed + 28, "\xc6\x33\x64\x02", 4);
    memcpy(mixed + 32, "\xdc\x04\x00\x19", 4);
    n = v2_build(want, 0x21, 0x21, mixed, 36);
    check_format(PROXYPROTO_V2, &s6, &d4, want, n, PROXYPROTO_TCP6);

    /* The longest v1 output and extreme ports. */
    struct sockaddr_storage big = sa6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
    check_format(PROXYPROTO_V1, &big, &big,
                 LIT("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
                 PROXYPROTO_TCP6);
    struct sockaddr_storage zero4 = sa4("0.0.0.0", 0);
    check_format(PROXYPROTO_V1, &zero4, &zero4, LIT("PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n"),
                 PROXYPROTO_TCP4);

    /* A scope id cannot be carried; the address still is. */
    struct sockaddr_storage scoped = sa6("fe80::1", 25);
    ((struct sockaddr_in6 *)&scoped)->sin6_scope_id = 3;
    check_format(PROXYPROTO_V1, &scoped, &scoped, LIT("PROXY TCP6 fe80::1 fe80::1 25 25\r\n"),
                 PROXYPROTO_TCP6);

    /* Families we cannot describe, and missing addresses: UNKNOWN / AF_UNSPEC. */
    struct sockaddr_storage unix_sa;
    memset(&unix_sa, 0, sizeof(unix_sa));
    unix_sa.ss_family = AF_UNIX;
    struct sockaddr_storage unspec;
    memset(&unspec, 0, sizeof(unspec));
    check_format(PROXYPROTO_V1, &unix_sa, &unix_sa, LIT("PROXY UNKNOWN\r\n"), PROXYPROTO_UNKNOWN);
    check_format(PROXYPROTO_V1, &s4, &unix_sa, LIT("PROXY UNKNOWN\r\n"), PROXYPROTO_UNKNOWN);
    check_format(PROXYPROTO_V1, &unspec, &d6, LIT("PROXY UNKNOWN\r\n"), PROXYPROTO_UNKNOWN);
    n = v2_build(want, 0x21, 0x00, NULL, 0);
    check_format(PROXYPROTO_V2, &unix_sa, &d4, want, n, PROXYPROTO_UNKNOWN);
    check_format(PROXYPROTO_V2, &s6, &unspec, want, n, PROXYPROTO_UNKNOWN);

    uint8_t out[PROXYPROTO_FORMAT_MAX];
    size_t out_len = 99;
    CHECK_INT(proxyproto_format(out, &out_len, sizeof(out), PROXYPROTO_V1, NULL, NULL), 0);
    CHECK_MEM(out, out_len, "PROXY UNKNOWN\r\n", 15);
    CHECK_INT(proxyproto_format(out, &out_len, sizeof(out), PROXYPROTO_V2, SA(s4), NULL), 0);
    CHECK_MEM(out, out_len, want, 16);

    /* Only V1 and V2 can be written. */
    out_len = 99;
    CHECK_INT(proxyproto_format(out, &out_len, sizeof(out), PROXYPROTO_ANY, SA(s4), SA(d4)),
              -EINVAL);
    CHECK_INT(out_len, 0);
    CHECK_INT(
        proxyproto_format(out, &out_len, sizeof(out), (enum proxyproto_version)3, SA(s4), SA(d4)),
        -EINVAL);
}

/*
 * Random addresses through format and parse, in both versions: the parsed addresses are
 * the formatted ones, and formatting the parsed ones gives the same bytes.
 */
static void test_round_trip(void)
{
    uint64_t seed = 0x9e3779b97f4a7c15u;
    int failures = 0;
    for (int i = 0; i < 20000 && failures < 5; i++) {
        struct sockaddr_storage ss[2];
        for (int j = 0; j < 2; j++) {
            uint8_t bytes[18];
            for (size_t b = 0; b < sizeof(bytes); b++) {
                seed = seed * 6364136223846793005u + 1442695040888963407u;
                bytes[b] = (uint8_t)(seed >> 56);
            }
            /* Some short runs of zeros, so "::" compression and mapped forms occur. */
            if (i % 3 == 0) {
                memset(bytes + (i / 3) % 8, 0, (size_t)(i % 5) * 2);
            }
            if (i % 7 == 0) {
                memset(bytes, 0, 10);
                bytes[10] = 0xff;
                bytes[11] = 0xff;
            }
            memset(&ss[j], 0, sizeof(ss[j]));
            if (i % 2 == 0) {
                struct sockaddr_in sin;
                memset(&sin, 0, sizeof(sin));
                sin.sin_family = AF_INET;
                memcpy(&sin.sin_addr, bytes, 4);
                memcpy(&sin.sin_port, bytes + 16, 2);
                memcpy(&ss[j], &sin, sizeof(sin));
            } else {
                struct sockaddr_in6 sin6;
                memset(&sin6, 0, sizeof(sin6));
                sin6.sin6_family = AF_INET6;
                memcpy(&sin6.sin6_addr, bytes, 16);
                memcpy(&sin6.sin6_port, bytes + 16, 2);
                memcpy(&ss[j], &sin6, sizeof(sin6));
            }
        }
        for (int v = PROXYPROTO_V1; v <= PROXYPROTO_V2; v++) {
            uint8_t out[PROXYPROTO_FORMAT_MAX];
            size_t out_len;
            struct proxyproto_header h;
            size_t h_len;
            bool ok = proxyproto_format(out, &out_len, sizeof(out), (enum proxyproto_version)v,
                                        SA(ss[0]), SA(ss[1])) == 0 &&
                      parse_copy(&h, &h_len, out, out_len, PROXYPROTO_ANY) == PROXYPROTO_OK &&
                      h_len == out_len && h.version == (enum proxyproto_version)v &&
                      h.family == (i % 2 == 0 ? PROXYPROTO_TCP4 : PROXYPROTO_TCP6) &&
                      memcmp(&h.src, &ss[0], sizeof(ss[0])) == 0 &&
                      memcmp(&h.dst, &ss[1], sizeof(ss[1])) == 0;
            uint8_t again[PROXYPROTO_FORMAT_MAX];
            size_t again_len;
            ok = ok &&
                 proxyproto_format(again, &again_len, sizeof(again), (enum proxyproto_version)v,
                                   SA(h.src), SA(h.dst)) == 0 &&
                 again_len == out_len && memcmp(again, out, out_len) == 0;
            CHECK(ok);
            if (!ok) {
                print_case("round trip", out, out_len);
                failures++;
            }
        }
    }
}

int main(void)
{
    test_v1_valid();
    test_v1_malformed();
    test_v2_valid();
    test_v2_malformed();
    test_modes();
    test_format();
    test_round_trip();
    return check_exit("test_proxyproto");
}
