/*
 * test_http_client: the response parser fed every response whole, split in two at every
 * offset, and byte by byte (each piece a heap copy of its exact length, for ASan); all
 * must give the same status, Content-Type, body and result. Covers Content-Length,
 * chunked with extensions and trailers, close-delimited bodies, interim responses, and
 * every refusal: ambiguous framing, obs-fold, bad chunk sizes, truncation and each cap.
 */
#include "http_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

struct outcome {
    enum http_client_result result;
    int status;
    char content_type[HTTP_CLIENT_CONTENT_TYPE_MAX];
    char *body;
    size_t body_len;
    const char *error;
    size_t consumed;
};

/* Feeds |resp| in pieces ending at each of |cuts| (ascending, the last == len), then the
 * close when the parser still wants more and |close| is set. */
static void run(struct outcome *out, const char *resp, size_t len, size_t body_max,
                const size_t *cuts, size_t n_cuts, bool close)
{
    struct http_client *p = malloc(sizeof(*p));
    CHECK(p != NULL);
    http_client_init(p, body_max);
    CHECK(n_cuts == 0 || cuts[n_cuts - 1] == len);
    enum http_client_result r = HTTP_CLIENT_NEED_MORE;
    size_t pos = 0;
    out->consumed = 0;
    for (size_t i = 0; i < n_cuts && r == HTTP_CLIENT_NEED_MORE; i++) {
        size_t n = cuts[i] - pos;
        char *piece = malloc(n == 0 ? 1 : n);
        CHECK(piece != NULL);
        memcpy(piece, resp + pos, n);
        size_t used = 99999;
        r = http_client_feed(p, &used, piece, n);
        free(piece);
        CHECK(used <= n);
        if (r == HTTP_CLIENT_NEED_MORE) {
            CHECK_INT(used, n);
        }
        out->consumed += used;
        pos = cuts[i];
    }
    if (r == HTTP_CLIENT_NEED_MORE && close) {
        r = http_client_eof(p);
    }
    size_t used = 1;
    /* A final result stays, and takes no more bytes. */
    if (r != HTTP_CLIENT_NEED_MORE) {
        CHECK_INT(http_client_feed(p, &used, "x", 1), r);
        CHECK_INT(used, 0);
        CHECK_INT(http_client_eof(p), r);
    }
    out->result = r;
    out->status = http_client_status(p);
    const char *ct = http_client_content_type(p);
    snprintf(out->content_type, sizeof(out->content_type), "%s", ct != NULL ? ct : "(none)");
    size_t body_len;
    const char *body = http_client_body(p, &body_len);
    out->body = malloc(body_len + 1);
    CHECK(out->body != NULL);
    if (body_len > 0) {
        memcpy(out->body, body, body_len);
    }
    out->body[body_len] = '\0';
    out->body_len = body_len;
    out->error = http_client_error(p);
    CHECK((r == HTTP_CLIENT_BAD || r == HTTP_CLIENT_TOO_LARGE) == (out->error[0] != '\0'));
    http_client_cleanup(p);
    free(p);
}

static bool same(const struct outcome *a, const struct outcome *b)
{
    /* The body counts only when complete: a refused one stops wherever the cut was. */
    bool body = a->result != HTTP_CLIENT_DONE ||
                (a->body_len == b->body_len && memcmp(a->body, b->body, a->body_len) == 0);
    return a->result == b->result && a->status == b->status &&
           strcmp(a->content_type, b->content_type) == 0 && body && strcmp(a->error, b->error) == 0;
}

/* Checks |resp| whole, at every split and byte by byte; returns the whole outcome (caller
 * frees out->body). */
static void check_resp(int line, struct outcome *whole, const char *resp, size_t len,
                       size_t body_max, bool close)
{
    size_t all[1] = {len};
    run(whole, resp, len, body_max, all, 1, close);
    int bad = 0;
    for (size_t k = 0; k <= len; k++) {
        size_t cuts[2] = {k, len};
        struct outcome o;
        run(&o, resp, len, body_max, cuts, 2, close);
        if (!same(&o, whole)) {
            if (bad == 0) {
                fprintf(stderr, "line %d: split at %zu: %d/%d \"%s\", whole %d/%d \"%s\"\n", line,
                        k, (int)o.result, o.status, o.error, (int)whole->result, whole->status,
                        whole->error);
            }
            bad++;
        }
        free(o.body);
    }
    if (len <= 4096) {
        size_t *cuts = malloc((len + 1) * sizeof(size_t));
        CHECK(cuts != NULL);
        for (size_t k = 0; k < len; k++) {
            cuts[k] = k + 1;
        }
        struct outcome o;
        run(&o, resp, len, body_max, cuts, len, close);
        if (!same(&o, whole)) {
            fprintf(stderr, "line %d: byte by byte: %d \"%s\"\n", line, (int)o.result, o.error);
            bad++;
        }
        free(o.body);
        free(cuts);
    }
    CHECK_INT(bad, 0);
}

