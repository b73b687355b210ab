/*
 * session_connect: opening leg 2's connections. Resolve the upstream's name, connect (from
 * the client's own address with upstream_identity = spoof), put the PROXY header first on
 * the wire (proxy-v1/proxy-v2), and open a new connection to the same address when the
 * negotiation, a replay or a rejected message needs one. Every connection then goes
 * through session_back.c's states from SESSION_BACK_GREETING on.
 */
#include "session_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <netinet/in.h>

#include "log.h"
#include "proxyproto.h"

/*
 * session_back_spoof_socket gives the upstream socket the client's own address
 * (upstream_identity = spoof, TPROXY): IP_TRANSPARENT lets us bind an address that is not
 * ours, and the routing described in the README brings the replies back to us.
 */
static int session_connect_spoof_socket(struct session *s, int family)
{
    if (s->front_sa.sa.sa_family != family) {
        return UV_EAFNOSUPPORT;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return -errno;
    }
    int on = 1;
    union addr from = s->front_sa;
    if (family == AF_INET6) {
        from.in6.sin6_port = 0;
    } else {
        from.in.sin_port = 0;
    }
    if (setsockopt(fd, family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP,
                   family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &on, sizeof(on)) == -1 ||
        bind(fd, &from.sa, addr_len(&from.sa)) == -1) {
        int err = -errno;
        close(fd);
        return err;
    }
    int rc = uv_tcp_open(&s->back.tcp, fd);
    if (rc != 0) {
        close(fd);
    }
    return rc;
}

void session_connect_unreachable(struct session *s)
{
    session_finish(s, REASON_END_UPSTREAM_UNREACHABLE, "421 4.4.0",
                   "Upstream unavailable, try again later");
}

/* session_back_connect_to opens a new upstream connection to |sa|. On failure the socket is
 * closed, and its close callback tries the next address. */
static void session_connect_to(struct session *s, const struct sockaddr *sa)
{
    addr_set(&s->back_sa, sa);
    addr_format(s->back_addr, sizeof(s->back_addr), sa);
    leg_reset(&s->back);
    int rc = uv_tcp_init(s->env->loop, &s->back.tcp);
    if (rc != 0) {
        session_abort(s, REASON_END_INTERNAL_ERROR);
        return;
    }
    s->back.tcp.data = s;
    s->back.open = true;
    s->n_handles++;
    s->connect_attempts++;
    if (s->conf->upstream_identity == CONF_IDENTITY_SPOOF) {
        rc = session_connect_spoof_socket(s, sa->sa_family);
        if (rc != 0) {
            log_warn(s->id, "upstream-spoof-failed", "client=%s error=\"%s\"", s->front_addr,
                     uv_strerror(rc));
            session_close_back(s, false);
            return;
        }
    }
    s->connect_req.data = s;
    rc = uv_tcp_connect(&s->connect_req, &s->back.tcp, sa, session_on_back_connect);
    if (rc != 0) {
        log_warn(s->id, "upstream-connect-failed", "upstream=%s error=\"%s\"", s->back_addr,
                 uv_strerror(rc));
        session_close_back(s, false);
        return;
    }
    s->n_handles++; /* the request */
}

/* session_back_connect_next tries the next address of the upstream, or gives up. A new
 * connection of a session that already reached the upstream goes to that same address. */
void session_connect_next(struct session *s)
{
    const struct sockaddr *sa = NULL;
    union addr same;
    if (s->back_purpose != SESSION_BACK_FIRST) {
        if (s->connect_attempts == 0) {
            same = s->back_sa;
            sa = &same.sa;
        }
    } else if (s->conf->mode == CONF_MODE_TRANSPARENT) {
        if (s->connect_attempts == 0) {
            sa = &s->target_sa.sa;
        }
    } else if (s->conf->upstream.numeric) {
        if (s->connect_attempts == 0) {
            sa = (const struct sockaddr *)&s->conf->upstream.sa;
        }
    } else if (s->next_addr != NULL) {
        sa = s->next_addr->ai_addr;
        s->next_addr = s->next_addr->ai_next;
    }
    if (sa == NULL) {
        if (s->back_purpose == SESSION_BACK_FIRST) {
            session_connect_unreachable(s);
        } else {
            session_back_lost(s, REASON_END_UPSTREAM_UNREACHABLE, "new connection failed");
        }
        return;
    }
    session_connect_to(s, sa);
}

