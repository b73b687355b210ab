/*
 * tlsrpt_io: what the proxy does with its TLS-RPT reports (RFC 8460): each day's reports
 * (tlsrpt.c aggregates them) are written to [recipient_policy] tlsrpt_directory and, with
 * tlsrpt_submit, sent to each policy domain's rua destinations: https: by POST, mailto: as
 * a message through the configured upstream. Submission runs on a thread of its own with
 * blocking sockets and bounded timeouts: it never touches a worker loop.
 */
#ifndef PROXY_TLSRPT_IO_H
#define PROXY_TLSRPT_IO_H

#include <stdbool.h>
#include <stdint.h>

#include "conf.h"

struct tlsrpt;
struct tlsrpt_io;

/* tlsrpt_io_new prepares the writer for |agg| (borrowed). NULL when out of memory. */
struct tlsrpt_io *tlsrpt_io_new(struct tlsrpt *agg);

/* tlsrpt_io_tick writes (and submits, per |conf|) the reports of every day that ended
 * before |now| (seconds since the epoch). Call it now and then (main does, every minute). */
void tlsrpt_io_tick(struct tlsrpt_io *io, const struct conf *conf, int64_t now);

/* tlsrpt_io_flush also writes the current day's reports so far (SIGUSR1, and at
 * shutdown with |submit| false); they stay counted, so the day's full report follows. */
void tlsrpt_io_flush(struct tlsrpt_io *io, const struct conf *conf, int64_t now, bool submit);

/* tlsrpt_io_free waits for submissions still running (each bounded) and frees. */
void tlsrpt_io_free(struct tlsrpt_io *io);

#endif
