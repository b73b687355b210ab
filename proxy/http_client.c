/*
 * http_client: an incremental, strict HTTP/1.1 response parser for the MTA-STS policy
 * fetch. Pure: no I/O, no logging; only the body is allocated (through buf, up to the
 * caller's cap). Hand-written because http.c only reads requests (the metrics endpoint)
 * and Debian's HTTP parsers would bring framing rules we would have to audit anyway.
 * Ambiguous framing is refused, never guessed. Fuzzed by tests/fuzz/fuzz_http_response.c.
 */
#include "http_client.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

void http_client_init(struct http_client *p, size_t body_max)
{
    memset(p, 0, sizeof(*p));
    p->state = HTTP_CLIENT_HEAD;
    p->result = HTTP_CLIENT_NEED_MORE;
    p->error = "";
    p->body_max = body_max;
    buf_init(&p->body);
}

void http_client_cleanup(struct http_client *p)
{
    buf_cleanup(&p->body);
}

static enum http_client_result http_client_fail(struct http_client *p,
                                                enum http_client_result result, const char *error)
{
    p->state = HTTP_CLIENT_END;
    p->result = result;
    p->error = error;
    return result;
}

/* RFC 9110 section 5.6.2 tchar. */
static bool http_client_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) {
        return true;
    }
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool http_client_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* field-vchar / SP / HTAB, and obs-text (RFC 9110 section 5.5): no controls. */
static bool http_client_field_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* Trims OWS from both ends of [*s, *s + *len). */
static void http_client_trim(const char **s, size_t *len)
{
    while (*len > 0 && http_client_ows((*s)[0])) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && http_client_ows((*s)[*len - 1])) {
        (*len)--;
    }
}

static bool http_client_is(const char *s, size_t len, const char *word)
{
    return len == strlen(word) && strncasecmp(s, word, len) == 0;
}

/* One element of a comma-separated list at *s (OWS trimmed): returns false at the end. */
static bool http_client_next_element(const char **s, size_t *len, const char **out, size_t *out_len)
{
    if (*len == 0) {
        return false;
    }
    const char *comma = memchr(*s, ',', *len);
    size_t n = comma != NULL ? (size_t)(comma - *s) : *len;
    *out = *s;
    *out_len = n;
    http_client_trim(out, out_len);
    if (comma != NULL) {
        *s = comma + 1; /* a trailing comma is the caller's to refuse */
        *len -= n + 1;
    } else {
        *s += n;
        *len = 0;
    }
    return true;
}

/* Content-Length (RFC 9110 section 8.6): 1*DIGIT, or a list of one value repeated. */
static enum http_client_result http_client_length(struct http_client *p, const char *value,
                                                  size_t len)
{
    const char *elem;
    size_t elem_len;
    bool any = false;
    bool trailing_comma = len > 0 && value[len - 1] == ',';
    while (http_client_next_element(&value, &len, &elem, &elem_len)) {
        if (elem_len == 0) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "empty Content-Length");
        }
        uint64_t v = 0;
        for (size_t i = 0; i < elem_len; i++) {
            if (elem[i] < '0' || elem[i] > '9') {
                return http_client_fail(p, HTTP_CLIENT_BAD, "Content-Length is not a number");
            }
            if (v > (UINT64_MAX - 9) / 10) {
                return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "Content-Length too large");
            }
            v = v * 10 + (uint64_t)(elem[i] - '0');
        }
        if (p->have_length && p->length != v) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "conflicting Content-Length values");
        }
        p->have_length = true;
        p->length = v;
        any = true;
    }
    if (!any || trailing_comma) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "empty Content-Length");
    }
    return HTTP_CLIENT_NEED_MORE;
}

/* Transfer-Encoding: exactly one coding in all, "chunked" (RFC 9112 section 6.1). */
static enum http_client_result http_client_coding(struct http_client *p, const char *value,
                                                  size_t len)
{
    const char *elem;
    size_t elem_len;
    bool any = false;
    bool trailing_comma = len > 0 && value[len - 1] == ',';
    while (http_client_next_element(&value, &len, &elem, &elem_len)) {
        if (!http_client_is(elem, elem_len, "chunked") || p->chunked) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "unsupported Transfer-Encoding");
        }
        p->chunked = true;
        any = true;
    }
    if (!any || trailing_comma) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "unsupported Transfer-Encoding");
    }
    return HTTP_CLIENT_NEED_MORE;
}

/* One field line (no line end). |framing| is false for trailers, whose fields are checked
 * for syntax and otherwise ignored (RFC 9112 section 7.1.2: never used for framing). */
