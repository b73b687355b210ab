/*
 * proxyproto: PROXY protocol v1/v2 headers, parsed from and formatted into the caller's
 * bytes. The parser is a pure function of the bytes received so far, so a header split
 * across reads at any byte gives the same answer as one read whole.
 */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Spec section 2.2: "\r\n\r\n\0\r\nQUIT\n". It holds a NUL: compare it with memcmp only. */
static const uint8_t proxyproto_v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                              0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

#define PROXYPROTO_V2_HEADER_LEN 16
#define PROXYPROTO_V2_VERSION 0x20
#define PROXYPROTO_V2_CMD_LOCAL 0x0
#define PROXYPROTO_V2_CMD_PROXY 0x1
#define PROXYPROTO_V2_TCP4 0x11
#define PROXYPROTO_V2_TCP6 0x21
#define PROXYPROTO_V2_LEN_TCP4 12 /* 2 * 4 address bytes + 2 * 2 port bytes */
#define PROXYPROTO_V2_LEN_TCP6 36 /* 2 * 16 + 2 * 2 */
#define PROXYPROTO_V2_LEN_UNIX 216

static size_t proxyproto_min(size_t a, size_t b)
{
    return a < b ? a : b;
}

static bool proxyproto_is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

/*
 * A decimal number of at most |max_digits| digits filling all of s[0, len), without a
 * leading zero (spec: "to avoid any possible confusion with octal numbers"), at most |max|.
 */
static bool proxyproto_parse_decimal(unsigned *out, const uint8_t *s, size_t len, size_t max_digits,
                                     unsigned max)
{
    if (len == 0 || len > max_digits || (len > 1 && s[0] == '0')) {
        return false;
    }
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!proxyproto_is_digit(s[i])) {
            return false;
        }
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > max) {
        return false;
    }
    *out = v;
    return true;
}

/*
 * Exactly four dotted decimal numbers. Not inet_pton(): the spec's rule on leading zeros
 * is ours to enforce, whatever the C library accepts.
 */
static bool proxyproto_parse_ipv4(struct in_addr *out, const uint8_t *s, size_t len)
{
    uint8_t bytes[4];
    size_t start = 0;
    for (int k = 0; k < 4; k++) {
        size_t end = start;
        while (end < len && s[end] != '.') {
            end++;
        }
        if ((k < 3) != (end < len)) {
            return false; /* fewer or more than four numbers */
        }
        unsigned v;
        if (!proxyproto_parse_decimal(&v, s + start, end - start, 3, 255)) {
            return false;
        }
        bytes[k] = (uint8_t)v;
        start = end + 1;
    }
    memcpy(&out->s_addr, bytes, sizeof(bytes));
    return true;
}

static bool proxyproto_parse_ipv6(struct in6_addr *out, const uint8_t *s, size_t len)
{
    /* The longest text form is 45 characters: six groups and a dotted IPv4 address. */
    char text[INET6_ADDRSTRLEN];
    if (len < 2 || len >= sizeof(text)) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        bool hex = proxyproto_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (!hex && c != ':' && c != '.') {
            return false; /* a zone ("%eth0") or anything inet_pton() might stretch to */
        }
    }
    memcpy(text, s, len);
    text[len] = '\0';
    return inet_pton(AF_INET6, text, out) == 1;
}

static void proxyproto_set_ipv4(struct sockaddr_storage *out, const struct in_addr *addr,
                                unsigned port)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr = *addr;
    sin.sin_port = htons((uint16_t)port);
    memset(out, 0, sizeof(*out));
    memcpy(out, &sin, sizeof(sin));
}

static void proxyproto_set_ipv6(struct sockaddr_storage *out, const struct in6_addr *addr,
                                unsigned port)
{
    struct sockaddr_in6 sin6;
    memset(&sin6, 0, sizeof(sin6));
    sin6.sin6_family = AF_INET6;
    sin6.sin6_addr = *addr;
    sin6.sin6_port = htons((uint16_t)port);
    memset(out, 0, sizeof(*out));
    memcpy(out, &sin6, sizeof(sin6));
}

