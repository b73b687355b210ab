/*
 * listener: listening sockets, one per worker and address, spread by SO_REUSEPORT.
 *
 * Sockets are made by hand (libuv 1.44 has no SO_REUSEPORT flag) in the main thread, so a
 * bind failure is reported before anything runs or, on reload, before anything changes.
 */
#include "listener.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "log.h"
#include "session.h"

/* Accept queue length; the kernel caps it at net.core.somaxconn. */
#define LISTENER_BACKLOG 1024

int listener_bind(const struct conf_addr *addr, bool transparent)
{
    int family = addr->sa.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return -errno;
    }
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) == -1) {
        goto fail;
    }
    /* "0.0.0.0:25, [::]:25" must be two sockets, not a conflict. */
    if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) == -1) {
        goto fail;
    }
    /* Accepted connections inherit TCP_NODELAY from the listening socket (Linux copies
     * the listener's TCP options into each), so no session needs a setsockopt() for it. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) == -1) {
        goto fail;
    }
    /* TPROXY delivers connections for addresses that are not ours. */
    if (transparent &&
        setsockopt(fd, family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP,
                   family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &on, sizeof(on)) == -1) {
        goto fail;
    }
    if (bind(fd, (const struct sockaddr *)&addr->sa, addr->sa_len) == -1 ||
        listen(fd, LISTENER_BACKLOG) == -1) {
        goto fail;
    }
    return fd;
fail:;
    int err = errno;
    close(fd);
    return -err;
}

static void listener_refuse(struct listener *l);

static void listener_unref(struct listener *l)
{
    if (--l->n_handles == 0) {
        free(l);
    }
}

static void listener_on_refused(uv_handle_t *handle)
{
    struct listener *l = handle->data;
    l->refusing = false;
    if (l->refuse_pending && !l->stopping) {
        l->refuse_pending = false;
        listener_refuse(l);
    }
    listener_unref(l);
}

/*
 * listener_refuse closes the pending connection no session could be made for. Not
 * accepting it would leave it queued (libuv then stops polling the listener), and taking
 * it needs a handle: the listener keeps one for this. If that one is still closing, the
 * connection waits; libuv resumes accepting after the next uv_accept.
 */
static void listener_refuse(struct listener *l)
{
    if (l->refusing) {
        l->refuse_pending = true;
        return;
    }
    if (uv_tcp_init(l->tcp.loop, &l->refused) != 0) {
        return;
    }
    l->refusing = true;
    l->n_handles++;
    l->refused.data = l;
    (void)uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&l->refused);
    uv_close((uv_handle_t *)&l->refused, listener_on_refused);
}

static void listener_on_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    if (status < 0) {
        log_warn(0, "accept-failed", "listen=%s:%u error=\"%s\"", l->addr.host,
                 (unsigned)l->addr.port, uv_strerror(status));
        return;
    }
    if (session_accept(l->env, server) == UV_ENOMEM) {
        listener_refuse(l);
    }
}

static void listener_on_closed(uv_handle_t *handle)
{
    listener_unref(handle->data);
}

struct listener *listener_start(struct session_env *env, const struct conf_addr *addr, int fd)
{
    struct listener *l = calloc(1, sizeof(*l));
    if (l == NULL || uv_tcp_init(env->loop, &l->tcp) != 0) {
        free(l);
        close(fd);
        return NULL;
    }
    l->env = env;
    l->addr = *addr;
    l->tcp.data = l;
    l->n_handles = 1;
    int rc = uv_tcp_open(&l->tcp, fd);
    if (rc != 0) {
        close(fd); /* not adopted */
    } else {
        rc = uv_listen((uv_stream_t *)&l->tcp, LISTENER_BACKLOG, listener_on_connection);
    }
    if (rc != 0) {
        log_error(0, "listen-failed", "listen=%s:%u error=\"%s\"", addr->host, (unsigned)addr->port,
                  uv_strerror(rc));
        listener_stop(l);
        return NULL;
    }
    return l;
}

void listener_stop(struct listener *l)
{
    l->stopping = true;
    uv_close((uv_handle_t *)&l->tcp, listener_on_closed);
}

bool listener_same_addr(const struct conf_addr *a, const struct conf_addr *b)
{
    return a->sa_len == b->sa_len && memcmp(&a->sa, &b->sa, a->sa_len) == 0;
}
