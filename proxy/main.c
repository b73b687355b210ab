/*
 * main: command line, configuration, listening sockets, privileges, worker threads and
 * signals. The only place that may exit the process, and only during startup.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>
#include <openssl/base.h>
#include <openssl/crypto.h>

#include "anvil.h"
#include "sts_cache.h"
#include "tlsrpt.h"
#include "tlsrpt_io.h"
#include "conf.h"
#include "health.h"
#include "learn.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "runtime.h"
#include "selftest.h"
#include "tlsio.h"
#include "worker.h"

#define MAIN_WORKERS_MAX 256

static void main_usage(FILE *out)
{
    fprintf(out, "usage: smtp-tls-proxy [-c FILE] [-t] [--health] [--self-test [--json]] [-V]\n"
                 "                      [-h]\n"
                 "  -c FILE  configuration file (default " CONF_DEFAULT_PATH ")\n"
                 "  -t       check the configuration, print every error, and exit\n"
                 "  --health open an SMTP session to the running proxy's first listen\n"
                 "           address; exit 0 if it answers (a container HEALTHCHECK)\n"
                 "  --self-test [--json]\n"
                 "           run the configuration against fake upstreams on loopback, one\n"
                 "           message per [upstream_policy] pattern and TLS failure; print\n"
                 "           what each got (--json: as JSON); exit 1 if a require\n"
                 "           destination got cleartext, 2 if the test could not run\n"
                 "  -V       print the version of the proxy, libuv and BoringSSL, and exit\n"
                 "  -h       print this help and exit\n");
}

static void main_version(void)
{
    printf("smtp-tls-proxy %s\n", PROXY_VERSION);
    printf("libuv %s\n", uv_version_string());
    /* Asked at run time, so it names the library actually loaded. */
    printf("TLS library: %s (BoringSSL API version %d)\n", OpenSSL_version(OPENSSL_VERSION),
           BORINGSSL_API_VERSION);
}

static struct conf *main_load_conf(const char *path)
{
    struct conf_errors errors = {0};
    struct conf *conf = conf_load(&errors, path);
    for (size_t i = 0; i < errors.n_lines; i++) {
        fprintf(stderr, "%s\n", errors.lines[i]);
    }
    conf_errors_cleanup(&errors);
    return conf;
}

/* main_back_tls_used tells whether leg 2 may ever use STARTTLS under this config. */
static bool main_back_tls_used(const struct conf *conf)
{
    if (conf->back_tls.starttls != CONF_BACK_STARTTLS_OFF) {
        return true;
    }
    for (size_t i = 0; i < conf->n_policy; i++) {
        if (conf->policy[i].starttls != CONF_BACK_STARTTLS_OFF) {
            return true;
        }
    }
    return false;
}

/*
 * main_runtime builds a runtime from |conf| (taken over, also on failure): the leg-1
 * context (certificates, or a self-signed one: *out_self_signed) and the leg-2 context.
 * On failure it returns NULL with the reason in |err|, naming the section.
 */
static struct runtime *main_runtime(char *err, size_t err_len, bool *out_self_signed,
                                    struct conf *conf)
{
    struct tlsio_ctx *front = NULL;
    struct tlsio_ctx *back = NULL;
    char why[TLSIO_ERR_MAX];
    *out_self_signed = false;
    if (conf->front_tls.starttls == CONF_FRONT_STARTTLS_OFFER) {
        front = tlsio_ctx_new_front(why, sizeof(why), out_self_signed, conf);
        if (front == NULL) {
            snprintf(err, err_len, "%s: [client_tls]: %s", conf->path, why);
            conf_free(conf);
            return NULL;
        }
    }
    if (main_back_tls_used(conf)) {
        back = tlsio_ctx_new_back(why, sizeof(why), conf);
        if (back == NULL) {
            snprintf(err, err_len, "%s: [upstream_tls]: %s", conf->path, why);
            tlsio_ctx_free(front);
            conf_free(conf);
            return NULL;
        }
    }
    struct tlsio_ctx *webpki = NULL;
    if (conf->recipients.enabled && conf->recipients.mta_sts) {
        const char *roots =
            conf->recipients.ca_file != NULL ? conf->recipients.ca_file : CONF_SYSTEM_CA_FILE;
        webpki = tlsio_ctx_new_webpki(why, sizeof(why), roots);
        if (webpki == NULL) {
            snprintf(err, err_len, "%s: [recipient_policy]: %s", conf->path, why);
            tlsio_ctx_free(front);
            tlsio_ctx_free(back);
            conf_free(conf);
            return NULL;
        }
    }
    struct runtime *r = runtime_new(conf, front, back);
    if (r == NULL) {
        snprintf(err, err_len, "out of memory");
        tlsio_ctx_free(front);
        tlsio_ctx_free(back);
        tlsio_ctx_free(webpki);
        conf_free(conf);
        return NULL;
    }
    r->webpki_ctx = webpki;
    return r;
}

