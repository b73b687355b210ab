/*
 * selftest_table: the result of `--self-test` and how it is shown. What the fake upstreams
 * recorded per connection and what the test client was answered go in; the outcome of
 * each cell, the text table, the JSON document and the exit status come out.
 *
 * Pure: no sockets, no threads, no TLS; it writes only to the FILE it is given.
 */
#ifndef PROXY_SELFTEST_TABLE_H
#define PROXY_SELFTEST_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "conf.h"

/* The failure classes a fake upstream plays, in the order of the table's columns. */
enum selftest_failure {
    SELFTEST_NO_STARTTLS = 0,      /* EHLO without STARTTLS */
    SELFTEST_REFUSE_454,           /* STARTTLS answered 454 4.7.0 */
    SELFTEST_ALERT,                /* handshake_failure alert to the ClientHello */
    SELFTEST_CLIENT_CERT_REJECTED, /* asks for a client certificate and rejects any */
    SELFTEST_EOF_AFTER_220,        /* 220 to STARTTLS, reads the ClientHello, closes */
    SELFTEST_HANDSHAKE_TIMEOUT,    /* reads the ClientHello, then silence */
    SELFTEST_POST_TLS_403,         /* TLS works; the EHLO inside it gets 403 4.7.0 */
    SELFTEST_TLS_OK,               /* a working TLS server */
};

#define SELFTEST_N_FAILURES 8
#define SELFTEST_CONNS_MAX 8
#define SELFTEST_TEXT_MAX 160
#define SELFTEST_NOTES_MAX 12
#define SELFTEST_NOTE_MAX 400

/* Whether the proxy presented a client certificate, as far as the fake could see. */
enum selftest_cert {
    SELFTEST_CERT_UNKNOWN = 0, /* the handshake ended before the fake's request */
    SELFTEST_CERT_NONE,
    SELFTEST_CERT_PRESENTED,
};

/* What a fake upstream recorded about one connection the proxy opened to it. */
struct selftest_conn {
    bool starttls;        /* the proxy sent STARTTLS */
    int starttls_reply;   /* what the fake answered it (220, 454), 0 for none */
    uint16_t offered_max; /* highest version in the ClientHello (0x0304), 0: none seen */
    enum selftest_cert cert;
    char tls_version[16]; /* "TLSv1.3" once a handshake completed, else "" */
    bool envelope_clear;  /* MAIL, RCPT or DATA arrived outside TLS */
    bool envelope_tls;    /* ... inside TLS */
    bool message;         /* a message was accepted (250 to its end of data) */
    bool message_tls;     /* ... inside TLS */
};

/* What the test's sender (a sending MTA) was answered, in one SMTP session through the
 * proxy. */
struct selftest_sender {
    bool delivered;                /* the end of data was answered 250 */
    char reply[SELFTEST_TEXT_MAX]; /* the reply that ended the session early, first line */
    char error[SELFTEST_TEXT_MAX]; /* no usable reply: what went wrong; "" otherwise */
};

enum selftest_outcome {
    SELFTEST_OUT_TLS = 0,      /* delivered over TLS */
    SELFTEST_OUT_CLEARTEXT,    /* delivered in cleartext */
    SELFTEST_OUT_DEFERRED,     /* a 4xx reply: the sending MTA keeps the message */
    SELFTEST_OUT_REJECTED,     /* a 5xx reply */
    SELFTEST_OUT_INCONSISTENT, /* the client's answer and the upstream's record disagree */
    SELFTEST_OUT_ERROR,        /* no answer: the cell could not be run */
    SELFTEST_OUT_NOT_TESTED,   /* the row could not be set up */
};

struct selftest_cell {
    struct selftest_conn conns[SELFTEST_CONNS_MAX];
    size_t n_conns;
    size_t n_conns_seen; /* connections accepted, also those beyond SELFTEST_CONNS_MAX */
    struct selftest_sender sender;
};