/*
 * The v1 line after "PROXY " and before the CRLF: "UNKNOWN[ anything]" or
 * "TCP4|TCP6 src dst sport dport" with single spaces.
 */
static bool proxyproto_parse_v1_line(struct proxyproto_header *out, const uint8_t *s, size_t len)
{
    if (len >= 7 && memcmp(s, "UNKNOWN", 7) == 0 && (len == 7 || s[7] == ' ')) {
        out->family = PROXYPROTO_UNKNOWN;
        return true;
    }
    bool v4 = len >= 5 && memcmp(s, "TCP4 ", 5) == 0;
    bool v6 = len >= 5 && memcmp(s, "TCP6 ", 5) == 0;
    if (!v4 && !v6) {
        return false;
    }

    const uint8_t *field[4];
    size_t field_len[4];
    size_t n_fields = 0;
    size_t start = 5;
    for (size_t i = start; i <= len; i++) {
        if (i < len && s[i] != ' ') {
            continue;
        }
        /* An empty field is a doubled, leading or trailing space. */
        if (n_fields == 4 || i == start) {
            return false;
        }
        field[n_fields] = s + start;
        field_len[n_fields] = i - start;
        n_fields++;
        start = i + 1;
    }
    if (n_fields != 4) {
        return false;
    }

    unsigned src_port;
    unsigned dst_port;
    if (!proxyproto_parse_decimal(&src_port, field[2], field_len[2], 5, 65535) ||
        !proxyproto_parse_decimal(&dst_port, field[3], field_len[3], 5, 65535)) {
        return false;
    }
    if (v4) {
        struct in_addr src;
        struct in_addr dst;
        if (!proxyproto_parse_ipv4(&src, field[0], field_len[0]) ||
            !proxyproto_parse_ipv4(&dst, field[1], field_len[1])) {
            return false;
        }
        out->family = PROXYPROTO_TCP4;
        proxyproto_set_ipv4(&out->src, &src, src_port);
        proxyproto_set_ipv4(&out->dst, &dst, dst_port);
    } else {
        struct in6_addr src;
        struct in6_addr dst;
        if (!proxyproto_parse_ipv6(&src, field[0], field_len[0]) ||
            !proxyproto_parse_ipv6(&dst, field[1], field_len[1])) {
            return false;
        }
        out->family = PROXYPROTO_TCP6;
        proxyproto_set_ipv6(&out->src, &src, src_port);
        proxyproto_set_ipv6(&out->dst, &dst, dst_port);
    }
    return true;
}

/*
 * Whether the bytes after "PROXY " seen so far can still start a valid line, so that a
 * wrong keyword is refused at once instead of after 107 bytes (the spec recommends
 * aborting as soon as possible).
 */
static bool proxyproto_v1_keyword_possible(const uint8_t *s, size_t len)
{
    static const char *const keywords[] = {"TCP4 ", "TCP6 ", "UNKNOWN ", "UNKNOWN\r"};
    for (size_t i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++) {
        if (memcmp(s, keywords[i], proxyproto_min(len, strlen(keywords[i]))) == 0) {
            return true;
        }
    }
    return false;
}

static enum proxyproto_result proxyproto_parse_v1(struct proxyproto_header *out, size_t *out_len,
                                                  const uint8_t *p, size_t len)
{
    static const char magic[] = "PROXY ";
    const size_t magic_len = sizeof(magic) - 1;
    if (memcmp(p, magic, proxyproto_min(len, magic_len)) != 0) {
        return PROXYPROTO_BAD;
    }
    if (len > magic_len && !proxyproto_v1_keyword_possible(p + magic_len, len - magic_len)) {
        return PROXYPROTO_BAD;
    }
    /* Only the first 107 bytes can hold the line, CRLF included. */
    size_t scan_len = proxyproto_min(len, PROXYPROTO_V1_MAX);
    for (size_t i = magic_len; i < scan_len; i++) {
        if (p[i] == '\r') {
            if (i + 2 > PROXYPROTO_V1_MAX) {
                return PROXYPROTO_BAD; /* no room left for the LF */
            }
            if (i + 1 == len) {
                return PROXYPROTO_NEED_MORE;
            }
            /* Spec: a lone CR or LF must not be taken for the end of the line. */
            if (p[i + 1] != '\n') {
                return PROXYPROTO_BAD;
            }
            if (!proxyproto_parse_v1_line(out, p + magic_len, i - magic_len)) {
                return PROXYPROTO_BAD;
            }
            out->version = PROXYPROTO_V1;
            *out_len = i + 2;
            return PROXYPROTO_OK;
        }
        /* US-ASCII text only: this also refuses a bare LF and NUL bytes. */
        if (p[i] < 0x20 || p[i] > 0x7e) {
            return PROXYPROTO_BAD;
        }
    }
    return len >= PROXYPROTO_V1_MAX ? PROXYPROTO_BAD : PROXYPROTO_NEED_MORE;
}

