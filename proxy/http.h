/*
 * http: the HTTP/1.x the metrics endpoint needs: a request-head parser that judges only
 * the request line, and a response-head formatter. Pure functions: no I/O, no allocation,
 * no logging; safe from any thread.
 */
#ifndef PROXY_HTTP_H
#define PROXY_HTTP_H

#include <stdbool.h>
#include <stddef.h>

/* The longest request head accepted, request line, headers and the blank line included. */
#define HTTP_HEAD_MAX 4096
/* The most bytes http_response_head() writes, its NUL included. */
#define HTTP_RESPONSE_MAX 256

enum http_result {
    HTTP_NEED_MORE = 0, /* no blank line yet: call again with more bytes */
    HTTP_METRICS,       /* GET or HEAD /metrics: answer 200 */
    HTTP_NOT_FOUND,     /* GET or HEAD of another target: 404 */
    HTTP_BAD_METHOD,    /* a well-formed request with another method: 405 */
    HTTP_BAD_REQUEST,   /* not a well-formed HTTP/1.0 or 1.1 request head: 400 */
    HTTP_TOO_LARGE,     /* no end of head in HTTP_HEAD_MAX bytes: 431 */
};

/*
 * http_request_parse reads the request head at the start of |data|, the |len| bytes
 * received so far on a connection (call it again with all of them as more arrive). The
 * head ends at the first empty line ("\r\n" or "\n"). Only the request line is judged:
 * METHOD SP target SP HTTP/1.0|HTTP/1.1, single spaces, case-sensitive. Methods GET and
 * HEAD are served; other tokens (including "get") are BAD_METHOD. The target is
 * origin-form ("/metrics"), or absolute-form ("http://host/metrics", which RFC 9112 says
 * servers must accept) whose path is used; a query ("/metrics?x") is ignored; no
 * percent-decoding ("/%6detrics" is NOT_FOUND). Headers are skipped unread, a body is
 * never read (the response closes the connection). NUL or a CR not followed by LF anywhere
 * in the head, a blank first line, or any other deviation is BAD_REQUEST.
 *
 * *out_consumed is the head's length (1..HTTP_HEAD_MAX) when the head was
 * complete, else 0. *out_head is true for METRICS and NOT_FOUND when the method was
 * HEAD (answer without a body), else false. Once the result is not NEED_MORE it stays the same
 * for any bytes that extend |data|; NEED_MORE never comes once len >= HTTP_HEAD_MAX.
 */
enum http_result http_request_parse(size_t *out_consumed, bool *out_head, const char *data,
                                    size_t len);

/* http_status returns the HTTP status for a result other than NEED_MORE: 200,
 * 404, 405, 400 or 431 (and 500 for NEED_MORE, which has none). */
int http_status(enum http_result result);

/*
 * http_response_head writes an HTTP/1.1 response head into |out|: status line (|status|
 * is 100..999; 200, 400, 404, 405, 408, 431, 500 and 503 get their reason phrases, others
 * "Error"), Content-Type (text/plain; version=0.0.4; charset=utf-8 for 200, text/plain;
 * charset=utf-8 otherwise), Content-Length |body_len|, "Allow: GET, HEAD" for 405,
 * Connection: close, and the blank line. The body, if any, is the caller's. Like snprintf:
 * returns the length of the whole head (without its NUL), which is complete and
 * NUL-terminated iff the return is < |out_cap| (|out| may be NULL when out_cap is 0);
 * never more than HTTP_RESPONSE_MAX - 1.
 */
size_t http_response_head(char *out, size_t out_cap, int status, size_t body_len);

#endif
