/*
 * fuzz_http_response: libFuzzer target for http_client.c, the MTA-STS fetch's response
 * parser. The first byte seeds how the rest is cut into reads and picks the body cap; the
 * rest is parsed whole and in pieces (each a heap copy of its exact length, for ASan),
 * then the connection closes. Checked: both give the same result, status, Content-Type,
 * error and (when DONE) body; NEED_MORE consumes everything; a final result sticks and
 * consumes nothing more; a DONE response has a final status and a body within the cap;
 * an error text comes exactly with BAD and TOO_LARGE.
 */
#include "http_client.h"

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

struct fuzz_outcome {
    enum http_client_result result;
    int status;
    const char *ct;
    char *body;
    size_t body_len;
    const char *error;
};

static void fuzz_run(struct fuzz_outcome *out, struct http_client *p, const uint8_t *in, size_t len,
                     size_t body_max, uint32_t rng)
{
    http_client_init(p, body_max);
    enum http_client_result r = HTTP_CLIENT_NEED_MORE;
    size_t pos = 0;
    while (r == HTTP_CLIENT_NEED_MORE && pos < len) {
        size_t step = len - pos;
        if (rng != 0) {
            rng = rng * 1103515245u + 12345u;
            step = (rng >> 16) & 0x1f;
            if (((rng >> 24) & 0x07) == 0) {
                step = (rng >> 8) & 0xfff;
            }
            step = step == 0 ? 1 : step;
            step = step > len - pos ? len - pos : step;
        }
        char *piece = malloc(step);
        FUZZ_ASSERT(piece != NULL);
        memcpy(piece, in + pos, step);
        size_t used = SIZE_MAX;
        r = http_client_feed(p, &used, piece, step);
        free(piece);
        FUZZ_ASSERT(used <= step);
        FUZZ_ASSERT(r != HTTP_CLIENT_NEED_MORE || used == step);
        pos += step;
    }
    if (r == HTTP_CLIENT_NEED_MORE) {
        r = http_client_eof(p);
        FUZZ_ASSERT(r != HTTP_CLIENT_NEED_MORE);
    }
    size_t used = 1;
    FUZZ_ASSERT(http_client_feed(p, &used, "x", 1) == r && used == 0);
    FUZZ_ASSERT(http_client_eof(p) == r);

    out->result = r;
    out->status = http_client_status(p);
    out->ct = http_client_content_type(p);
    const char *body = http_client_body(p, &out->body_len);
    FUZZ_ASSERT(out->body_len <= body_max);
    out->body = malloc(out->body_len + 1);
    FUZZ_ASSERT(out->body != NULL);
    if (out->body_len > 0) {
        memcpy(out->body, body, out->body_len);
    }
    out->error = http_client_error(p);
    FUZZ_ASSERT((r == HTTP_CLIENT_BAD || r == HTTP_CLIENT_TOO_LARGE) == (out->error[0] != '\0'));
    if (r == HTTP_CLIENT_DONE) {
        FUZZ_ASSERT(out->status >= 200 && out->status <= 599);
    }
    if (out->ct != NULL) {
        FUZZ_ASSERT(strlen(out->ct) < HTTP_CLIENT_CONTENT_TYPE_MAX);
        FUZZ_ASSERT(out->status != 0);
    }
    (void)http_client_media_type_is(p, "text/plain");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    uint32_t rng = 0x9e3779b9u ^ ((uint32_t)data[0] * 0x01000193u);
    size_t body_max = (data[0] & 0x80) ? 65536 : (size_t)(data[0] & 0x3f);
    const uint8_t *in = data + 1;
    size_t len = size - 1;

    struct http_client *whole_p = malloc(sizeof(*whole_p));
    struct http_client *split_p = malloc(sizeof(*split_p));
    FUZZ_ASSERT(whole_p != NULL && split_p != NULL);
    struct fuzz_outcome whole;
    struct fuzz_outcome split;
    fuzz_run(&whole, whole_p, in, len, body_max, 0);
    fuzz_run(&split, split_p, in, len, body_max, rng | 1);

    FUZZ_ASSERT(whole.result == split.result);
    FUZZ_ASSERT(whole.status == split.status);
    FUZZ_ASSERT((whole.ct == NULL) == (split.ct == NULL));
    FUZZ_ASSERT(whole.ct == NULL || strcmp(whole.ct, split.ct) == 0);
    FUZZ_ASSERT(strcmp(whole.error, split.error) == 0);
    if (whole.result == HTTP_CLIENT_DONE) {
        FUZZ_ASSERT(whole.body_len == split.body_len);
        FUZZ_ASSERT(memcmp(whole.body, split.body, whole.body_len) == 0);
    }
    free(whole.body);
    free(split.body);
    http_client_cleanup(whole_p);
    http_client_cleanup(split_p);
    free(whole_p);
    free(split_p);
    return 0;
}
