/*
 * test_conf: conf_load() on INI files written to /tmp (defaults, every key, every kind of
 * error with its exact text), the shipped config/smtp-tls-proxy.ini, and the value
 * parsers and conf_cidr_match() on their own.
 */
#include "conf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "check.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
/* The README's longest line, its line end not counted (CONF_LINE_MAX in conf.c). */
#define CONF_TEST_LINE_MAX 65536

static char *write_file_len(const char *text, size_t len)
{
    char path[] = "/tmp/test_conf-XXXXXX";
    int fd = mkstemp(path);
    if (fd == -1) {
        perror("mkstemp");
        exit(1);
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n <= 0) {
            perror("write");
            exit(1);
        }
        done += (size_t)n;
    }
    close(fd);
    char *copy = strdup(path);
    if (copy == NULL) {
        exit(1);
    }
    return copy;
}

static char *write_file(const char *text)
{
    return write_file_len(text, strlen(text));
}

static void print_errors(int line, const struct conf_errors *errors)
{
    fprintf(stderr, "  (case at line %d: %zu errors)\n", line, errors->n_lines);
    for (size_t i = 0; i < errors->n_lines; i++) {
        fprintf(stderr, "    %s\n", errors->lines[i]);
    }
}

/* load_ok_at loads |text| and expects no errors; the caller frees the result. */
static struct conf *load_ok_at(int line, const char *text)
{
    char *path = write_file(text);
    struct conf_errors errors;
    struct conf *conf = conf_load(&errors, path);
    CHECK(conf != NULL);
    CHECK_INT(errors.n_lines, 0);
    if (conf == NULL || errors.n_lines != 0) {
        print_errors(line, &errors);
    }
    conf_errors_cleanup(&errors);
    unlink(path);
    free(path);
    return conf;
}

#define LOAD_OK(text) load_ok_at(__LINE__, (text))

/* check_errors_at loads |text| and expects exactly |want|, each after the file name. */
static void check_errors_at(int line, const char *path, const char *const *want, size_t n_want)
{
    int failures = check_failures;
    struct conf_errors errors;
    struct conf *conf = conf_load(&errors, path);
    CHECK(conf == NULL);
    CHECK_INT(errors.n_lines, n_want);
    size_t path_len = strlen(path);
    for (size_t i = 0; i < errors.n_lines && i < n_want; i++) {
        bool has_path = strncmp(errors.lines[i], path, path_len) == 0;
        CHECK(has_path);
        if (has_path) {
            CHECK_STR(errors.lines[i] + path_len, want[i]);
        }
    }
    if (check_failures != failures) {
        print_errors(line, &errors);
    }
    conf_free(conf);
    conf_errors_cleanup(&errors);
}

static void check_text_errors_at(int line, const char *text, const char *const *want, size_t n_want)
{
    char *path = write_file(text);
    check_errors_at(line, path, want, n_want);
    unlink(path);
    free(path);
}

#define WANT(...)                                                                                  \
    (const char *const[]){__VA_ARGS__}, ARRAY_LEN(((const char *const[]){__VA_ARGS__}))
#define CHECK_ERRORS(text, ...) check_text_errors_at(__LINE__, (text), WANT(__VA_ARGS__))

static void system_hostname(char *out, size_t out_size)
{
    if (gethostname(out, out_size) == -1 || out[0] == '\0') {
        snprintf(out, out_size, "localhost");
    }
    out[out_size - 1] = '\0';
}

static void check_addr(const struct conf_addr *addr, const char *host, uint16_t port, int family)
{
    CHECK_STR(addr->host, host);
    CHECK_INT(addr->port, port);
    CHECK(addr->numeric == (family != AF_UNSPEC));
    if (family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&addr->sa;
        char text[INET_ADDRSTRLEN];
        CHECK_INT(addr->sa_len, sizeof(struct sockaddr_in));
        CHECK_INT(sin->sin_family, AF_INET);
        CHECK_INT(ntohs(sin->sin_port), port);
        CHECK_STR(inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text)), host);
    } else if (family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&addr->sa;
        char text[INET6_ADDRSTRLEN];
        CHECK_INT(addr->sa_len, sizeof(struct sockaddr_in6));
        CHECK_INT(sin6->sin6_family, AF_INET6);
        CHECK_INT(ntohs(sin6->sin6_port), port);
        CHECK_STR(inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text)), host);
    }
}

static void check_defaults(const struct conf *conf)
{
    CHECK_INT(conf->n_listen, 2);
    check_addr(&conf->listen[0], "0.0.0.0", 25, AF_INET);
    check_addr(&conf->listen[1], "::", 25, AF_INET6);
    CHECK_INT(conf->mode, CONF_MODE_FORWARD);
    check_addr(&conf->upstream, "127.0.0.1", 10025, AF_INET);
    char hostname[CONF_HOST_MAX + 1];
    system_hostname(hostname, sizeof(hostname));
    CHECK_STR(conf->hostname, hostname);
    CHECK_INT(conf->workers, 0);
    CHECK_INT(conf->max_connections, 10000);
    CHECK_INT(conf->max_line_len, 1000);
    CHECK_INT(conf->drain_timeout_ms, 30000);
    CHECK(conf->user == NULL);
    CHECK_INT(conf->proxy_protocol, CONF_PROXY_PROTOCOL_OFF);
    CHECK_INT(conf->upstream_identity, CONF_IDENTITY_NONE);
    CHECK_INT(conf->bare_newline, CONF_BARE_NEWLINE_NORMALIZE);

    CHECK_INT(conf->front_tls.starttls, CONF_FRONT_STARTTLS_OFFER);
    CHECK(!conf->front_tls.require);
    CHECK(!conf->front_tls.ask_client_certificate);
    CHECK_INT(conf->front_tls.n_certificate, 0);
    for (size_t i = 0; i < CONF_CERT_MAX; i++) {
        CHECK(conf->front_tls.certificate[i] == NULL);
        CHECK(conf->front_tls.key[i] == NULL);
    }
    CHECK_INT(conf->front_tls.min_protocol, CONF_TLS_1_0);
    CHECK(conf->front_tls.ciphers == NULL);
    CHECK(conf->front_tls.learn_failures);
    CHECK_INT(conf->front_tls.learn_ttl_ms, 86400000);
    CHECK_INT(conf->front_tls.learn_max_entries, 10000);
    CHECK_INT(conf->front_tls.n_never_offer_to, 0);
    CHECK_INT(conf->front_tls.n_always_offer_to, 0);

    CHECK_INT(conf->back_tls.starttls, CONF_BACK_STARTTLS_MAY);
    CHECK(conf->back_tls.fallback);
    CHECK_INT(conf->back_tls.n_fallback_steps, 3);
    CHECK_INT(conf->back_tls.fallback_steps[0], CONF_FALLBACK_NO_CLIENT_CERT);
    CHECK_INT(conf->back_tls.fallback_steps[1], CONF_FALLBACK_TLS12);
    CHECK_INT(conf->back_tls.fallback_steps[2], CONF_FALLBACK_CLEARTEXT);
    CHECK_INT(conf->back_tls.remember_failures_ms, 3600000);
    CHECK_INT(conf->back_tls.remember_max_entries, 10000);
    CHECK(conf->back_tls.certificate == NULL);
    CHECK(conf->back_tls.key == NULL);
    CHECK_INT(conf->back_tls.verify, CONF_VERIFY_NONE);
    CHECK(conf->back_tls.ca_file == NULL);

    CHECK_INT(conf->n_policy, 0);

    CHECK_INT(conf->timeouts.connect_ms, 30000);
    CHECK_INT(conf->timeouts.greeting_ms, 300000);
    CHECK_INT(conf->timeouts.tls_handshake_ms, 30000);
    CHECK_INT(conf->timeouts.command_ms, 300000);
    CHECK_INT(conf->timeouts.data_block_ms, 180000);
    CHECK_INT(conf->timeouts.data_end_ms, 600000);

    CHECK_INT(conf->log_level, CONF_LOG_INFO);
    CHECK_INT(conf->log_format, CONF_LOG_TEXT);
    CHECK(!conf->metrics_enabled);
    CHECK_INT(conf->metrics_listen.port, 0);
}

