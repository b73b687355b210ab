/*
 * test_http: the request-head parser fed every prefix of good, bad and oversized requests
 * (each a heap copy of its exact length, for ASan), the status mapping and the response
 * head's exact text and bound.
 */
#include "http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Parses a heap copy of exactly |len| bytes, so ASan sees any read past them. */
static enum http_result parse_copy(size_t *out_consumed, bool *out_head, const char *data,
                                   size_t len)
{
    char *copy = malloc(len == 0 ? 1 : len);
    CHECK(copy != NULL);
    if (len > 0) {
        memcpy(copy, data, len);
    }
    enum http_result r = http_request_parse(out_consumed, out_head, copy, len);
    free(copy);
    return r;
}

/*
 * Checks the result for |data| whole, then for every prefix (the same bytes split at any
 * point, the parser being stateless): NEED_MORE before the head ends, the same answer
 * from there on. |want_consumed| is the head's length, 0 when none.
 */
static void check_http(int line, const char *data, size_t len, enum http_result want,
                       size_t want_consumed, bool want_head)
{
    size_t consumed;
    bool head;
    enum http_result r = parse_copy(&consumed, &head, data, len);
    if (r != want || consumed != want_consumed || head != want_head) {
        fprintf(stderr, "line %d: request \"%.*s\": got %d/%zu/%d\n", line,
                (int)(len < 80 ? len : 80), data, (int)r, consumed, (int)head);
    }
    CHECK_INT(r, want);
    CHECK_INT(consumed, want_consumed);
    CHECK_INT(head, want_head);
    size_t decided = want == HTTP_TOO_LARGE ? HTTP_HEAD_MAX : want_consumed;
    int bad = 0;
    for (size_t k = 0; k < len; k++) {
        r = parse_copy(&consumed, &head, data, k);
        if (k < decided || want == HTTP_NEED_MORE) {
            bad += r != HTTP_NEED_MORE || consumed != 0 || head;
        } else {
            bad += r != want || consumed != want_consumed || head != want_head;
        }
    }
    if (bad != 0) {
        fprintf(stderr, "line %d: %d prefixes disagree\n", line, bad);
    }
    CHECK_INT(bad, 0);
}

#define HTTP(s, want, consumed, head) check_http(__LINE__, s, sizeof(s) - 1, want, consumed, head)
#define HTTP_WHOLE(s, want, head) HTTP(s, want, sizeof(s) - 1, head)

