/*
 * selftest: the driver of `--self-test`. Each cell of the table (a policy row and a failure
 * column) gets its own fake upstream, its own worker (proxy/worker.c, started as main starts
 * one: a runtime and a bound listening socket) with fresh learned memories, and one SMTP
 * session from a blocking test client. Cells run in parallel on a few threads; the table is
 * made from what the fakes recorded and what the client was answered.
 */
#include "selftest.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "anvil.h"
#include "learn.h"
#include "log.h"
#include "runtime.h"
#include "selftest_fake.h"
#include "selftest_table.h"
#include "tlsio.h"
#include "worker.h"

/* Cells run at once (each holds three threads: the client, the fake and a worker). */
#define SELFTEST_PARALLEL 32
/* The self-test's tls_handshake, so that the handshake-timeout column takes seconds. */
#define SELFTEST_TLS_HANDSHAKE_MS 1000
/* The other timeouts are cut to this, so that no cell can hang for minutes. */
#define SELFTEST_TIMEOUT_CAP_MS 10000
/* How long the test's sender waits for any reply. */
#define SELFTEST_SENDER_TIMEOUT_S 30
#define SELFTEST_SENDER_NAME "selftest-sender.invalid"

struct selftest_state {
    const char *path;
    const struct conf *base; /* the configuration as loaded: the rows come from it */
    struct ssl_ctx_st *fake_ctx;
    struct selftest_report *report;
    uv_loop_t loop;
    uv_async_t finished; /* the workers' "loop ended" notice; nobody waits for it */
    _Atomic size_t next_job;
    size_t n_jobs;
};

/* ---- the test configuration ----------------------------------------------------------------- */

static void selftest_loopback(struct conf_addr *out, uint16_t port)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->host, sizeof(out->host), "127.0.0.1");
    out->port = port;
    out->numeric = true;
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->sa;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    out->sa_len = sizeof(*sin);
}

static void selftest_cap(uint64_t *ms, uint64_t cap)
{
    if (*ms > cap) {
        *ms = cap;
    }
}

/*
 * selftest_derive turns a freshly loaded configuration into the test's: one loopback
 * listener, forward mode to the fake at |port|, nothing of the client's identity, no
 * leg-1 STARTTLS, no limits, no store, no metrics, short timeouts, and |rule| (NULL for
 * the default row) as the only [upstream_policy] line, an address rule re-pointed at the
 * fake. [upstream_tls] is kept as it is.
 */
static void selftest_derive(struct conf *c, const struct conf_policy *rule, uint16_t port)
{
    c->mode = CONF_MODE_FORWARD;
    selftest_loopback(&c->listen[0], 0);
    c->n_listen = 1;
    selftest_loopback(&c->upstream, port);
    c->workers = 1;
    free(c->user);
    c->user = NULL;
    c->proxy_protocol = CONF_PROXY_PROTOCOL_OFF;
    c->upstream_identity = CONF_IDENTITY_NONE;
    c->front_tls.starttls = CONF_FRONT_STARTTLS_STRIP;
    c->front_tls.require = false;
    c->front_tls.learn_failures = false;
    c->limits.sessions = 0;
    c->limits.session_rate = 0;
    c->limits.message_rate = 0;
    c->store.enabled = false;
    c->recipients.enabled = false; /* the gate would look up the fakes' names in DNS */
    c->metrics_enabled = false;
    selftest_cap(&c->timeouts.tls_handshake_ms, SELFTEST_TLS_HANDSHAKE_MS);
    selftest_cap(&c->timeouts.connect_ms, SELFTEST_TIMEOUT_CAP_MS);
    selftest_cap(&c->timeouts.greeting_ms, SELFTEST_TIMEOUT_CAP_MS);
    selftest_cap(&c->timeouts.command_ms, SELFTEST_TIMEOUT_CAP_MS);
    selftest_cap(&c->timeouts.data_block_ms, SELFTEST_TIMEOUT_CAP_MS);
    selftest_cap(&c->timeouts.data_end_ms, SELFTEST_TIMEOUT_CAP_MS);
    c->n_policy = 0;
    if (rule != NULL) {
        c->policy[0] = *rule;
        if (rule->kind == CONF_PATTERN_CIDR) {
            c->policy[0].cidr = (struct conf_cidr){.family = AF_INET, .prefix_len = 32};
            memcpy(c->policy[0].cidr.addr, (const uint8_t[]){127, 0, 0, 1}, 4);
        }
        c->n_policy = 1;
    }
}

