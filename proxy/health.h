/*
 * health: the --health probe (a container's HEALTHCHECK). It opens one SMTP session to the
 * proxy's own listener, reads the greeting and says QUIT, with plain blocking POSIX
 * sockets and one overall deadline. It never binds, never uses libuv and never exits.
 */
#ifndef PROXY_HEALTH_H
#define PROXY_HEALTH_H

#include <stddef.h>

#include "conf.h"

/* How long the whole probe may take: connect, greeting and QUIT. */
#define HEALTH_TIMEOUT_MS 5000
/* Room for health_probe()'s message, NUL included. */
#define HEALTH_MSG_MAX 512

/*
 * health_probe connects to the first address of |conf|'s listen list (0.0.0.0 is reached
 * at 127.0.0.1 and [::] at [::1]; when an address cannot be reached from here at all,
 * such as [::1] in a container without IPv6, the next listen address is tried instead),
 * reads the greeting and sends QUIT, all within HEALTH_TIMEOUT_MS.
 *
 * Healthy means the proxy accepted the connection and answered with a well-formed SMTP
 * reply, whatever its code: the proxy relays the upstream's 220, or answers 421 itself
 * when the upstream is unreachable or too many sessions are open. That proves the proxy
 * runs; restarting it would not repair an upstream. Returns 0 when healthy, with
 * |out_msg| holding the address and the greeting's last line (escaped, truncated), such as
 * "127.0.0.1:25: 220 mx.example ESMTP". Returns -1 otherwise, with |out_msg| saying why
 * (connection refused, no reply in time, a malformed reply, ...). |out_msg| is always
 * NUL-terminated when |out_msg_len| > 0.
 */
int health_probe(const struct conf *conf, char *out_msg, size_t out_msg_len);

#endif