static void test_defaults(void)
{
    const char *texts[] = {
        "",
        "; only comments\n# and blank lines\n\n   \n",
        "[proxy]\n[client_tls]\n[upstream_tls]\n[upstream_policy]\n[timeouts]\n[log]\n[metrics]\n",
        /* Empty values mean "the default" for optional keys. */
        "[proxy]\nhostname =\nuser =\n[client_tls]\ncertificate =\nkey =\nciphers =\n"
        "never_offer_to =\n[upstream_tls]\ncertificate =\nkey =\nca_file =\n[metrics]\nlisten =\n",
    };
    for (size_t i = 0; i < ARRAY_LEN(texts); i++) {
        struct conf *conf = LOAD_OK(texts[i]);
        if (conf != NULL) {
            check_defaults(conf);
        }
        conf_free(conf);
    }
}

/*
 * shipped_config_path finds <src>/config/smtp-tls-proxy.ini from TEST_DATA_DIR
 * (<src>/tests/unit/data, set by ctest) or, when run by hand, from this file's name.
 */
static void shipped_config_path(char *out, size_t out_size)
{
    static const char name[] = "config/smtp-tls-proxy.ini";
    const char *data_dir = getenv("TEST_DATA_DIR");
    if (data_dir == NULL) {
        static const char self[] = "tests/unit/test_conf.c";
        size_t len = strlen(__FILE__);
        size_t prefix_len = len >= strlen(self) ? len - strlen(self) : 0;
        snprintf(out, out_size, "%.*s%s", (int)prefix_len, __FILE__, name);
        return;
    }
    /* Strip "tests/unit/data" as text: the data directory itself need not exist. */
    snprintf(out, out_size, "%s", data_dir);
    for (int i = 0; i < 3; i++) {
        size_t len = strlen(out);
        while (len > 1 && out[len - 1] == '/') {
            out[--len] = '\0';
        }
        char *slash = strrchr(out, '/');
        if (slash != NULL) {
            *slash = '\0';
        }
    }
    strncat(out, "/", out_size - strlen(out) - 1);
    strncat(out, name, out_size - strlen(out) - 1);
}

static void test_shipped_config(void)
{
    char path[4096];
    shipped_config_path(path, sizeof(path));
    struct conf_errors errors;
    struct conf *conf = conf_load(&errors, path);
    CHECK(conf != NULL);
    CHECK_INT(errors.n_lines, 0);
    if (conf == NULL) {
        print_errors(__LINE__, &errors);
    } else {
        check_defaults(conf);
        CHECK_STR(conf->path, path);
    }
    conf_free(conf);
    conf_errors_cleanup(&errors);
}

static void test_every_key(void)
{
    char *cert1 = write_file("cert 1\n");
    char *key1 = write_file("key 1\n");
    char *cert2 = write_file("cert 2\n");
    char *key2 = write_file("key 2\n");
    char *ca = write_file("ca\n");
    char text[4096];
    snprintf(text, sizeof(text),
             "; comment\n"
             "# another\n"
             "[proxy]\n"
             "listen = 127.0.0.1:2525, [::1]:2526 , *:2527\n"
             "mode = transparent\n"
             "upstream = MX.example.com:25   ; names are fine here\n"
             "hostname = relay.example.org   # and this is a comment too\n"
             "workers = 4\n"
             "max_connections = 500\n"
             "max_line_length = 4k\n"
             "drain_timeout = 250ms\n"
             "user = smtpproxy\n"
             "proxy_protocol = v2\n"
             "upstream_identity = spoof\n"
             "bare_newline = Reject\n"
             "[client_tls]\n"
             "starttls = offer\n"
             "require = yes\n"
             "certificate = %s, %s\n"
             "key = %s,%s\n"
             "min_protocol = 1.2\n"
             "ciphers = ECDHE+AESGCM:ECDHE+CHACHA20\n"
             "learn_failures = false\n"
             "learn_ttl = 2h\n"
             "learn_max_entries = 5\n"
             "never_offer_to = 192.0.2.0/24, 2001:db8::/32\n"
             "always_offer_to = 198.51.100.7\n"
             "ask_client_certificate = yes\n"
             "[upstream_tls]\n"
             "starttls = require\n"
             "fallback = 0\n"
             "fallback_steps = cleartext, tls12\n"
             "remember_failures = 90s\n"
             "remember_max_entries = 7\n"
             "certificate = %s\n"
             "key = %s\n"
             "verify = ca\n"
             "ca_file = %s\n"
             "[upstream_policy]\n"
             "require = *.Example.COM, mx.example.net\n"
             "off = 10.0.0.0/8, 2001:db8::1\n"
             "require = 192.0.2.1\n"
             "[timeouts]\n"
             "connect = 1s\n"
             "greeting = 2m\n"
             "tls_handshake = 100ms\n"
             "command = 1h\n"
             "data_block = 7d\n"
             "data_end = 45\n"
             "[log]\n"
             "level = debug\n"
             "format = JSON\n"
             "[metrics]\n"
             "listen = 127.0.0.1:9325\n",
             cert1, cert2, key1, key2, cert2, key2, ca);
    struct conf *conf = LOAD_OK(text);
    if (conf != NULL) {
        CHECK_INT(conf->n_listen, 3);
        check_addr(&conf->listen[0], "127.0.0.1", 2525, AF_INET);
        check_addr(&conf->listen[1], "::1", 2526, AF_INET6);
        check_addr(&conf->listen[2], "0.0.0.0", 2527, AF_INET);
        CHECK_INT(conf->mode, CONF_MODE_TRANSPARENT);
        check_addr(&conf->upstream, "MX.example.com", 25, AF_UNSPEC);
        CHECK_STR(conf->hostname, "relay.example.org");
        CHECK_INT(conf->workers, 4);
        CHECK_INT(conf->max_connections, 500);
        CHECK_INT(conf->max_line_len, 4096);
        CHECK_INT(conf->drain_timeout_ms, 250);
        CHECK_STR(conf->user, "smtpproxy");
        CHECK_INT(conf->proxy_protocol, CONF_PROXY_PROTOCOL_V2);
        CHECK_INT(conf->upstream_identity, CONF_IDENTITY_SPOOF);
        CHECK_INT(conf->bare_newline, CONF_BARE_NEWLINE_REJECT);

        CHECK_INT(conf->front_tls.starttls, CONF_FRONT_STARTTLS_OFFER);
        CHECK(conf->front_tls.require);
        CHECK_INT(conf->front_tls.n_certificate, 2);
        CHECK_STR(conf->front_tls.certificate[0], cert1);
        CHECK_STR(conf->front_tls.certificate[1], cert2);
        CHECK(conf->front_tls.certificate[2] == NULL);
        CHECK_STR(conf->front_tls.key[0], key1);
        CHECK_STR(conf->front_tls.key[1], key2);
        CHECK_INT(conf->front_tls.min_protocol, CONF_TLS_1_2);
        CHECK_STR(conf->front_tls.ciphers, "ECDHE+AESGCM:ECDHE+CHACHA20");
        CHECK(!conf->front_tls.learn_failures);
        CHECK_INT(conf->front_tls.learn_ttl_ms, 2 * 3600 * 1000);
        CHECK_INT(conf->front_tls.learn_max_entries, 5);
        CHECK_INT(conf->front_tls.n_never_offer_to, 2);
        CHECK_INT(conf->front_tls.never_offer_to[0].family, AF_INET);
        CHECK_INT(conf->front_tls.never_offer_to[0].prefix_len, 24);
        CHECK_INT(conf->front_tls.never_offer_to[1].family, AF_INET6);
        CHECK_INT(conf->front_tls.never_offer_to[1].prefix_len, 32);
        CHECK_INT(conf->front_tls.n_always_offer_to, 1);
        CHECK_INT(conf->front_tls.always_offer_to[0].prefix_len, 32);
        CHECK_MEM(conf->front_tls.always_offer_to[0].addr, 4, "\xc6\x33\x64\x07", 4);
        CHECK(conf->front_tls.ask_client_certificate);

        CHECK_INT(conf->back_tls.starttls, CONF_BACK_STARTTLS_REQUIRE);
        CHECK(!conf->back_tls.fallback);
        CHECK_INT(conf->back_tls.n_fallback_steps, 2);
        CHECK_INT(conf->back_tls.fallback_steps[0], CONF_FALLBACK_CLEARTEXT);
        CHECK_INT(conf->back_tls.fallback_steps[1], CONF_FALLBACK_TLS12);
        CHECK_INT(conf->back_tls.remember_failures_ms, 90000);
        CHECK_INT(conf->back_tls.remember_max_entries, 7);
        CHECK_STR(conf->back_tls.certificate, cert2);
        CHECK_STR(conf->back_tls.key, key2);
        CHECK_INT(conf->back_tls.verify, CONF_VERIFY_CA);
        CHECK_STR(conf->back_tls.ca_file, ca);

        CHECK_INT(conf->n_policy, 5);
        CHECK_INT(conf->policy[0].kind, CONF_PATTERN_WILDCARD);
        CHECK_STR(conf->policy[0].name, ".example.com");
        CHECK_INT(conf->policy[0].starttls, CONF_BACK_STARTTLS_REQUIRE);
        CHECK_INT(conf->policy[1].kind, CONF_PATTERN_NAME);
        CHECK_STR(conf->policy[1].name, "mx.example.net");
        CHECK_INT(conf->policy[1].starttls, CONF_BACK_STARTTLS_REQUIRE);
        CHECK_INT(conf->policy[2].kind, CONF_PATTERN_CIDR);
        CHECK_INT(conf->policy[2].cidr.family, AF_INET);
        CHECK_INT(conf->policy[2].cidr.prefix_len, 8);
        CHECK_INT(conf->policy[2].starttls, CONF_BACK_STARTTLS_OFF);
        CHECK_INT(conf->policy[3].kind, CONF_PATTERN_CIDR);
        CHECK_INT(conf->policy[3].cidr.family, AF_INET6);
        CHECK_INT(conf->policy[3].cidr.prefix_len, 128);
        CHECK_INT(conf->policy[3].starttls, CONF_BACK_STARTTLS_OFF);
        CHECK_INT(conf->policy[4].kind, CONF_PATTERN_CIDR);
        CHECK_INT(conf->policy[4].cidr.prefix_len, 32);
        CHECK_INT(conf->policy[4].starttls, CONF_BACK_STARTTLS_REQUIRE);

        CHECK_INT(conf->timeouts.connect_ms, 1000);
        CHECK_INT(conf->timeouts.greeting_ms, 120000);
        CHECK_INT(conf->timeouts.tls_handshake_ms, 100);
        CHECK_INT(conf->timeouts.command_ms, 3600000);
        CHECK_INT(conf->timeouts.data_block_ms, 7 * 86400000LL);
        CHECK_INT(conf->timeouts.data_end_ms, 45000);

        CHECK_INT(conf->log_level, CONF_LOG_DEBUG);
        CHECK_INT(conf->log_format, CONF_LOG_JSON);
        CHECK(conf->metrics_enabled);
        check_addr(&conf->metrics_listen, "127.0.0.1", 9325, AF_INET);
    }
    conf_free(conf);
    char *files[] = {cert1, key1, cert2, key2, ca};
    for (size_t i = 0; i < ARRAY_LEN(files); i++) {
        unlink(files[i]);
        free(files[i]);
    }
}

