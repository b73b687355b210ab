/*
 * http: a strict little HTTP/1.x request-head parser and response-head formatter, for the
 * metrics endpoint. Pure: no I/O, no allocation, no logging, no locks; fuzzed by
 * tests/fuzz/fuzz_http.c.
 */
#include "http.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 section 5.6.2: token characters, which a method is made of. */
static bool http_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) {
        return true;
    }
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Judges a complete request line (without its line end). */
static enum http_result http_request_line(bool *out_head, const char *line, size_t len)
{
    const char *sp1 = memchr(line, ' ', len);
    if (sp1 == NULL || sp1 == line) {
        return HTTP_BAD_REQUEST;
    }
    size_t method_len = (size_t)(sp1 - line);
    for (size_t i = 0; i < method_len; i++) {
        if (!http_tchar((unsigned char)line[i])) {
            return HTTP_BAD_REQUEST;
        }
    }
    const char *target = sp1 + 1;
    const char *end = line + len;
    const char *sp2 = memchr(target, ' ', (size_t)(end - target));
    if (sp2 == NULL || sp2 == target) {
        return HTTP_BAD_REQUEST;
    }
    size_t target_len = (size_t)(sp2 - target);
    for (size_t i = 0; i < target_len; i++) {
        /* Visible US-ASCII only (RFC 9112 section 3.2; no spaces, no controls). */
        if ((unsigned char)target[i] <= 0x20 || (unsigned char)target[i] >= 0x7f) {
            return HTTP_BAD_REQUEST;
        }
    }
    const char *version = sp2 + 1;
    size_t version_len = (size_t)(end - version);
    if (version_len != 8 ||
        (memcmp(version, "HTTP/1.1", 8) != 0 && memcmp(version, "HTTP/1.0", 8) != 0)) {
        return HTTP_BAD_REQUEST;
    }

    /* Absolute-form: a scheme, "://", an authority, then the path (empty means "/"). */
    const char *path = target;
    size_t path_len = target_len;
    if (target[0] != '/') {
        static const char scheme[] = "http://";
        if (target_len < sizeof(scheme) - 1 ||
            strncasecmp(target, scheme, sizeof(scheme) - 1) != 0) {
            return HTTP_BAD_REQUEST;
        }
        const char *authority = target + sizeof(scheme) - 1;
        size_t rest = target_len - (sizeof(scheme) - 1);
        path = memchr(authority, '/', rest);
        path_len = path != NULL ? (size_t)(target + target_len - path) : 0;
        if (path == authority) {
            return HTTP_BAD_REQUEST; /* no host */
        }
    }
    const char *query = path_len > 0 ? memchr(path, '?', path_len) : NULL;
    if (query != NULL) {
        path_len = (size_t)(query - path);
    }

    bool get = method_len == 3 && memcmp(line, "GET", 3) == 0;
    bool head = method_len == 4 && memcmp(line, "HEAD", 4) == 0;
    if (!get && !head) {
        return HTTP_BAD_METHOD;
    }
    *out_head = head;
    if (path_len == 8 && memcmp(path, "/metrics", 8) == 0) {
        return HTTP_METRICS;
    }
    return HTTP_NOT_FOUND;
}

enum http_result http_request_parse(size_t *out_consumed, bool *out_head, const char *data,
                                    size_t len)
{
    *out_consumed = 0;
    *out_head = false;
    size_t scan = len < HTTP_HEAD_MAX ? len : HTTP_HEAD_MAX;
    size_t line_start = 0;
    size_t request_line_len = 0;
    size_t head_len = 0;
    for (size_t i = 0; i < scan; i++) {
        if (data[i] != '\n') {
            continue;
        }
        size_t line_len = i - line_start;
        if (line_len > 0 && data[i - 1] == '\r') {
            line_len--;
        }
        if (line_start == 0) {
            request_line_len = line_len;
        }
        if (line_len == 0) {
            head_len = i + 1;
            break;
        }
        line_start = i + 1;
    }
    if (head_len == 0) {
        return len >= HTTP_HEAD_MAX ? HTTP_TOO_LARGE : HTTP_NEED_MORE;
    }
    *out_consumed = head_len;
    /* Decided only on a complete head, so that the answer cannot change with more bytes.
     * NUL and bare CR are refused (RFC 9112 section 2.2): they split requests differently
     * in different parsers, the root of request smuggling. */
    for (size_t i = 0; i < head_len; i++) {
        if (data[i] == '\0' || (data[i] == '\r' && data[i + 1] != '\n')) {
            return HTTP_BAD_REQUEST;
        }
    }
    if (request_line_len == 0) {
        return HTTP_BAD_REQUEST;
    }
    return http_request_line(out_head, data, request_line_len);
}

int http_status(enum http_result result)
{
    switch (result) {
    case HTTP_METRICS:
        return 200;
    case HTTP_NOT_FOUND:
        return 404;
    case HTTP_BAD_METHOD:
        return 405;
    case HTTP_BAD_REQUEST:
        return 400;
    case HTTP_TOO_LARGE:
        return 431;
    case HTTP_NEED_MORE:
        break;
    }
    return 500;
}

static const char *http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

size_t http_response_head(char *out, size_t out_cap, int status, size_t body_len)
{
    /* A status outside 100..999 would not be three digits; it is our bug, not input. */
    assert(status >= 100 && status <= 999);
    int n = snprintf(out, out_cap,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain;%s charset=utf-8\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "Connection: close\r\n"
                     "\r\n",
                     status, http_reason(status), status == 200 ? " version=0.0.4;" : "", body_len,
                     status == 405 ? "Allow: GET, HEAD\r\n" : "");
    assert(n > 0);
    return (size_t)n;
}
