/*
 * tlsrpt_io: see tlsrpt_io.h. Reports are rendered and written on the caller's thread
 * (main's loop: a few small files a day); submission goes to a detached thread per batch,
 * which resolves each domain's _smtp._tls record with its own libunbound context (the
 * proxy's resolver settings), then POSTs over TLS (WebPKI, the [recipient_policy] roots)
 * or sends a message through the configured upstream. Each step has a timeout.
 */
#include "tlsrpt_io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/base64.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <unbound.h>

#include "log.h"
#include "mtasts.h"
#include "tlsrpt.h"

#define TLSRPT_IO_TIMEOUT_S 30
#define TLSRPT_ID_LEN 24

struct tlsrpt_io {
    struct tlsrpt *agg;
    pthread_mutex_t mu;
    pthread_cond_t idle;
    unsigned running; /* submission threads */
};

/* One report to submit. */
struct tlsrpt_item {
    char domain[DNSNAME_BUF];
    char report_id[TLSRPT_ID_LEN + 1];
    char file_name[TLSRPT_FILE_NAME_BUF];
    char *json;
    size_t json_len;
};

/* A batch for the submission thread, with the settings it needs copied in. */
struct tlsrpt_job {
    struct tlsrpt_io *io;
    char *unbound_config;
    char *ca_file;
    char upstream_host[CONF_HOST_MAX + 1];
    uint16_t upstream_port;
    char hostname[CONF_HOST_MAX + 1];
    char organization[320];
    char contact[320];
    struct tlsrpt_item *items;
    size_t n_items;
};

struct tlsrpt_io *tlsrpt_io_new(struct tlsrpt *agg)
{
    struct tlsrpt_io *io = calloc(1, sizeof(*io));
    if (io == NULL) {
        return NULL;
    }
    io->agg = agg;
    pthread_mutex_init(&io->mu, NULL);
    pthread_cond_init(&io->idle, NULL);
    return io;
}

void tlsrpt_io_free(struct tlsrpt_io *io)
{
    if (io == NULL) {
        return;
    }
    /* Submissions are bounded; at shutdown give them a little time, then let exit end
     * them (their reports are on disk already). */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    pthread_mutex_lock(&io->mu);
    while (io->running > 0 && pthread_cond_timedwait(&io->idle, &io->mu, &until) == 0) {
    }
    bool idle = io->running == 0;
    pthread_mutex_unlock(&io->mu);
    if (idle) {
        pthread_cond_destroy(&io->idle);
        pthread_mutex_destroy(&io->mu);
        free(io);
    }
}

/* ---- names and files ---------------------------------------------------------------------- */

static void tlsrpt_io_settings(const struct conf *conf, char *org, size_t org_size, char *contact,
                               size_t contact_size)
{
    snprintf(org, org_size, "%s",
             conf->recipients.tlsrpt_organization != NULL ? conf->recipients.tlsrpt_organization
                                                          : conf->hostname);
    if (conf->recipients.tlsrpt_contact != NULL) {
        snprintf(contact, contact_size, "%s", conf->recipients.tlsrpt_contact);
    } else {
        snprintf(contact, contact_size, "postmaster@%.255s", conf->hostname);
    }
}

