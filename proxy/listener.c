/*
 * listener: listening sockets, one per worker and address, spread by SO_REUSEPORT.
 *
 * Sockets are made by hand (libuv 1.44 has no SO_REUSEPORT flag) in the main thread at
 * startup, so a bind failure stops the process before anything runs.
 */
#include "listener.h"

#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "log.h"
#include "session.h"
#include "worker.h"

/* Accept queue length; the kernel caps it at net.core.somaxconn. */
#define LISTENER_BACKLOG 1024

int listener_bind(const struct conf_addr *addr)
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

static void listener_on_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    if (status < 0) {
        log_warn(0, "accept-failed", "listen=%s:%u error=\"%s\"", l->addr->host,
                 (unsigned)l->addr->port, uv_strerror(status));
        return;
    }
    session_accept(l->worker, server);
}

int listener_start(struct listener *l, struct worker *w, const struct conf_addr *addr, int fd)
{
    l->worker = w;
    l->addr = addr;
    l->open = false;
    int rc = uv_tcp_init(&w->loop, &l->tcp);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    l->tcp.data = l;
    l->open = true;
    rc = uv_tcp_open(&l->tcp, fd);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&l->tcp, LISTENER_BACKLOG, listener_on_connection);
    }
    if (rc != 0) {
        listener_stop(l);
    }
    return rc;
}

void listener_stop(struct listener *l)
{
    if (l->open) {
        l->open = false;
        uv_close((uv_handle_t *)&l->tcp, NULL);
    }
}