static void main_log_self_signed(const struct conf *conf, bool self_signed)
{
    if (self_signed) {
        log_warn(0, "front-tls-self-signed",
                 "hostname=%s note=\"no certificate configured; a self-signed one was made\"",
                 conf->hostname);
    }
}

/* main_bind_listeners binds, for each worker, the addresses of |conf| that |old| (NULL at
 * startup) does not listen on; fds[w][i] is -1 for the others. On failure every socket it
 * bound is closed and the error is in |err|. */
static int main_bind_listeners(int (*fds)[CONF_LISTEN_MAX], char *err, size_t err_len,
                               unsigned n_workers, const struct conf *conf, const struct conf *old)
{
    for (size_t i = 0; i < conf->n_listen; i++) {
        bool kept = false;
        for (size_t j = 0; old != NULL && j < old->n_listen && !kept; j++) {
            kept = listener_same_addr(&old->listen[j], &conf->listen[i]);
        }
        for (unsigned w = 0; w < n_workers; w++) {
            fds[w][i] =
                kept ? -1 : listener_bind(&conf->listen[i], conf->mode == CONF_MODE_TRANSPARENT);
            if (!kept && fds[w][i] < 0) {
                int e = -fds[w][i];
                const char *hint = "";
                if (e == EPERM && conf->mode == CONF_MODE_TRANSPARENT) {
                    hint = " (transparent mode needs CAP_NET_ADMIN for IP_TRANSPARENT)";
                } else if (e == EACCES && conf->listen[i].port < 1024) {
                    hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)";
                }
                snprintf(err, err_len, "%s: listen: cannot listen on %s:%u: %s%s", conf->path,
                         conf->listen[i].host, (unsigned)conf->listen[i].port, strerror(e), hint);
                fds[w][i] = -1;
                for (unsigned x = 0; x < n_workers; x++) {
                    for (size_t k = 0; k <= i; k++) {
                        if (fds[x][k] >= 0) {
                            close(fds[x][k]);
                            fds[x][k] = -1;
                        }
                    }
                }
                return -1;
            }
        }
    }
    return 0;
}

static int main_drop_privileges(const struct conf *conf)
{
    if (conf->user == NULL) {
        return 0;
    }
    struct passwd *pw = getpwnam(conf->user);
    if (pw == NULL) {
        log_fatal("%s: user: no such user \"%s\"", conf->path, conf->user);
        return -1;
    }
    if (getuid() != 0 && getuid() == pw->pw_uid) {
        return 0;
    }
    if (initgroups(pw->pw_name, pw->pw_gid) == -1 || setgid(pw->pw_gid) == -1 ||
        setuid(pw->pw_uid) == -1) {
        log_fatal("%s: user: cannot switch to \"%s\": %s", conf->path, conf->user, strerror(errno));
        return -1;
    }
    return 0;
}

static bool main_workers_finished(struct worker *workers, unsigned n_workers)
{
    for (unsigned w = 0; w < n_workers; w++) {
        if (!workers[w].finished) {
            return false;
        }
    }
    return true;
}