/* One row: an [upstream_policy] pattern, or the default (no pattern matches). */
struct selftest_row {
    bool is_default;
    enum conf_back_starttls policy;
    char pattern[CONF_HOST_MAX + 8];  /* as written in the file; "" for the default */
    char greeting[CONF_HOST_MAX + 1]; /* the host name the fakes greet with */
    char untested[SELFTEST_TEXT_MAX]; /* why the row could not be run; "" when it was */
    struct selftest_cell cells[SELFTEST_N_FAILURES];
};

/* The whole run: the rows and what the operator must know to read them. */
struct selftest_report {
    const char *path;
    bool has_client_cert; /* [upstream_tls] certificate is configured */
    struct selftest_row *rows;
    size_t n_rows;
    char notes[SELFTEST_NOTES_MAX][SELFTEST_NOTE_MAX];
    size_t n_notes;
    double seconds;                          /* how long the run took */
    char setup_error[SELFTEST_TEXT_MAX * 2]; /* "" unless the run could not be set up */
};

/* selftest_failure_name returns the column's name ("no-starttls", "refuse-454", ...). */
const char *selftest_failure_name(enum selftest_failure failure);

/* selftest_policy_name returns "off", "may" or "require". */
const char *selftest_policy_name(enum conf_back_starttls policy);

/* selftest_pattern_text writes |p|'s pattern as the file spells it ("*.example.com",
 * "192.0.2.0/24", "2001:db8::1") into |out|. */
void selftest_pattern_text(char *out, size_t out_size, const struct conf_policy *p);

/*
 * selftest_greeting_for picks a host name that |p| matches (exact: the name; wildcard:
 * "selftest" and the suffix), or for the default row (p == NULL) and an address pattern
 * "selftest.invalid". Returns false when no such name fits in CONF_HOST_MAX.
 */
bool selftest_greeting_for(char *out, size_t out_size, const struct conf_policy *p);

/*
 * selftest_conn_step names the ladder step one connection shows, from what the fake saw:
 * "cleartext" (no STARTTLS), "tls" (TLS 1.3 offered) or "tls12" (TLS 1.2 at most), with
 * "no-client-cert" for a handshake that reached the fake's certificate request without a
 * certificate while |has_client_cert| (one is configured). Static strings.
 */
const char *selftest_conn_step(const struct selftest_conn *c, bool has_client_cert);

/*
 * selftest_cell_outcome decides the cell's outcome and writes its text into |out|:
 * "TLS 1.3", "TLS 1.3 via tls->no-client-cert", "cleartext", "cleartext after 454",
 * "cleartext via tls->tls12->cleartext", "deferred 421 4.7.0", "deferred 421 4.7.0 via
 * tls->tls12", "rejected 554 5.7.1",
 * "inconsistent: ...", "error: ...". |untested| (the row's reason) wins when not "".
 */
enum selftest_outcome selftest_cell_outcome(char *out, size_t out_size,
                                            const struct selftest_cell *cell, bool has_client_cert,
                                            const char *untested);

/*
 * selftest_row_leaks tells whether a row whose policy is require let anything of a message
 * (MAIL, RCPT, DATA or the message) reach an upstream outside TLS: always false for other
 * policies.
 */
bool selftest_row_leaks(const struct selftest_row *row);

/*
 * selftest_exit_status is the run's exit status: 1 when a require row leaked (see
 * selftest_row_leaks) or a cell is inconsistent (a bug either way); else 2 when the run
 * could not be set up or a cell could not be run; else 0.
 */
int selftest_exit_status(const struct selftest_report *r);

/* selftest_print_table writes the text table, its legend, the notes and the verdict. */
void selftest_print_table(FILE *out, const struct selftest_report *r);

/* selftest_print_json writes the report as one JSON document (the README's schema). */
void selftest_print_json(FILE *out, const struct selftest_report *r);

#endif
