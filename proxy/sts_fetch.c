/*
 * sts_fetch: see sts_fetch.h. One small client: resolve (A, then AAAA), connect to port
 * 443 of each address in turn, TLS with tlsio (the same engine as the legs), one GET,
 * the response through http_client, then close. One timer bounds the whole fetch.
 */
#include "sts_fetch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "dnsname.h"
#include "http_client.h"
#include "tlsio.h"

#define STS_FETCH_ADDRS_MAX 8
#define STS_FETCH_READ 16384

enum sts_fetch_state {
    STS_FETCH_RESOLVING = 0,
    STS_FETCH_CONNECTING,
    STS_FETCH_HANDSHAKE,
    STS_FETCH_RESPONSE,
    STS_FETCH_CLOSING,
};

struct sts_fetch {
    uv_loop_t *loop;
    struct dns *dns;
    struct tlsio_ctx *webpki; /* referenced */
    sts_fetch_fn *fn;
    void *arg;
    enum sts_fetch_state state;
    char host[DNSNAME_BUF + 8]; /* mta-sts.<domain> */
    struct dns_query *dns_q;
    int dns_type;
    struct sockaddr_storage addrs[STS_FETCH_ADDRS_MAX];
    size_t n_addrs;
    size_t next_addr;
    uv_tcp_t tcp;
    bool tcp_open;
    uv_connect_t connect_req;
    uv_timer_t timer;
    unsigned n_handles; /* the timer, the TCP handle until its close callback */
    struct tlsio tls;
    bool request_sent;
    struct http_client http;
    char out[STS_FETCH_READ];
    char in[STS_FETCH_READ];
    uv_write_t write_req;
    bool writing;
    char failure[320];
    const char *failure_type;
};

static void sts_fetch_finish(struct sts_fetch *f, bool ok);
static void sts_fetch_connect_next(struct sts_fetch *f);

