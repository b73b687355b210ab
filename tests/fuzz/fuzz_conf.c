/*
 * fuzz_conf: libFuzzer target for conf_load(), the INI configuration reader. The input is
 * the file: it is written to one memfd created at start and loaded through its
 * /proc/self/fd path, twice. LeakSanitizer checks that conf_free() and
 * conf_errors_cleanup() release everything. Checked: a load either succeeds with no error
 * lines or fails with at least one; every error line is one line starting with the path
 * and ':', and the line number after it, if any, is a line of the input; a second load
 * gives the same answer; a loaded struct conf keeps its counts within their arrays and
 * its host names NUL-terminated and non-empty where the header promises it.
 */
#include "conf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_ASSERT(%s) failed\n", __FILE__, __LINE__, #cond);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static int fuzz_fd = -1;
static char fuzz_path[64];

/* Writes the input as the whole content of the memfd. */
static void fuzz_write_file(const uint8_t *data, size_t size)
{
    if (fuzz_fd == -1) {
        fuzz_fd = memfd_create("fuzz_conf.ini", MFD_CLOEXEC);
        FUZZ_ASSERT(fuzz_fd != -1);
        snprintf(fuzz_path, sizeof(fuzz_path), "/proc/self/fd/%d", fuzz_fd);
    }
    FUZZ_ASSERT(ftruncate(fuzz_fd, 0) == 0);
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fuzz_fd, data + done, size - done, (off_t)done);
        FUZZ_ASSERT(n > 0);
        done += (size_t)n;
    }
}

/* How many lines getline() sees in the input: a last line without '\n' counts. */
static size_t fuzz_count_lines(const uint8_t *data, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < size; i++) {
        n += data[i] == '\n';
    }
    return n + (size > 0 && data[size - 1] != '\n');
}

static void fuzz_check_errors(const struct conf_errors *errors, size_t n_input_lines)
{
    size_t path_len = strlen(fuzz_path);
    for (size_t i = 0; i < errors->n_lines; i++) {
        const char *line = errors->lines[i];
        FUZZ_ASSERT(line != NULL);
        FUZZ_ASSERT(strncmp(line, fuzz_path, path_len) == 0 && line[path_len] == ':');
        FUZZ_ASSERT(strchr(line, '\n') == NULL);
        const char *p = line + path_len + 1;
        if (*p >= '0' && *p <= '9') {
            char *end;
            unsigned long lineno = strtoul(p, &end, 10);
            FUZZ_ASSERT(*end == ':');
            FUZZ_ASSERT(lineno >= 1 && lineno <= n_input_lines);
        }
    }
}

static bool fuzz_host_ok(const char *host)
{
    return memchr(host, '\0', CONF_HOST_MAX + 1) != NULL;
}

static void fuzz_check_conf(const struct conf *conf)
{
    FUZZ_ASSERT(conf->path != NULL && strcmp(conf->path, fuzz_path) == 0);
    FUZZ_ASSERT(conf->n_listen <= CONF_LISTEN_MAX);
    for (size_t i = 0; i < conf->n_listen; i++) {
        FUZZ_ASSERT(fuzz_host_ok(conf->listen[i].host));
        FUZZ_ASSERT(conf->listen[i].sa_len <= sizeof(conf->listen[i].sa));
    }
    FUZZ_ASSERT(fuzz_host_ok(conf->upstream.host));
    FUZZ_ASSERT(conf->upstream.sa_len <= sizeof(conf->upstream.sa));
    FUZZ_ASSERT(fuzz_host_ok(conf->hostname) && conf->hostname[0] != '\0');
    FUZZ_ASSERT(conf->front_tls.n_certificate <= CONF_CERT_MAX);
    for (size_t i = 0; i < conf->front_tls.n_certificate; i++) {
        FUZZ_ASSERT(conf->front_tls.certificate[i] != NULL && conf->front_tls.key[i] != NULL);
    }
    FUZZ_ASSERT(conf->front_tls.n_never_offer_to <= CONF_CIDR_MAX);
    FUZZ_ASSERT(conf->front_tls.n_always_offer_to <= CONF_CIDR_MAX);
    FUZZ_ASSERT(conf->back_tls.n_fallback_steps <= CONF_FALLBACK_STEPS_MAX);
    FUZZ_ASSERT((conf->back_tls.certificate == NULL) == (conf->back_tls.key == NULL));
    FUZZ_ASSERT(conf->n_policy <= CONF_POLICY_MAX);
    for (size_t i = 0; i < conf->n_policy; i++) {
        FUZZ_ASSERT(fuzz_host_ok(conf->policy[i].name));
    }
    FUZZ_ASSERT(conf->metrics_enabled == (conf->metrics_listen.port != 0));
    FUZZ_ASSERT(fuzz_host_ok(conf->metrics_listen.host));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write_file(data, size);
    size_t n_input_lines = fuzz_count_lines(data, size);

    struct conf_errors errors;
    struct conf *conf = conf_load(&errors, fuzz_path);
    fuzz_check_errors(&errors, n_input_lines);
    if (conf != NULL) {
        FUZZ_ASSERT(errors.n_lines == 0);
        fuzz_check_conf(conf);
    } else {
        FUZZ_ASSERT(errors.n_lines >= 1);
    }

    /* Loading is a function of the file alone. */
    struct conf_errors again_errors;
    struct conf *again = conf_load(&again_errors, fuzz_path);
    FUZZ_ASSERT((again == NULL) == (conf == NULL));
    FUZZ_ASSERT(again_errors.n_lines == errors.n_lines);
    for (size_t i = 0; i < errors.n_lines; i++) {
        FUZZ_ASSERT(strcmp(again_errors.lines[i], errors.lines[i]) == 0);
    }
    if (conf != NULL) {
        FUZZ_ASSERT(again->n_listen == conf->n_listen && again->n_policy == conf->n_policy);
        FUZZ_ASSERT(strcmp(again->hostname, conf->hostname) == 0);
        FUZZ_ASSERT(again->max_line_len == conf->max_line_len);
    }

    conf_free(again);
    conf_errors_cleanup(&again_errors);
    conf_free(conf);
    conf_errors_cleanup(&errors);
    /* The struct may be reused after cleanup. */
    FUZZ_ASSERT(errors.lines == NULL && errors.n_lines == 0);
    return 0;
}