static void expect(int line, const char *resp, size_t len, size_t body_max,
                   enum http_client_result want, int want_status, const char *want_ct,
                   const char *want_body, size_t want_body_len, const char *want_error)
{
    struct outcome o;
    check_resp(line, &o, resp, len, body_max, true);
    if (o.result != want || strcmp(o.error, want_error) != 0) {
        fprintf(stderr, "line %d: got %d \"%s\"\n", line, (int)o.result, o.error);
    }
    CHECK_INT(o.result, want);
    CHECK_INT(o.status, want_status);
    CHECK_STR(o.content_type, want_ct);
    CHECK_MEM(o.body, o.body_len, want_body, want_body_len);
    CHECK_STR(o.error, want_error);
    free(o.body);
}

#define OK(resp, status, ct, body)                                                                 \
    expect(__LINE__, resp, sizeof(resp) - 1, 65536, HTTP_CLIENT_DONE, status, ct, body,            \
           sizeof(body) - 1, "")
#define BAD(resp, err)                                                                             \
    do {                                                                                           \
        struct outcome o_;                                                                         \
        check_resp(__LINE__, &o_, resp, sizeof(resp) - 1, 65536, true);                            \
        CHECK_INT(o_.result, HTTP_CLIENT_BAD);                                                     \
        CHECK_STR(o_.error, err);                                                                  \
        free(o_.body);                                                                             \
    } while (0)
#define LARGE(resp, max, err)                                                                      \
    do {                                                                                           \
        struct outcome o_;                                                                         \
        check_resp(__LINE__, &o_, resp, sizeof(resp) - 1, max, true);                              \
        CHECK_INT(o_.result, HTTP_CLIENT_TOO_LARGE);                                               \
        CHECK_STR(o_.error, err);                                                                  \
        free(o_.body);                                                                             \
    } while (0)

