/*
 * http_client: an incremental HTTP/1.1 response parser (RFC 9112) for the MTA-STS policy
 * fetch: status line, header fields, and a body framed by Content-Length, chunked
 * transfer coding or the connection's close. Pure: no I/O, no logging; it allocates only
 * the body, up to the caller's cap. Not thread-safe per object; separate objects are.
 */
#ifndef PROXY_HTTP_CLIENT_H
#define PROXY_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The longest response head (status line, fields, blank line), and the longest trailer
 * section; a longer one is TOO_LARGE. */
#define HTTP_CLIENT_HEAD_MAX 8192
/* The longest chunk-size line, extensions included. */
#define HTTP_CLIENT_CHUNK_LINE_MAX 1024
/* The most chunks a body may have (a policy of 64 KiB in 1-byte chunks is 65536). */
#define HTTP_CLIENT_CHUNKS_MAX 70000
/* The most interim (1xx) responses skipped before the final one. */
#define HTTP_CLIENT_INTERIM_MAX 8
/* The longest Content-Type value kept. */
#define HTTP_CLIENT_CONTENT_TYPE_MAX 256

enum http_client_result {
    HTTP_CLIENT_NEED_MORE = 0, /* feed more bytes, or call http_client_eof() at the close */
    HTTP_CLIENT_DONE,          /* a whole response: status, fields and body are final */
    HTTP_CLIENT_BAD,           /* not a response this parser accepts: http_client_error() */
    HTTP_CLIENT_TOO_LARGE,     /* head, trailers, body or chunk count over its cap */
};

/* Parser states; private to http_client.c. */
enum http_client_state {
    HTTP_CLIENT_HEAD = 0,
    HTTP_CLIENT_BODY_LENGTH,
    HTTP_CLIENT_BODY_CLOSE,
    HTTP_CLIENT_CHUNK_SIZE,
    HTTP_CLIENT_CHUNK_DATA,
    HTTP_CLIENT_CHUNK_END,
    HTTP_CLIENT_TRAILERS,
    HTTP_CLIENT_END,
};

/* One response being parsed. Embed it; the fields are private to http_client.c. */
struct http_client {
    enum http_client_state state;
    enum http_client_result result; /* DONE, BAD or TOO_LARGE once final */
    const char *error;
    size_t body_max;
    char line[HTTP_CLIENT_HEAD_MAX]; /* the head, a chunk-size line or a trailer so far */
    size_t line_len;
    size_t line_start; /* where the current line of |line| starts */
    int status;        /* 0 until the final head is complete */
    int interim;
    int version_minor;
    bool have_length;
    uint64_t length;
    bool chunked;
    bool have_content_type;
    char content_type[HTTP_CLIENT_CONTENT_TYPE_MAX];
    uint64_t remaining;
    size_t chunks;
    size_t trailer_len;
    struct buf body;
};

/*
 * http_client_init prepares |p| for one response to a GET (a HEAD's response would be
 * misread), keeping at most |body_max| body bytes. After it, http_client_cleanup() is
 * always safe. Owns no memory until a body byte arrives.
 */
void http_client_init(struct http_client *p, size_t body_max);

/* http_client_cleanup frees the body; |p| may be initialised again. */
void http_client_cleanup(struct http_client *p);

/*
 * http_client_feed parses the next |len| bytes of the connection, however they are split.
 * Sets *out_consumed to the bytes used: all of them on NEED_MORE; up to the response's end
 * on DONE (bytes after it are not part of it; the fetch closes the connection anyway);
 * where it stopped on BAD and TOO_LARGE. Once a result other than NEED_MORE is returned,
 * every later call returns it again and consumes nothing.
 *
 * What it accepts (RFC 9112): a status line "HTTP/1.0" or "HTTP/1.1", SP, a status of 100
 * to 599, then SP and a reason or nothing; lines ended by CRLF or a bare LF (section 2.2),
 * never a bare CR or a NUL; field lines "name: value" with a token name and no space
 * before the colon, no obs-fold (section 5.2); interim 1xx responses are skipped (at most
 * HTTP_CLIENT_INTERIM_MAX; 101 is BAD). Framing (section 6.3): 204, 304 have no body;
 * "Transfer-Encoding: chunked" (the only coding accepted; none in an HTTP/1.0 response)
 * with chunk extensions ignored and trailers read and ignored; else Content-Length (a
 * list or repeated field only of one value, else BAD); else until the close. Both
 * Transfer-Encoding and Content-Length: BAD. A second Content-Type: BAD.
 */
enum http_client_result http_client_feed(struct http_client *p, size_t *out_consumed,
                                         const char *data, size_t len);

/*
 * http_client_eof tells |p| that the connection closed. Returns DONE when that ends the
 * response (a body read until the close, or a response already DONE), BAD when it cuts
 * one short, and a final result already given unchanged.
 */
enum http_client_result http_client_eof(struct http_client *p);

/* http_client_status returns the final response's status code, 0 until its head is
 * complete. */
int http_client_status(const struct http_client *p);

/* http_client_content_type returns the Content-Type value (without surrounding
 * whitespace, NUL-terminated, valid as long as |p|), or NULL when there is none or the
 * head is not complete. */
const char *http_client_content_type(const struct http_client *p);

/*
 * http_client_media_type_is says whether the Content-Type's media type (the part before
 * any ";" parameters, RFC 9110 section 8.3.1) is |type| ("text/plain"), ignoring case and
 * whitespace around it. False when there is no Content-Type.
 */
bool http_client_media_type_is(const struct http_client *p, const char *type);

/* http_client_body returns the body received so far (all of it once DONE) and sets
 * *out_len; the bytes are |p|'s and valid until the next feed or cleanup. May return NULL
 * when the body is empty. */
const char *http_client_body(const struct http_client *p, size_t *out_len);

/* http_client_error returns why the result is BAD or TOO_LARGE (static text), else "". */
const char *http_client_error(const struct http_client *p);

#endif