/* Sections, keys and words are case-insensitive; CRLF, a BOM and repeated sections work. */
static void test_syntax_variants(void)
{
    struct conf *conf = LOAD_OK("\xEF\xBB\xBF[PROXY]\r\nMode = Transparent\r\n[ log ]\r\n"
                                "LEVEL=warn\r\n[proxy]  ; again\r\nworkers: 2\r\n");
    if (conf != NULL) {
        CHECK_INT(conf->mode, CONF_MODE_TRANSPARENT);
        CHECK_INT(conf->log_level, CONF_LOG_WARN);
        CHECK_INT(conf->workers, 2);
    }
    conf_free(conf);

    /* The last line has no line end. */
    conf = LOAD_OK("[proxy]\nmax_connections = 7");
    if (conf != NULL) {
        CHECK_INT(conf->max_connections, 7);
    }
    conf_free(conf);

    /* Booleans. */
    const char *words[] = {"on", "yes", "true", "1", "ON", "off", "no", "false", "0", "Off"};
    for (size_t i = 0; i < ARRAY_LEN(words); i++) {
        char text[64];
        snprintf(text, sizeof(text), "[upstream_tls]\nfallback = %s\n", words[i]);
        conf = LOAD_OK(text);
        if (conf != NULL) {
            CHECK(conf->back_tls.fallback == (i < 5));
        }
        conf_free(conf);
    }

    /* Transparent mode needs no upstream. */
    conf = LOAD_OK("[proxy]\nmode = transparent\nupstream =\n");
    if (conf != NULL) {
        CHECK_INT(conf->upstream.port, 0);
        CHECK_STR(conf->upstream.host, "");
    }
    conf_free(conf);

    conf = LOAD_OK("[proxy]\nworkers = 256\nmax_line_length = 64K\n[client_tls]\n"
                   "min_protocol = tlsv1.3\n");
    if (conf != NULL) {
        CHECK_INT(conf->workers, 256);
        CHECK_INT(conf->max_line_len, 65536);
        CHECK_INT(conf->front_tls.min_protocol, CONF_TLS_1_3);
    }
    conf_free(conf);
}

/* A line longer than inih's first buffer is handed over in pieces; lines still count. */
static void test_long_lines(void)
{
    size_t cipher_len = 60000;
    char *text = malloc(cipher_len + 256);
    CHECK(text != NULL);
    if (text == NULL) {
        return;
    }
    strcpy(text, "[client_tls]\nciphers = ");
    size_t len = strlen(text);
    memset(text + len, 'A', cipher_len);
    strcpy(text + len + cipher_len, "\nlearn_ttl = soon\n");
    CHECK_ERRORS(text, ":3: learn_ttl: \"soon\" is not valid; expected a duration from 1s to "
                       "365d (suffix ms, s, m, h or d)");

    strcpy(text + len + cipher_len, "\n");
    struct conf *conf = LOAD_OK(text);
    if (conf != NULL) {
        CHECK_INT(strlen(conf->front_tls.ciphers), cipher_len);
    }
    conf_free(conf);
    free(text);

    /* Exactly the longest line accepted, with CRLF, LF or no line end: inih's buffer must
     * hold all of it. */
    static const char *const ends[] = {"\r\n", "\n", ""};
    text = malloc(CONF_TEST_LINE_MAX + 64);
    CHECK(text != NULL);
    if (text == NULL) {
        return;
    }
    for (size_t i = 0; i < ARRAY_LEN(ends); i++) {
        strcpy(text, "[proxy]\r\nuser = ");
        len = strlen(text);
        memset(text + len, 'u', CONF_TEST_LINE_MAX - 7);
        strcpy(text + len + CONF_TEST_LINE_MAX - 7, ends[i]);
        conf = LOAD_OK(text);
        if (conf != NULL) {
            CHECK_INT(strlen(conf->user), CONF_TEST_LINE_MAX - 7);
        }
        conf_free(conf);
    }
    strcpy(text + len + CONF_TEST_LINE_MAX - 7, "\r\nmode = x\r\n");
    CHECK_ERRORS(text, ":3: mode: \"x\" is not valid; expected forward or transparent");
    free(text);
}

/*
 * One byte over the cap, or a NUL byte, is an error at that line and ends the reading
 * there: the reader never holds more than one capped line, and never looks for a line end
 * that may never come. What follows is not read, and rules tying keys together are not
 * judged on a file read in part (here "spoof" would need mode = transparent, given later).
 */
