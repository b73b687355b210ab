/*
 * listener: listening sockets. listener_bind() makes one SO_REUSEPORT socket per worker
 * and address in the main thread (at startup, and for addresses a reload adds), so errors
 * are reported before anything changes; each worker adopts its sockets with
 * listener_start() and hands every accepted connection to session_accept(), or closes it
 * at once when not even a session can be allocated.
 */
#ifndef PROXY_LISTENER_H
#define PROXY_LISTENER_H

#include <stdbool.h>

#include <uv.h>

#include "conf.h"

struct session_env;

struct listener {
    uv_tcp_t tcp;
    struct session_env *env;
    struct conf_addr addr; /* a copy: it outlives the configuration it came from */
    uv_tcp_t refused;      /* takes a connection no session could be made for, to close it */
    bool refusing;         /* |refused| is in use (closing) */
    bool refuse_pending;   /* a connection waits to be refused once |refused| is free */
    bool stopping;
    int n_handles; /* tcp, and |refused| while refusing; freed at zero */
};

/*
 * listener_bind creates a TCP socket bound to |addr| with SO_REUSEPORT (IPv6 sockets are
 * IPV6_V6ONLY; with |transparent|, IP_TRANSPARENT too) and starts listening. Returns the
 * file descriptor, or -errno.
 */
int listener_bind(const struct conf_addr *addr, bool transparent);

/* listener_start adopts |fd| on |env|'s loop and starts accepting into sessions of |env|.
 * Returns a new listener, or NULL (then |fd| is closed). */
struct listener *listener_start(struct session_env *env, const struct conf_addr *addr, int fd);

/* listener_stop stops accepting, closes the socket and frees |l| once libuv is done. */
void listener_stop(struct listener *l);

/* listener_same_addr tells whether two listen addresses are the same socket address. */
bool listener_same_addr(const struct conf_addr *a, const struct conf_addr *b);

#endif