static void sts_fetch_fail(struct sts_fetch *f, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* sts_fetch_fail ends the fetch with the first failure's reason. */
static void sts_fetch_fail(struct sts_fetch *f, const char *type, const char *fmt, ...)
{
    if (f->failure[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(f->failure, sizeof(f->failure), fmt, ap);
        va_end(ap);
        f->failure_type = type;
    }
    sts_fetch_finish(f, false);
}

static void sts_fetch_on_closed(uv_handle_t *handle)
{
    struct sts_fetch *f = handle->data;
    if (--f->n_handles == 0) {
        http_client_cleanup(&f->http);
        tlsio_cleanup(&f->tls);
        tlsio_ctx_free(f->webpki);
        free(f);
    }
}

/* sts_fetch_on_tcp_closed: the TCP handle is free again. While still connecting, the
 * attempt that failed is over and the next address may take the handle: not before, as
 * libuv forbids initialising a handle whose close is still under way. Once finished,
 * the fetch goes with its last handle. */
static void sts_fetch_on_tcp_closed(uv_handle_t *handle)
{
    struct sts_fetch *f = handle->data;
    if (f->state == STS_FETCH_CONNECTING) {
        f->n_handles--; /* not the last: the timer stays open until the fetch finishes */
        sts_fetch_connect_next(f);
        return;
    }
    sts_fetch_on_closed(handle);
}

static void sts_fetch_close_tcp(struct sts_fetch *f)
{
    if (f->tcp_open) {
        f->tcp_open = false;
        uv_close((uv_handle_t *)&f->tcp, sts_fetch_on_tcp_closed);
    }
}

/* sts_fetch_finish reports once, then closes everything (the memory goes with the last
 * handle). */
static void sts_fetch_finish(struct sts_fetch *f, bool ok)
{
    if (f->state == STS_FETCH_CLOSING) {
        return;
    }
    f->state = STS_FETCH_CLOSING;
    dns_cancel(f->dns_q);
    f->dns_q = NULL;
    sts_fetch_fn *fn = f->fn;
    f->fn = NULL;
    if (fn != NULL) {
        struct sts_fetch_result r = {.ok = ok};
        if (ok) {
            r.body = http_client_body(&f->http, &r.body_len);
            if (r.body == NULL) {
                r.body = "";
            }
        } else {
            r.result_type = f->failure_type != NULL ? f->failure_type : "sts-policy-fetch-error";
            r.why = f->failure;
        }
        fn(f->arg, &r);
    }
    sts_fetch_close_tcp(f);
    uv_close((uv_handle_t *)&f->timer, sts_fetch_on_closed);
}

/* ---- TLS and HTTP over the connection ----------------------------------------------------- */

static void sts_fetch_pump(struct sts_fetch *f);

static void sts_fetch_on_write(uv_write_t *req, int status)
{
    struct sts_fetch *f = req->data;
    f->writing = false;
    if (f->state == STS_FETCH_CLOSING) {
        return;
    }
    if (status < 0) {
        sts_fetch_fail(f, NULL, "write failed: %s", uv_strerror(status));
        return;
    }
    sts_fetch_pump(f);
}

/* sts_fetch_flush sends the ciphertext tlsio holds; one write in flight at most. */
static void sts_fetch_flush(struct sts_fetch *f)
{
    if (f->writing || tlsio_pending_out(&f->tls) == 0) {
        return;
    }
    size_t n = 0;
    tlsio_take_out(&f->tls, &n, f->out, sizeof(f->out));
    uv_buf_t b = uv_buf_init(f->out, (unsigned)n);
    f->write_req.data = f;
    f->writing = true;
    if (uv_write(&f->write_req, (uv_stream_t *)&f->tcp, &b, 1, sts_fetch_on_write) != 0) {
        f->writing = false;
        sts_fetch_fail(f, NULL, "write failed");
    }
}

static void sts_fetch_send_request(struct sts_fetch *f)
{
    char req[DNSNAME_BUF + 160];
    int n = snprintf(req, sizeof(req),
                     "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: %s\r\n"
                     "User-Agent: smtp-tls-proxy/" PROXY_VERSION "\r\n"
                     "Accept: text/plain\r\nConnection: close\r\n\r\n",
                     f->host);
    size_t done = 0;
    if (tlsio_write(&f->tls, &done, req, (size_t)n) != TLSIO_OK || done != (size_t)n) {
        sts_fetch_fail(f, NULL, "cannot send the request");
        return;
    }
    f->request_sent = true;
}

/* sts_fetch_response reads what TLS decrypted into the HTTP parser. */
static void sts_fetch_response(struct sts_fetch *f)
{
    for (;;) {
        char plain[4096];
        size_t n = 0;
        enum tlsio_result rc = tlsio_read(&f->tls, &n, plain, sizeof(plain));
        enum http_client_result h;
        if (rc == TLSIO_OK) {
            size_t used = 0;
            h = http_client_feed(&f->http, &used, plain, n);
        } else if (rc == TLSIO_CLOSED ||
                   (rc == TLSIO_FAILED && tlsio_failure(&f->tls) == TLSIO_FAILURE_EOF)) {
            h = http_client_eof(&f->http);
        } else if (rc == TLSIO_FAILED) {
            sts_fetch_fail(f, NULL, "TLS: %s", tlsio_reason(&f->tls));
            return;
        } else {
            return; /* want more */
        }
        if (h == HTTP_CLIENT_NEED_MORE) {
            if (rc != TLSIO_OK) {
                sts_fetch_fail(f, NULL, "connection closed mid-response");
                return;
            }
            continue;
        }
        if (h != HTTP_CLIENT_DONE) {
            sts_fetch_fail(f, NULL, "bad response: %s", http_client_error(&f->http));
            return;
        }
        int status = http_client_status(&f->http);
        if (status != 200) {
            char text[16];
            snprintf(text, sizeof(text), "%d", status);
            sts_fetch_fail(f, NULL, "HTTP status %s (only 200 is a policy)", text);
            return;
        }
        if (!http_client_media_type_is(&f->http, "text/plain")) {
            sts_fetch_fail(f, NULL, "Content-Type is not text/plain");
            return;
        }
        sts_fetch_finish(f, true);
        return;
    }
}

static void sts_fetch_pump(struct sts_fetch *f)
{
    if (f->state == STS_FETCH_HANDSHAKE) {
        enum tlsio_result rc = tlsio_handshake(&f->tls);
        if (rc == TLSIO_FAILED) {
            const char *why = tlsio_reason(&f->tls);
            const char *verify = NULL;
            bool cert = tlsio_verify_result(&f->tls, &verify) != TLSIO_VERIFY_OK &&
                        verify != NULL && verify[0] != '\0';
            sts_fetch_flush(f); /* our alert */
            sts_fetch_fail(f, cert ? "sts-webpki-invalid" : NULL, "TLS handshake: %s",
                           cert ? verify : why);
            return;
        }
        if (rc == TLSIO_OK) {
            f->state = STS_FETCH_RESPONSE;
            sts_fetch_send_request(f);
        }
    }
    if (f->state == STS_FETCH_RESPONSE) {
        sts_fetch_response(f);
    }
    if (f->state != STS_FETCH_CLOSING) {
        sts_fetch_flush(f);
    }
}

static void sts_fetch_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *b)
{
    struct sts_fetch *f = handle->data;
    (void)suggested;
    *b = uv_buf_init(f->in, sizeof(f->in));
}

static void sts_fetch_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    struct sts_fetch *f = stream->data;
    if (f->state == STS_FETCH_CLOSING) {
        return;
    }
    if (nread < 0) {
        tlsio_feed_eof(&f->tls);
    } else {
        size_t off = 0;
        while (off < (size_t)nread) {
            size_t took = 0;
            if (tlsio_feed(&f->tls, &took, b->base + off, (size_t)nread - off) != 0) {
                break;
            }
            off += took;
            if (took == 0 || off < (size_t)nread) {
                sts_fetch_pump(f); /* make room */
                if (f->state == STS_FETCH_CLOSING) {
                    return;
                }
            }
        }
    }
    sts_fetch_pump(f);
    if (nread < 0 && f->state != STS_FETCH_CLOSING) {
        sts_fetch_fail(f, NULL, "connection closed: %s", uv_strerror((int)nread));
    }
}