/* selftest_back_tls_used: as main.c decides whether to build the leg-2 context. */
static bool selftest_back_tls_used(const struct conf *c)
{
    bool used = c->back_tls.starttls != CONF_BACK_STARTTLS_OFF;
    for (size_t i = 0; i < c->n_policy; i++) {
        used |= c->policy[i].starttls != CONF_BACK_STARTTLS_OFF;
    }
    return used;
}

/*
 * selftest_runtime loads |path| again, derives the test configuration for |row| and the
 * fake at |port|, checks that the proxy's own policy lookup gives the row's policy for
 * the fake's greeting, and builds the runtime (leg-2 context as main builds it). Returns
 * it, or NULL with the reason in |err|.
 */
static struct runtime *selftest_runtime(char *err, size_t err_len, const struct selftest_state *st,
                                        const struct selftest_row *row,
                                        const struct conf_policy *rule, uint16_t port)
{
    struct conf_errors errors = {0};
    struct conf *c = conf_load(&errors, st->path);
    conf_errors_cleanup(&errors);
    if (c == NULL) {
        snprintf(err, err_len, "%s no longer loads", st->path);
        return NULL;
    }
    selftest_derive(c, rule, port);
    enum conf_back_starttls policy = c->back_tls.starttls;
    const char *names[] = {NULL, row->greeting};
    (void)conf_policy_lookup(&policy, c, names, 2, (const struct sockaddr *)&c->upstream.sa);
    if (policy != row->policy) {
        snprintf(err, err_len, "the fake's greeting %.64s gets policy %s", row->greeting,
                 selftest_policy_name(policy));
        conf_free(c);
        return NULL;
    }
    struct tlsio_ctx *back = NULL;
    if (selftest_back_tls_used(c)) {
        char why[TLSIO_ERR_MAX];
        back = tlsio_ctx_new_back(why, sizeof(why), c);
        if (back == NULL) {
            snprintf(err, err_len, "[upstream_tls]: %.*s", (int)(err_len / 2), why);
            conf_free(c);
            return NULL;
        }
    }
    struct runtime *r = runtime_new(c, NULL, back);
    if (r == NULL) {
        snprintf(err, err_len, "out of memory");
        tlsio_ctx_free(back);
        conf_free(c);
    }
    return r;
}

/* selftest_listen binds 127.0.0.1 on an ephemeral port for the proxy. Returns the socket
 * with the port in |*out_port|, or -errno. */
static int selftest_listen(uint16_t *out_port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return -errno;
    }
    if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 || listen(fd, 16) == -1 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) == -1) {
        int e = errno;
        close(fd);
        return -e;
    }
    *out_port = ntohs(sin.sin_port);
    return fd;
}

/* ---- the test's sender (the sending MTA)
 * --------------------------------------------------------------------- */

struct selftest_reader {
    int fd;
    char in[8192];
    size_t in_len;
};

/*
 * selftest_read_reply reads one whole reply (every line of a multi-line one) and puts its
 * first line in |first|. Returns its code, or -1 on a timeout, a close or garbage.
 */
