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

#include "conf.h"
#include "health.h"
#include "learn.h"
#include "listener.h"
#include "log.h"
#include "tlsio.h"
#include "worker.h"

#define MAIN_WORKERS_MAX 256

static void main_usage(FILE *out)
{
    fprintf(out, "usage: smtp-tls-proxy [-c FILE] [-t] [--health] [-V] [-h]\n"
                 "  -c FILE  configuration file (default " CONF_DEFAULT_PATH ")\n"
                 "  -t       check the configuration, print every error, and exit\n"
                 "  --health open an SMTP session to the running proxy's first listen\n"
                 "           address; exit 0 if it answers (a container HEALTHCHECK)\n"
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

/* Features whose keys the configuration accepts but this build does not do yet. */
static int main_check_supported(const struct conf *conf)
{
    int bad = 0;
    if (conf->mode != CONF_MODE_FORWARD) {
        log_fatal("%s: mode: transparent mode is not supported by this version", conf->path);
        bad = 1;
    }
    if (conf->proxy_protocol != CONF_PROXY_PROTOCOL_OFF) {
        log_fatal("%s: proxy_protocol: not supported by this version; use off", conf->path);
        bad = 1;
    }
    if (conf->upstream_identity != CONF_IDENTITY_NONE) {
        log_fatal("%s: upstream_identity: not supported by this version; use none", conf->path);
        bad = 1;
    }
    return bad;
}

/*
 * main_front_ctx builds the leg-1 TLS context, or returns NULL with the reason printed.
 * *out_ctx stays NULL when [client_tls] starttls = strip.
 */
static int main_front_ctx(struct tlsio_ctx **out_ctx, const struct conf *conf, bool quiet)
{
    *out_ctx = NULL;
    if (conf->front_tls.starttls == CONF_FRONT_STARTTLS_STRIP) {
        return 0;
    }
    char err[TLSIO_ERR_MAX];
    bool self_signed = false;
    *out_ctx = tlsio_ctx_new_front(err, sizeof(err), &self_signed, conf);
    if (*out_ctx == NULL) {
        log_fatal("%s: [client_tls]: %s", conf->path, err);
        return -1;
    }
    if (self_signed && !quiet) {
        log_warn(0, "front-tls-self-signed",
                 "hostname=%s note=\"no certificate configured; a self-signed one was made\"",
                 conf->hostname);
    }
    return 0;
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

/* main_back_ctx builds the leg-2 TLS context (client certificate, CA file). */
static int main_back_ctx(struct tlsio_ctx **out_ctx, const struct conf *conf)
{
    *out_ctx = NULL;
    if (!main_back_tls_used(conf)) {
        return 0;
    }
    char err[TLSIO_ERR_MAX];
    *out_ctx = tlsio_ctx_new_back(err, sizeof(err), conf);
    if (*out_ctx == NULL) {
        log_fatal("%s: [upstream_tls]: %s", conf->path, err);
        return -1;
    }
    return 0;
}

/* main_reload_front_ctx re-reads the certificate and key files (SIGHUP). On failure the
 * old context stays in force. */
static void main_reload_front_ctx(struct worker_shared *shared, const struct conf *conf)
{
    if (conf->front_tls.starttls == CONF_FRONT_STARTTLS_STRIP) {
        return;
    }
    char err[TLSIO_ERR_MAX];
    bool self_signed = false;
    struct tlsio_ctx *fresh = tlsio_ctx_new_front(err, sizeof(err), &self_signed, conf);
    if (fresh == NULL) {
        log_error(0, "front-tls-reload-failed", "error=\"%s\" action=kept-old", err);
        return;
    }
    uv_mutex_lock(&shared->lock);
    struct tlsio_ctx *old = shared->front_ctx;
    shared->front_ctx = fresh;
    uv_mutex_unlock(&shared->lock);
    /* Sessions already in TLS hold their own reference. */
    tlsio_ctx_free(old);
    log_info(0, "front-tls-reloaded", "certificates=%zu self_signed=%s",
             conf->front_tls.n_certificate, self_signed ? "yes" : "no");
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

int main(int argc, char **argv)
{
    const char *path = CONF_DEFAULT_PATH;
    bool test_only = false;
    bool health = false;
    static const struct option long_options[] = {
        {"health", no_argument, NULL, 'H'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "c:tVh", long_options, NULL)) != -1) {
        switch (opt) {
        case 'H':
            health = true;
            break;
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = true;
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
    if (optind != argc) {
        main_usage(stderr);
        return 2;
    }

    struct conf *conf = main_load_conf(path);
    if (health) {
        char msg[HEALTH_MSG_MAX];
        int rc = conf != NULL ? health_probe(conf, msg, sizeof(msg)) : -1;
        if (conf != NULL) {
            printf("%s: %s\n", rc == 0 ? "healthy" : "unhealthy", msg);
        }
        conf_free(conf);
        return rc == 0 ? 0 : 1;
    }
    struct worker_shared shared = {0};
    /* -t also loads the certificates: a key that does not match is a config error. */
    if (conf == NULL || main_check_supported(conf) != 0 ||
        main_front_ctx(&shared.front_ctx, conf, true) != 0 ||
        main_back_ctx(&shared.back_ctx, conf) != 0) {
        if (test_only) {
            fprintf(stderr, "smtp-tls-proxy: configuration file %s test failed\n", path);
        }
        conf_free(conf);
        return 1;
    }
    if (test_only) {
        printf("smtp-tls-proxy: configuration file %s test is successful\n", path);
        tlsio_ctx_free(shared.front_ctx);
        tlsio_ctx_free(shared.back_ctx);
        conf_free(conf);
        return 0;
    }
    log_setup(conf->log_level, conf->log_format);
    if (shared.front_ctx != NULL) {
        /* Built again now that logging is set up, so the self-signed warning is logged. */
        tlsio_ctx_free(shared.front_ctx);
        if (main_front_ctx(&shared.front_ctx, conf, false) != 0) {
            return 1;
        }
    }
    if (uv_mutex_init(&shared.lock) != 0) {
        log_fatal("cannot create a mutex");
        return 1;
    }
    if (conf->front_tls.starttls == CONF_FRONT_STARTTLS_OFFER && conf->front_tls.learn_failures) {
        shared.front_learned =
            learn_new(conf->front_tls.learn_max_entries, conf->front_tls.learn_ttl_ms);
        if (shared.front_learned == NULL) {
            log_fatal("out of memory");
            return 1;
        }
    }
    if (shared.back_ctx != NULL) {
        shared.back_failed =
            learn_new(conf->back_tls.remember_max_entries, conf->back_tls.remember_failures_ms);
        if (shared.back_failed == NULL) {
            log_fatal("out of memory");
            return 1;
        }
    }

    unsigned n_workers = conf->workers != 0 ? conf->workers : uv_available_parallelism();
    if (n_workers == 0) {
        n_workers = 1;
    }
    if (n_workers > MAIN_WORKERS_MAX) {
        n_workers = MAIN_WORKERS_MAX;
    }

    /* Every socket is bound before privileges are dropped and before any thread runs. */
    static int fds[MAIN_WORKERS_MAX][CONF_LISTEN_MAX];
    for (unsigned w = 0; w < n_workers; w++) {
        for (size_t i = 0; i < conf->n_listen; i++) {
            fds[w][i] = listener_bind(&conf->listen[i]);
            if (fds[w][i] < 0) {
                log_fatal("%s: listen: cannot listen on %s:%u: %s%s", conf->path,
                          conf->listen[i].host, (unsigned)conf->listen[i].port,
                          strerror(-fds[w][i]),
                          -fds[w][i] == EACCES && conf->listen[i].port < 1024
                              ? " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                              : "");
                return 1;
            }
        }
    }
    if (main_drop_privileges(conf) != 0) {
        return 1;
    }

    /* Signals are taken by this thread alone, with sigwait: workers never see them. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    static struct worker workers[MAIN_WORKERS_MAX];
    for (unsigned w = 0; w < n_workers; w++) {
        int rc = worker_init(&workers[w], w, conf, &shared, fds[w], conf->n_listen);
        if (rc == 0) {
            rc = worker_start(&workers[w]);
        }
        if (rc != 0) {
            log_fatal("cannot start worker %u: %s", w, uv_strerror(rc));
            return 1;
        }
    }
    for (size_t i = 0; i < conf->n_listen; i++) {
        log_info(0, "listening", "address=%s%s%s:%u workers=%u",
                 conf->listen[i].sa.ss_family == AF_INET6 ? "[" : "", conf->listen[i].host,
                 conf->listen[i].sa.ss_family == AF_INET6 ? "]" : "",
                 (unsigned)conf->listen[i].port, n_workers);
    }
    log_info(0, "started", "version=%s upstream=%s:%u hostname=%s", PROXY_VERSION,
             conf->upstream.host, (unsigned)conf->upstream.port, conf->hostname);

    /* SIGTERM/SIGINT: the first drains; another one during the drain stops at once. */
    bool draining = false;
    for (;;) {
        struct timespec poll = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
        int sig = draining ? sigtimedwait(&signals, NULL, &poll) : sigwaitinfo(&signals, NULL);
        if (sig == SIGHUP) {
            main_reload_front_ctx(&shared, conf);
        } else if (sig == SIGTERM || sig == SIGINT) {
            log_info(0, draining ? "stopping" : "draining", "signal=%s drain_timeout_ms=%llu",
                     sig == SIGTERM ? "TERM" : "INT", (unsigned long long)conf->drain_timeout_ms);
            for (unsigned w = 0; w < n_workers; w++) {
                worker_stop(&workers[w], draining);
            }
            draining = true;
        }
        if (draining && main_workers_finished(workers, n_workers)) {
            break;
        }
    }
    for (unsigned w = 0; w < n_workers; w++) {
        worker_join(&workers[w]);
    }
    log_info(0, "stopped", "sessions_left=%u", (unsigned)worker_connections);
    tlsio_ctx_free(shared.front_ctx);
    tlsio_ctx_free(shared.back_ctx);
    learn_free(shared.front_learned);
    learn_free(shared.back_failed);
    uv_mutex_destroy(&shared.lock);
    conf_free(conf);
    return 0;
}