/* ---- connecting --------------------------------------------------------------------------- */

static void sts_fetch_on_connect(uv_connect_t *req, int status)
{
    struct sts_fetch *f = req->data;
    if (f->state == STS_FETCH_CLOSING) {
        return;
    }
    if (status < 0) {
        snprintf(f->failure, sizeof(f->failure), "connect: %s", uv_strerror(status));
        sts_fetch_close_tcp(f); /* the next address once it is closed */
        return;
    }
    struct tlsio_back_options options = {.name = f->host};
    if (tlsio_start_back(&f->tls, f->webpki, &options) != 0) {
        sts_fetch_fail(f, NULL, "cannot start TLS");
        return;
    }
    f->state = STS_FETCH_HANDSHAKE;
    uv_read_start((uv_stream_t *)&f->tcp, sts_fetch_alloc, sts_fetch_on_read);
    sts_fetch_pump(f);
}

static void sts_fetch_connect_next(struct sts_fetch *f)
{
    if (f->next_addr == f->n_addrs) {
        if (f->failure[0] == '\0') {
            snprintf(f->failure, sizeof(f->failure), "%s has no address", f->host);
        }
        f->failure_type = "sts-policy-fetch-error";
        sts_fetch_finish(f, false);
        return;
    }
    struct sockaddr_storage *sa = &f->addrs[f->next_addr++];
    f->state = STS_FETCH_CONNECTING;
    int rc = uv_tcp_init(f->loop, &f->tcp);
    if (rc != 0) {
        sts_fetch_fail(f, NULL, "cannot open a socket: %s", uv_strerror(rc));
        return;
    }
    f->tcp.data = f;
    f->tcp_open = true;
    f->n_handles++;
    f->connect_req.data = f;
    rc = uv_tcp_connect(&f->connect_req, &f->tcp, (struct sockaddr *)sa, sts_fetch_on_connect);
    if (rc != 0) {
        snprintf(f->failure, sizeof(f->failure), "connect: %s", uv_strerror(rc));
        sts_fetch_close_tcp(f); /* the next address once it is closed */
    }
}

static void sts_fetch_on_address(void *arg, const struct dns_answer *a)
{
    struct sts_fetch *f = arg;
    f->dns_q = NULL;
    if (a->security != DNS_BOGUS && a->security != DNS_FAILED) {
        size_t want = f->dns_type == DNS_TYPE_A ? 4 : 16;
        for (size_t i = 0; i < a->n && f->n_addrs < STS_FETCH_ADDRS_MAX; i++) {
            if (a->rdata_len[i] != want) {
                continue;
            }
            struct sockaddr_storage *ss = &f->addrs[f->n_addrs++];
            memset(ss, 0, sizeof(*ss));
            if (want == 4) {
                struct sockaddr_in *sin = (struct sockaddr_in *)ss;
                sin->sin_family = AF_INET;
                sin->sin_port = htons(443);
                memcpy(&sin->sin_addr, a->rdata[i], 4);
            } else {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons(443);
                memcpy(&sin6->sin6_addr, a->rdata[i], 16);
            }
        }
    } else {
        snprintf(f->failure, sizeof(f->failure), "%s: DNS %s", f->host,
                 dns_security_name(a->security));
    }
    if (f->dns_type == DNS_TYPE_A) {
        f->dns_type = DNS_TYPE_AAAA;
        f->dns_q = dns_resolve(f->dns, f->host, DNS_TYPE_AAAA, sts_fetch_on_address, f);
        if (f->dns_q != NULL) {
            return;
        }
    }
    sts_fetch_connect_next(f);
}

static void sts_fetch_on_timeout(uv_timer_t *timer)
{
    struct sts_fetch *f = timer->data;
    sts_fetch_fail(f, NULL, "no policy within the fetch timeout");
}

/* ---- the API ------------------------------------------------------------------------------ */

struct sts_fetch *sts_fetch_start(uv_loop_t *loop, struct dns *dns, struct tlsio_ctx *webpki,
                                  const char *domain, uint64_t timeout_ms, size_t max_size,
                                  sts_fetch_fn *fn, void *arg)
{
    struct sts_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        return NULL;
    }
    f->loop = loop;
    f->dns = dns;
    f->fn = fn;
    f->arg = arg;
    snprintf(f->host, sizeof(f->host), "mta-sts.%s", domain);
    tlsio_init(&f->tls);
    http_client_init(&f->http, max_size);
    f->dns_type = DNS_TYPE_A;
    f->dns_q = dns_resolve(dns, f->host, DNS_TYPE_A, sts_fetch_on_address, f);
    if (f->dns_q == NULL) {
        http_client_cleanup(&f->http);
        free(f);
        return NULL;
    }
    f->webpki = tlsio_ctx_ref(webpki);
    uv_timer_init(loop, &f->timer);
    f->timer.data = f;
    f->n_handles = 1;
    uv_timer_start(&f->timer, sts_fetch_on_timeout, timeout_ms, 0);
    return f;
}

void sts_fetch_cancel(struct sts_fetch *f)
{
    if (f != NULL) {
        f->fn = NULL;
        sts_fetch_finish(f, false);
    }
}
