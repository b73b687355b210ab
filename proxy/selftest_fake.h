/*
 * selftest_fake: the fake upstreams of `--self-test`. Each is an SMTP server on a loopback
 * port, in its own thread with blocking sockets, that fails in one way (enum
 * selftest_failure) and records what every connection the proxy opened to it did: STARTTLS,
 * the highest TLS version offered, the client certificate, the version negotiated, and
 * whether the envelope and the message came inside TLS.
 *
 * It never relays anything anywhere; what it receives is only counted.
 */
#ifndef PROXY_SELFTEST_FAKE_H
#define PROXY_SELFTEST_FAKE_H

#include <stddef.h>
#include <stdint.h>

#include "selftest_table.h"

struct ssl_ctx_st;
struct selftest_fake;

/*
 * selftest_fake_ctx_new makes the fakes' TLS server context, shared by all of them: a
 * self-signed ECDSA P-256 certificate for "selftest.invalid" made in memory, TLS 1.0 to
 * 1.3, and the callbacks that play the failures. Returns it (free with
 * selftest_fake_ctx_free()), or NULL with the reason in |out_err|.
 */
struct ssl_ctx_st *selftest_fake_ctx_new(char *out_err, size_t out_err_len);

/* selftest_fake_ctx_free drops the caller's reference; NULL does nothing. */
void selftest_fake_ctx_free(struct ssl_ctx_st *ctx);

/*
 * selftest_fake_start binds 127.0.0.1 on an ephemeral port and serves, in a new thread, one
 * connection after the other as an upstream failing as |failure|, greeting as |name|.
 * |ctx| is borrowed and must outlive the fake. Returns the fake, or NULL with the reason
 * in |out_err|.
 */
struct selftest_fake *selftest_fake_start(char *out_err, size_t out_err_len, struct ssl_ctx_st *ctx,
                                          enum selftest_failure failure, const char *name);

/* selftest_fake_port returns the port the fake listens on (host order). */
uint16_t selftest_fake_port(const struct selftest_fake *f);

/*
 * selftest_fake_stop stops accepting, waits for the connection being served to end (the
 * proxy closed it, or the fake's own timeouts), copies the connection records into
 * out->conns / n_conns / n_conns_seen and frees |f|.
 */
void selftest_fake_stop(struct selftest_fake *f, struct selftest_cell *out);

#endif
