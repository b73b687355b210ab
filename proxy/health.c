/*
 * health: the --health probe. One SMTP session to the proxy's own listener: connect, read
 * the greeting, QUIT. Sockets are non-blocking only so that poll() can hold every step to
 * one deadline; nothing here touches libuv, threads or the running proxy's state.
 */
#include "health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "log.h"
#include "smtp.h"

/* How much of the greeting's text is quoted in the message. */
#define HEALTH_QUOTE_MAX 200

/* One probe in progress. */
struct health_probe_state {
    int fd;
    uint64_t deadline_ms;
    char in[SMTP_REPLY_LINE_MAX];
    size_t in_len;
};

static uint64_t health_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* health_wait polls |fd| for |events| until the deadline; returns 0, -ETIMEDOUT or -errno. */
static int health_wait(const struct health_probe_state *p, short events)
{
    for (;;) {
        uint64_t now = health_now_ms();
        if (now >= p->deadline_ms) {
            return -ETIMEDOUT;
        }
        struct pollfd pfd = {.fd = p->fd, .events = events};
        int n = poll(&pfd, 1, (int)(p->deadline_ms - now));
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n > 0) {
            return 0;
        }
    }
}

/*
 * health_target is where to reach a listen address from this host: a wildcard listener
 * is reached through loopback of the same family, any other address as it is.
 */
static void health_target(struct sockaddr_storage *out, socklen_t *out_len,
                          const struct conf_addr *addr)
{
    memcpy(out, &addr->sa, sizeof(*out));
    *out_len = addr->sa_len;
    if (out->ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        if (sin->sin_addr.s_addr == htonl(INADDR_ANY)) {
            sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        }
    } else if (out->ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
        if (IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr)) {
            sin6->sin6_addr = in6addr_loopback;
        }
    }
}

/* health_connect opens p->fd to |sa|; returns 0 or a negative errno (-ETIMEDOUT). */
static int health_connect(struct health_probe_state *p, const struct sockaddr_storage *sa,
                          socklen_t sa_len)
{
    p->fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd == -1) {
        return -errno;
    }
    if (connect(p->fd, (const struct sockaddr *)sa, sa_len) == 0) {
        return 0;
    }
    if (errno != EINPROGRESS) {
        return -errno;
    }
    int rc = health_wait(p, POLLOUT);
    if (rc != 0) {
        return rc;
    }
    int err = 0;
    socklen_t err_len = sizeof(err);
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &err_len) == -1) {
        return -errno;
    }
    return -err;
}

/* Outcomes of reading one reply. */
enum health_read {
    HEALTH_READ_OK = 0,
    HEALTH_READ_TIMEOUT,   /* the deadline passed first */
    HEALTH_READ_CLOSED,    /* EOF before a complete reply */
    HEALTH_READ_ERROR,     /* a socket error; errno-style code in *out_err */
    HEALTH_READ_MALFORMED, /* not an SMTP reply, or a line over SMTP_REPLY_LINE_MAX */
};

/*
 * health_read_reply reads one whole (possibly multi-line) reply. On HEALTH_READ_OK,
 * *out_code is its code and |out_line| (size |out_line_size|) holds its last line,
 * escaped. Bytes after the reply are kept in p->in.
 */
static enum health_read health_read_reply(struct health_probe_state *p, int *out_code, int *out_err,
                                          char *out_line, size_t out_line_size)
{
    struct smtp_reply_parser parser;
    smtp_reply_parser_init(&parser);
    *out_code = 0;
    *out_err = 0;
    for (;;) {
        size_t line_len = 0;
        size_t eol_len = 0;
        enum smtp_result found =
            smtp_line_find(&line_len, &eol_len, p->in, p->in_len, sizeof(p->in));
        if (found == SMTP_TOO_LONG) {
            log_escape(out_line, out_line_size, p->in, p->in_len, HEALTH_QUOTE_MAX);
            return HEALTH_READ_MALFORMED;
        }
        if (found == SMTP_OK) {
            /* A bare LF is tolerated: the probe asks whether the proxy answers, not how
             * strictly the upstream's greeting follows RFC 5321. */
            size_t text_len = line_len;
            if (text_len > 0 && p->in[text_len - 1] == '\r') {
                text_len--;
            }
            int code = 0;
            bool done = false;
            if (smtp_reply_parse_line(&parser, &code, &done, p->in, text_len) != SMTP_OK) {
                log_escape(out_line, out_line_size, p->in, text_len, HEALTH_QUOTE_MAX);
                return HEALTH_READ_MALFORMED;
            }
            if (done) {
                log_escape(out_line, out_line_size, p->in, text_len, HEALTH_QUOTE_MAX);
            }
            size_t used = line_len + eol_len;
            memmove(p->in, p->in + used, p->in_len - used);
            p->in_len -= used;
            if (done) {
                *out_code = code;
                return HEALTH_READ_OK;
            }
            continue;
        }
        int rc = health_wait(p, POLLIN);
        if (rc == -ETIMEDOUT) {
            return HEALTH_READ_TIMEOUT;
        }
        if (rc != 0) {
            *out_err = -rc;
            return HEALTH_READ_ERROR;
        }
        ssize_t n = recv(p->fd, p->in + p->in_len, sizeof(p->in) - p->in_len, 0);
        if (n == 0) {
            return HEALTH_READ_CLOSED;
        }
        if (n == -1) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
                continue;
            }
            *out_err = errno;
            return HEALTH_READ_ERROR;
        }
        p->in_len += (size_t)n;
    }
}

/*
 * health_quit ends the session politely so that the proxy logs end=quit rather than a
 * client that vanished. Its outcome does not change the verdict: the greeting decided.
 */
