/*
 * proxyproto: the PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2). Parses
 * the header a load balancer puts in front of a front connection, and formats the header
 * we put in front of a back connection.
 *
 * Nothing here does I/O, allocates memory or logs. Input is never trusted: all lengths are
 * explicit, NUL and any other byte may come anywhere, and every limit is checked.
 */
#ifndef PROXY_PROXYPROTO_H
#define PROXY_PROXYPROTO_H

#include <stddef.h>
#include <sys/socket.h>

/* A version 1 header is one line of at most 107 bytes, CRLF included (spec section 2.1). */
#define PROXYPROTO_V1_MAX 107
/*
 * The largest version 2 address block (the length field) we accept. The spec sets no
 * limit but sizes the header to fit 536 bytes; the largest address block is 216 bytes
 * (AF_UNIX) and the TLVs load balancers add (SSL details, unique id, authority, cloud
 * endpoint ids) stay well under a kilobyte. A longer block is refused rather than waited
 * for, so a broken sender cannot make us buffer up to 64 KiB.
 */
#define PROXYPROTO_V2_LEN_MAX 2048
/* The longest header proxyproto_parse() accepts: the most bytes worth buffering for it. */
#define PROXYPROTO_HEADER_MAX (16 + PROXYPROTO_V2_LEN_MAX)
/* The most bytes proxyproto_format() writes, for either version. */
#define PROXYPROTO_FORMAT_MAX PROXYPROTO_V1_MAX

/* As a parse mode: which versions to accept. As a format version: which one to write. */
enum proxyproto_version {
    PROXYPROTO_ANY = 0, /* parse only: v1 or v2, told apart by their first bytes */
    PROXYPROTO_V1 = 1,
    PROXYPROTO_V2 = 2,
};

enum proxyproto_result {
    PROXYPROTO_OK = 0,    /* a complete, valid header */
    PROXYPROTO_NEED_MORE, /* a valid beginning: call again with more bytes */
    PROXYPROTO_BAD,       /* not a valid header: drop the connection */
};

/* What a header says about the connection it precedes. */
enum proxyproto_family {
    /* v2 LOCAL: the load balancer itself opened the connection (a health check); use
     * the real connection's addresses. */
    PROXYPROTO_LOCAL = 0,
    /* v1 UNKNOWN, or v2 PROXY for something other than TCP over IPv4/IPv6 (UDP, AF_UNIX,
     * AF_UNSPEC): relayed, but the addresses are not usable; use the real ones. */
    PROXYPROTO_UNKNOWN,
    PROXYPROTO_TCP4, /* src and dst are AF_INET */
    PROXYPROTO_TCP6, /* src and dst are AF_INET6 */
};

struct proxyproto_header {
    enum proxyproto_version version; /* PROXYPROTO_V1 or PROXYPROTO_V2 */
    enum proxyproto_family family;
    /* For TCP4/TCP6: the original client's address and the address it connected to, as a
     * struct sockaddr_in or sockaddr_in6 (ports in network order, every other byte 0).
     * For LOCAL/UNKNOWN: all zero (ss_family AF_UNSPEC). */
    struct sockaddr_storage src;
    struct sockaddr_storage dst;
};

/*
 * proxyproto_parse looks for a PROXY protocol header at the start of |data|, the first
 * |len| bytes received on a connection. It keeps no state: call it again with all the
 * bytes received so far each time more arrive. |mode| is PROXYPROTO_V1, PROXYPROTO_V2,
 * or PROXYPROTO_ANY to accept either (v2 starts with "\r\n\r\n\0\r\nQUIT\n", v1 with
 * "PROXY "). Returns:
 *  - PROXYPROTO_OK: the first *out_len bytes (1 <= *out_len <= len) are the header, to be
 *    discarded; what follows is the relayed protocol. *out is filled.
 *  - PROXYPROTO_NEED_MORE: |data| is a valid beginning of a header. This never happens
 *    once len >= PROXYPROTO_HEADER_MAX (for PROXYPROTO_V1: PROXYPROTO_V1_MAX).
 *  - PROXYPROTO_BAD: not a valid header, decided as soon as the bytes seen allow it.
 * Once it returns OK or BAD for some bytes, it returns the same (same *out_len and *out)
 * for any bytes that extend them. *out_len is 0 and *out zeroed unless OK.
 *
 * Strictness, beyond the spec's musts:
 *  - v1: the line is printable US-ASCII (0x20-0x7e) up to its CRLF, for UNKNOWN too; the
 *    first CR must be followed by LF; exactly one space between fields, no trailing
 *    space; the keywords are upper case. IPv4 is four decimal numbers 0-255 without
 *    leading zeros; IPv6 anything inet_pton() takes (compressed, mixed "::ffff:1.2.3.4"),
 *    no zone; ports 0-65535 without leading zeros ("0" is a port). After "UNKNOWN" comes
 *    the CRLF or a space and anything printable, which is ignored.
 *  - v2: version 2, command LOCAL or PROXY. For LOCAL the family byte and the block are
 *    ignored, as the spec requires. For PROXY the family byte is one of 0x00, 0x11, 0x12,
 *    0x21, 0x22, 0x31, 0x32; the block must hold the family's addresses, and the TLVs
 *    after them must exactly fill the rest (they are not otherwise interpreted; the
 *    CRC32C TLV is not checked). For 0x00 the block is ignored. A length field above
 *    PROXYPROTO_V2_LEN_MAX is BAD.
 */
enum proxyproto_result proxyproto_parse(struct proxyproto_header *out, size_t *out_len,
                                        const void *data, size_t len, enum proxyproto_version mode);

/*
 * proxyproto_format writes the header announcing a connection from |src| to |dst| (the
 * client's address and the address it connected to) to |out|, at most |out_cap| bytes
 * (PROXYPROTO_FORMAT_MAX always suffices), and sets *out_len to its length. |version| is
 * PROXYPROTO_V1 ("PROXY TCP4 a b p q\r\n") or PROXYPROTO_V2 (binary, PROXY command,
 * TCP, no TLVs). Both AF_INET: TCP over IPv4. Both AF_INET6: TCP over IPv6 (any scope id
 * is lost). One of each: TCP over IPv6 with the IPv4 address mapped (::ffff:a.b.c.d).
 * Anything else, NULL included: v1 "PROXY UNKNOWN\r\n", v2 PROXY with family AF_UNSPEC.
 * Returns 0, -ENOBUFS (out_cap too small) or -EINVAL (bad |version|); on failure nothing
 * is written and *out_len is 0.
 */
int proxyproto_format(void *out, size_t *out_len, size_t out_cap, enum proxyproto_version version,
                      const struct sockaddr *src, const struct sockaddr *dst);

#endif