static void test_good(void)
{
    OK("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", 200,
       "text/plain", "hello");
    OK("HTTP/1.1 200 OK\nContent-Type:text/plain; charset=utf-8 \nContent-Length:  5\n\nhello", 200,
       "text/plain; charset=utf-8", "hello");
    OK("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", 200, "(none)", "");
    OK("HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", 200, "(none)", "ok");
    OK("HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok", 200, "(none)", "ok");
    OK("HTTP/1.1 200 Fine \t\x80\xff\r\nContent-Length: 5, 5\r\nCONTENT-LENGTH: 5\r\n\r\nhello",
       200, "(none)", "hello");
    OK("HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello", 200, "(none)", "hello");
    /* Chunked, with extensions, upper and lower hex, leading zeros and trailers. */
    OK("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
       "5\r\nhello\r\n6;name=value;x=\"q\"\r\n world\r\n00a \t; ext\r\n0123456789\r\n"
       "0\r\nX-Trailer: y\r\nContent-Length: 99\r\n\r\n",
       200, "text/plain", "hello world0123456789");
    OK("HTTP/1.1 200 OK\nTransfer-Encoding: CHUNKED\n\nA\n0123456789\n0\n\n", 200, "(none)",
       "0123456789");
    OK("HTTP/1.1 200 OK\r\nTransfer-Encoding:  chunked \r\n\r\n0\r\n\r\n", 200, "(none)", "");
    /* Until the close. */
    OK("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nversion: STSv1\r\n", 200, "text/plain",
       "version: STSv1\r\n");
    OK("HTTP/1.1 200 OK\r\n\r\n", 200, "(none)", "");
    /* Interim responses are skipped, their fields forgotten. */
    OK("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n"
       "Content-Type: text/html\r\nContent-Length: 9\r\n\r\n"
       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
       200, "(none)", "ok");
    /* No body, whatever the fields say. */
    OK("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", 204, "(none)", "");
    OK("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", 304, "(none)", "");
    /* Other statuses are reported; the caller decides (RFC 8461: only 200, no redirects). */
    OK("HTTP/1.1 301 Moved\r\nLocation: https://evil.example/\r\nContent-Length: 0\r\n\r\n", 301,
       "(none)", "");
    OK("HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnope", 404, "(none)", "nop");
    OK("HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n", 599, "(none)", "");
    OK("HTTP/1.1 200 OK\r\nContent-Type:\r\nContent-Length: 0\r\n\r\n", 200, "", "");

    /* Bytes after the response are left unconsumed. */
    static const char extra[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200";
    struct outcome o;
    check_resp(__LINE__, &o, extra, sizeof(extra) - 1, 100, true);
    CHECK_INT(o.result, HTTP_CLIENT_DONE);
    CHECK_INT(o.consumed, sizeof(extra) - 1 - 12);
    free(o.body);
    static const char chunk_extra[] =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nGARBAGE";
    check_resp(__LINE__, &o, chunk_extra, sizeof(chunk_extra) - 1, 100, true);
    CHECK_INT(o.result, HTTP_CLIENT_DONE);
    CHECK_INT(o.consumed, sizeof(chunk_extra) - 1 - 7);
    free(o.body);
}

static bool media_type_is(const char *ct)
{
    char resp[256];
    int n = snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n\r\n", ct);
    struct http_client p;
    http_client_init(&p, 10);
    size_t used;
    CHECK_INT(http_client_feed(&p, &used, resp, (size_t)n), HTTP_CLIENT_NEED_MORE);
    bool r = http_client_media_type_is(&p, "text/plain");
    http_client_cleanup(&p);
    return r;
}

static void test_media_type(void)
{
    CHECK(media_type_is("text/plain"));
    CHECK(media_type_is("TEXT/Plain"));
    CHECK(media_type_is("text/plain; charset=utf-8"));
    CHECK(media_type_is(" text/plain ;x"));
    CHECK(media_type_is("text/plain;"));
    CHECK(!media_type_is("text/plainx"));
    CHECK(!media_type_is("text/html"));
    CHECK(!media_type_is("text/plain x"));
    CHECK(!media_type_is(""));
    CHECK(!media_type_is("text /plain"));
    CHECK(!media_type_is("text/plai"));
    struct http_client p;
    http_client_init(&p, 10);
    CHECK(!http_client_media_type_is(&p, "text/plain"));
    CHECK(http_client_content_type(&p) == NULL);
    CHECK_INT(http_client_status(&p), 0);
    size_t used;
    static const char no_ct[] = "HTTP/1.1 200 OK\r\n\r\n";
    CHECK_INT(http_client_feed(&p, &used, no_ct, sizeof(no_ct) - 1), HTTP_CLIENT_NEED_MORE);
    CHECK(!http_client_media_type_is(&p, "text/plain"));
    http_client_cleanup(&p);
}

static void test_bad(void)
{
    BAD("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "both Transfer-Encoding and Content-Length (ambiguous framing)");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        "both Transfer-Encoding and Content-Length (ambiguous framing)");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "conflicting Content-Length values");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
        "conflicting Content-Length values");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello", "empty Content-Length");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: ,5\r\n\r\nhello", "empty Content-Length");
    BAD("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nhello", "empty Content-Length");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello", "Content-Length is not a number");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", "Content-Length is not a number");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello", "Content-Length is not a number");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "unsupported Transfer-Encoding");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "unsupported Transfer-Encoding");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "unsupported Transfer-Encoding");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
        "unsupported Transfer-Encoding");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n", "unsupported Transfer-Encoding");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n", "unsupported Transfer-Encoding");
    BAD("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding in an HTTP/1.0 response");
    BAD("HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", "obsolete line folding");
    BAD("HTTP/1.1 200 OK\r\n\tX: a\r\n\r\n", "obsolete line folding");
    BAD("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", "malformed header field");
    BAD("HTTP/1.1 200 OK\r\nContent Length: 5\r\n\r\nhello", "malformed header field");
    BAD("HTTP/1.1 200 OK\r\n: 5\r\n\r\n", "malformed header field");
    BAD("HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "malformed header field");
    BAD("HTTP/1.1 200 OK\r\nX: a\rContent-Length: 5\r\n\r\nhello", "bare CR or NUL in the head");
    BAD("HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n", "bare CR or NUL in the head");
    BAD("HTTP/1.1 200 OK\r\r\n\r\n", "bare CR or NUL in the head");
    BAD("HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n", "control character in a header field");
    BAD("HTTP/1.1 200 OK\r\nX: a\x7f\r\n\r\n", "control character in a header field");
    BAD("HTTP/1.1 200 OK\r\nContent-Type: a\r\nContent-Type: a\r\n\r\n",
        "more than one Content-Type");
    BAD("HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.0 or 1.1 status line");
    BAD("HTTP/1.2 200 OK\r\n\r\n", "not an HTTP/1.0 or 1.1 status line");
    BAD("http/1.1 200 OK\r\n\r\n", "not an HTTP/1.0 or 1.1 status line");
    BAD("HTTP/1.1 20\r\n\r\n", "not an HTTP/1.0 or 1.1 status line");
    BAD("HTTP/1.1  200 OK\r\n\r\n", "malformed status code");
    BAD("HTTP/1.1 2x0 OK\r\n\r\n", "malformed status code");
    BAD("HTTP/1.1 2000 OK\r\n\r\n", "malformed status line");
    BAD("HTTP/1.1 200\tOK\r\n\r\n", "malformed status line");
    BAD("HTTP/1.1 099 X\r\n\r\n", "status code out of range");
    BAD("HTTP/1.1 600 X\r\n\r\n", "status code out of range");
    BAD("HTTP/1.1 200 O\x01K\r\n\r\n", "control character in the reason");
    BAD("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        "unexpected 101 Switching Protocols");
    BAD("\r\nHTTP/1.1 200 OK\r\n\r\n", "empty status line");
    BAD("\n", "empty status line");
    /* Chunk framing. */
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nx\r\n", "malformed chunk size");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", "malformed chunk size");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
        "malformed chunk size");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
        "malformed chunk size");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        "malformed chunk size");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;\x01\r\nhello\r\n0\r\n\r\n",
        "control character in a chunk extension");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n",
        "chunk data longer than its size");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\r\n0\r\n\r\n",
        "chunk data longer than its size");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX : y\r\n\r\n",
        "malformed header field");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n z\r\n\r\n",
        "obsolete line folding");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: \ry\r\n\r\n",
        "bare CR or NUL in a trailer");
    /* Truncation. */
    BAD("", "connection closed before the response head");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", "connection closed before the response head");
    BAD("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhell",
        "connection closed before the end of the body");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "connection closed before the end of the body");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
        "connection closed before the end of the body");
    BAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        "connection closed before the end of the body");
}