static void test_reading_stops(void)
{
    static const char before[] = "[proxy]\nupstream_identity = spoof\nuser = ";
    static const char *const ends[] = {"\r\n", "\n", "", "\rx\n"};
    size_t cap = CONF_TEST_LINE_MAX;
    char *text = malloc(cap + 256);
    CHECK(text != NULL);
    if (text == NULL) {
        return;
    }
    for (size_t i = 0; i < ARRAY_LEN(ends); i++) {
        strcpy(text, before);
        size_t len = strlen(text);
        /* "user = " and the 'u's make cap + 1 bytes before the line end. */
        memset(text + len, 'u', cap + 1 - 7);
        snprintf(text + len + cap + 1 - 7, 64, "%smode = transparent\nworkers = 0\n", ends[i]);
        CHECK_ERRORS(text, ":3: syntax: line longer than 65536 bytes; the rest of the file was "
                           "not read");
    }
    /* A cap-long line then a bare CR and more: the CR is content, so it is one byte over. */
    strcpy(text, before);
    size_t len = strlen(text);
    memset(text + len, 'u', cap - 7);
    strcpy(text + len + cap - 7, "\rmode = transparent\n");
    CHECK_ERRORS(text, ":3: syntax: line longer than 65536 bytes; the rest of the file was "
                       "not read");
    free(text);

    /* A line far longer than the cap, and no line end at all. */
    size_t big_len = 4 * cap;
    char *big = malloc(big_len);
    CHECK(big != NULL);
    if (big != NULL) {
        memset(big, ';', big_len);
        char *path = write_file_len(big, big_len);
        check_errors_at(__LINE__, path,
                        WANT(":1: syntax: line longer than 65536 bytes; the rest of the file was "
                             "not read"));
        unlink(path);
        free(path);
        free(big);
    }

    static const char with_nul[] = "[proxy]\nmode = for\0ward\nworkers = 0\n";
    char *path = write_file_len(with_nul, sizeof(with_nul) - 1);
    check_errors_at(__LINE__, path,
                    WANT(":2: syntax: line contains a NUL byte; the rest of the file was not "
                         "read"));
    unlink(path);
    free(path);
    static const char comment_nul[] = "[proxy]\n; a comment\0\nworkers = 0\n";
    path = write_file_len(comment_nul, sizeof(comment_nul) - 1);
    check_errors_at(__LINE__, path,
                    WANT(":2: syntax: line contains a NUL byte; the rest of the file was not "
                         "read"));
    unlink(path);
    free(path);

    /* An endless stream of NUL bytes: line 1, at once. */
    check_errors_at(__LINE__, "/dev/zero",
                    WANT(":1: syntax: line contains a NUL byte; the rest of the file was not "
                         "read"));
}

static void test_syntax_errors(void)
{
    CHECK_ERRORS("mode = forward\n[proxy]\nthis is not a key\n[proxy\n[proxy] junk\n = x\n"
                 "[client_tls] ; fine\n",
                 ":1: mode: \"mode\" comes before the first [section]",
                 ":3: syntax: \"this is not a key\" is not valid; expected [section], key = "
                 "value or a comment",
                 ":4: syntax: \"[proxy\" is not valid; expected [section], key = value or a "
                 "comment",
                 ":5: syntax: \"[proxy] junk\" is not valid; expected [section], key = value "
                 "or a comment",
                 ":6: syntax: \"= x\" is not valid; expected [section], key = value or a "
                 "comment");
}

static void test_unknown_names(void)
{
    CHECK_ERRORS(
        "[proxy]\nmode = forward\n[frontend]\nx = 1\n[log]\nlevle = info\n[empty]\n",
        ":3: [frontend]: \"frontend\" is not a section; expected proxy, client_tls, "
        "upstream_tls, upstream_policy, timeouts, limits, recipient_policy, store, log or metrics",
        ":6: levle: \"levle\" is not a key of [log]; expected level or format",
        ":7: [empty]: \"empty\" is not a section; expected proxy, client_tls, "
        "upstream_tls, upstream_policy, timeouts, limits, recipient_policy, store, log or metrics");
    CHECK_ERRORS("[proxy]\nlisten_on = *:25\n",
                 ":2: listen_on: \"listen_on\" is not a key of [proxy]; expected listen, mode, "
                 "upstream, hostname, workers, max_connections, max_line_length, "
                 "drain_timeout, user, proxy_protocol, upstream_identity or bare_newline");
    /* The pattern-first syntax of other proxies; inih also cuts keys at ':'. */
    CHECK_ERRORS("[upstream_policy]\n*.example.com = may\n2001:db8::/32 = off\n",
                 ":2: *.example.com: \"*.example.com\" is not a key of [upstream_policy]; "
                 "expected off, may or require; write the policy first, as in \"may = "
                 "*.example.com\"",
                 ":3: 2001: \"2001\" is not a key of [upstream_policy]; expected off, may or "
                 "require; write the policy first, as in \"may = *.example.com\"");
}

static void test_bad_enums(void)
{
    CHECK_ERRORS("[proxy]\nmode = fwd\nproxy_protocol = v3\nupstream_identity = xclient2\n"
                 "[client_tls]\nstarttls = require\nrequire = maybe\nmin_protocol = TLSv1.4\n"
                 "[upstream_tls]\nstarttls = on\nverify = full\n[log]\nlevel = trace\n"
                 "format = xml\n",
                 ":2: mode: \"fwd\" is not valid; expected forward or transparent",
                 ":3: proxy_protocol: \"v3\" is not valid; expected off, v1, v2 or any",
                 ":4: upstream_identity: \"xclient2\" is not valid; expected none, xclient, "
                 "proxy-v1, proxy-v2 or spoof",
                 ":6: starttls: \"require\" is not valid; expected offer or strip",
                 ":7: require: \"maybe\" is not valid; expected on or off",
                 ":8: min_protocol: \"TLSv1.4\" is not valid; expected TLSv1.0, TLSv1.1, "
                 "TLSv1.2 or TLSv1.3",
                 ":10: starttls: \"on\" is not valid; expected off, may or require",
                 ":11: verify: \"full\" is not valid; expected none or ca",
                 ":13: level: \"trace\" is not valid; expected error, warn, info or debug",
                 ":14: format: \"xml\" is not valid; expected text or json");
    CHECK_ERRORS("[proxy]\nbare_newline = strip\n[client_tls]\nask_client_certificate = maybe\n"
                 "[proxy]\nbare_newline = normalize\n",
                 ":2: bare_newline: \"strip\" is not valid; expected normalize or reject",
                 ":4: ask_client_certificate: \"maybe\" is not valid; expected on or off",
                 ":6: bare_newline: given twice, first on line 2");
}

/* The keys' explicit values, each against its default. */
static void test_bare_newline_and_client_certificate(void)
{
    static const struct {
        const char *text;
        enum conf_bare_newline bare_newline;
        bool ask;
    } cases[] = {
        {"[proxy]\nbare_newline = normalize\n", CONF_BARE_NEWLINE_NORMALIZE, false},
        {"[proxy]\nbare_newline = reject\n", CONF_BARE_NEWLINE_REJECT, false},
        {"[proxy]\nbare_newline = REJECT ; Postfix 3.9 would say yes\n", CONF_BARE_NEWLINE_REJECT,
         false},
        {"[client_tls]\nask_client_certificate = on\n", CONF_BARE_NEWLINE_NORMALIZE, true},
        {"[client_tls]\nask_client_certificate = off\n", CONF_BARE_NEWLINE_NORMALIZE, false},
        {"[client_tls]\nask_client_certificate = 1\n", CONF_BARE_NEWLINE_NORMALIZE, true},
        {"[client_tls]\nrequire = on\nask_client_certificate = true\n[proxy]\n"
         "bare_newline = reject\n",
         CONF_BARE_NEWLINE_REJECT, true},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct conf *conf = LOAD_OK(cases[i].text);
        if (conf != NULL) {
            CHECK_INT(conf->bare_newline, cases[i].bare_newline);
            CHECK(conf->front_tls.ask_client_certificate == cases[i].ask);
        }
        conf_free(conf);
    }
    CHECK_ERRORS("[proxy]\nbare_newline = yes\nbare-newline = reject\n[client_tls]\n"
                 "ask_client_certificate = require\n",
                 ":2: bare_newline: \"yes\" is not valid; expected normalize or reject",
                 ":3: bare-newline: \"bare-newline\" is not a key of [proxy]; expected listen, "
                 "mode, upstream, hostname, workers, max_connections, max_line_length, "
                 "drain_timeout, user, proxy_protocol, upstream_identity or bare_newline",
                 ":5: ask_client_certificate: \"require\" is not valid; expected on or off");
    /* Like every word-valued key, an empty value is not the default. */
    CHECK_ERRORS("[proxy]\nbare_newline =\n",
                 ":2: bare_newline: \"\" is not valid; expected normalize or reject");
}