static void test_http_parse(void)
{
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\nHost: localhost:9100\r\nAccept: */*\r\n\r\n", HTTP_METRICS,
               false);
    HTTP_WHOLE("GET /metrics HTTP/1.0\r\n\r\n", HTTP_METRICS, false);
    HTTP_WHOLE("HEAD /metrics HTTP/1.1\r\n\r\n", HTTP_METRICS, true);
    HTTP_WHOLE("GET /metrics HTTP/1.1\n\n", HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\nHost: x\r\n\n", HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\nHost: x\n\r\n", HTTP_METRICS, false);
    /* Bytes after the head (a body, a pipelined request) are not consumed. */
    HTTP("GET /metrics HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", HTTP_METRICS, 25, false);
    /* Decided: a query is ignored, as Prometheus client libraries do. */
    HTTP_WHOLE("GET /metrics?x HTTP/1.1\r\n\r\n", HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics? HTTP/1.1\r\n\r\n", HTTP_METRICS, false);
    HTTP_WHOLE("GET /metrics?name[]=a&b=/x HTTP/1.1\r\n\r\n", HTTP_METRICS, false);
    /* Decided: absolute-form is accepted (RFC 9112 section 3.2.2), http scheme only. */
    HTTP_WHOLE("GET http://localhost:9100/metrics HTTP/1.1\r\n\r\n", HTTP_METRICS, false);
    HTTP_WHOLE("HEAD HTTP://[::1]/metrics?a HTTP/1.1\r\n\r\n", HTTP_METRICS, true);
    HTTP_WHOLE("GET http://localhost HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET http://h/ HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET http:///metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET https://h/metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET http:/ HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("OPTIONS * HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);

    HTTP_WHOLE("GET / HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);
    HTTP_WHOLE("HEAD /x HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, true);
    HTTP_WHOLE("GET /metrics/ HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET /metricsx HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET /Metrics HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET /%6detrics HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET //metrics HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);
    HTTP_WHOLE("GET /metrics#x HTTP/1.1\r\n\r\n", HTTP_NOT_FOUND, false);

    /* Methods are case-sensitive (RFC 9110 section 9.1): "get" is another method. */
    HTTP_WHOLE("get /metrics HTTP/1.1\r\n\r\n", HTTP_BAD_METHOD, false);
    HTTP_WHOLE("Head /metrics HTTP/1.1\r\n\r\n", HTTP_BAD_METHOD, false);
    HTTP_WHOLE("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n", HTTP_BAD_METHOD, false);
    HTTP_WHOLE("GETS /metrics HTTP/1.1\r\n\r\n", HTTP_BAD_METHOD, false);
    HTTP_WHOLE("DELETE /x HTTP/1.0\r\n\r\n", HTTP_BAD_METHOD, false);

    HTTP_WHOLE("\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("\n", HTTP_BAD_REQUEST, false);
    /* A blank first line is a whole (empty) head. */
    HTTP("\r\nGET /metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, 2, false);
    HTTP_WHOLE("GET  /metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE(" GET /metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics  HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1 \r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET\t/metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/2.0\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.10\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics http/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("G@T /metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metr\x7fics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /m\xc3\xa9trics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\rX: y\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n", HTTP_BAD_REQUEST, false);
    /* NUL anywhere in the head. */
    HTTP_WHOLE("GET /metrics\0 HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("\0GET /metrics HTTP/1.1\r\n\r\n", HTTP_BAD_REQUEST, false);
    HTTP_WHOLE("GET /metrics HTTP/1.1\r\nX: \0\r\n\r\n", HTTP_BAD_REQUEST, false);
    /* ... but not after it: those bytes are not ours to judge. */
    HTTP("GET /metrics HTTP/1.1\r\n\r\n\0\r", HTTP_METRICS, 25, false);

    /* Incomplete heads. */
    HTTP("", HTTP_NEED_MORE, 0, false);
    HTTP("GET /metrics HTTP/1.1\r\n", HTTP_NEED_MORE, 0, false);
    HTTP("GET /metrics HTTP/1.1\r\nHost: x\r\n\r", HTTP_NEED_MORE, 0, false);
    HTTP("garbage without end", HTTP_NEED_MORE, 0, false);
}

static void test_http_sizes(void)
{
    static const char start[] = "GET /metrics HTTP/1.1\r\nX: ";
    char *big = malloc(2 * HTTP_HEAD_MAX);
    CHECK(big != NULL);

    /* A head of exactly the maximum, then one byte longer. */
    memset(big, 'a', 2 * HTTP_HEAD_MAX);
    memcpy(big, start, sizeof(start) - 1);
    memcpy(big + HTTP_HEAD_MAX - 4, "\r\n\r\n", 4);
    check_http(__LINE__, big, HTTP_HEAD_MAX, HTTP_METRICS, HTTP_HEAD_MAX, false);
    check_http(__LINE__, big, HTTP_HEAD_MAX + 10, HTTP_METRICS, HTTP_HEAD_MAX, false);
    memset(big, 'a', 2 * HTTP_HEAD_MAX);
    memcpy(big, start, sizeof(start) - 1);
    memcpy(big + HTTP_HEAD_MAX - 3, "\r\n\r\n", 4);
    check_http(__LINE__, big, HTTP_HEAD_MAX + 1, HTTP_TOO_LARGE, 0, false);
    /* With "\n\n", the same limit. */
    memcpy(big + HTTP_HEAD_MAX - 2, "\n\n", 2);
    check_http(__LINE__, big, HTTP_HEAD_MAX, HTTP_METRICS, HTTP_HEAD_MAX, false);

    /* No end at all: NEED_MORE up to the limit, TOO_LARGE from there, however long. */
    memset(big, 'a', 2 * HTTP_HEAD_MAX);
    check_http(__LINE__, big, HTTP_HEAD_MAX - 1, HTTP_NEED_MORE, 0, false);
    check_http(__LINE__, big, 2 * HTTP_HEAD_MAX, HTTP_TOO_LARGE, 0, false);
    /* Many short header lines count too. */
    for (size_t i = 0; i + 3 <= 2 * HTTP_HEAD_MAX; i += 3) {
        memcpy(big + i, "a:\n", 3);
    }
    check_http(__LINE__, big, 2 * HTTP_HEAD_MAX, HTTP_TOO_LARGE, 0, false);
    free(big);

    CHECK_INT(http_status(HTTP_METRICS), 200);
    CHECK_INT(http_status(HTTP_NOT_FOUND), 404);
    CHECK_INT(http_status(HTTP_BAD_METHOD), 405);
    CHECK_INT(http_status(HTTP_BAD_REQUEST), 400);
    CHECK_INT(http_status(HTTP_TOO_LARGE), 431);
    CHECK_INT(http_status(HTTP_NEED_MORE), 500);
}

static void test_http_response(void)
{
    char out[HTTP_RESPONSE_MAX];
    static const char ok[] = "HTTP/1.1 200 OK\r\n"
                             "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                             "Content-Length: 1234\r\n"
                             "Connection: close\r\n"
                             "\r\n";
    CHECK_INT(http_response_head(out, sizeof(out), 200, 1234), sizeof(ok) - 1);
    CHECK_STR(out, ok);
    static const char not_found[] = "HTTP/1.1 404 Not Found\r\n"
                                    "Content-Type: text/plain; charset=utf-8\r\n"
                                    "Content-Length: 10\r\n"
                                    "Connection: close\r\n"
                                    "\r\n";
    CHECK_INT(http_response_head(out, sizeof(out), 404, 10), sizeof(not_found) - 1);
    CHECK_STR(out, not_found);
    static const char bad_method[] = "HTTP/1.1 405 Method Not Allowed\r\n"
                                     "Content-Type: text/plain; charset=utf-8\r\n"
                                     "Content-Length: 0\r\n"
                                     "Allow: GET, HEAD\r\n"
                                     "Connection: close\r\n"
                                     "\r\n";
    CHECK_INT(http_response_head(out, sizeof(out), 405, 0), sizeof(bad_method) - 1);
    CHECK_STR(out, bad_method);
    CHECK_INT(http_response_head(out, sizeof(out), 400, 0),
              strlen("HTTP/1.1 400 Bad Request\r\n") + strlen(not_found) -
                  strlen("HTTP/1.1 404 Not Found\r\n") - 1);
    CHECK(strncmp(out, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
    http_response_head(out, sizeof(out), 431, 0);
    CHECK(strncmp(out, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 46) == 0);
    http_response_head(out, sizeof(out), 418, 0);
    CHECK(strncmp(out, "HTTP/1.1 418 Error\r\n", 20) == 0);

    /* The widest head fits the documented bound. */
    const int statuses[] = {200, 400, 404, 405, 408, 431, 500, 503, 999};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        CHECK(http_response_head(NULL, 0, statuses[i], SIZE_MAX) < HTTP_RESPONSE_MAX);
    }

    /* Too small: the length needed, a NUL-terminated prefix. */
    char small[20];
    CHECK_INT(http_response_head(small, sizeof(small), 200, 1234), sizeof(ok) - 1);
    CHECK_INT(strlen(small), sizeof(small) - 1);
    CHECK_MEM(small, sizeof(small) - 1, ok, sizeof(small) - 1);
}

int main(void)
{
    test_http_parse();
    test_http_sizes();
    test_http_response();
    return check_exit("test_http");
}
