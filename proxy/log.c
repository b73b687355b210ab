/*
 * log: one event per line on stderr, text ("id event key=value ...") or JSON.
 *
 * Each line is formatted into a local buffer and written with one write(), so lines from
 * different worker threads never interleave. errno is preserved across every call.
 */
#include "log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static _Atomic int log_level = CONF_LOG_INFO;
static _Atomic int log_format = CONF_LOG_TEXT;

static const char *const log_level_names[] = {
    [CONF_LOG_ERROR] = "error",
    [CONF_LOG_WARN] = "warn",
    [CONF_LOG_INFO] = "info",
    [CONF_LOG_DEBUG] = "debug",
};

void log_setup(enum conf_log_level level, enum conf_log_format format)
{
    log_level = level;
    log_format = format;
}

int log_enabled(enum conf_log_level level)
{
    return (int)level <= log_level;
}

static void log_write(const char *line, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, line, len);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        line += n;
        len -= (size_t)n;
    }
}

/* log_append adds printf output at *pos, never past the end of |out|. */
static void log_append(char *out, size_t out_size, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void log_append(char *out, size_t out_size, size_t *pos, const char *fmt, ...)
{
    if (*pos >= out_size) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + *pos, out_size - *pos, fmt, ap);
    va_end(ap);
    if (n > 0) {
        *pos += (size_t)n;
        if (*pos >= out_size) {
            *pos = out_size - 1;
        }
    }
}

/*
 * log_pairs_to_json turns 'k=v k2="v w"' into ',"k":"v","k2":"v w"'. Values made only of
 * digits stay numbers. Values were escaped by the caller (log_escape keeps no '"' or
 * '\\' inside), so they need no further escaping here.
 */
static void log_pairs_to_json(char *out, size_t out_size, size_t *pos, const char *pairs)
{
    const char *p = pairs;
    while (*p != '\0') {
        while (*p == ' ') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        const char *key = p;
        while (*p != '\0' && *p != '=' && *p != ' ') {
            p++;
        }
        size_t key_len = (size_t)(p - key);
        const char *value = "";
        size_t value_len = 0;
        bool quoted = false;
        if (*p == '=') {
            p++;
            if (*p == '"') {
                quoted = true;
                value = ++p;
                while (*p != '\0' && *p != '"') {
                    p++;
                }
                value_len = (size_t)(p - value);
                if (*p == '"') {
                    p++;
                }
            } else {
                value = p;
                while (*p != '\0' && *p != ' ') {
                    p++;
                }
                value_len = (size_t)(p - value);
            }
        }
        bool number = !quoted && value_len > 0 && value_len < 19;
        for (size_t i = 0; number && i < value_len; i++) {
            number = value[i] >= '0' && value[i] <= '9';
        }
        if (number) {
            log_append(out, out_size, pos, ",\"%.*s\":%.*s", (int)key_len, key, (int)value_len,
                       value);
        } else {
            /* log_escape() wrote odd bytes as \xHH, which JSON does not know: \u00HH. */
            log_append(out, out_size, pos, ",\"%.*s\":\"", (int)key_len, key);
            for (size_t i = 0; i < value_len; i++) {
                if (value[i] == '\\' && i + 3 < value_len && value[i + 1] == 'x') {
                    log_append(out, out_size, pos, "\\u00%.2s", value + i + 2);
                    i += 3;
                } else if (value[i] == '\\') {
                    log_append(out, out_size, pos, "\\\\");
                } else if ((unsigned char)value[i] < 0x20) {
                    log_append(out, out_size, pos, "\\u%04x", (unsigned char)value[i]);
                } else {
                    log_append(out, out_size, pos, "%c", value[i]);
                }
            }
            log_append(out, out_size, pos, "\"");
        }
    }
}

void log_event(enum conf_log_level level, unsigned long long id, const char *event, const char *fmt,
               ...)
{
    if (!log_enabled(level)) {
        return;
    }
    int saved_errno = errno;
    char pairs[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pairs, sizeof(pairs), fmt, ap);
    va_end(ap);

    char line[LOG_LINE_MAX + 256];
    size_t pos = 0;
    if (log_format == CONF_LOG_JSON) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        char when[32];
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
        log_append(line, sizeof(line), &pos, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\"", when,
                   now.tv_nsec / 1000000, log_level_names[level]);
        if (id != 0) {
            log_append(line, sizeof(line), &pos, ",\"session\":\"%016llx\"", id);
        }
        log_append(line, sizeof(line), &pos, ",\"event\":\"%s\"", event);
        log_pairs_to_json(line, sizeof(line), &pos, pairs);
        log_append(line, sizeof(line), &pos, "}\n");
    } else {
        if (id != 0) {
            log_append(line, sizeof(line), &pos, "%016llx ", id);
        }
        /* STYLE.md's line: "<id> <event> key=value ..."; the level is the event's own. */
        log_append(line, sizeof(line), &pos, "%s%s%s\n", event, pairs[0] != '\0' ? " " : "", pairs);
    }
    if (pos > 0 && line[pos - 1] != '\n') {
        line[pos - 1] = '\n';
    }
    log_write(line, pos);
    errno = saved_errno;
}

void log_fatal(const char *fmt, ...)
{
    int saved_errno = errno;
    char line[LOG_LINE_MAX];
    size_t pos = 0;
    log_append(line, sizeof(line), &pos, "smtp-tls-proxy: ");
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line + pos, sizeof(line) - pos - 1, fmt, ap);
    va_end(ap);
    if (n > 0) {
        pos += (size_t)n < sizeof(line) - pos - 1 ? (size_t)n : sizeof(line) - pos - 2;
    }
    line[pos++] = '\n';
    log_write(line, pos);
    errno = saved_errno;
}

char *log_escape(char *out, size_t out_size, const char *in, size_t in_len, size_t max_in)
{
    static const char hex[] = "0123456789abcdef";
    size_t pos = 0;
    size_t n = in_len < max_in ? in_len : max_in;
    if (out_size == 0) {
        return out;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        bool plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
        size_t need = plain ? 1 : 4;
        if (pos + need + 4 > out_size) {
            n = i; /* truncated: room left for "..." */
            in_len = n + 1;
            break;
        }
        if (plain) {
            out[pos++] = (char)c;
        } else {
            out[pos++] = '\\';
            out[pos++] = 'x';
            out[pos++] = hex[c >> 4];
            out[pos++] = hex[c & 0xf];
        }
    }
    if (n < in_len && pos + 4 <= out_size) {
        memcpy(out + pos, "...", 3);
        pos += 3;
    }
    out[pos < out_size ? pos : out_size - 1] = '\0';
    return out;
}
