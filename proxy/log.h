/*
 * log: one event per line on stderr, as text ("key=value") or JSON.
 *
 * Safe to call from every worker thread (each line is written with one write()).
 * Logging never changes errno. Received text must go through log_escape() first.
 */
#ifndef PROXY_LOG_H
#define PROXY_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include "conf.h"

/* log_setup sets the level and the format; before it is called: info, text. */
void log_setup(enum conf_log_level level, enum conf_log_format format);

/* log_enabled tells whether messages of |level| are written. */
int log_enabled(enum conf_log_level level);

/*
 * log_event writes one event line. |id| is a session id (0: none), |event| one word,
 * and |fmt| the rest as space-separated key=value pairs, values with spaces quoted
 * ("reason=\"x y\""). In JSON format the pairs become fields.
 */
void log_event(enum conf_log_level level, unsigned long long id, const char *event, const char *fmt,
               ...) __attribute__((format(printf, 4, 5)));

#define log_error(id, event, ...) log_event(CONF_LOG_ERROR, (id), (event), __VA_ARGS__)
#define log_warn(id, event, ...) log_event(CONF_LOG_WARN, (id), (event), __VA_ARGS__)
#define log_info(id, event, ...) log_event(CONF_LOG_INFO, (id), (event), __VA_ARGS__)
#define log_debug(id, event, ...)                                                                  \
    do {                                                                                           \
        if (log_enabled(CONF_LOG_DEBUG)) {                                                         \
            log_event(CONF_LOG_DEBUG, (id), (event), __VA_ARGS__);                                 \
        }                                                                                          \
    } while (0)

/*
 * log_fatal prints a startup error ("smtp-tls-proxy: ...") to stderr, unformatted by
 * level or format, for main.c before it exits.
 */
void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * log_escape copies at most |max_in| bytes of untrusted |in| into |out| (size
 * |out_size|, always NUL-terminated): printable ASCII is kept except '"' and '\\',
 * everything else becomes \xHH; "..." marks truncation. Returns |out|.
 */
char *log_escape(char *out, size_t out_size, const char *in, size_t in_len, size_t max_in);

#endif