static enum http_client_result http_client_field(struct http_client *p, const char *line,
                                                 size_t len, bool framing)
{
    if (http_client_ows(line[0])) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "obsolete line folding");
    }
    size_t name_len = 0;
    while (name_len < len && http_client_tchar((unsigned char)line[name_len])) {
        name_len++;
    }
    if (name_len == 0 || name_len == len || line[name_len] != ':') {
        return http_client_fail(p, HTTP_CLIENT_BAD, "malformed header field");
    }
    const char *value = line + name_len + 1;
    size_t value_len = len - name_len - 1;
    for (size_t i = 0; i < value_len; i++) {
        if (!http_client_field_char((unsigned char)value[i])) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "control character in a header field");
        }
    }
    if (!framing) {
        return HTTP_CLIENT_NEED_MORE;
    }
    http_client_trim(&value, &value_len);
    if (http_client_is(line, name_len, "content-length")) {
        return http_client_length(p, value, value_len);
    }
    if (http_client_is(line, name_len, "transfer-encoding")) {
        return http_client_coding(p, value, value_len);
    }
    if (http_client_is(line, name_len, "content-type")) {
        if (p->have_content_type) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "more than one Content-Type");
        }
        if (value_len >= sizeof(p->content_type)) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "Content-Type too long");
        }
        memcpy(p->content_type, value, value_len);
        p->content_type[value_len] = '\0';
        p->have_content_type = true;
    }
    return HTTP_CLIENT_NEED_MORE;
}

/* RFC 9112 section 4: HTTP-version SP 3DIGIT SP [reason-phrase]; "HTTP/1.1 200" without
 * the second SP is accepted too, as most clients do. */
static enum http_client_result http_client_status_line(struct http_client *p, const char *line,
                                                       size_t len)
{
    if (len < 12 || (memcmp(line, "HTTP/1.1 ", 9) != 0 && memcmp(line, "HTTP/1.0 ", 9) != 0)) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "not an HTTP/1.0 or 1.1 status line");
    }
    int status = 0;
    for (size_t i = 9; i < 12; i++) {
        if (line[i] < '0' || line[i] > '9') {
            return http_client_fail(p, HTTP_CLIENT_BAD, "malformed status code");
        }
        status = status * 10 + (line[i] - '0');
    }
    if (status < 100 || status > 599) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "status code out of range");
    }
    if (len > 12 && line[12] != ' ') {
        return http_client_fail(p, HTTP_CLIENT_BAD, "malformed status line");
    }
    for (size_t i = 13; i < len; i++) {
        if (!http_client_field_char((unsigned char)line[i])) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "control character in the reason");
        }
    }
    p->version_minor = line[7] - '0';
    p->status = status;
    return HTTP_CLIENT_NEED_MORE;
}

/* Starts the body, or the next head after an interim response. */
static enum http_client_result http_client_framing(struct http_client *p)
{
    if (p->status >= 100 && p->status <= 199) {
        if (p->status == 101) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "unexpected 101 Switching Protocols");
        }
        if (++p->interim > HTTP_CLIENT_INTERIM_MAX) {
            return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "too many interim responses");
        }
        /* Its fields say nothing about the final response. */
        p->status = 0;
        p->have_length = false;
        p->length = 0;
        p->chunked = false;
        p->have_content_type = false;
        p->content_type[0] = '\0';
        p->state = HTTP_CLIENT_HEAD;
        return HTTP_CLIENT_NEED_MORE;
    }
    if (p->chunked && p->version_minor == 0) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "Transfer-Encoding in an HTTP/1.0 response");
    }
    if (p->chunked && p->have_length) {
        return http_client_fail(p, HTTP_CLIENT_BAD,
                                "both Transfer-Encoding and Content-Length (ambiguous framing)");
    }
    if (p->status == 204 || p->status == 304) {
        return http_client_fail(p, HTTP_CLIENT_DONE, "");
    }
    if (p->chunked) {
        p->state = HTTP_CLIENT_CHUNK_SIZE;
        return HTTP_CLIENT_NEED_MORE;
    }
    if (p->have_length) {
        if (p->length > p->body_max) {
            return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "body larger than the cap");
        }
        if (p->length == 0) {
            return http_client_fail(p, HTTP_CLIENT_DONE, "");
        }
        p->remaining = p->length;
        p->state = HTTP_CLIENT_BODY_LENGTH;
        return HTTP_CLIENT_NEED_MORE;
    }
    p->state = HTTP_CLIENT_BODY_CLOSE;
    return HTTP_CLIENT_NEED_MORE;
}

