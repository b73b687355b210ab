/*
 * selftest: `smtp-tls-proxy --self-test -c FILE [--json]`. Answers "what will this
 * configuration do when a destination's TLS breaks?" without touching production: in this
 * one process it runs the proxy's real workers with a loopback copy of the configuration
 * against fake upstreams that fail in each way (selftest_fake.h), one message per
 * [upstream_policy] rule, default and failure, and prints what the fakes recorded.
 *
 * It never binds anything but 127.0.0.1, never connects to the configured upstream or the
 * [store], and never reads or writes the learned memories of a running proxy.
 */
#ifndef PROXY_SELFTEST_H
#define PROXY_SELFTEST_H

#include <stdbool.h>

#include "conf.h"

/*
 * selftest_run runs the self-test of |conf| (taken over and freed; NULL when the file had
 * errors, which the caller printed), loaded from |path|. It writes the table, or with
 * |json| the JSON document, to stdout. Returns the exit status: 0, 1 when a require
 * destination got anything in cleartext (or the proxy's answer and the upstream's record
 * disagree), 2 when the self-test could not be set up or a cell could not be run.
 */
int selftest_run(struct conf *conf, const char *path, bool json);

#endif