static void test_bad_numbers(void)
{
    CHECK_ERRORS("[timeouts]\nconnect = 30sec\ngreeting = 8d\ndata_end = -5s\n"
                 "command = 99999999999999999999d\ndata_block =\ntls_handshake = 50ms\n",
                 ":2: connect: \"30sec\" is not valid; expected a duration from 100ms to 7d "
                 "(suffix ms, s, m, h or d)",
                 ":3: greeting: \"8d\" is out of range; expected a duration from 100ms to 7d "
                 "(suffix ms, s, m, h or d)",
                 ":4: data_end: \"-5s\" is not valid; expected a duration from 100ms to 7d "
                 "(suffix ms, s, m, h or d)",
                 ":5: command: \"99999999999999999999d\" is not valid; expected a duration "
                 "from 100ms to 7d (suffix ms, s, m, h or d)",
                 ":6: data_block: \"\" is not valid; expected a duration from 100ms to 7d "
                 "(suffix ms, s, m, h or d)",
                 ":7: tls_handshake: \"50ms\" is out of range; expected a duration from 100ms "
                 "to 7d (suffix ms, s, m, h or d)");
    CHECK_ERRORS("[proxy]\nmax_line_length = 10x\n[proxy]\nworkers = four\n"
                 "max_connections = 1000001\ndrain_timeout = 2d\n",
                 ":2: max_line_length: \"10x\" is not valid; expected a size from 512 to 64k "
                 "(suffix k, M or G)",
                 ":4: workers: \"four\" is not valid; expected auto or a number from 1 to 256",
                 ":5: max_connections: \"1000001\" is out of range; expected a number from 1 "
                 "to 1000000",
                 ":6: drain_timeout: \"2d\" is out of range; expected a duration from 0ms to "
                 "1d (suffix ms, s, m, h or d)");
    CHECK_ERRORS("[proxy]\nmax_line_length = 100\nworkers = 257\n[client_tls]\n"
                 "learn_max_entries = 0\nlearn_ttl = 0\n[upstream_tls]\n"
                 "remember_max_entries = 10000001\n",
                 ":2: max_line_length: \"100\" is out of range; expected a size from 512 to 64k "
                 "(suffix k, M or G)",
                 ":3: workers: \"257\" is out of range; expected auto or a number from 1 to 256",
                 ":5: learn_max_entries: \"0\" is out of range; expected a number from 1 to "
                 "10000000",
                 ":6: learn_ttl: \"0\" is out of range; expected a duration from 1s to 365d "
                 "(suffix ms, s, m, h or d)",
                 ":8: remember_max_entries: \"10000001\" is out of range; expected a number "
                 "from 1 to 10000000");
    CHECK_ERRORS("[proxy]\nmax_line_length = 1G\n",
                 ":2: max_line_length: \"1G\" is out of range; expected a size from 512 to 64k "
                 "(suffix k, M or G)");
}

static void test_bad_addresses(void)
{
    CHECK_ERRORS("[proxy]\nupstream = mail..example:25\n[proxy]\nupstream = ::1:25\n"
                 "[proxy]\nupstream = 127.0.0.1:0\n[proxy]\nupstream = 127.0.0.1\n",
                 ":2: upstream: \"mail..example:25\" is not a valid address; expected host:port, "
                 "IPv4:port, [IPv6]:port or *:port",
                 ":4: upstream: given twice, first on line 2",
                 ":6: upstream: given twice, first on line 2",
                 ":8: upstream: given twice, first on line 2");
    CHECK_ERRORS("[proxy]\nupstream = ::1:25\n",
                 ":2: upstream: \"::1:25\" is not a valid address; expected host:port, "
                 "IPv4:port, [IPv6]:port or *:port");
    CHECK_ERRORS("[proxy]\nupstream = 127.0.0.1\n",
                 ":2: upstream: \"127.0.0.1\" has no valid port; expected host:port, IPv4:port, "
                 "[IPv6]:port or *:port, port from 1 to 65535");
    CHECK_ERRORS("[proxy]\nlisten = mail.example.com:25, 0.0.0.0:0, [::1]:65536, 1.2.3:25\n"
                 "[metrics]\nlisten = localhost:9325\n",
                 ":2: listen: \"mail.example.com:25\" is not a numeric address; expected "
                 "IPv4:port, [IPv6]:port or *:port",
                 ":2: listen: \"0.0.0.0:0\" has no valid port; expected IPv4:port, [IPv6]:port "
                 "or *:port, port from 1 to 65535",
                 ":2: listen: \"[::1]:65536\" has no valid port; expected IPv4:port, "
                 "[IPv6]:port or *:port, port from 1 to 65535",
                 ":2: listen: \"1.2.3:25\" is not a valid address; expected IPv4:port, "
                 "[IPv6]:port or *:port",
                 ":4: listen: \"localhost:9325\" is not a numeric address; expected IPv4:port, "
                 "[IPv6]:port or *:port");
    CHECK_ERRORS("[proxy]\nlisten =\n",
                 ":2: listen: \"\" is not valid; expected at least one IPv4:port, [IPv6]:port "
                 "or *:port");
    CHECK_ERRORS("[proxy]\nlisten = 0.0.0.0:25, *:25, [::]:25,\n",
                 ":2: listen: \"*:25\" is listed twice",
                 ":2: listen: \"0.0.0.0:25, *:25, [::]:25,\" has an empty item; expected "
                 "addresses separated by commas");
    char text[1024] = "[proxy]\nlisten = ";
    for (int port = 1; port <= CONF_LISTEN_MAX + 1; port++) {
        char item[32];
        snprintf(item, sizeof(item), "%s127.0.0.1:%d", port > 1 ? ", " : "", port);
        strcat(text, item);
    }
    strcat(text, "\n");
    CHECK_ERRORS(text, ":2: listen: too many addresses; at most 16 accepted");

    CHECK_ERRORS("[proxy]\nhostname = mail_relay\n[proxy]\nhostname = .example\n",
                 ":2: hostname: \"mail_relay\" is not valid; expected a host name of up to 255 "
                 "letters, digits, '-' and '.'",
                 ":4: hostname: given twice, first on line 2");
}

static void test_bad_lists(void)
{
    CHECK_ERRORS("[client_tls]\nnever_offer_to = 192.0.2.0/33, 2001:db8::/129, 10.0.0.0/8, "
                 "foo\nalways_offer_to = 192.0.2.0/, [::1]\n",
                 ":2: never_offer_to: \"192.0.2.0/33\" is not a valid network; expected an "
                 "IPv4 or IPv6 address, optionally with /prefix",
                 ":2: never_offer_to: \"2001:db8::/129\" is not a valid network; expected an "
                 "IPv4 or IPv6 address, optionally with /prefix",
                 ":2: never_offer_to: \"foo\" is not a valid network; expected an IPv4 or IPv6 "
                 "address, optionally with /prefix",
                 ":3: always_offer_to: \"192.0.2.0/\" is not a valid network; expected an IPv4 "
                 "or IPv6 address, optionally with /prefix",
                 ":3: always_offer_to: \"[::1]\" is not a valid network; expected an IPv4 or "
                 "IPv6 address, optionally with /prefix");
    CHECK_ERRORS("[upstream_tls]\nfallback_steps = tls12, tls13, TLS12\n[upstream_tls]\n"
                 "fallback_steps =\n",
                 ":2: fallback_steps: \"tls13\" is not valid; expected no-client-cert, tls12 or "
                 "cleartext",
                 ":2: fallback_steps: \"TLS12\" is listed twice",
                 ":4: fallback_steps: given twice, first on line 2");
    CHECK_ERRORS("[upstream_tls]\nfallback_steps =\n",
                 ":2: fallback_steps: \"\" is not valid; expected one or more of "
                 "no-client-cert, tls12 or cleartext");
    CHECK_ERRORS("[client_tls]\ncertificate = /nonexistent/cert.pem, /dev/null, "
                 "/dev/null, /dev/null, /dev/null\nkey = /dev/null,, /dev/null\n",
                 ":2: certificate: \"/nonexistent/cert.pem\" cannot be read: No such file or "
                 "directory",
                 ":2: certificate: too many paths; at most 4 accepted",
                 ":3: key: \"/dev/null,, /dev/null\" has an empty item; expected paths "
                 "separated by commas",
                 ":3: key: 4 certificate path(s) but 2 key path(s); expected one key per "
                 "certificate, in the same order");
    CHECK_ERRORS("[upstream_tls]\ncertificate = /nonexistent/c.pem\nkey = /nonexistent/k.pem\n"
                 "ca_file = /nonexistent/ca.pem\n",
                 ":2: certificate: \"/nonexistent/c.pem\" cannot be read: No such file or "
                 "directory",
                 ":3: key: \"/nonexistent/k.pem\" cannot be read: No such file or directory",
                 ":4: ca_file: \"/nonexistent/ca.pem\" cannot be read: No such file or "
                 "directory");
}