static void test_caps(void)
{
    /* The body cap: exactly, then one byte over, each way of framing. */
    static const char cl5[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    expect(__LINE__, cl5, sizeof(cl5) - 1, 5, HTTP_CLIENT_DONE, 200, "(none)", "hello", 5, "");
    LARGE("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello!", 5, "body larger than the cap");
    LARGE("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", 5,
          "Content-Length too large");
    static const char close5[] = "HTTP/1.1 200 OK\r\n\r\nhello";
    expect(__LINE__, close5, sizeof(close5) - 1, 5, HTTP_CLIENT_DONE, 200, "(none)", "hello", 5,
           "");
    LARGE("HTTP/1.1 200 OK\r\n\r\nhello!", 5, "body larger than the cap");
    static const char ch5[] =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n";
    expect(__LINE__, ch5, sizeof(ch5) - 1, 5, HTTP_CLIENT_DONE, 200, "(none)", "hello", 5, "");
    LARGE("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n4\r\nllo!\r\n0\r\n\r\n",
          5, "body larger than the cap");
    LARGE("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", 5,
          "chunk size too large");
    LARGE("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n", 5,
          "body larger than the cap");
    /* Nine interim responses are too many. */
    LARGE("HTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\n"
          "HTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\n"
          "HTTP/1.1 100 A\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
          5, "too many interim responses");

    /* A head of exactly HTTP_CLIENT_HEAD_MAX bytes, then one longer. */
    size_t cap = HTTP_CLIENT_HEAD_MAX;
    char *big = malloc(cap + 64);
    CHECK(big != NULL);
    static const char start[] = "HTTP/1.1 200 OK\r\nX: ";
    memcpy(big, start, sizeof(start) - 1);
    memset(big + sizeof(start) - 1, 'a', cap - (sizeof(start) - 1) - 4);
    memcpy(big + cap - 4, "\r\n\r\nok", 6);
    struct outcome o;
    check_resp(__LINE__, &o, big, cap + 2, 10, true);
    CHECK_INT(o.result, HTTP_CLIENT_DONE);
    CHECK_MEM(o.body, o.body_len, "ok", 2);
    free(o.body);
    memset(big + sizeof(start) - 1, 'a', cap - (sizeof(start) - 1) - 3);
    memcpy(big + cap - 3, "\r\n\r\nok", 6);
    check_resp(__LINE__, &o, big, cap + 3, 10, true);
    CHECK_INT(o.result, HTTP_CLIENT_TOO_LARGE);
    CHECK_STR(o.error, "response head too large");
    free(o.body);

    /* A chunk-size line of HTTP_CLIENT_CHUNK_LINE_MAX bytes, then one more. */
    static const char chead[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    size_t hl = sizeof(chead) - 1;
    memcpy(big, chead, hl);
    memcpy(big + hl, "1;", 2);
    memset(big + hl + 2, 'e', HTTP_CLIENT_CHUNK_LINE_MAX - 4);
    memcpy(big + hl + HTTP_CLIENT_CHUNK_LINE_MAX - 2, "\r\nx\r\n0\r\n\r\n", 10);
    check_resp(__LINE__, &o, big, hl + HTTP_CLIENT_CHUNK_LINE_MAX + 8, 10, true);
    CHECK_INT(o.result, HTTP_CLIENT_DONE);
    free(o.body);
    memset(big + hl + 2, 'e', HTTP_CLIENT_CHUNK_LINE_MAX - 3);
    memcpy(big + hl + HTTP_CLIENT_CHUNK_LINE_MAX - 1, "\r\nx\r\n0\r\n\r\n", 10);
    check_resp(__LINE__, &o, big, hl + HTTP_CLIENT_CHUNK_LINE_MAX + 9, 10, true);
    CHECK_INT(o.result, HTTP_CLIENT_TOO_LARGE);
    CHECK_STR(o.error, "chunk-size line too long");
    free(o.body);

    /* Trailers: HTTP_CLIENT_HEAD_MAX bytes at most. */
    memcpy(big, chead, hl);
    memcpy(big + hl, "0\r\nT: ", 6);
    memset(big + hl + 6, 't', cap);
    memcpy(big + hl + 6 + cap, "\r\n\r\n", 4);
    check_resp(__LINE__, &o, big, hl + cap + 10, 10, true);
    CHECK_INT(o.result, HTTP_CLIENT_TOO_LARGE);
    CHECK_STR(o.error, "trailer section too large");
    free(o.body);
    free(big);

    /* HTTP_CLIENT_CHUNKS_MAX chunks of one byte, then one more (whole only: large). */
    size_t n = HTTP_CLIENT_CHUNKS_MAX + 1;
    char *many = malloc(hl + n * 6 + 5);
    CHECK(many != NULL);
    memcpy(many, chead, hl);
    size_t len = hl;
    for (size_t i = 0; i < n; i++) {
        memcpy(many + len, "1\r\nx\r\n", 6);
        len += 6;
    }
    memcpy(many + len, "0\r\n\r\n", 5);
    len += 5;
    size_t one[1] = {len};
    run(&o, many, len, n, one, 1, true);
    CHECK_INT(o.result, HTTP_CLIENT_TOO_LARGE);
    CHECK_STR(o.error, "too many chunks");
    free(o.body);
    size_t fewer = len - 6;
    memcpy(many + fewer - 5, "0\r\n\r\n", 5);
    one[0] = fewer;
    run(&o, many, fewer, n, one, 1, true);
    CHECK_INT(o.result, HTTP_CLIENT_DONE);
    CHECK_INT(o.body_len, HTTP_CLIENT_CHUNKS_MAX);
    free(o.body);
    free(many);
}

int main(void)
{
    test_good();
    test_media_type();
    test_bad();
    test_caps();
    return check_exit("test_http_client");
}