static void main_log_listening(const struct conf *conf, unsigned n_workers)
{
    for (size_t i = 0; i < conf->n_listen; i++) {
        log_info(0, "listening", "address=%s%s%s:%u workers=%u",
                 conf->listen[i].sa.ss_family == AF_INET6 ? "[" : "", conf->listen[i].host,
                 conf->listen[i].sa.ss_family == AF_INET6 ? "]" : "",
                 (unsigned)conf->listen[i].port, n_workers);
    }
}

/* main_anvil_config takes the [limits] section for the per-client counters. */
static struct anvil_config main_anvil_config(const struct conf *conf)
{
    return (struct anvil_config){
        .max_sessions = conf->limits.sessions,
        .max_session_rate = conf->limits.session_rate,
        .max_message_rate = conf->limits.message_rate,
        .window_ms = conf->limits.window_ms,
        .ipv6_prefix = conf->limits.ipv6_prefix,
        .max_clients = conf->limits.max_clients,
    };
}

/* main_log_restart_needed names the settings a reload cannot change (they take effect at
 * restart); the rest of the new configuration applies at once. */
static void main_log_restart_needed(const struct conf *conf, const struct conf *old)
{
    char restart[128] = "";
    if (conf->workers != old->workers) {
        strcat(restart, " workers");
    }
    if ((conf->user == NULL) != (old->user == NULL) ||
        (conf->user != NULL && strcmp(conf->user, old->user) != 0)) {
        strcat(restart, " user");
    }
    if (conf->metrics_enabled != old->metrics_enabled ||
        (conf->metrics_enabled &&
         !listener_same_addr(&conf->metrics_listen, &old->metrics_listen))) {
        strcat(restart, " [metrics]listen");
    }
    if (conf->recipients.enabled != old->recipients.enabled ||
        conf->recipients.dns_timeout_ms != old->recipients.dns_timeout_ms ||
        (conf->recipients.unbound_config == NULL) != (old->recipients.unbound_config == NULL) ||
        (conf->recipients.unbound_config != NULL &&
         strcmp(conf->recipients.unbound_config, old->recipients.unbound_config) != 0)) {
        strcat(restart, " [recipient_policy]");
    }
    if (conf->store.enabled != old->store.enabled ||
        conf->store.timeout_ms != old->store.timeout_ms ||
        strcmp(conf->store.prefix, old->store.prefix) != 0 ||
        memcmp(&conf->store.redis, &old->store.redis, sizeof(conf->store.redis)) != 0) {
        strcat(restart, " [store]");
    }
    if (restart[0] != '\0') {
        log_warn(0, "reload-restart-needed", "keys=\"%s\" note=\"these take effect at restart\"",
                 restart + 1);
    }
}

/*
 * main_reload re-reads the configuration file (SIGHUP). A valid one applies to new
 * sessions: listeners added and removed, upstream, TLS settings and certificates,
 * policies, timeouts, logging. Open sessions finish under the old one. An invalid one is
 * logged, error by error, and changes nothing.
 */