static void test_policy(void)
{
    CHECK_ERRORS("[upstream_policy]\nmay = *.example.com, mx.example.com\n"
                 "require = *.EXAMPLE.com, 10.1.2.3/8\noff = 10.0.0.0/8, MX.example.com.\n"
                 "off = *, foo_bar.com, 1.2.3, 10.0.0.0/40, *example.com, mx.example.com\n"
                 "may =\n",
                 ":3: require: \"*.EXAMPLE.com\" given twice, first on line 2",
                 ":4: off: \"10.0.0.0/8\" given twice, first on line 3",
                 ":4: off: \"MX.example.com.\" is not a valid pattern; expected *.domain, a host "
                 "name, an address or a network",
                 ":5: off: \"*\" is not a valid pattern; expected *.domain, a host name, an "
                 "address or a network",
                 ":5: off: \"foo_bar.com\" is not a valid pattern; expected *.domain, a host "
                 "name, an address or a network",
                 ":5: off: \"1.2.3\" is not a valid pattern; expected *.domain, a host name, an "
                 "address or a network",
                 ":5: off: \"10.0.0.0/40\" is not a valid pattern; expected *.domain, a host "
                 "name, an address or a network",
                 ":5: off: \"*example.com\" is not a valid pattern; expected *.domain, a host "
                 "name, an address or a network",
                 ":5: off: \"mx.example.com\" given twice, first on line 2",
                 ":6: may: \"\" is not valid; expected one or more patterns");

    /* At most CONF_POLICY_MAX patterns, over all lines. */
    size_t size = 64 * (CONF_POLICY_MAX + 1) + 64;
    char *text = malloc(size);
    CHECK(text != NULL);
    if (text == NULL) {
        return;
    }
    strcpy(text, "[upstream_policy]\n");
    for (int i = 0; i < CONF_POLICY_MAX; i++) {
        char line[64];
        snprintf(line, sizeof(line), "%s = host%d.example.com\n", i % 2 ? "may" : "off", i);
        strcat(text, line);
    }
    struct conf *conf = LOAD_OK(text);
    if (conf != NULL) {
        CHECK_INT(conf->n_policy, CONF_POLICY_MAX);
        CHECK_STR(conf->policy[CONF_POLICY_MAX - 1].name, "host255.example.com");
        CHECK_INT(conf->policy[CONF_POLICY_MAX - 1].starttls, CONF_BACK_STARTTLS_MAY);
    }
    conf_free(conf);
    strcat(text, "require = one.more.example\n");
    CHECK_ERRORS(text, ":258: require: too many patterns; at most 256 accepted");
    free(text);
}

static void test_duplicates(void)
{
    CHECK_ERRORS("[proxy]\nmode = forward\nmode = transparent\n[log]\nlevel = info\n[proxy]\n"
                 "MODE = forward\n",
                 ":3: mode: given twice, first on line 2",
                 ":7: mode: given twice, first on line 2");
}

static void test_cross_field(void)
{
    CHECK_ERRORS("[proxy]\nupstream =\nupstream_identity = spoof\n",
                 ":2: upstream: \"\" is not valid; expected host:port when mode = forward",
                 ":3: upstream_identity: \"spoof\" needs mode = transparent");
    CHECK_ERRORS("[client_tls]\nstarttls = strip\nrequire = on\ncertificate = /dev/null, "
                 "/dev/null\nkey = /dev/null\n",
                 ":3: require: TLS cannot be required with starttls = strip; expected off",
                 ":5: key: 2 certificate path(s) but 1 key path(s); expected one key per "
                 "certificate, in the same order");
    CHECK_ERRORS("[client_tls]\ncertificate = /dev/null\n",
                 ":2: certificate: 1 certificate path(s) but 0 key path(s); expected one key "
                 "per certificate, in the same order");
    CHECK_ERRORS("[upstream_tls]\nverify = ca\nkey = /dev/null\n",
                 ":3: key: \"/dev/null\" is given without certificate; expected both or neither",
                 ": ca_file: missing; a CA file is required when verify = ca");
    CHECK_ERRORS("[upstream_tls]\ncertificate = /dev/null\nverify = ca\nca_file =\n",
                 ":2: certificate: \"/dev/null\" is given without key; expected both or "
                 "neither",
                 ":4: ca_file: missing; a CA file is required when verify = ca");
}

/* Every error is reported, in file order, then the cross-field ones. */
static void test_many_errors(void)
{
    CHECK_ERRORS("[proxy]\nmode = fwd\nworkers = 0\nupstream_identity = spoof\n[tls]\n"
                 "starttls = offer\n[client_tls]\nlearn_ttl = 1y\n[timeouts]\nconnect = 1s\n"
                 "connect = 2s\n[log]\nlevel = loud\n",
                 ":2: mode: \"fwd\" is not valid; expected forward or transparent",
                 ":3: workers: \"0\" is out of range; expected auto or a number from 1 to 256",
                 ":5: [tls]: \"tls\" is not a section; expected proxy, client_tls, upstream_tls, "
                 "upstream_policy, timeouts, limits, recipient_policy, store, log or metrics",
                 ":8: learn_ttl: \"1y\" is not valid; expected a duration from 1s to 365d "
                 "(suffix ms, s, m, h or d)",
                 ":11: connect: given twice, first on line 10",
                 ":13: level: \"loud\" is not valid; expected error, warn, info or debug",
                 ":4: upstream_identity: \"spoof\" needs mode = transparent");
}

static void test_missing_file(void)
{
    check_errors_at(__LINE__, "/nonexistent/smtp-tls-proxy.ini",
                    WANT(": cannot open: No such file or directory"));
    /* Read errors fail the load; they are never taken for the end of the file. */
    check_errors_at(__LINE__, "/tmp", WANT(": cannot read: Is a directory"));
    char dir[] = "/tmp/test_conf-dir-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    check_errors_at(__LINE__, dir, WANT(": cannot read: Is a directory"));
    rmdir(dir);
    /* Page 0 of our own memory is unmapped: reading it fails with EIO. */
    check_errors_at(__LINE__, "/proc/self/mem", WANT(": cannot read: Input/output error"));
    conf_free(NULL);
    struct conf_errors errors = {NULL, 0};
    conf_errors_cleanup(&errors);
    conf_errors_cleanup(&errors);
}