void session_connect_resolve(struct session *s)
{
    const struct conf_addr *up = &s->conf->upstream;
    s->resolve_req = malloc(sizeof(*s->resolve_req));
    if (s->resolve_req == NULL) {
        session_abort(s, REASON_END_OUT_OF_MEMORY);
        return;
    }
    s->resolve_req->data = s;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)up->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc =
        uv_getaddrinfo(s->env->loop, s->resolve_req, session_on_resolved, up->host, port, &hints);
    if (rc != 0) {
        free(s->resolve_req);
        s->resolve_req = NULL;
        log_warn(s->id, "upstream-resolve-failed", "upstream=%s error=\"%s\"", up->host,
                 uv_strerror(rc));
        session_connect_unreachable(s);
        return;
    }
    s->n_handles++; /* the request */
}

void session_connect_start(struct session *s)
{
    s->back_purpose = SESSION_BACK_FIRST;
    if (s->conf->upstream.numeric || s->conf->mode == CONF_MODE_TRANSPARENT) {
        session_back_enter(s, SESSION_BACK_CONNECTING);
    } else {
        session_back_enter(s, SESSION_BACK_RESOLVING);
    }
}

void session_connect_resolved(struct session *s, int status, struct addrinfo *res)
{
    if (status < 0 || res == NULL) {
        log_warn(s->id, "upstream-resolve-failed", "upstream=%s error=\"%s\"",
                 s->conf->upstream.host, uv_strerror(status));
        uv_freeaddrinfo(res);
        session_connect_unreachable(s);
        return;
    }
    s->addrs = res;
    s->next_addr = res;
    session_back_enter(s, SESSION_BACK_CONNECTING);
}

void session_connect_done(struct session *s, int status)
{
    if (status < 0) {
        log_warn(s->id, "upstream-connect-failed", "upstream=%s error=\"%s\"", s->back_addr,
                 uv_strerror(status));
        session_close_back(s, false); /* its close callback tries the next address */
        return;
    }
    uv_tcp_nodelay(&s->back.tcp, 1);
    enum conf_identity identity = s->conf->upstream_identity;
    if (identity == CONF_IDENTITY_PROXY_V1 || identity == CONF_IDENTITY_PROXY_V2) {
        /* Before anything else on every connection (HAProxy's PROXY protocol). */
        char header[PROXYPROTO_HEADER_MAX];
        size_t len = 0;
        const struct sockaddr *dst =
            s->conf->mode == CONF_MODE_TRANSPARENT ? &s->target_sa.sa : &s->local_sa.sa;
        if (proxyproto_format(header, &len, sizeof(header),
                              identity == CONF_IDENTITY_PROXY_V1 ? PROXYPROTO_V1 : PROXYPROTO_V2,
                              &s->front_sa.sa, dst) != 0) {
            session_back_identity_failed(s, "proxy-header-unformattable", 0);
            return;
        }
        session_send_back(s, header, len);
    }
    session_back_enter(s, SESSION_BACK_GREETING);
}

void session_connect_closed(struct session *s)
{
    switch (s->back_state) {
    case SESSION_BACK_CONNECTING:
        session_connect_next(s); /* the failed attempt is closed */
        return;
    case SESSION_BACK_RECONNECTING:
        /* The failed (or reset) connection is closed: a fresh socket and TLS state. */
        s->connect_attempts = 0;
        session_back_enter(s, SESSION_BACK_CONNECTING);
        return;
    default:
        return;
    }
}

/* session_connect_reopen replaces a connection whose message was rejected: it is reset, so
 * the partial message is discarded, never completed, and a new one is opened. */
void session_connect_reopen(struct session *s)
{
    if (s->back_state != SESSION_BACK_READY) {
        session_back_lost(s, REASON_END_UPSTREAM_ERROR, "cannot reopen");
        return;
    }
    s->back_purpose = SESSION_BACK_REOPEN;
    session_back_enter(s, SESSION_BACK_RECONNECTING);
}
