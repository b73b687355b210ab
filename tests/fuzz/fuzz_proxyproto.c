/*
 * fuzz_proxyproto: libFuzzer target for proxyproto_parse(). The first input byte seeds
 * how the rest is cut into reads; the rest is parsed in all three modes, whole and as
 * growing prefixes (each a heap copy of its exact length, so ASan sees any read past it).
 * Checked: an answer once given never changes as bytes are added, OK headers lie within
 * the input, NEED_MORE never outlasts the caps, and parsed addresses survive a round
 * trip through proxyproto_format() in both versions.
 */
#include "proxyproto.h"

#include <netinet/in.h>
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

static enum proxyproto_result fuzz_parse_copy(struct proxyproto_header *out, size_t *out_len,
                                              const uint8_t *data, size_t len,
                                              enum proxyproto_version mode)
{
    uint8_t *copy = malloc(len == 0 ? 1 : len);
    FUZZ_ASSERT(copy != NULL);
    if (len != 0) {
        memcpy(copy, data, len);
    }
    enum proxyproto_result r = proxyproto_parse(out, out_len, copy, len, mode);
    free(copy);
    return r;
}

static int fuzz_is_zero(const void *p, size_t len)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++) {
        if (b[i] != 0) {
            return 0;
        }
    }
    return 1;
}

/* The header's own consistency: families, address families, zeroed fields. */
static void fuzz_check_header(const struct proxyproto_header *h, enum proxyproto_result r,
                              size_t h_len, size_t len, enum proxyproto_version mode)
{
    if (r != PROXYPROTO_OK) {
        FUZZ_ASSERT(r == PROXYPROTO_NEED_MORE || r == PROXYPROTO_BAD);
        FUZZ_ASSERT(h_len == 0);
        FUZZ_ASSERT(fuzz_is_zero(h, sizeof(*h)));
        if (r == PROXYPROTO_NEED_MORE) {
            FUZZ_ASSERT(len < (mode == PROXYPROTO_V1 ? PROXYPROTO_V1_MAX : PROXYPROTO_HEADER_MAX));
        }
        return;
    }
    FUZZ_ASSERT(h_len >= 1 && h_len <= len);
    FUZZ_ASSERT(h_len <= (h->version == PROXYPROTO_V1 ? PROXYPROTO_V1_MAX : PROXYPROTO_HEADER_MAX));
    FUZZ_ASSERT(h->version == PROXYPROTO_V1 || h->version == PROXYPROTO_V2);
    FUZZ_ASSERT(mode == PROXYPROTO_ANY || h->version == mode);
    switch (h->family) {
    case PROXYPROTO_LOCAL:
    case PROXYPROTO_UNKNOWN:
        FUZZ_ASSERT(h->family != PROXYPROTO_LOCAL || h->version == PROXYPROTO_V2);
        FUZZ_ASSERT(fuzz_is_zero(&h->src, sizeof(h->src)));
        FUZZ_ASSERT(fuzz_is_zero(&h->dst, sizeof(h->dst)));
        break;
    case PROXYPROTO_TCP4:
        FUZZ_ASSERT(h->src.ss_family == AF_INET && h->dst.ss_family == AF_INET);
        break;
    case PROXYPROTO_TCP6:
        FUZZ_ASSERT(h->src.ss_family == AF_INET6 && h->dst.ss_family == AF_INET6);
        break;
    default:
        FUZZ_ASSERT(0);
    }
}

/* Parsed addresses, formatted in either version and parsed again, come back unchanged. */
static void fuzz_round_trip(const struct proxyproto_header *h)
{
    if (h->family != PROXYPROTO_TCP4 && h->family != PROXYPROTO_TCP6) {
        return;
    }
    for (int v = PROXYPROTO_V1; v <= PROXYPROTO_V2; v++) {
        uint8_t out[PROXYPROTO_FORMAT_MAX];
        size_t out_len;
        FUZZ_ASSERT(proxyproto_format(out, &out_len, sizeof(out), (enum proxyproto_version)v,
                                      (const struct sockaddr *)&h->src,
                                      (const struct sockaddr *)&h->dst) == 0);
        struct proxyproto_header back;
        size_t back_len;
        FUZZ_ASSERT(fuzz_parse_copy(&back, &back_len, out, out_len, (enum proxyproto_version)v) ==
                    PROXYPROTO_OK);
        FUZZ_ASSERT(back_len == out_len);
        FUZZ_ASSERT(back.version == (enum proxyproto_version)v);
        FUZZ_ASSERT(back.family == h->family);
        FUZZ_ASSERT(memcmp(&back.src, &h->src, sizeof(h->src)) == 0);
        FUZZ_ASSERT(memcmp(&back.dst, &h->dst, sizeof(h->dst)) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    uint32_t rng = 0x9e3779b9u ^ ((uint32_t)data[0] * 0x01000193u);
    const uint8_t *in = data + 1;
    size_t len = size - 1;

    static const enum proxyproto_version modes[] = {PROXYPROTO_ANY, PROXYPROTO_V1, PROXYPROTO_V2};
    struct proxyproto_header whole[3];
    size_t whole_len[3];
    enum proxyproto_result whole_r[3];
    for (size_t m = 0; m < 3; m++) {
        whole_r[m] = proxyproto_parse(&whole[m], &whole_len[m], in, len, modes[m]);
        fuzz_check_header(&whole[m], whole_r[m], whole_len[m], len, modes[m]);
        if (whole_r[m] == PROXYPROTO_OK) {
            fuzz_round_trip(&whole[m]);
        }

        /* The same bytes arriving in pieces: the first answer that is not NEED_MORE is
         * the final one. */
        size_t pos = 0;
        for (;;) {
            rng = rng * 1103515245u + 12345u;
            /* Mostly short reads, sometimes long ones. */
            size_t step = (rng >> 16) & 0x0f;
            if (((rng >> 24) & 0x07) == 0) {
                step = (rng >> 8) & 0x3ff;
            }
            pos = len - pos < step ? len : pos + step;
            struct proxyproto_header h;
            size_t h_len;
            enum proxyproto_result r = fuzz_parse_copy(&h, &h_len, in, pos, modes[m]);
            fuzz_check_header(&h, r, h_len, pos, modes[m]);
            if (r != PROXYPROTO_NEED_MORE) {
                FUZZ_ASSERT(r == whole_r[m]);
                FUZZ_ASSERT(h_len == whole_len[m]);
                FUZZ_ASSERT(memcmp(&h, &whole[m], sizeof(h)) == 0);
                break;
            }
            if (pos == len) {
                FUZZ_ASSERT(whole_r[m] == PROXYPROTO_NEED_MORE);
                break;
            }
        }
    }

    /* Mode ANY is v1 or v2 by the first byte. */
    if (len > 0) {
        size_t same = in[0] == '\r' ? 2 : 1;
        FUZZ_ASSERT(whole_r[0] == whole_r[same] && whole_len[0] == whole_len[same] &&
                    memcmp(&whole[0], &whole[same], sizeof(whole[0])) == 0);
    }
    return 0;
}