static void test_parse_duration(void)
{
    static const struct {
        const char *text;
        uint64_t ms;
    } good[] = {
        {"250ms", 250},
        {"30s", 30000},
        {"5m", 300000},
        {"1h", 3600000},
        {"1d", 86400000},
        {"45", 45000},
        {"0", 0},
        {"007s", 7000},
        {"213503982334d", 213503982334ULL * 86400000ULL},
        {"18446744073709551615ms", UINT64_MAX},
    };
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        uint64_t ms = 1;
        CHECK(conf_parse_duration(&ms, good[i].text));
        CHECK_INT(ms == good[i].ms, 1);
    }
    static const char *const bad[] = {
        "",
        "-1",
        "1.5h",
        "30 s",
        " 5s",
        "5s ",
        "30S",
        "s",
        "ms",
        "1x",
        "1hour",
        "+5s",
        "5ss",
        "0x10",
        "1e3",
        "1d1",
        "5 ",
        "1h30m",
        "99999999999999999999d", /* too many digits */
        "213503982335d",         /* the multiplication overflows */
        "18446744073709551616ms",
        "18446744073709551615s",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        uint64_t ms = 12345;
        bool ok = conf_parse_duration(&ms, bad[i]);
        CHECK(!ok);
        if (ok) {
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        }
        CHECK_INT(ms, 12345);
    }
}

static void test_parse_size(void)
{
    static const struct {
        const char *text;
        uint64_t bytes;
    } good[] = {
        {"512", 512},       {"0", 0},
        {"64k", 65536},     {"64K", 65536},
        {"10M", 10485760},  {"10m", 10485760},
        {"1G", 1073741824}, {"17179869183G", 17179869183ULL << 30},
    };
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        uint64_t bytes = 1;
        CHECK(conf_parse_size(&bytes, good[i].text));
        CHECK_INT(bytes == good[i].bytes, 1);
    }
    static const char *const bad[] = {
        "",
        "-1",
        "1T",
        "1kb",
        "k",
        "1.5k",
        " 1k",
        "1k ",
        "1 k",
        "17179869184G",
        "99999999999999999999",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        uint64_t bytes = 12345;
        bool ok = conf_parse_size(&bytes, bad[i]);
        CHECK(!ok);
        if (ok) {
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        }
        CHECK_INT(bytes, 12345);
    }
}

static void test_parse_addr(void)
{
    struct conf_addr addr;
    CHECK(conf_parse_addr(&addr, "127.0.0.1:25"));
    check_addr(&addr, "127.0.0.1", 25, AF_INET);
    CHECK(conf_parse_addr(&addr, "[2001:db8::1]:587"));
    check_addr(&addr, "2001:db8::1", 587, AF_INET6);
    CHECK(conf_parse_addr(&addr, "[::]:65535"));
    check_addr(&addr, "::", 65535, AF_INET6);
    CHECK(conf_parse_addr(&addr, "*:25"));
    check_addr(&addr, "0.0.0.0", 25, AF_INET);
    CHECK(conf_parse_addr(&addr, "mx-1.Example.com:2525"));
    check_addr(&addr, "mx-1.Example.com", 2525, AF_UNSPEC);
    CHECK(conf_parse_addr(&addr, "localhost:1"));
    check_addr(&addr, "localhost", 1, AF_UNSPEC);

    char longest[CONF_HOST_MAX + 16];
    memset(longest, 'a', CONF_HOST_MAX);
    strcpy(longest + CONF_HOST_MAX, ":25");
    CHECK(conf_parse_addr(&addr, longest));
    CHECK_INT(strlen(addr.host), CONF_HOST_MAX);
    memset(longest, 'a', CONF_HOST_MAX + 1);
    strcpy(longest + CONF_HOST_MAX + 1, ":25");
    CHECK(!conf_parse_addr(&addr, longest));

    static const char *const bad[] = {
        "",
        "::1:25",
        "[::1]",
        "[::1]25",
        "[::1",
        "[192.0.2.1]:25",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:+25",
        "127.0.0.1:25x",
        ":25",
        "[]:25",
        "bad_host:25",
        "1.2.3:25",
        "a..b:25",
        ".example.com:25",
        "example.com.:25",
        "host name:25",
        "[*]:25",
        "127.0.0.1:-1",
        "[fe80::1%eth0]:25",
        "256.0.0.1:25",
        "*:99999999999999999999",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        bool ok = conf_parse_addr(&addr, bad[i]);
        CHECK(!ok);
        if (ok) {
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        }
    }
}

static void test_parse_cidr(void)
{
    struct conf_cidr cidr;
    CHECK(conf_parse_cidr(&cidr, "192.0.2.1"));
    CHECK_INT(cidr.family, AF_INET);
    CHECK_INT(cidr.prefix_len, 32);
    CHECK_MEM(cidr.addr, 4, "\xc0\x00\x02\x01", 4);
    CHECK(conf_parse_cidr(&cidr, "192.0.2.0/24"));
    CHECK_INT(cidr.prefix_len, 24);
    CHECK_MEM(cidr.addr, 4, "\xc0\x00\x02\x00", 4);
    /* Host bits are cleared. */
    CHECK(conf_parse_cidr(&cidr, "10.1.2.3/12"));
    CHECK_INT(cidr.prefix_len, 12);
    CHECK_MEM(cidr.addr, 4, "\x0a\x00\x00\x00", 4);
    CHECK(conf_parse_cidr(&cidr, "0.0.0.0/0"));
    CHECK_INT(cidr.prefix_len, 0);
    CHECK(conf_parse_cidr(&cidr, "2001:db8::/32"));
    CHECK_INT(cidr.family, AF_INET6);
    CHECK_INT(cidr.prefix_len, 32);
    CHECK_MEM(cidr.addr, 16, "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\0", 16);
    CHECK(conf_parse_cidr(&cidr, "2001:db8::ff/121"));
    CHECK_MEM(cidr.addr, 16, "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x80", 16);
    CHECK(conf_parse_cidr(&cidr, "::1"));
    CHECK_INT(cidr.prefix_len, 128);
    CHECK(conf_parse_cidr(&cidr, "::/0"));
    CHECK_INT(cidr.prefix_len, 0);

    static const char *const bad[] = {
        "",
        "192.0.2.0/33",
        "2001:db8::/129",
        "192.0.2.0/",
        "/24",
        "192.0.2.0/-1",
        "192.0.2.0/24x",
        "foo",
        "[::1]",
        "192.0.2.0/ 24",
        "192.0.2",
        "192.0.2.0/+8",
        "1.2.3.4.5",
        "192.0.2.0/99999999999999999999",
        "0000:0000:0000:0000:0000:ffff:192.168.100.200/128x",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        bool ok = conf_parse_cidr(&cidr, bad[i]);
        CHECK(!ok);
        if (ok) {
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        }
    }
}