static int selftest_read_reply(struct selftest_reader *r, char *first, size_t first_size)
{
    bool have_first = false;
    for (;;) {
        char *lf = memchr(r->in, '\n', r->in_len);
        if (lf == NULL) {
            if (r->in_len == sizeof(r->in)) {
                return -1;
            }
            ssize_t n = recv(r->fd, r->in + r->in_len, sizeof(r->in) - r->in_len, 0);
            if (n == -1 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                return -1;
            }
            r->in_len += (size_t)n;
            continue;
        }
        size_t len = (size_t)(lf - r->in);
        size_t used = len + 1;
        if (len > 0 && r->in[len - 1] == '\r') {
            len--;
        }
        if (len < 3 || r->in[0] < '2' || r->in[0] > '5') {
            return -1;
        }
        if (!have_first) {
            snprintf(first, first_size, "%.*s", (int)len, r->in);
            have_first = true;
        }
        bool last = len == 3 || r->in[3] == ' ';
        int code = (r->in[0] - '0') * 100 + (r->in[1] - '0') * 10 + (r->in[2] - '0');
        memmove(r->in, r->in + used, r->in_len - used);
        r->in_len -= used;
        if (last) {
            return code;
        }
    }
}

static bool selftest_send(int fd, const char *text)
{
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = send(fd, text, len, MSG_NOSIGNAL);
        if (n == -1 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        text += n;
        len -= (size_t)n;
    }
    return true;
}

/*
 * selftest_send_message sends one message through the proxy at |port|: EHLO, MAIL, RCPT, DATA,
 * the message, QUIT. It stops at the first reply that is not the one expected and keeps
 * it in out->reply; out->delivered is set when the end of data got 250.
 */