/* The whole head is in p->line[0, p->line_len): judge it line by line. */
static enum http_client_result http_client_head(struct http_client *p)
{
    const char *s = p->line;
    size_t len = p->line_len;
    size_t pos = 0;
    bool first = true;
    while (pos < len) {
        const char *nl = memchr(s + pos, '\n', len - pos);
        size_t end = (size_t)(nl - s); /* the head ends with LF, so there is one */
        size_t line_len = end - pos;
        if (line_len > 0 && s[end - 1] == '\r') {
            line_len--;
        }
        const char *line = s + pos;
        pos = end + 1;
        if (memchr(line, '\r', line_len) != NULL || memchr(line, '\0', line_len) != NULL) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "bare CR or NUL in the head");
        }
        if (line_len == 0) {
            break; /* the blank line */
        }
        enum http_client_result r = first ? http_client_status_line(p, line, line_len)
                                          : http_client_field(p, line, line_len, true);
        if (r != HTTP_CLIENT_NEED_MORE) {
            return r;
        }
        first = false;
    }
    if (first) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "empty status line");
    }
    return http_client_framing(p);
}

/*
 * Collects bytes into p->line until a line (LF) completes; returns true then, with the
 * line ending at p->line_len. |cap| bounds p->line_len: *out_full is set when it is
 * reached without an LF, which can then never fit, whatever bytes come next.
 */
static bool http_client_collect(struct http_client *p, const char **data, size_t *len, size_t cap,
                                bool *out_full)
{
    size_t room = cap - p->line_len;
    size_t n = *len < room ? *len : room;
    const char *nl = memchr(*data, '\n', n);
    size_t take = nl != NULL ? (size_t)(nl - *data) + 1 : n;
    memcpy(p->line + p->line_len, *data, take);
    p->line_len += take;
    *data += take;
    *len -= take;
    *out_full = nl == NULL && p->line_len == cap;
    return nl != NULL;
}

static enum http_client_result http_client_append(struct http_client *p, const char *data,
                                                  size_t len)
{
    if (len > p->body_max - buf_len(&p->body)) {
        return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "body larger than the cap");
    }
    if (len > 0 && buf_append(&p->body, data, len, p->body_max) != 0) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "out of memory");
    }
    return HTTP_CLIENT_NEED_MORE;
}

/* The chunk-size line (RFC 9112 section 7.1): 1*HEXDIG [ BWS ";" extensions ]. */
static enum http_client_result http_client_chunk_size(struct http_client *p, const char *line,
                                                      size_t len)
{
    if (len > 0 && line[len - 1] == '\r') {
        len--;
    }
    uint64_t size = 0;
    size_t i = 0;
    for (; i < len; i++) {
        char c = line[i];
        int digit;
        if (c >= '0' && c <= '9') {
            digit = c - '0';
        } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
            digit = (c | 0x20) - 'a' + 10;
        } else {
            break;
        }
        if (size > (UINT64_MAX >> 4)) {
            return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "chunk size too large");
        }
        size = size << 4 | (uint64_t)digit;
    }
    if (i == 0) {
        return http_client_fail(p, HTTP_CLIENT_BAD, "malformed chunk size");
    }
    size_t ext = i;
    while (ext < len && http_client_ows(line[ext])) {
        ext++;
    }
    if (ext < len && line[ext] != ';') {
        return http_client_fail(p, HTTP_CLIENT_BAD, "malformed chunk size");
    }
    for (size_t k = i; k < len; k++) {
        if (!http_client_field_char((unsigned char)line[k])) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "control character in a chunk extension");
        }
    }
    if (size == 0) {
        p->state = HTTP_CLIENT_TRAILERS;
        return HTTP_CLIENT_NEED_MORE;
    }
    if (++p->chunks > HTTP_CLIENT_CHUNKS_MAX) {
        return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "too many chunks");
    }
    if (size > p->body_max - buf_len(&p->body)) {
        return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "body larger than the cap");
    }
    p->remaining = size;
    p->state = HTTP_CLIENT_CHUNK_DATA;
    return HTTP_CLIENT_NEED_MORE;
}

