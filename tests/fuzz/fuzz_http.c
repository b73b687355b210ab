/*
 * fuzz_http: libFuzzer target for http_request_parse(), the metrics endpoint's request
 * parser. The first input byte seeds how the rest is cut into reads; the rest is parsed
 * whole and as growing prefixes (each a heap copy of its exact length, so ASan sees any
 * read past it). Checked: an answer once given never changes as bytes are added, the head
 * lies within the input and the cap, NEED_MORE never outlasts the cap, and the response
 * head for the answer fits its documented bound.
 */
#include "http.h"

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

static enum http_result fuzz_parse_copy(size_t *out_consumed, bool *out_head, const uint8_t *data,
                                        size_t len)
{
    char *copy = malloc(len == 0 ? 1 : len);
    FUZZ_ASSERT(copy != NULL);
    if (len != 0) {
        memcpy(copy, data, len);
    }
    enum http_result r = http_request_parse(out_consumed, out_head, copy, len);
    free(copy);
    return r;
}

static void fuzz_check(enum http_result r, size_t consumed, bool head, const uint8_t *data,
                       size_t len)
{
    switch (r) {
    case HTTP_NEED_MORE:
        FUZZ_ASSERT(len < HTTP_HEAD_MAX);
        FUZZ_ASSERT(consumed == 0 && !head);
        return;
    case HTTP_TOO_LARGE:
        FUZZ_ASSERT(len >= HTTP_HEAD_MAX);
        FUZZ_ASSERT(consumed == 0 && !head);
        break;
    case HTTP_METRICS:
    case HTTP_NOT_FOUND:
        /* Served requests start with GET or HEAD, have no NUL, and end with a blank line. */
        FUZZ_ASSERT(consumed >= 4 && consumed <= len && consumed <= HTTP_HEAD_MAX);
        FUZZ_ASSERT(memcmp(data, head ? "HEAD " : "GET ", head ? 5 : 4) == 0);
        FUZZ_ASSERT(memchr(data, '\0', consumed) == NULL);
        FUZZ_ASSERT(data[consumed - 1] == '\n');
        FUZZ_ASSERT(data[consumed - 2] == '\n' ||
                    (data[consumed - 2] == '\r' && data[consumed - 3] == '\n'));
        break;
    case HTTP_BAD_METHOD:
    case HTTP_BAD_REQUEST:
        FUZZ_ASSERT(consumed >= 1 && consumed <= len && consumed <= HTTP_HEAD_MAX);
        FUZZ_ASSERT(data[consumed - 1] == '\n');
        FUZZ_ASSERT(!head);
        break;
    default:
        FUZZ_ASSERT(0);
    }
    char out[HTTP_RESPONSE_MAX];
    size_t n = http_response_head(out, sizeof(out), http_status(r), len);
    FUZZ_ASSERT(n < sizeof(out) && strlen(out) == n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    uint32_t rng = 0x9e3779b9u ^ ((uint32_t)data[0] * 0x01000193u);
    const uint8_t *in = data + 1;
    size_t len = size - 1;

    size_t whole_consumed;
    bool whole_head;
    enum http_result whole = fuzz_parse_copy(&whole_consumed, &whole_head, in, len);
    fuzz_check(whole, whole_consumed, whole_head, in, len);

    /* The same bytes arriving in pieces: the first answer that is not NEED_MORE is the
     * final one. */
    size_t pos = 0;
    for (;;) {
        rng = rng * 1103515245u + 12345u;
        /* Mostly short reads, sometimes long ones. */
        size_t step = (rng >> 16) & 0x0f;
        if (((rng >> 24) & 0x07) == 0) {
            step = (rng >> 8) & 0x3ff;
        }
        pos = len - pos < step ? len : pos + step;
        size_t consumed;
        bool head;
        enum http_result r = fuzz_parse_copy(&consumed, &head, in, pos);
        fuzz_check(r, consumed, head, in, pos);
        if (r != HTTP_NEED_MORE) {
            FUZZ_ASSERT(r == whole && consumed == whole_consumed && head == whole_head);
            break;
        }
        if (pos == len) {
            FUZZ_ASSERT(whole == HTTP_NEED_MORE);
            break;
        }
    }
    return 0;
}