static void selftest_send_message(struct selftest_sender *out, uint16_t port, const char *domain,
                                  const char *tag)
{
    struct selftest_reader r = {.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    struct sockaddr_in sin = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = SELFTEST_SENDER_TIMEOUT_S};
    if (r.fd == -1 || setsockopt(r.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == -1 ||
        setsockopt(r.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == -1 ||
        connect(r.fd, (struct sockaddr *)&sin, sizeof(sin)) == -1) {
        snprintf(out->error, sizeof(out->error), "cannot connect to the proxy: %s",
                 strerror(errno));
        if (r.fd != -1) {
            close(r.fd);
        }
        return;
    }
    char rcpt[CONF_HOST_MAX + 32];
    snprintf(rcpt, sizeof(rcpt), "RCPT TO:<postmaster@%s>\r\n", domain);
    char message[512];
    snprintf(message, sizeof(message),
             "From: <selftest@selftest.invalid>\r\nTo: <postmaster@%s>\r\n"
             "Subject: smtp-tls-proxy self-test\r\nX-Smtp-Tls-Proxy-Self-Test: %s\r\n\r\n"
             "One message through each policy and failure.\r\n.\r\n",
             domain, tag);
    static const char *const what[] = {"the greeting", "EHLO", "MAIL",
                                       "RCPT",         "DATA", "the end of data"};
    const char *commands[] = {NULL,
                              "EHLO " SELFTEST_SENDER_NAME "\r\n",
                              "MAIL FROM:<selftest@selftest.invalid>\r\n",
                              rcpt,
                              "DATA\r\n",
                              message};
    static const int expect[] = {220, 250, 250, 250, 354, 250};
    char first[SELFTEST_TEXT_MAX];
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        if (commands[i] != NULL && !selftest_send(r.fd, commands[i])) {
            snprintf(out->error, sizeof(out->error), "cannot send %s: %s", what[i],
                     strerror(errno));
            break;
        }
        int code = selftest_read_reply(&r, first, sizeof(first));
        if (code == -1) {
            snprintf(out->error, sizeof(out->error), "no reply to %s", what[i]);
            break;
        }
        if (code != expect[i]) {
            snprintf(out->reply, sizeof(out->reply), "%s", first);
            break;
        }
        if (i + 1 == sizeof(expect) / sizeof(expect[0])) {
            out->delivered = true;
        }
    }
    if (selftest_send(r.fd, "QUIT\r\n")) {
        (void)selftest_read_reply(&r, first, sizeof(first));
    }
    close(r.fd);
}

/* ---- one cell ---------------------------------------------------------------------------- */

static void selftest_cell(struct selftest_state *st, size_t job)
{
    struct selftest_row *row = &st->report->rows[job / SELFTEST_N_FAILURES];
    enum selftest_failure failure = (enum selftest_failure)(job % SELFTEST_N_FAILURES);
    struct selftest_cell *cell = &row->cells[failure];
    const struct conf_policy *rule =
        row->is_default ? NULL : &st->base->policy[job / SELFTEST_N_FAILURES];
    char *err = cell->sender.error;
    size_t err_len = sizeof(cell->sender.error);
    struct selftest_fake *fake =
        selftest_fake_start(err, err_len, st->fake_ctx, failure, row->greeting);
    if (fake == NULL) {
        return;
    }
    struct worker_shared shared = {0};
    struct anvil_config limits = {.window_ms = 60000, .ipv6_prefix = 64, .max_clients = 16};
    shared.front_learned = learn_new(16, 60000);
    shared.back_memory = learn_new(16, 60000);
    shared.anvil = anvil_new(&limits);
    struct worker *w = calloc(1, sizeof(*w));
    uint16_t port = 0;
    int fd = -1;
    struct runtime *rt = NULL;
    if (shared.front_learned == NULL || shared.back_memory == NULL || shared.anvil == NULL ||
        w == NULL) {
        snprintf(err, err_len, "out of memory");
    } else if ((rt = selftest_runtime(err, err_len, st, row, rule, selftest_fake_port(fake))) ==
               NULL) {
        /* err says why */
    } else if ((fd = selftest_listen(&port)) < 0) {
        snprintf(err, err_len, "cannot listen on 127.0.0.1: %s", strerror(-fd));
        runtime_unref(rt);
    } else {
        int rc = worker_init(w, (unsigned)job, rt, &shared, &fd, &st->finished);
        if (rc != 0) {
            snprintf(err, err_len, "cannot start a worker: %s", uv_strerror(rc));
            runtime_unref(rt);
        } else if ((rc = worker_start(w)) != 0) {
            /* Its loop never runs, so it cannot be stopped: leave it to the exit. */
            snprintf(err, err_len, "cannot start a worker thread: %s", uv_strerror(rc));
            w = NULL;
        } else {
            char tag[64];
            snprintf(tag, sizeof(tag), "row %zu, %s", job / SELFTEST_N_FAILURES + 1,
                     selftest_failure_name(failure));
            selftest_send_message(&cell->sender, port, row->greeting, tag);
            worker_stop(w, true);
            worker_join(w);
        }
    }
    free(w);
    /* After the worker: its sessions have closed every connection to the fake. */
    selftest_fake_stop(fake, cell);
    learn_free(shared.front_learned);
    learn_free(shared.back_memory);
    anvil_free(shared.anvil);
}

static void *selftest_pool_main(void *arg)
{
    struct selftest_state *st = arg;
    for (;;) {
        size_t job = atomic_fetch_add(&st->next_job, 1);
        if (job >= st->n_jobs) {
            return NULL;
        }
        if (st->report->rows[job / SELFTEST_N_FAILURES].untested[0] == '\0') {
            selftest_cell(st, job);
        }
    }
}

/* ---- the run ------------------------------------------------------------------------------ */

static void selftest_duration(char *out, size_t out_size, uint64_t ms)
{
    static const struct {
        uint64_t ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (ms >= units[i].ms && ms % units[i].ms == 0) {
            snprintf(out, out_size, "%llu%s", (unsigned long long)(ms / units[i].ms),
                     units[i].unit);
            return;
        }
    }
    snprintf(out, out_size, "%llums", (unsigned long long)ms);
}

__attribute__((format(printf, 2, 3))) static void selftest_note(struct selftest_report *r,
                                                                const char *fmt, ...)
{
    if (r->n_notes == SELFTEST_NOTES_MAX) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->notes[r->n_notes++], SELFTEST_NOTE_MAX, fmt, ap);
    va_end(ap);
}