/* One step on the bytes at *data; NEED_MORE means "go on", whether bytes remain or not. */
static enum http_client_result http_client_step(struct http_client *p, const char **data,
                                                size_t *len)
{
    bool full;
    switch (p->state) {
    case HTTP_CLIENT_HEAD:
        while (*len > 0) {
            if (!http_client_collect(p, data, len, sizeof(p->line), &full)) {
                if (full) {
                    return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "response head too large");
                }
                return HTTP_CLIENT_NEED_MORE;
            }
            /* A line ended: the head ends with an empty one (LF or CRLF). */
            size_t line = p->line_len - p->line_start;
            bool empty = line == 1 || (line == 2 && p->line[p->line_start] == '\r');
            p->line_start = p->line_len;
            if (empty) {
                enum http_client_result r = http_client_head(p);
                p->line_len = 0;
                p->line_start = 0;
                return r;
            }
            if (p->line_len == sizeof(p->line)) {
                return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "response head too large");
            }
        }
        return HTTP_CLIENT_NEED_MORE;
    case HTTP_CLIENT_BODY_LENGTH:
    case HTTP_CLIENT_CHUNK_DATA: {
        size_t n = *len < p->remaining ? *len : (size_t)p->remaining;
        enum http_client_result r = http_client_append(p, *data, n);
        *data += n;
        *len -= n;
        p->remaining -= n;
        if (r != HTTP_CLIENT_NEED_MORE || p->remaining > 0) {
            return r;
        }
        if (p->state == HTTP_CLIENT_BODY_LENGTH) {
            return http_client_fail(p, HTTP_CLIENT_DONE, "");
        }
        p->state = HTTP_CLIENT_CHUNK_END;
        return HTTP_CLIENT_NEED_MORE;
    }
    case HTTP_CLIENT_BODY_CLOSE: {
        enum http_client_result r = http_client_append(p, *data, *len);
        *data += *len;
        *len = 0;
        return r;
    }
    case HTTP_CLIENT_CHUNK_SIZE:
    case HTTP_CLIENT_CHUNK_END: {
        if (!http_client_collect(p, data, len, HTTP_CLIENT_CHUNK_LINE_MAX, &full)) {
            if (full) {
                return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "chunk-size line too long");
            }
            return HTTP_CLIENT_NEED_MORE;
        }
        size_t n = p->line_len - 1; /* without the LF */
        p->line_len = 0;
        if (p->state == HTTP_CLIENT_CHUNK_END) {
            /* The CRLF after the chunk's data, and nothing else. */
            if (n > 1 || (n == 1 && p->line[0] != '\r')) {
                return http_client_fail(p, HTTP_CLIENT_BAD, "chunk data longer than its size");
            }
            p->state = HTTP_CLIENT_CHUNK_SIZE;
            return HTTP_CLIENT_NEED_MORE;
        }
        return http_client_chunk_size(p, p->line, n);
    }
    case HTTP_CLIENT_TRAILERS: {
        size_t before = p->line_len;
        bool complete = http_client_collect(p, data, len, sizeof(p->line), &full);
        p->trailer_len += p->line_len - before;
        if (p->trailer_len > HTTP_CLIENT_HEAD_MAX || full) {
            return http_client_fail(p, HTTP_CLIENT_TOO_LARGE, "trailer section too large");
        }
        if (!complete) {
            return HTTP_CLIENT_NEED_MORE;
        }
        size_t n = p->line_len - 1;
        if (n > 0 && p->line[n - 1] == '\r') {
            n--;
        }
        p->line_len = 0;
        if (memchr(p->line, '\r', n) != NULL || memchr(p->line, '\0', n) != NULL) {
            return http_client_fail(p, HTTP_CLIENT_BAD, "bare CR or NUL in a trailer");
        }
        if (n == 0) {
            return http_client_fail(p, HTTP_CLIENT_DONE, "");
        }
        return http_client_field(p, p->line, n, false);
    }
    case HTTP_CLIENT_END:
        break;
    }
    return p->result;
}

enum http_client_result http_client_feed(struct http_client *p, size_t *out_consumed,
                                         const char *data, size_t len)
{
    *out_consumed = 0;
    if (p->state == HTTP_CLIENT_END) {
        return p->result;
    }
    const char *start = data;
    enum http_client_result r = HTTP_CLIENT_NEED_MORE;
    while (r == HTTP_CLIENT_NEED_MORE && len > 0) {
        r = http_client_step(p, &data, &len);
    }
    *out_consumed = (size_t)(data - start);
    return r;
}

enum http_client_result http_client_eof(struct http_client *p)
{
    switch (p->state) {
    case HTTP_CLIENT_END:
        return p->result;
    case HTTP_CLIENT_BODY_CLOSE:
        return http_client_fail(p, HTTP_CLIENT_DONE, "");
    case HTTP_CLIENT_HEAD:
        return http_client_fail(p, HTTP_CLIENT_BAD, "connection closed before the response head");
    default:
        return http_client_fail(p, HTTP_CLIENT_BAD, "connection closed before the end of the body");
    }
}

int http_client_status(const struct http_client *p)
{
    return p->status;
}

const char *http_client_content_type(const struct http_client *p)
{
    return p->status != 0 && p->have_content_type ? p->content_type : NULL;
}

bool http_client_media_type_is(const struct http_client *p, const char *type)
{
    const char *ct = http_client_content_type(p);
    if (ct == NULL) {
        return false;
    }
    const char *semi = strchr(ct, ';');
    size_t len = semi != NULL ? (size_t)(semi - ct) : strlen(ct);
    http_client_trim(&ct, &len);
    return http_client_is(ct, len, type);
}

const char *http_client_body(const struct http_client *p, size_t *out_len)
{
    *out_len = buf_len(&p->body);
    return buf_head(&p->body);
}

const char *http_client_error(const struct http_client *p)
{
    return p->error;
}