/*
 * The address bytes a PROXY command's family byte announces, 0 for AF_UNSPEC (whose block
 * is ignored), or -1 for a value the spec does not list, which must be refused.
 */
static int proxyproto_v2_addr_len(uint8_t fam)
{
    switch (fam) {
    case 0x00:
        return 0;
    case 0x11: /* TCP over IPv4 */
    case 0x12: /* UDP over IPv4 */
        return PROXYPROTO_V2_LEN_TCP4;
    case 0x21: /* TCP over IPv6 */
    case 0x22: /* UDP over IPv6 */
        return PROXYPROTO_V2_LEN_TCP6;
    case 0x31: /* AF_UNIX stream */
    case 0x32: /* AF_UNIX datagram */
        return PROXYPROTO_V2_LEN_UNIX;
    default:
        return -1;
    }
}

/* The TLVs (type, 16-bit length, value) must tile s[0, len) exactly. */
static bool proxyproto_v2_tlvs_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (len - i < 3) {
            return false;
        }
        size_t value_len = ((size_t)s[i + 1] << 8) | s[i + 2];
        if (value_len > len - i - 3) {
            return false;
        }
        i += 3 + value_len;
    }
    return true;
}

static enum proxyproto_result proxyproto_parse_v2(struct proxyproto_header *out, size_t *out_len,
                                                  const uint8_t *p, size_t len)
{
    if (memcmp(p, proxyproto_v2_sig, proxyproto_min(len, sizeof(proxyproto_v2_sig))) != 0) {
        return PROXYPROTO_BAD;
    }
    if (len < 13) {
        return PROXYPROTO_NEED_MORE;
    }
    uint8_t version = p[12] & 0xf0;
    uint8_t command = p[12] & 0x0f;
    if (version != PROXYPROTO_V2_VERSION ||
        (command != PROXYPROTO_V2_CMD_LOCAL && command != PROXYPROTO_V2_CMD_PROXY)) {
        return PROXYPROTO_BAD;
    }
    if (len < 14) {
        return PROXYPROTO_NEED_MORE;
    }
    /* LOCAL: "discard the protocol block including the family which is ignored". */
    uint8_t fam = p[13];
    int addr_len = 0;
    if (command == PROXYPROTO_V2_CMD_PROXY) {
        addr_len = proxyproto_v2_addr_len(fam);
        if (addr_len < 0) {
            return PROXYPROTO_BAD;
        }
    }
    if (len < PROXYPROTO_V2_HEADER_LEN) {
        return PROXYPROTO_NEED_MORE;
    }
    size_t block_len = ((size_t)p[14] << 8) | p[15];
    if (block_len > PROXYPROTO_V2_LEN_MAX || block_len < (size_t)addr_len) {
        return PROXYPROTO_BAD;
    }
    if (len - PROXYPROTO_V2_HEADER_LEN < block_len) {
        return PROXYPROTO_NEED_MORE;
    }

    const uint8_t *block = p + PROXYPROTO_V2_HEADER_LEN;
    if (command == PROXYPROTO_V2_CMD_LOCAL) {
        out->family = PROXYPROTO_LOCAL;
    } else if (addr_len == 0) {
        out->family = PROXYPROTO_UNKNOWN;
    } else {
        if (!proxyproto_v2_tlvs_valid(block + addr_len, block_len - (size_t)addr_len)) {
            return PROXYPROTO_BAD;
        }
        /* Ports follow both addresses, in network order like the addresses. */
        if (fam == PROXYPROTO_V2_TCP4) {
            struct in_addr src;
            struct in_addr dst;
            memcpy(&src, block, 4);
            memcpy(&dst, block + 4, 4);
            out->family = PROXYPROTO_TCP4;
            proxyproto_set_ipv4(&out->src, &src, ((unsigned)block[8] << 8) | block[9]);
            proxyproto_set_ipv4(&out->dst, &dst, ((unsigned)block[10] << 8) | block[11]);
        } else if (fam == PROXYPROTO_V2_TCP6) {
            struct in6_addr src;
            struct in6_addr dst;
            memcpy(&src, block, 16);
            memcpy(&dst, block + 16, 16);
            out->family = PROXYPROTO_TCP6;
            proxyproto_set_ipv6(&out->src, &src, ((unsigned)block[32] << 8) | block[33]);
            proxyproto_set_ipv6(&out->dst, &dst, ((unsigned)block[34] << 8) | block[35]);
        } else {
            /* UDP and AF_UNIX: the spec lets a receiver fall back to AF_UNSPEC. */
            out->family = PROXYPROTO_UNKNOWN;
        }
    }
    out->version = PROXYPROTO_V2;
    *out_len = PROXYPROTO_V2_HEADER_LEN + block_len;
    return PROXYPROTO_OK;
}