/* selftest_notes says how the test differs from production and how to read the table. */
static void selftest_notes(struct selftest_report *r, const struct conf *c)
{
    static const char *const steps[] = {
        [CONF_FALLBACK_NO_CLIENT_CERT] = "no-client-cert",
        [CONF_FALLBACK_TLS12] = "tls12",
        [CONF_FALLBACK_CLEARTEXT] = "cleartext",
    };
    char list[64] = "";
    for (size_t i = 0; i < c->back_tls.n_fallback_steps; i++) {
        size_t len = strlen(list);
        snprintf(list + len, sizeof(list) - len, "%s%s", i > 0 ? ", " : "",
                 steps[c->back_tls.fallback_steps[i]]);
    }
    selftest_note(r,
                  "[upstream_tls] as configured: starttls = %s, fallback = %s, fallback_steps = "
                  "%s, client certificate %s, verify = %s",
                  selftest_policy_name(c->back_tls.starttls), c->back_tls.fallback ? "on" : "off",
                  list, c->back_tls.certificate != NULL ? c->back_tls.certificate : "none",
                  c->back_tls.verify == CONF_VERIFY_CA ? "ca" : "none");
    char have[16];
    selftest_duration(have, sizeof(have), c->timeouts.tls_handshake_ms);
    if (c->timeouts.tls_handshake_ms > SELFTEST_TLS_HANDSHAKE_MS) {
        selftest_note(r,
                      "tls_handshake shortened from %s to 1s for the test; other timeouts "
                      "above 10s are cut to 10s",
                      have);
    } else {
        selftest_note(r, "tls_handshake %s as configured; other timeouts above 10s are cut to 10s",
                      have);
    }
    if (c->back_tls.certificate == NULL) {
        selftest_note(r, "no client certificate is configured: the client-cert-rejected fake "
                         "sees none to reject and behaves as tls-ok");
    }
    if (c->back_tls.verify == CONF_VERIFY_CA) {
        selftest_note(r, "verify = ca: the fakes' certificate is self-signed, not from ca_file, "
                         "so require rows fail verification and may rows go on unverified");
    }
    if (c->mode == CONF_MODE_TRANSPARENT) {
        selftest_note(r, "mode = transparent: the test relays to the fakes as forward mode does");
    }
    selftest_note(r, "each row runs with its rule as the only [upstream_policy] line (an address "
                     "rule re-pointed at 127.0.0.1), the fake greeting with a name the rule "
                     "matches; the default row has no rule");
    selftest_note(r, "the proxy listens on 127.0.0.1 and relays to fakes on 127.0.0.1; "
                     "upstream_identity, proxy_protocol, [store], [metrics], [limits] and "
                     "STARTTLS towards the test client are off; every cell starts with empty "
                     "learned memories of its own");
}

/* selftest_rows makes one row per [upstream_policy] pattern, in file order, and the
 * default row last. */
static int selftest_rows(struct selftest_report *r, const struct conf *c)
{
    r->n_rows = c->n_policy + 1;
    r->rows = calloc(r->n_rows, sizeof(*r->rows));
    if (r->rows == NULL) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < c->n_policy; i++) {
        struct selftest_row *row = &r->rows[i];
        row->policy = c->policy[i].starttls;
        selftest_pattern_text(row->pattern, sizeof(row->pattern), &c->policy[i]);
        if (!selftest_greeting_for(row->greeting, sizeof(row->greeting), &c->policy[i])) {
            snprintf(row->untested, sizeof(row->untested), "no host name fits the pattern");
        }
    }
    struct selftest_row *def = &r->rows[c->n_policy];
    def->is_default = true;
    def->policy = c->back_tls.starttls;
    selftest_greeting_for(def->greeting, sizeof(def->greeting), NULL);
    return 0;
}