static bool match(const char *network, const char *address)
{
    struct conf_cidr cidr;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (!conf_parse_cidr(&cidr, network)) {
        fprintf(stderr, "  bad network \"%s\"\n", network);
        return false;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, address, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
    } else if (inet_pton(AF_INET6, address, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
    } else {
        fprintf(stderr, "  bad address \"%s\"\n", address);
        return false;
    }
    return conf_cidr_match(&cidr, (const struct sockaddr *)&ss);
}

static void test_cidr_match(void)
{
    CHECK(match("192.0.2.0/24", "192.0.2.77"));
    CHECK(match("192.0.2.0/24", "192.0.2.0"));
    CHECK(match("192.0.2.0/24", "192.0.2.255"));
    CHECK(!match("192.0.2.0/24", "192.0.3.1"));
    CHECK(match("192.0.2.16/28", "192.0.2.31"));
    CHECK(!match("192.0.2.16/28", "192.0.2.32"));
    CHECK(!match("192.0.2.16/28", "192.0.2.15"));
    CHECK(match("192.0.2.1", "192.0.2.1"));
    CHECK(!match("192.0.2.1", "192.0.2.2"));
    CHECK(match("0.0.0.0/0", "203.0.113.9"));
    CHECK(!match("0.0.0.0/0", "2001:db8::1"));

    CHECK(match("2001:db8::/32", "2001:db8:1::5"));
    CHECK(!match("2001:db8::/32", "2001:db9::"));
    CHECK(match("2001:db8::/127", "2001:db8::1"));
    CHECK(!match("2001:db8::/127", "2001:db8::2"));
    CHECK(match("::/0", "::1"));
    CHECK(!match("::/0", "192.0.2.1"));

    /* An IPv4-mapped IPv6 address matches IPv4 networks, and not other IPv6 ones. */
    CHECK(match("192.0.2.0/24", "::ffff:192.0.2.5"));
    CHECK(!match("192.0.2.0/24", "::ffff:198.51.100.1"));
    CHECK(!match("192.0.2.0/24", "::192.0.2.5"));
    CHECK(!match("192.0.2.0/24", "64:ff9b::192.0.2.5"));
    CHECK(match("0.0.0.0/0", "::ffff:10.0.0.1"));
    CHECK(!match("0.0.0.0/0", "2001:db8::1"));
    CHECK(match("::ffff:0:0/96", "::ffff:192.0.2.5"));

    struct conf_cidr cidr;
    CHECK(conf_parse_cidr(&cidr, "0.0.0.0/0"));
    struct sockaddr_un unix_sa = {.sun_family = AF_UNIX};
    CHECK(!conf_cidr_match(&cidr, (const struct sockaddr *)&unix_sa));
}

static void test_policy_lookup(void)
{
    struct conf *conf = load_ok_at(__LINE__, "[upstream_policy]\n"
                                             "off = *.example.com, 192.0.2.0/24\n"
                                             "may = *.mx.example.com, 192.0.2.128/25\n"
                                             "require = mx1.mx.example.com, 2001:db8::/32\n");
    if (conf == NULL) {
        return;
    }
    enum conf_back_starttls got = CONF_BACK_STARTTLS_MAY;
    const char *exact[] = {"MX1.mx.example.com"};
    CHECK(conf_policy_lookup(&got, conf, exact, 1, NULL));
    CHECK_INT(got, CONF_BACK_STARTTLS_REQUIRE);
    const char *longer_suffix[] = {NULL, "mx2.mx.example.com"};
    CHECK(conf_policy_lookup(&got, conf, longer_suffix, 2, NULL));
    CHECK_INT(got, CONF_BACK_STARTTLS_MAY);
    const char *short_suffix[] = {"a.example.com"};
    CHECK(conf_policy_lookup(&got, conf, short_suffix, 1, NULL));
    CHECK_INT(got, CONF_BACK_STARTTLS_OFF);
    const char *bare[] = {"example.com"}; /* "*.example.com" names what is under it */
    CHECK(!conf_policy_lookup(&got, conf, bare, 1, NULL));

    struct sockaddr_in in = {.sin_family = AF_INET};
    inet_pton(AF_INET, "192.0.2.200", &in.sin_addr);
    CHECK(conf_policy_lookup(&got, conf, NULL, 0, (struct sockaddr *)&in));
    CHECK_INT(got, CONF_BACK_STARTTLS_MAY); /* /25 beats /24 */
    inet_pton(AF_INET, "192.0.2.1", &in.sin_addr);
    CHECK(conf_policy_lookup(&got, conf, NULL, 0, (struct sockaddr *)&in));
    CHECK_INT(got, CONF_BACK_STARTTLS_OFF);
    /* A name beats an address, whatever the prefix length. */
    CHECK(conf_policy_lookup(&got, conf, exact, 1, (struct sockaddr *)&in));
    CHECK_INT(got, CONF_BACK_STARTTLS_REQUIRE);
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2001:db8::25", &in6.sin6_addr);
    CHECK(conf_policy_lookup(&got, conf, NULL, 0, (struct sockaddr *)&in6));
    CHECK_INT(got, CONF_BACK_STARTTLS_REQUIRE);
    inet_pton(AF_INET, "198.51.100.1", &in.sin_addr);
    CHECK(!conf_policy_lookup(&got, conf, NULL, 0, (struct sockaddr *)&in));
    conf_free(conf);
}

/* [limits] and [store]: values, "off", the URL and its errors (never echoing a password),
 * and the password file. */
static void test_limits_and_store(void)
{
    struct conf *c = LOAD_OK("[limits]\nclient_sessions = off\nclient_session_rate = 30\n"
                             "client_message_rate = 100\nwindow = 2s\nipv6_prefix = 48\n"
                             "exempt = 192.0.2.0/24, 2001:db8::/32\nreserve = 0\n"
                             "max_clients = 5\n");
    if (c != NULL) {
        CHECK_INT(c->limits.sessions, 0);
        CHECK_INT(c->limits.session_rate, 30);
        CHECK_INT(c->limits.message_rate, 100);
        CHECK_INT(c->limits.window_ms, 2000);
        CHECK_INT(c->limits.ipv6_prefix, 48);
        CHECK_INT(c->limits.n_exempt, 2);
        CHECK_INT(c->limits.reserve, 0);
        CHECK_INT(c->limits.max_clients, 5);
        CHECK(!c->store.enabled);
        CHECK_INT(c->store.timeout_ms, 50);
        CHECK_STR(c->store.prefix, "smtp-tls-proxy:");
    }
    conf_free(c);
    CHECK_ERRORS("[limits]\nipv6_prefix = 8\nwindow = 500ms\nclient_sessions = 0\n",
                 ":2: ipv6_prefix: \"8\" is out of range; expected a number from 16 to 128",
                 ":3: window: \"500ms\" is out of range; expected a duration from 1s to 1d "
                 "(suffix ms, s, m, h or d)",
                 ":4: client_sessions: \"0\" is out of range; expected off or a number from 1 "
                 "to 1000000");

    c = LOAD_OK("[store]\nredis = redis://proxy:pa%24s@redis.internal:6380/3\ntimeout = 5ms\n"
                "prefix = mx-fleet/a:\n");
    if (c != NULL) {
        CHECK(c->store.enabled);
        CHECK_STR(c->store.redis.host, "redis.internal");
        CHECK_INT(c->store.redis.port, 6380);
        CHECK_INT(c->store.redis.db, 3);
        CHECK_STR(c->store.redis.user, "proxy");
        CHECK_STR(c->store.redis.password, "pa$s");
        CHECK_INT(c->store.timeout_ms, 5);
        CHECK_STR(c->store.prefix, "mx-fleet/a:");
    }
    conf_free(c);
    /* Errors name the problem; the value (which may hold a password) is not repeated. */
    CHECK_ERRORS("[store]\nredis = redis://user:hunter2@\nprefix = a b\ntimeout = 0\n",
                 ":2: redis: the URL has no host",
                 ":3: prefix: \"a b\" is not valid; expected 1 to 64 letters, digits and "
                 "\":_.-/\"",
                 ":4: timeout: \"0\" is out of range; expected a duration from 1ms to 10s "
                 "(suffix ms, s, m, h or d)");
    CHECK_ERRORS("[store]\nredis = rediss://h\n", ":2: redis: the URL is not a redis:// URL "
                                                  "(redis://[[user]:password@]host[:port][/db])");

    char *secret = write_file("s3cret\nignored\n");
    char text[512];
    snprintf(text, sizeof(text), "[store]\nredis = redis://redis\npassword_file = %s\n", secret);
    c = LOAD_OK(text);
    if (c != NULL) {
        CHECK_STR(c->store.redis.password, "s3cret");
    }
    conf_free(c);
    snprintf(text, sizeof(text), "[store]\npassword_file = %s\n", secret);
    CHECK_ERRORS(text, ":2: password_file: is given without redis; expected both or neither");
    unlink(secret);
    free(secret);
    char *empty = write_file("\n");
    snprintf(text, sizeof(text), "[store]\nredis = redis://redis\npassword_file = %s\n", empty);
    char want[512];
    snprintf(want, sizeof(want),
             ":3: password_file: \"%s\" must hold the password on its first line, 1 to 255 "
             "bytes",
             empty);
    CHECK_ERRORS(text, want);
    unlink(empty);
    free(empty);
}

int main(void)
{
    test_policy_lookup();
    test_defaults();
    test_shipped_config();
    test_every_key();
    test_syntax_variants();
    test_long_lines();
    test_reading_stops();
    test_syntax_errors();
    test_unknown_names();
    test_bad_enums();
    test_bare_newline_and_client_certificate();
    test_bad_numbers();
    test_bad_addresses();
    test_bad_lists();
    test_policy();
    test_duplicates();
    test_cross_field();
    test_many_errors();
    test_missing_file();
    test_parse_duration();
    test_parse_size();
    test_parse_addr();
    test_parse_cidr();
    test_cidr_match();
    test_limits_and_store();
    return check_exit("test_conf");
}