static void main_reload(struct runtime **current, struct worker *workers, unsigned n_workers,
                        struct worker_shared *shared, const char *path)
{
    static int fds[MAIN_WORKERS_MAX][CONF_LISTEN_MAX];
    const struct conf *old = (*current)->conf;
    log_info(0, "reloading", "file=%s", path);
    struct conf_errors errors = {0};
    struct conf *conf = conf_load(&errors, path);
    for (size_t i = 0; i < errors.n_lines; i++) {
        char text[512];
        log_error(0, "config-error", "error=\"%s\"",
                  log_escape(text, sizeof(text), errors.lines[i], strlen(errors.lines[i]), 400));
    }
    conf_errors_cleanup(&errors);
    char err[TLSIO_ERR_MAX + 256];
    bool front_was = old->front_tls.starttls == CONF_FRONT_STARTTLS_OFFER;
    if (conf != NULL && conf->mode != old->mode) {
        /* The listening sockets differ (IP_TRANSPARENT): only a restart can switch. */
        log_error(0, "config-error", "error=\"%s: mode: changing it needs a restart\"", path);
        conf_free(conf);
        conf = NULL;
    }
    if (conf == NULL) {
        log_error(0, "reload-failed", "file=%s action=kept-old-config", path);
        if (front_was) {
            /* The certificates in force are those of the old configuration. */
            log_error(0, "front-tls-reload-failed",
                      "error=\"invalid configuration\" action=kept-old");
        }
        metrics_inc(METRICS_RELOADS_FAILED);
        return;
    }
    main_log_restart_needed(conf, old);
    bool self_signed;
    struct runtime *fresh = main_runtime(err, sizeof(err), &self_signed, conf);
    if (fresh == NULL) {
        char text[sizeof(err)];
        log_error(0, front_was ? "front-tls-reload-failed" : "reload-failed",
                  "error=\"%s\" action=kept-old-config",
                  log_escape(text, sizeof(text), err, strlen(err), sizeof(text) / 4));
        metrics_inc(METRICS_RELOADS_FAILED);
        return;
    }
    if (main_bind_listeners(fds, err, sizeof(err), n_workers, fresh->conf, old) != 0) {
        log_error(0, "reload-failed", "error=\"%s\" action=kept-old-config", err);
        runtime_unref(fresh);
        metrics_inc(METRICS_RELOADS_FAILED);
        return;
    }
    const struct conf *c = fresh->conf;
    log_setup(c->log_level, c->log_format);
    main_log_self_signed(c, self_signed);
    learn_configure(shared->front_learned, c->front_tls.learn_max_entries,
                    c->front_tls.learn_ttl_ms);
    learn_configure(shared->back_memory, c->back_tls.remember_max_entries,
                    c->back_tls.remember_failures_ms);
    struct anvil_config limits = main_anvil_config(c);
    anvil_configure(shared->anvil, &limits);
    sts_cache_configure(shared->sts_cache, c->recipients.cache_entries);
    for (unsigned w = 0; w < n_workers; w++) {
        /* One reload at a time: the next one is computed against this one's listeners. */
        if (worker_reload(&workers[w], runtime_ref(fresh), fds[w])) {
            worker_wait_reloaded(&workers[w]);
        }
    }
    runtime_unref(*current);
    *current = fresh;
    main_log_listening(c, n_workers);
    metrics_inc(METRICS_RELOADS_OK);
    log_info(0, "reloaded", "file=%s upstream=%s:%u", path, c->upstream.host,
             (unsigned)c->upstream.port);
    if (c->front_tls.starttls == CONF_FRONT_STARTTLS_OFFER) {
        log_info(0, "front-tls-reloaded", "certificates=%zu self_signed=%s",
                 c->front_tls.n_certificate, self_signed ? "yes" : "no");
    }
}

/* The main thread's loop: signals, and the workers telling that their loops have ended. */
struct main_state {
    uv_loop_t loop;
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_signal_t sig_hup;
    uv_signal_t sig_usr1;     /* write the TLS-RPT reports so far */
    uv_timer_t tlsrpt_timer;  /* writes each day's TLS-RPT reports once the day is over */
    struct tlsrpt_io *tlsrpt; /* NULL when the gate is off */
    uv_async_t finished;      /* a worker's loop has ended */
    struct worker *workers;
    unsigned n_workers;
    struct worker_shared *shared;
    struct runtime *runtime; /* the configuration in force (a reference) */
    const char *path;
    bool draining;
};

/* main_check_finished ends the main loop once every worker has drained. */
static void main_check_finished(struct main_state *m)
{
    if (!m->draining || !main_workers_finished(m->workers, m->n_workers) ||
        uv_is_closing((uv_handle_t *)&m->finished)) {
        return;
    }
    uv_close((uv_handle_t *)&m->sig_term, NULL);
    uv_close((uv_handle_t *)&m->sig_int, NULL);
    uv_close((uv_handle_t *)&m->sig_hup, NULL);
    uv_close((uv_handle_t *)&m->sig_usr1, NULL);
    uv_close((uv_handle_t *)&m->tlsrpt_timer, NULL);
    uv_close((uv_handle_t *)&m->finished, NULL);
}