static void tlsrpt_io_random_id(char out[TLSRPT_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t bytes[TLSRPT_ID_LEN / 2];
    if (getrandom(bytes, sizeof(bytes), 0) != (ssize_t)sizeof(bytes)) {
        memset(bytes, 0, sizeof(bytes));
        uint64_t t = (uint64_t)time(NULL);
        memcpy(bytes, &t, sizeof(t));
    }
    for (size_t i = 0; i < sizeof(bytes); i++) {
        out[2 * i] = hex[bytes[i] >> 4];
        out[2 * i + 1] = hex[bytes[i] & 15];
    }
    out[TLSRPT_ID_LEN] = '\0';
}

/* tlsrpt_io_write stores one report as <directory>/<RFC 8460 name>, atomically. */
static void tlsrpt_io_write(const char *directory, const struct tlsrpt_item *item)
{
    char tmp[4096];
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", directory, item->file_name);
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", directory, item->file_name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    bool ok = fd >= 0;
    for (size_t done = 0; ok && done < item->json_len;) {
        ssize_t n = write(fd, item->json + done, item->json_len - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        ok = n > 0;
        done += n > 0 ? (size_t)n : 0;
    }
    int saved = errno;
    if (fd >= 0 && close(fd) != 0) {
        ok = false;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        saved = errno;
    }
    if (!ok) {
        unlink(tmp);
        log_error(0, "tlsrpt-write-failed", "path=\"%s\" error=\"%s\"", path, strerror(saved));
        return;
    }
    log_info(0, "tlsrpt-report", "domain=%s path=\"%s\" report_id=%s", item->domain, path,
             item->report_id);
}

/* ---- submission: DNS -------------------------------------------------------------------- */

static struct ub_ctx *tlsrpt_io_resolver(const struct tlsrpt_job *job)
{
    struct ub_ctx *ctx = ub_ctx_create();
    if (ctx == NULL) {
        return NULL;
    }
    int rc = job->unbound_config != NULL ? ub_ctx_config(ctx, job->unbound_config)
                                         : ub_ctx_resolvconf(ctx, NULL);
    if (rc == 0 && job->unbound_config == NULL && access(CONF_ROOT_TRUST_ANCHOR, R_OK) == 0) {
        rc = ub_ctx_add_ta_file(ctx, CONF_ROOT_TRUST_ANCHOR);
    }
    if (rc != 0) {
        ub_ctx_delete(ctx);
        return NULL;
    }
    return ctx;
}

/* tlsrpt_io_rua finds a domain's report destinations (RFC 8460 section 3). */
static enum tlsrpt_rua_result tlsrpt_io_rua(struct ub_ctx *ctx, const char *domain,
                                            struct tlsrpt_rua *out)
{
    char name[DNSNAME_BUF + 16];
    snprintf(name, sizeof(name), "_smtp._tls.%s", domain);
    struct ub_result *result = NULL;
    if (ub_resolve(ctx, name, 16 /* TXT */, 1, &result) != 0 || result == NULL || result->bogus ||
        !result->havedata) {
        ub_resolve_free(result);
        memset(out, 0, sizeof(*out));
        return TLSRPT_RUA_NONE;
    }
    char texts[8][1024];
    const char *records[8];
    size_t lens[8];
    size_t n = 0;
    for (size_t i = 0; result->data[i] != NULL && n < 8; i++) {
        if (mtasts_txt_from_rdata(texts[n], sizeof(texts[n]), &lens[n],
                                  (const uint8_t *)result->data[i], (size_t)result->len[i])) {
            records[n] = texts[n];
            n++;
        }
    }
    ub_resolve_free(result);
    return tlsrpt_rua_parse(out, records, lens, n);
}

/* ---- submission: sockets ------------------------------------------------------------------ */

static int tlsrpt_io_connect_addr(const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    struct timeval tv = {.tv_sec = TLSRPT_IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, sa, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* tlsrpt_io_connect_name connects to |host|:|port|, resolving a name with |ctx| (so the
 * proxy's resolver settings apply) or, for an address, directly. */
static int tlsrpt_io_connect_name(struct ub_ctx *ctx, const char *host, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        return tlsrpt_io_connect_addr((struct sockaddr *)sin, sizeof(*sin));
    }
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        return tlsrpt_io_connect_addr((struct sockaddr *)sin6, sizeof(*sin6));
    }
    static const int types[] = {1 /* A */, 28 /* AAAA */};
    for (size_t t = 0; t < 2; t++) {
        struct ub_result *r = NULL;
        if (ub_resolve(ctx, host, types[t], 1, &r) != 0 || r == NULL || r->bogus) {
            ub_resolve_free(r);
            continue;
        }
        for (size_t i = 0; r->havedata && r->data[i] != NULL; i++) {
            memset(&ss, 0, sizeof(ss));
            socklen_t len;
            if (types[t] == 1 && r->len[i] == 4) {
                sin->sin_family = AF_INET;
                sin->sin_port = htons(port);
                memcpy(&sin->sin_addr, r->data[i], 4);
                len = sizeof(*sin);
            } else if (types[t] == 28 && r->len[i] == 16) {
                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons(port);
                memcpy(&sin6->sin6_addr, r->data[i], 16);
                len = sizeof(*sin6);
            } else {
                continue;
            }
            int fd = tlsrpt_io_connect_addr((struct sockaddr *)&ss, len);
            if (fd >= 0) {
                ub_resolve_free(r);
                return fd;
            }
        }
        ub_resolve_free(r);
    }
    return -1;
}

/* ---- submission: https POST ------------------------------------------------------------- */

static bool tlsrpt_io_post(const struct tlsrpt_job *job, struct ub_ctx *ctx,
                           const struct tlsrpt_rua_uri *uri, const struct tlsrpt_item *item,
                           char *why, size_t why_size)
{
    int fd = tlsrpt_io_connect_name(ctx, uri->host, uri->port);
    if (fd < 0) {
        snprintf(why, why_size, "cannot connect to %s:%u", uri->host, (unsigned)uri->port);
        return false;
    }
    SSL_CTX *sctx = SSL_CTX_new(TLS_method());
    SSL *ssl = sctx != NULL ? SSL_new(sctx) : NULL;
    bool ok = ssl != NULL && SSL_CTX_set_min_proto_version(sctx, TLS1_2_VERSION) &&
              SSL_CTX_load_verify_locations(sctx, job->ca_file, NULL);
    if (ok) {
        SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
        X509_VERIFY_PARAM_set1_host(SSL_get0_param(ssl), uri->host, strlen(uri->host));
        SSL_set_tlsext_host_name(ssl, uri->host);
        SSL_set_fd(ssl, fd);
        ok = SSL_connect(ssl) == 1;
        if (!ok) {
            snprintf(why, why_size, "TLS with %s: %s", uri->host,
                     X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
        }
    } else {
        snprintf(why, why_size, "cannot load the roots %s", job->ca_file);
    }
    if (ok) {
        char head[2048];
        int n = snprintf(head, sizeof(head),
                         "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/tlsrpt+json\r\n"
                         "Content-Length: %zu\r\nUser-Agent: smtp-tls-proxy/" PROXY_VERSION
                         "\r\nConnection: close\r\n\r\n",
                         uri->path, uri->host, item->json_len);
        ok = n > 0 && (size_t)n < sizeof(head) && SSL_write(ssl, head, n) == n &&
             SSL_write(ssl, item->json, (int)item->json_len) == (int)item->json_len;
        char status[64] = "";
        int got = ok ? SSL_read(ssl, status, sizeof(status) - 1) : 0;
        status[got > 0 ? got : 0] = '\0';
        /* RFC 8460 section 5.3.1: a 2xx is a success. */
        ok = got > 12 && strncmp(status, "HTTP/1.", 7) == 0 && status[9] == '2';
        if (!ok) {
            snprintf(why, why_size, "POST to %s answered \"%.12s\"", uri->host, status);
        }
        SSL_shutdown(ssl);
    }
    SSL_free(ssl);
    SSL_CTX_free(sctx);
    close(fd);
    ERR_clear_error();
    return ok;
}

/* ---- submission: mailto -------------------------------------------------------------------- */

static bool tlsrpt_io_smtp_reply(int fd, int want, char *buf, size_t size)
{
    size_t n = 0;
    for (;;) {
        ssize_t got = read(fd, buf + n, size - 1 - n);
        if (got <= 0) {
            return false;
        }
        n += (size_t)got;
        buf[n] = '\0';
        /* The last line of a complete reply is "NNN text\r\n". */
        char *end = n >= 2 && buf[n - 1] == '\n' ? buf + n - 1 : NULL;
        if (end != NULL) {
            char *line = end;
            while (line > buf && line[-1] != '\n') {
                line--;
            }
            if (end - line >= 4 && line[3] == ' ') {
                return atoi(line) / 100 == want / 100;
            }
        }
        if (n + 1 >= size) {
            return false;
        }
    }
}

static bool tlsrpt_io_send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n <= 0) {
            return false;
        }
        data += n;
        len -= (size_t)n;
    }
    return true;
}

/* tlsrpt_io_message builds RFC 8460 section 5.3's multipart/report message. */
static char *tlsrpt_io_message(const struct tlsrpt_job *job, const struct tlsrpt_item *item,
                               const char *to, size_t *out_len)
{
    size_t b64_len = 0;
    EVP_EncodedLength(&b64_len, item->json_len);
    uint8_t *b64 = malloc(b64_len);
    size_t cap = b64_len + b64_len / 76 * 2 + 4096;
    char *msg = malloc(cap);
    if (b64 == NULL || msg == NULL) {
        free(b64);
        free(msg);
        return NULL;
    }
    size_t enc = EVP_EncodeBlock(b64, (const uint8_t *)item->json, item->json_len);
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    int n = snprintf(msg, cap,
                     "From: %s\r\nTo: %s\r\nDate: %s\r\nMessage-ID: <%s.tlsrpt@%s>\r\n"
                     "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n"
                     "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\nMIME-Version: 1.0\r\n"
                     "Content-Type: multipart/report; report-type=\"tlsrpt\"; "
                     "boundary=\"tlsrpt-%s\"\r\n\r\n"
                     "--tlsrpt-%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                     "This is an aggregate TLS report from %s for %s (RFC 8460).\r\n\r\n"
                     "--tlsrpt-%s\r\nContent-Type: application/tlsrpt+json\r\n"
                     "Content-Transfer-Encoding: base64\r\n"
                     "Content-Disposition: attachment; filename=\"%s\"\r\n\r\n",
                     job->contact, to, date, item->report_id, job->hostname, item->domain,
                     job->organization, item->report_id, item->domain, job->organization,
                     item->report_id, item->report_id, job->organization, item->domain,
                     item->report_id, item->file_name);
    size_t len = n > 0 ? (size_t)n : 0;
    for (size_t i = 0; i < enc && len + 80 < cap; i += 76) {
        size_t chunk = enc - i < 76 ? enc - i : 76;
        memcpy(msg + len, b64 + i, chunk);
        len += chunk;
        memcpy(msg + len, "\r\n", 2);
        len += 2;
    }
    n = snprintf(msg + len, cap - len, "\r\n--tlsrpt-%s--\r\n", item->report_id);
    len += n > 0 ? (size_t)n : 0;
    free(b64);
    *out_len = len;
    return msg;
}

static bool tlsrpt_io_mail(const struct tlsrpt_job *job, struct ub_ctx *ctx,
                           const struct tlsrpt_rua_uri *uri, const struct tlsrpt_item *item,
                           char *why, size_t why_size)
{
    int fd = tlsrpt_io_connect_name(ctx, job->upstream_host, job->upstream_port);
    if (fd < 0) {
        snprintf(why, why_size, "cannot connect to the upstream %.200s:%u", job->upstream_host,
                 (unsigned)job->upstream_port);
        return false;
    }
    /* The envelope sender: the contact's address (inside <> when it has a name). */
    char from[256];
    const char *open = strchr(job->contact, '<');
    snprintf(from, sizeof(from), "%.*s", (int)strcspn(open != NULL ? open + 1 : job->contact, ">"),
             open != NULL ? open + 1 : job->contact);
    char line[1024];
    char reply[4096] = "";
    size_t msg_len = 0;
    char *msg = tlsrpt_io_message(job, item, uri->address, &msg_len);
    bool ok = msg != NULL && tlsrpt_io_smtp_reply(fd, 220, reply, sizeof(reply));
    const char *step = "greeting";
    const struct {
        const char *verb;
        const char *arg;
        const char *close;
        int want;
    } steps[] = {
        {"EHLO ", job->hostname, "", 250},
        {"MAIL FROM:<", from, ">", 250},
        {"RCPT TO:<", uri->address, ">", 250},
        {"DATA", "", "", 354},
    };
    for (size_t i = 0; ok && i < sizeof(steps) / sizeof(steps[0]); i++) {
        int n =
            snprintf(line, sizeof(line), "%s%s%s\r\n", steps[i].verb, steps[i].arg, steps[i].close);
        step = steps[i].verb;
        ok = n > 0 && (size_t)n < sizeof(line) && tlsrpt_io_send_all(fd, line, (size_t)n) &&
             tlsrpt_io_smtp_reply(fd, steps[i].want, reply, sizeof(reply));
    }
    if (ok) {
        /* base64 lines never start with '.': no dot-stuffing is needed. */
        step = "message";
        ok = tlsrpt_io_send_all(fd, msg, msg_len) && tlsrpt_io_send_all(fd, ".\r\n", 3) &&
             tlsrpt_io_smtp_reply(fd, 250, reply, sizeof(reply));
        tlsrpt_io_send_all(fd, "QUIT\r\n", 6);
    }
    if (!ok) {
        snprintf(why, why_size, "SMTP %s via %.200s: %.80s", step, job->upstream_host, reply);
    }
    free(msg);
    close(fd);
    return ok;
}

/* ---- the submission thread ------------------------------------------------------------------ */

static void tlsrpt_job_free(struct tlsrpt_job *job)
{
    for (size_t i = 0; i < job->n_items; i++) {
        free(job->items[i].json);
    }
    free(job->items);
    free(job->unbound_config);
    free(job->ca_file);
    free(job);
}

static void tlsrpt_io_submit_one(const struct tlsrpt_job *job, struct ub_ctx *ctx,
                                 const struct tlsrpt_item *item)
{
    struct tlsrpt_rua rua;
    enum tlsrpt_rua_result r = tlsrpt_io_rua(ctx, item->domain, &rua);
    if (r != TLSRPT_RUA_OK) {
        log_info(0, "tlsrpt-not-submitted", "domain=%s rua=%s", item->domain,
                 tlsrpt_rua_result_name(r));
        return;
    }
    for (size_t i = 0; i < rua.n_uris; i++) {
        const struct tlsrpt_rua_uri *uri = &rua.uris[i];
        char why[512] = "";
        bool ok = uri->scheme == TLSRPT_RUA_HTTPS
                      ? tlsrpt_io_post(job, ctx, uri, item, why, sizeof(why))
                      : tlsrpt_io_mail(job, ctx, uri, item, why, sizeof(why));
        if (ok) {
            log_info(0, "tlsrpt-submitted", "domain=%s rua=\"%s\" report_id=%s", item->domain,
                     uri->uri, item->report_id);
        } else {
            log_warn(0, "tlsrpt-submit-failed", "domain=%s rua=\"%s\" reason=\"%s\"", item->domain,
                     uri->uri, why);
        }
    }
}

static void *tlsrpt_io_submitter(void *arg)
{
    struct tlsrpt_job *job = arg;
    struct tlsrpt_io *io = job->io;
    struct ub_ctx *ctx = tlsrpt_io_resolver(job);
    if (ctx == NULL) {
        log_warn(0, "tlsrpt-submit-failed", "reason=\"cannot set up the resolver\"");
    }
    for (size_t i = 0; ctx != NULL && i < job->n_items; i++) {
        tlsrpt_io_submit_one(job, ctx, &job->items[i]);
    }
    if (ctx != NULL) {
        ub_ctx_delete(ctx);
    }
    tlsrpt_job_free(job);
    pthread_mutex_lock(&io->mu);
    if (--io->running == 0) {
        pthread_cond_broadcast(&io->idle);
    }
    pthread_mutex_unlock(&io->mu);
    return NULL;
}

static void tlsrpt_io_start_job(struct tlsrpt_io *io, const struct conf *conf,
                                struct tlsrpt_job *job)
{
    job->io = io;
    job->unbound_config =
        conf->recipients.unbound_config != NULL ? strdup(conf->recipients.unbound_config) : NULL;
    job->ca_file =
        strdup(conf->recipients.ca_file != NULL ? conf->recipients.ca_file : CONF_SYSTEM_CA_FILE);
    snprintf(job->upstream_host, sizeof(job->upstream_host), "%s", conf->upstream.host);
    job->upstream_port = conf->upstream.port != 0 ? conf->upstream.port : 25;
    snprintf(job->hostname, sizeof(job->hostname), "%s", conf->hostname);
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&io->mu);
    io->running++;
    pthread_mutex_unlock(&io->mu);
    if (job->ca_file == NULL || pthread_create(&thread, &attr, tlsrpt_io_submitter, job) != 0) {
        log_warn(0, "tlsrpt-submit-failed", "reason=\"cannot start a thread\"");
        pthread_mutex_lock(&io->mu);
        io->running--;
        pthread_mutex_unlock(&io->mu);
        tlsrpt_job_free(job);
    }
    pthread_attr_destroy(&attr);
}