static void health_quit(struct health_probe_state *p)
{
    static const char quit[] = "QUIT\r\n";
    if (send(p->fd, quit, sizeof(quit) - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof(quit) - 1)) {
        return;
    }
    int code;
    int err;
    char line[HEALTH_QUOTE_MAX + 8];
    health_read_reply(p, &code, &err, line, sizeof(line));
}

/* health_unreachable_here tells connect errors meaning "this address cannot be used from
 * here at all" (no such address or route in this network namespace) from refusals. */
static bool health_unreachable_here(int err)
{
    return err == EADDRNOTAVAIL || err == ENETUNREACH || err == EAFNOSUPPORT || err == EHOSTUNREACH;
}

/* health_connect_any connects to the first listen address that answers (*out_where names
 * it, or the first one tried). Returns 0, or -1 with |out_msg| saying why. */
static int health_connect_any(struct health_probe_state *p, char *out_where, size_t where_len,
                              const struct conf *conf, char *out_msg, size_t out_msg_len)
{
    int rc = 0;
    for (size_t i = 0; i < conf->n_listen; i++) {
        struct sockaddr_storage sa;
        socklen_t sa_len;
        health_target(&sa, &sa_len, &conf->listen[i]);
        char here[INET6_ADDRSTRLEN + 16];
        addr_format(here, sizeof(here), (const struct sockaddr *)&sa);
        int try_rc = health_connect(p, &sa, sa_len);
        bool unreachable = try_rc != 0 && health_unreachable_here(-try_rc);
        /* Report the first address, unless a later one got further than "unreachable". */
        if (i == 0 || !unreachable) {
            rc = try_rc;
            snprintf(out_where, where_len, "%s", here);
        }
        if (!unreachable) {
            break;
        }
        if (p->fd != -1) {
            close(p->fd);
            p->fd = -1;
        }
    }
    if (rc == 0) {
        return 0;
    }
    if (rc == -ETIMEDOUT) {
        snprintf(out_msg, out_msg_len, "%s: connect: no answer within %d ms", out_where,
                 HEALTH_TIMEOUT_MS);
    } else {
        snprintf(out_msg, out_msg_len, "%s: connect: %s", out_where, strerror(-rc));
    }
    if (p->fd != -1) {
        close(p->fd);
        p->fd = -1;
    }
    return -1;
}

/* health_send_proxy_header: behind a load balancer the listener wants a PROXY header
 * first; send the one for a health check (v2 LOCAL, or v1 UNKNOWN), which keeps the real
 * peer address. Returns 0, or -1 with |out_msg| saying why. */
static int health_send_proxy_header(struct health_probe_state *p, const struct conf *conf,
                                    const char *where, char *out_msg, size_t out_msg_len)
{
    static const char v2_local[16] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51,
                                      0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00};
    static const char v1_unknown[] = "PROXY UNKNOWN\r\n";
    const char *header = NULL;
    size_t header_len = 0;
    if (conf->proxy_protocol == CONF_PROXY_PROTOCOL_V1) {
        header = v1_unknown;
        header_len = sizeof(v1_unknown) - 1;
    } else if (conf->proxy_protocol != CONF_PROXY_PROTOCOL_OFF) {
        header = v2_local;
        header_len = sizeof(v2_local);
    }
    if (header != NULL && send(p->fd, header, header_len, MSG_NOSIGNAL) != (ssize_t)header_len) {
        snprintf(out_msg, out_msg_len, "%s: sending the PROXY header: %s", where, strerror(errno));
        return -1;
    }
    return 0;
}

/* health_check_greeting reads the greeting and says what it was. Returns 0 for a
 * well-formed reply (then QUIT is sent), else -1. */
static int health_check_greeting(struct health_probe_state *p, const char *where, char *out_msg,
                                 size_t out_msg_len)
{
    int code = 0;
    int err = 0;
    char line[HEALTH_QUOTE_MAX + 8] = "";
    switch (health_read_reply(p, &code, &err, line, sizeof(line))) {
    case HEALTH_READ_OK:
        snprintf(out_msg, out_msg_len, "%s: %s", where, line);
        health_quit(p);
        return 0;
    case HEALTH_READ_TIMEOUT:
        /* The proxy relays the upstream's greeting, so a hung upstream looks like this. */
        snprintf(out_msg, out_msg_len,
                 "%s: no complete greeting within %d ms (is the upstream answering?)", where,
                 HEALTH_TIMEOUT_MS);
        break;
    case HEALTH_READ_CLOSED:
        snprintf(out_msg, out_msg_len, "%s: connection closed before a complete greeting", where);
        break;
    case HEALTH_READ_ERROR:
        snprintf(out_msg, out_msg_len, "%s: reading the greeting: %s", where, strerror(err));
        break;
    case HEALTH_READ_MALFORMED:
        snprintf(out_msg, out_msg_len, "%s: not an SMTP reply: \"%s\"", where, line);
        break;
    }
    return -1;
}

int health_probe(const struct conf *conf, char *out_msg, size_t out_msg_len)
{
    if (out_msg_len > 0) {
        out_msg[0] = '\0';
    }
    if (conf->n_listen == 0) {
        snprintf(out_msg, out_msg_len, "no listen address configured");
        return -1;
    }
    struct health_probe_state p = {.fd = -1, .deadline_ms = health_now_ms() + HEALTH_TIMEOUT_MS};
    char where[INET6_ADDRSTRLEN + 16] = "";
    if (health_connect_any(&p, where, sizeof(where), conf, out_msg, out_msg_len) != 0) {
        return -1;
    }
    int result = health_send_proxy_header(&p, conf, where, out_msg, out_msg_len);
    if (result == 0) {
        result = health_check_greeting(&p, where, out_msg, out_msg_len);
    }
    close(p.fd);
    return result;
}