enum proxyproto_result proxyproto_parse(struct proxyproto_header *out, size_t *out_len,
                                        const void *data, size_t len, enum proxyproto_version mode)
{
    const uint8_t *p = data;
    struct proxyproto_header h;
    memset(&h, 0, sizeof(h));
    size_t h_len = 0;
    enum proxyproto_result r;

    memset(out, 0, sizeof(*out));
    *out_len = 0;
    if (mode != PROXYPROTO_ANY && mode != PROXYPROTO_V1 && mode != PROXYPROTO_V2) {
        return PROXYPROTO_BAD;
    }
    if (len == 0) {
        return PROXYPROTO_NEED_MORE;
    }
    switch (mode) {
    case PROXYPROTO_V1:
        r = proxyproto_parse_v1(&h, &h_len, p, len);
        break;
    case PROXYPROTO_V2:
        r = proxyproto_parse_v2(&h, &h_len, p, len);
        break;
    case PROXYPROTO_ANY:
        /* The signatures differ in their first byte: '\r' for v2, 'P' for v1. */
        if (p[0] == proxyproto_v2_sig[0]) {
            r = proxyproto_parse_v2(&h, &h_len, p, len);
        } else {
            r = proxyproto_parse_v1(&h, &h_len, p, len);
        }
        break;
    default:
        return PROXYPROTO_BAD; /* checked above; keeps the compiler sure r is set */
    }
    if (r == PROXYPROTO_OK) {
        *out = h;
        *out_len = h_len;
    }
    return r;
}

/* An address for the header: IPv4 addresses are widened to IPv4-mapped IPv6 on demand. */
struct proxyproto_addr {
    int af; /* AF_INET, AF_INET6, or AF_UNSPEC when unusable */
    uint8_t addr[16];
    uint8_t port[2]; /* network order */
};

static void proxyproto_addr_get(struct proxyproto_addr *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof(*out));
    out->af = AF_UNSPEC;
    if (sa == NULL) {
        return;
    }
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof(sin));
        out->af = AF_INET;
        memcpy(out->addr, &sin.sin_addr, 4);
        memcpy(out->port, &sin.sin_port, 2);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof(sin6));
        out->af = AF_INET6;
        memcpy(out->addr, &sin6.sin6_addr, 16);
        memcpy(out->port, &sin6.sin6_port, 2);
    }
}