/* ---- the entry points --------------------------------------------------------------------- */

static void tlsrpt_io_handle(struct tlsrpt_io *io, const struct conf *conf,
                             struct tlsrpt_report **reports, size_t n, bool submit)
{
    struct tlsrpt_job *job = calloc(1, sizeof(*job));
    struct tlsrpt_item *items = n > 0 ? calloc(n, sizeof(*items)) : NULL;
    if (job == NULL || (n > 0 && items == NULL)) {
        free(job);
        free(items);
        log_error(0, "out-of-memory", "action=drop-tlsrpt-reports");
        return;
    }
    tlsrpt_io_settings(conf, job->organization, sizeof(job->organization), job->contact,
                       sizeof(job->contact));
    const char *at = strrchr(job->contact, '@');
    char sender[DNSNAME_BUF];
    snprintf(sender, sizeof(sender), "%.*s", at != NULL ? (int)strcspn(at + 1, ">") : 0,
             at != NULL ? at + 1 : "");
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        struct tlsrpt_item *item = &items[m];
        const struct tlsrpt_report *r = reports[i];
        snprintf(item->domain, sizeof(item->domain), "%s", r->policy_domain);
        tlsrpt_io_random_id(item->report_id);
        if (tlsrpt_file_name(item->file_name, sizeof(item->file_name),
                             sender[0] != '\0' ? sender : conf->hostname, r->policy_domain,
                             r->begin, r->end, item->report_id, false) != 0 ||
            tlsrpt_report_json(r, &item->json, &item->json_len, job->organization, job->contact,
                               item->report_id) != 0) {
            log_error(0, "tlsrpt-render-failed", "domain=%s", r->policy_domain);
            continue;
        }
        if (conf->recipients.tlsrpt_directory != NULL) {
            tlsrpt_io_write(conf->recipients.tlsrpt_directory, item);
        }
        m++;
    }
    job->items = items;
    job->n_items = m;
    if (submit && conf->recipients.tlsrpt_submit && m > 0) {
        tlsrpt_io_start_job(io, conf, job);
    } else {
        tlsrpt_job_free(job);
    }
}

void tlsrpt_io_tick(struct tlsrpt_io *io, const struct conf *conf, int64_t now)
{
    struct tlsrpt_report **reports = NULL;
    size_t n = 0;
    if (tlsrpt_take(io->agg, &reports, &n, now) == 0 && n > 0) {
        tlsrpt_io_handle(io, conf, reports, n, true);
    }
    tlsrpt_reports_free(reports, n);
}

void tlsrpt_io_flush(struct tlsrpt_io *io, const struct conf *conf, int64_t now, bool submit)
{
    tlsrpt_io_tick(io, conf, now);
    struct tlsrpt_report **reports = NULL;
    size_t n = 0;
    if (tlsrpt_snapshot(io->agg, &reports, &n, now) == 0 && n > 0) {
        tlsrpt_io_handle(io, conf, reports, n, submit);
    }
    tlsrpt_reports_free(reports, n);
}