/* selftest_execute runs every cell, SELFTEST_PARALLEL at a time. */
static int selftest_execute(struct selftest_state *st)
{
    pthread_t threads[SELFTEST_PARALLEL];
    size_t n_threads = st->n_jobs < SELFTEST_PARALLEL ? st->n_jobs : SELFTEST_PARALLEL;
    size_t started = 0;
    int rc = 0;
    while (started < n_threads &&
           (rc = pthread_create(&threads[started], NULL, selftest_pool_main, st)) == 0) {
        started++;
    }
    if (started == 0) {
        return -rc;
    }
    for (size_t i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    return 0;
}

static void selftest_on_finished(uv_async_t *async)
{
    (void)async;
}

static int selftest_output(struct selftest_report *r, bool json)
{
    if (json) {
        selftest_print_json(stdout, r);
    } else {
        selftest_print_table(stdout, r);
    }
    fflush(stdout);
    return selftest_exit_status(r);
}

int selftest_run(struct conf *conf, const char *path, bool json)
{
    static struct selftest_report report;
    static struct selftest_state st;
    report.path = path;
    if (conf == NULL) {
        snprintf(report.setup_error, sizeof(report.setup_error), "%s has errors", path);
        return selftest_output(&report, json);
    }
    /* The proxy's own log is quiet (the table is the output), unless the file asks for
     * debug: then every session's steps are there to explain a cell. */
    log_setup(conf->log_level == CONF_LOG_DEBUG ? CONF_LOG_DEBUG : CONF_LOG_ERROR,
              conf->log_format);
    signal(SIGPIPE, SIG_IGN);
    report.has_client_cert = conf->back_tls.certificate != NULL;
    char why[TLSIO_ERR_MAX];
    struct tlsio_ctx *check =
        selftest_back_tls_used(conf) ? tlsio_ctx_new_back(why, sizeof(why), conf) : NULL;
    if (selftest_back_tls_used(conf) && check == NULL) {
        snprintf(report.setup_error, sizeof(report.setup_error), "%.100s: [upstream_tls]: %.180s",
                 path, why);
    }
    tlsio_ctx_free(check);
    st = (struct selftest_state){.path = path, .base = conf, .report = &report};
    if (report.setup_error[0] == '\0') {
        st.fake_ctx = selftest_fake_ctx_new(report.setup_error, sizeof(report.setup_error));
    }
    if (report.setup_error[0] == '\0' && selftest_rows(&report, conf) != 0) {
        snprintf(report.setup_error, sizeof(report.setup_error), "out of memory");
    }
    if (report.setup_error[0] == '\0' &&
        (uv_loop_init(&st.loop) != 0 ||
         uv_async_init(&st.loop, &st.finished, selftest_on_finished) != 0)) {
        snprintf(report.setup_error, sizeof(report.setup_error), "cannot make an event loop");
    }
    if (report.setup_error[0] == '\0') {
        selftest_notes(&report, conf);
        st.n_jobs = report.n_rows * SELFTEST_N_FAILURES;
        uint64_t start = uv_hrtime();
        int rc = selftest_execute(&st);
        if (rc != 0) {
            snprintf(report.setup_error, sizeof(report.setup_error), "cannot start threads: %s",
                     strerror(-rc));
        }
        report.seconds = (double)(uv_hrtime() - start) / 1e9;
        uv_close((uv_handle_t *)&st.finished, NULL);
        uv_run(&st.loop, UV_RUN_DEFAULT);
        (void)uv_loop_close(&st.loop);
    }
    int status = selftest_output(&report, json);
    selftest_fake_ctx_free(st.fake_ctx);
    free(report.rows);
    conf_free(conf);
    return status;
}