static void proxyproto_addr_map_v6(struct proxyproto_addr *a)
{
    if (a->af != AF_INET) {
        return;
    }
    uint8_t v4[4];
    memcpy(v4, a->addr, 4);
    memset(a->addr, 0, 10);
    a->addr[10] = 0xff;
    a->addr[11] = 0xff;
    memcpy(a->addr + 12, v4, 4);
    a->af = AF_INET6;
}

static size_t proxyproto_format_v1(char *out, size_t out_cap, const struct proxyproto_addr *src,
                                   const struct proxyproto_addr *dst)
{
    char src_text[INET6_ADDRSTRLEN];
    char dst_text[INET6_ADDRSTRLEN];
    int n;
    if (src->af == AF_UNSPEC || inet_ntop(src->af, src->addr, src_text, sizeof(src_text)) == NULL ||
        inet_ntop(dst->af, dst->addr, dst_text, sizeof(dst_text)) == NULL) {
        n = snprintf(out, out_cap, "PROXY UNKNOWN\r\n");
    } else {
        n = snprintf(out, out_cap, "PROXY %s %s %s %u %u\r\n", src->af == AF_INET ? "TCP4" : "TCP6",
                     src_text, dst_text, ((unsigned)src->port[0] << 8) | src->port[1],
                     ((unsigned)dst->port[0] << 8) | dst->port[1]);
    }
    /* Cannot fail or overflow (45-byte addresses make 104 at most); stay safe anyway. */
    if (n < 0 || (size_t)n >= out_cap) {
        n = snprintf(out, out_cap, "PROXY UNKNOWN\r\n");
    }
    return (size_t)n;
}

static size_t proxyproto_format_v2(uint8_t *out, const struct proxyproto_addr *src,
                                   const struct proxyproto_addr *dst)
{
    size_t addr_size = src->af == AF_INET ? 4 : 16;
    size_t block_len = src->af == AF_UNSPEC ? 0 : 2 * addr_size + 4;
    memcpy(out, proxyproto_v2_sig, sizeof(proxyproto_v2_sig));
    out[12] = PROXYPROTO_V2_VERSION | PROXYPROTO_V2_CMD_PROXY;
    out[13] = src->af == AF_UNSPEC ? 0x00
              : src->af == AF_INET ? PROXYPROTO_V2_TCP4
                                   : PROXYPROTO_V2_TCP6;
    out[14] = (uint8_t)(block_len >> 8);
    out[15] = (uint8_t)block_len;
    if (block_len != 0) {
        uint8_t *b = out + PROXYPROTO_V2_HEADER_LEN;
        memcpy(b, src->addr, addr_size);
        memcpy(b + addr_size, dst->addr, addr_size);
        memcpy(b + 2 * addr_size, src->port, 2);
        memcpy(b + 2 * addr_size + 2, dst->port, 2);
    }
    return PROXYPROTO_V2_HEADER_LEN + block_len;
}

int proxyproto_format(void *out, size_t *out_len, size_t out_cap, enum proxyproto_version version,
                      const struct sockaddr *src, const struct sockaddr *dst)
{
    *out_len = 0;
    if (version != PROXYPROTO_V1 && version != PROXYPROTO_V2) {
        return -EINVAL;
    }

    struct proxyproto_addr a;
    struct proxyproto_addr b;
    proxyproto_addr_get(&a, src);
    proxyproto_addr_get(&b, dst);
    if (a.af == AF_UNSPEC || b.af == AF_UNSPEC) {
        a.af = AF_UNSPEC;
        b.af = AF_UNSPEC;
    } else if (a.af != b.af) {
        /* One IPv4, one IPv6: only TCP6 can carry both. */
        proxyproto_addr_map_v6(&a);
        proxyproto_addr_map_v6(&b);
    }

    /* Built aside so that a too small |out| is left untouched. */
    uint8_t header[PROXYPROTO_FORMAT_MAX + 1];
    size_t n;
    if (version == PROXYPROTO_V1) {
        n = proxyproto_format_v1((char *)header, sizeof(header), &a, &b);
    } else {
        n = proxyproto_format_v2(header, &a, &b);
    }
    if (n > out_cap) {
        return -ENOBUFS;
    }
    memcpy(out, header, n);
    *out_len = n;
    return 0;
}
