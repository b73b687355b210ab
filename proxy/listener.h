/*
 * listener: listening sockets. listener_bind() makes one SO_REUSEPORT socket per worker
 * and address at startup (so errors are reported before anything runs); each worker then
 * adopts its sockets with listener_start() and hands every accepted connection to
 * session_accept().
 */
#ifndef PROXY_LISTENER_H
#define PROXY_LISTENER_H

#include <stdbool.h>

#include <uv.h>

#include "conf.h"

struct worker;

struct listener {
    uv_tcp_t tcp;
    struct worker *worker;
    const struct conf_addr *addr;
    bool open;
};

/*
 * listener_bind creates a TCP socket bound to |addr| with SO_REUSEPORT (IPv6 sockets are
 * IPV6_V6ONLY) and starts listening. Returns the file descriptor, or -errno.
 */
int listener_bind(const struct conf_addr *addr);

/* listener_start adopts |fd| into |l| on |w|'s loop and starts accepting. Returns 0 or a
 * libuv error (then |fd| is closed). */
int listener_start(struct listener *l, struct worker *w, const struct conf_addr *addr, int fd);

/* listener_stop stops accepting and closes the socket; safe to call twice. */
void listener_stop(struct listener *l);

#endif
