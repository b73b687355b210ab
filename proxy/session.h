/*
 * session: one client connection and the upstream connection opened for it. The only
 * module that sees both legs: it relays SMTP between them, decides what is answered
 * locally, and owns every byte and handle of the pair until its last close callback.
 */
#ifndef PROXY_SESSION_H
#define PROXY_SESSION_H

#include <stdbool.h>

#include <uv.h>

struct worker;
struct session;

/*
 * session_accept accepts one pending connection from |server| and starts its session on
 * |w|'s loop (or refuses it with 421 when max_connections are open). Failures are logged
 * and only affect that connection.
 */
void session_accept(struct worker *w, uv_stream_t *server);

/*
 * session_shutdown ends |s| because the process is stopping: the client gets 421, the
 * upstream leg is closed (without end-of-data if a message was in progress).
 */
void session_shutdown(struct session *s);

/* session_next returns the next session in its worker's list (for iteration). */
struct session *session_next(struct session *s);

#endif