static void main_on_finished(uv_async_t *async)
{
    main_check_finished(async->data);
}

/* SIGHUP reloads; SIGTERM/SIGINT: the first drains, another one during the drain stops at
 * once. */
static void main_on_signal(uv_signal_t *handle, int signum)
{
    struct main_state *m = handle->data;
    if (signum == SIGUSR1) {
        if (m->tlsrpt != NULL) {
            tlsrpt_io_flush(m->tlsrpt, m->runtime->conf, (int64_t)time(NULL), true);
        }
        return;
    }
    if (signum == SIGHUP) {
        if (!m->draining) {
            main_reload(&m->runtime, m->workers, m->n_workers, m->shared, m->path);
        }
        return;
    }
    log_info(0, m->draining ? "stopping" : "draining", "signal=%s drain_timeout_ms=%llu",
             signum == SIGTERM ? "TERM" : "INT",
             (unsigned long long)m->runtime->conf->drain_timeout_ms);
    for (unsigned w = 0; w < m->n_workers; w++) {
        worker_stop(&m->workers[w], m->draining);
    }
    m->draining = true;
    main_check_finished(m);
}

/* The command line. */
struct main_options {
    const char *path;
    bool test_only;
    bool health;
    bool self_test;
    bool json; /* --self-test writes JSON */
};

/* main_parse_args reads the command line. Returns -1 to go on, else the exit status. */
static int main_parse_args(struct main_options *out, int argc, char **argv)
{
    static const struct option long_options[] = {
        {"health", no_argument, NULL, 'H'},
        {"self-test", no_argument, NULL, 'S'},
        {"json", no_argument, NULL, 'J'},
        {NULL, 0, NULL, 0},
    };
    *out = (struct main_options){.path = CONF_DEFAULT_PATH};
    int opt;
    while ((opt = getopt_long(argc, argv, "c:tVh", long_options, NULL)) != -1) {
        switch (opt) {
        case 'H':
            out->health = true;
            break;
        case 'S':
            out->self_test = true;
            break;
        case 'J':
            out->json = true;
            break;
        case 'c':
            out->path = optarg;
            break;
        case 't':
            out->test_only = true;
            break;
        case 'V':
            main_version();
            return 0;
        case 'h':
            main_usage(stdout);
            return 0;
        default:
            main_usage(stderr);
            return 2;
        }
    }
    if (optind != argc || (out->json && !out->self_test)) {
        main_usage(stderr);
        return 2;
    }
    return -1;
}

/* main_health runs --health with |conf| (taken over; NULL after a config error). */
static int main_health(struct conf *conf)
{
    char msg[HEALTH_MSG_MAX];
    int rc = -1;
    if (conf != NULL) {
        rc = health_probe(conf, msg, sizeof(msg));
    } else {
        snprintf(msg, sizeof(msg), "configuration error (see above)");
    }
    printf("%s: %s\n", rc == 0 ? "healthy" : "unhealthy", msg);
    conf_free(conf);
    return rc == 0 ? 0 : 1;
}

/* main_bind_all binds every listen address for each worker, and the metrics address.
 * Returns 0, or -1 after logging. */
static int main_bind_all(int (*fds)[CONF_LISTEN_MAX], int *out_metrics_fd, const struct conf *conf,
                         unsigned n_workers)
{
    char err[256 + 2 * CONF_HOST_MAX];
    if (main_bind_listeners(fds, err, sizeof(err), n_workers, conf, NULL) != 0) {
        log_fatal("%s", err);
        return -1;
    }
    *out_metrics_fd = -1;
    if (conf->metrics_enabled) {
        *out_metrics_fd = listener_bind(&conf->metrics_listen, false);
        if (*out_metrics_fd < 0) {
            log_fatal("%s: listen: cannot listen on %s:%u for metrics: %s", conf->path,
                      conf->metrics_listen.host, (unsigned)conf->metrics_listen.port,
                      strerror(-*out_metrics_fd));
            return -1;
        }
    }
    return 0;
}

