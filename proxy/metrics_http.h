/*
 * metrics_http: the [metrics] listen endpoint. GET /metrics answers the Prometheus text
 * exposition, served from one worker's loop; every connection gets one response and is
 * closed. Connections are capped, each has a deadline from accept, and an idle or slow one
 * is evicted for a newcomer, so a hostile client costs little, never keeps a scraper out
 * and never touches a mail session.
 */
#ifndef PROXY_METRICS_HTTP_H
#define PROXY_METRICS_HTTP_H

#include <uv.h>

struct learn;
struct metrics_http_server;

/*
 * metrics_http_start serves the bound, listening socket |fd| on |loop|. Returns the
 * server, or NULL (then |fd| is closed). The two learned-failure memories (borrowed; they
 * must outlive the server) are sampled for their size gauges at each scrape.
 */
struct metrics_http_server *metrics_http_start(uv_loop_t *loop, int fd, struct learn *front_learned,
                                               struct learn *back_failed);

/* metrics_http_stop stops accepting; answers under way finish or time out on their own. */
void metrics_http_stop(struct metrics_http_server *srv);

#endif