/* main_block_signals blocks SIGTERM, SIGINT and SIGHUP (threads started afterwards inherit
 * that: only the main loop takes them) and ignores SIGPIPE. */
static void main_block_signals(sigset_t *out)
{
    sigemptyset(out);
    sigaddset(out, SIGTERM);
    sigaddset(out, SIGINT);
    sigaddset(out, SIGHUP);
    sigaddset(out, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, out, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* main_worker_count resolves workers = auto and caps it. */
static unsigned main_worker_count(const struct conf *conf)
{
    unsigned n = conf->workers != 0 ? conf->workers : uv_available_parallelism();
    if (n == 0) {
        n = 1;
    }
    return n > MAIN_WORKERS_MAX ? MAIN_WORKERS_MAX : n;
}

/* main_start_workers starts |m->n_workers| workers on the bound sockets |fds| (the first one
 * also serves metrics on |metrics_fd|, if >= 0). Returns 0, or -1 after logging. */
static int main_start_workers(struct main_state *m, int (*fds)[CONF_LISTEN_MAX], int metrics_fd)
{
    if (uv_loop_init(&m->loop) != 0 ||
        uv_async_init(&m->loop, &m->finished, main_on_finished) != 0) {
        log_fatal("cannot start the main loop");
        return -1;
    }
    m->finished.data = m;
    for (unsigned w = 0; w < m->n_workers; w++) {
        struct worker *worker = &m->workers[w];
        int rc = worker_init(worker, w, runtime_ref(m->runtime), m->shared, fds[w], &m->finished);
        if (rc == 0 && w == 0 && metrics_fd >= 0 && worker_serve_metrics(worker, metrics_fd) != 0) {
            rc = UV_EINVAL;
        }
        if (rc == 0) {
            rc = worker_start(worker);
        }
        if (rc != 0) {
            log_fatal("cannot start worker %u: %s", w, uv_strerror(rc));
            return -1;
        }
    }
    return 0;
}

static void main_on_tlsrpt_timer(uv_timer_t *timer)
{
    struct main_state *m = timer->data;
    tlsrpt_io_tick(m->tlsrpt, m->runtime->conf, (int64_t)time(NULL));
}

/* main_serve runs the main thread's loop (signals, workers ending) until every worker has
 * drained, then joins them. */
static void main_serve(struct main_state *m, const sigset_t *signals)
{
    uv_timer_init(&m->loop, &m->tlsrpt_timer);
    m->tlsrpt_timer.data = m;
    if (m->tlsrpt != NULL) {
        /* A day's reports are written within a minute of its end. */
        uv_timer_start(&m->tlsrpt_timer, main_on_tlsrpt_timer, 60000, 60000);
    }
    uv_signal_t *handles[] = {&m->sig_term, &m->sig_int, &m->sig_hup, &m->sig_usr1};
    int numbers[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
    for (size_t i = 0; i < 4; i++) {
        uv_signal_init(&m->loop, handles[i]);
        handles[i]->data = m;
        uv_signal_start(handles[i], main_on_signal, numbers[i]);
    }
    pthread_sigmask(SIG_UNBLOCK, signals, NULL);
    uv_run(&m->loop, UV_RUN_DEFAULT);
    (void)uv_loop_close(&m->loop);
    for (unsigned w = 0; w < m->n_workers; w++) {
        worker_join(&m->workers[w]);
    }
}

static void main_log_started(const struct conf *conf, unsigned n_workers)
{
    main_log_listening(conf, n_workers);
    if (conf->mode == CONF_MODE_TRANSPARENT) {
        log_info(0, "started",
                 "version=%s mode=transparent upstream=original-destination hostname=%s",
                 PROXY_VERSION, conf->hostname);
    } else {
        log_info(0, "started", "version=%s upstream=%s:%u hostname=%s", PROXY_VERSION,
                 conf->upstream.host, (unsigned)conf->upstream.port, conf->hostname);
    }
}

int main(int argc, char **argv)
{
    struct main_options options;
    int exit_status = main_parse_args(&options, argc, argv);
    if (exit_status >= 0) {
        return exit_status;
    }
    struct conf *conf = main_load_conf(options.path);
    if (options.health) {
        return main_health(conf);
    }
    if (options.self_test) {
        return selftest_run(conf, options.path, options.json);
    }
    /* -t also loads the certificates: a key that does not match is a config error. */
    char err[TLSIO_ERR_MAX + 256];
    bool self_signed = false;
    struct runtime *runtime =
        conf != NULL ? main_runtime(err, sizeof(err), &self_signed, conf) : NULL;
    if (runtime == NULL) {
        if (conf != NULL) {
            log_fatal("%s", err);
        }
        if (options.test_only) {
            fprintf(stderr, "smtp-tls-proxy: configuration file %s test failed\n", options.path);
        }
        return 1;
    }
    conf = runtime->conf;
    if (options.test_only) {
        printf("smtp-tls-proxy: configuration file %s test is successful\n", options.path);
        runtime_unref(runtime);
        return 0;
    }
    log_setup(conf->log_level, conf->log_format);
    main_log_self_signed(conf, self_signed);
    /* Both memories exist from the start, so a reload that turns learning on needs no
     * locking around them; they allocate as entries come. */
    static struct worker_shared shared;
    shared.front_learned =
        learn_new(conf->front_tls.learn_max_entries, conf->front_tls.learn_ttl_ms);
    shared.back_memory =
        learn_new(conf->back_tls.remember_max_entries, conf->back_tls.remember_failures_ms);
    struct anvil_config limits = main_anvil_config(conf);
    shared.anvil = anvil_new(&limits);
    if (shared.front_learned == NULL || shared.back_memory == NULL || shared.anvil == NULL) {
        log_fatal("out of memory");
        return 1;
    }
    unsigned n_workers = main_worker_count(conf);
    shared.store.n_workers = n_workers;
    shared.sts_cache = sts_cache_new(conf->recipients.cache_entries);
    shared.tlsrpt = conf->recipients.enabled ? tlsrpt_new(conf->recipients.cache_entries) : NULL;
    if (shared.sts_cache == NULL || (conf->recipients.enabled && shared.tlsrpt == NULL)) {
        log_fatal("out of memory");
        return 1;
    }
    /* store_up is 0 only for a configured store that is unreachable. */
    metrics_gauge_set(METRICS_STORE_UP, conf->store.enabled ? 0 : 1);

    /* Every socket is bound before privileges are dropped and before any thread runs. */
    static int fds[MAIN_WORKERS_MAX][CONF_LISTEN_MAX];
    int metrics_fd = -1;
    if (main_bind_all(fds, &metrics_fd, conf, n_workers) != 0 || main_drop_privileges(conf) != 0) {
        return 1;
    }
    /* Signals are taken by the main thread alone: workers start with them blocked. */
    sigset_t signals;
    main_block_signals(&signals);

    static struct main_state m;
    static struct worker workers[MAIN_WORKERS_MAX];
    m.workers = workers;
    m.n_workers = n_workers;
    m.shared = &shared;
    m.runtime = runtime;
    m.path = options.path;
    if (main_start_workers(&m, fds, metrics_fd) != 0) {
        return 1;
    }
    main_log_started(conf, n_workers);
    m.tlsrpt = shared.tlsrpt != NULL ? tlsrpt_io_new(shared.tlsrpt) : NULL;
    main_serve(&m, &signals);
    if (m.tlsrpt != NULL) {
        /* The day so far, on disk; submitted with the day's full report. */
        tlsrpt_io_flush(m.tlsrpt, m.runtime->conf, (int64_t)time(NULL), false);
        tlsrpt_io_free(m.tlsrpt);
    }
    log_info(0, "stopped", "sessions_left=%u", (unsigned)shared.connections);
    runtime_unref(m.runtime);
    learn_free(shared.front_learned);
    learn_free(shared.back_memory);
    anvil_free(shared.anvil);
    sts_cache_free(shared.sts_cache);
    tlsrpt_free(shared.tlsrpt);
    return 0;
}
