/*
 * selftest_table: what `--self-test` found, as a table, as JSON and as an exit status.
 * Every outcome is decided from what the fake upstream recorded and what the test client
 * was answered, never from the proxy's own log.
 */
#include "selftest_table.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>

static const char *const selftest_failure_names[SELFTEST_N_FAILURES] = {
    [SELFTEST_NO_STARTTLS] = "no-starttls",
    [SELFTEST_REFUSE_454] = "refuse-454",
    [SELFTEST_ALERT] = "alert",
    [SELFTEST_CLIENT_CERT_REJECTED] = "client-cert-rejected",
    [SELFTEST_EOF_AFTER_220] = "eof-after-220",
    [SELFTEST_HANDSHAKE_TIMEOUT] = "handshake-timeout",
    [SELFTEST_POST_TLS_403] = "post-tls-403",
    [SELFTEST_TLS_OK] = "tls-ok",
};

static const char *const selftest_outcome_names[] = {
    [SELFTEST_OUT_TLS] = "tls",
    [SELFTEST_OUT_CLEARTEXT] = "cleartext",
    [SELFTEST_OUT_DEFERRED] = "deferred",
    [SELFTEST_OUT_REJECTED] = "rejected",
    [SELFTEST_OUT_INCONSISTENT] = "inconsistent",
    [SELFTEST_OUT_ERROR] = "error",
    [SELFTEST_OUT_NOT_TESTED] = "not-tested",
};

const char *selftest_failure_name(enum selftest_failure failure)
{
    return (unsigned)failure < SELFTEST_N_FAILURES ? selftest_failure_names[failure] : "?";
}

const char *selftest_policy_name(enum conf_back_starttls policy)
{
    switch (policy) {
    case CONF_BACK_STARTTLS_OFF:
        return "off";
    case CONF_BACK_STARTTLS_MAY:
        return "may";
    case CONF_BACK_STARTTLS_REQUIRE:
        return "require";
    }
    return "?";
}

void selftest_pattern_text(char *out, size_t out_size, const struct conf_policy *p)
{
    switch (p->kind) {
    case CONF_PATTERN_NAME:
        snprintf(out, out_size, "%s", p->name);
        return;
    case CONF_PATTERN_WILDCARD:
        snprintf(out, out_size, "*%s", p->name);
        return;
    case CONF_PATTERN_CIDR: {
        char host[INET6_ADDRSTRLEN] = "?";
        unsigned full = p->cidr.family == AF_INET6 ? 128 : 32;
        inet_ntop(p->cidr.family, p->cidr.addr, host, sizeof(host));
        if (p->cidr.prefix_len == full) {
            snprintf(out, out_size, "%s", host);
        } else {
            snprintf(out, out_size, "%s/%u", host, (unsigned)p->cidr.prefix_len);
        }
        return;
    }
    }
    snprintf(out, out_size, "?");
}

bool selftest_greeting_for(char *out, size_t out_size, const struct conf_policy *p)
{
    const char *prefix = "";
    const char *name = "selftest.invalid";
    if (p != NULL && p->kind == CONF_PATTERN_NAME) {
        name = p->name;
    } else if (p != NULL && p->kind == CONF_PATTERN_WILDCARD) {
        /* "*.example.com" is kept as ".example.com"; the shortest prefix is one label. */
        prefix = strlen(p->name) + 8 <= CONF_HOST_MAX ? "selftest" : "x";
        name = p->name;
    }
    size_t len = strlen(prefix) + strlen(name);
    if (len > CONF_HOST_MAX || len >= out_size) {
        return false;
    }
    snprintf(out, out_size, "%s%s", prefix, name);
    return true;
}

const char *selftest_conn_step(const struct selftest_conn *c, bool has_client_cert)
{
    if (!c->starttls) {
        return "cleartext";
    }
    if (c->starttls_reply != 220) {
        return "starttls-refused";
    }
    bool tls12 = c->offered_max != 0 && c->offered_max < 0x0304;
    bool no_cert = has_client_cert && c->cert == SELFTEST_CERT_NONE;
    if (no_cert) {
        return tls12 ? "no-client-cert+tls12" : "no-client-cert";
    }
    return tls12 ? "tls12" : "tls";
}

/* selftest_append adds printf output at *pos, never past the end of |out|. */
__attribute__((format(printf, 4, 5))) static void selftest_append(char *out, size_t out_size,
                                                                  size_t *pos, const char *fmt, ...)
{
    if (*pos + 1 >= out_size) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + *pos, out_size - *pos, fmt, ap);
    va_end(ap);
    if (n > 0) {
        *pos += (size_t)n < out_size - *pos ? (size_t)n : out_size - *pos - 1;
    }
}

/* selftest_path appends " via a->b->c" when the proxy opened more than one connection. */
static void selftest_path(char *out, size_t out_size, size_t *pos, const struct selftest_cell *cell,
                          bool has_client_cert)
{
    if (cell->n_conns_seen <= 1) {
        return;
    }
    selftest_append(out, out_size, pos, " via ");
    for (size_t i = 0; i < cell->n_conns; i++) {
        selftest_append(out, out_size, pos, "%s%s", i > 0 ? "->" : "",
                        selftest_conn_step(&cell->conns[i], has_client_cert));
    }
    if (cell->n_conns_seen > cell->n_conns) {
        selftest_append(out, out_size, pos, "->...");
    }
}

/* selftest_reply_codes writes a reply's code and enhanced code ("421 4.7.0"). */
static void selftest_reply_codes(char *out, size_t out_size, const char *reply)
{
    size_t len = 0;
    while (len < 3 && isdigit((unsigned char)reply[len])) {
        len++;
    }
    const char *enhanced = reply + len + (reply[len] == ' ' || reply[len] == '-' ? 1 : 0);
    size_t enhanced_len = 0;
    size_t dots = 0;
    while (enhanced[enhanced_len] != '\0' &&
           (isdigit((unsigned char)enhanced[enhanced_len]) || enhanced[enhanced_len] == '.')) {
        dots += enhanced[enhanced_len] == '.';
        enhanced_len++;
    }
    if (len != 3 || dots != 2) {
        enhanced_len = 0;
    }
    snprintf(out, out_size, "%.*s%s%.*s", (int)len, reply, enhanced_len > 0 ? " " : "",
             (int)enhanced_len, enhanced);
}

/* selftest_message_conn returns the connection that accepted a message, or NULL. */
static const struct selftest_conn *selftest_message_conn(const struct selftest_cell *cell)
{
    for (size_t i = 0; i < cell->n_conns; i++) {
        if (cell->conns[i].message) {
            return &cell->conns[i];
        }
    }
    return NULL;
}

enum selftest_outcome selftest_cell_outcome(char *out, size_t out_size,
                                            const struct selftest_cell *cell, bool has_client_cert,
                                            const char *untested)
{
    const struct selftest_sender *cl = &cell->sender;
    const struct selftest_conn *msg = selftest_message_conn(cell);
    size_t pos = 0;
    out[0] = '\0';
    if (untested != NULL && untested[0] != '\0') {
        selftest_append(out, out_size, &pos, "not tested: %s", untested);
        return SELFTEST_OUT_NOT_TESTED;
    }
    if (cl->delivered) {
        if (msg == NULL) {
            selftest_append(out, out_size, &pos,
                            "inconsistent: 250 to the client, no message upstream");
            return SELFTEST_OUT_INCONSISTENT;
        }
        if (msg->message_tls) {
            const char *v = msg->tls_version;
            if (strncmp(v, "TLSv", 4) == 0) {
                selftest_append(out, out_size, &pos, "TLS %s", v + 4);
            } else {
                selftest_append(out, out_size, &pos, "TLS (%s)", v);
            }
            selftest_path(out, out_size, &pos, cell, has_client_cert);
            return SELFTEST_OUT_TLS;
        }
        selftest_append(out, out_size, &pos, "cleartext");
        if (cell->n_conns_seen == 1 && msg->starttls && msg->starttls_reply != 220) {
            selftest_append(out, out_size, &pos, " after %d", msg->starttls_reply);
        }
        selftest_path(out, out_size, &pos, cell, has_client_cert);
        return SELFTEST_OUT_CLEARTEXT;
    }
    if (cl->reply[0] == '\0') {
        selftest_append(out, out_size, &pos, "error: %s",
                        cl->error[0] != '\0' ? cl->error : "no reply");
        return SELFTEST_OUT_ERROR;
    }
    char codes[32];
    selftest_reply_codes(codes, sizeof(codes), cl->reply);
    if (msg != NULL) {
        selftest_append(out, out_size, &pos,
                        "inconsistent: %s to the client, message accepted upstream", codes);
        return SELFTEST_OUT_INCONSISTENT;
    }
    if (cl->reply[0] == '4' || cl->reply[0] == '5') {
        selftest_append(out, out_size, &pos, "%s %s", cl->reply[0] == '4' ? "deferred" : "rejected",
                        codes);
        selftest_path(out, out_size, &pos, cell, has_client_cert);
        return cl->reply[0] == '4' ? SELFTEST_OUT_DEFERRED : SELFTEST_OUT_REJECTED;
    }
    selftest_append(out, out_size, &pos, "error: unexpected reply %s", codes);
    return SELFTEST_OUT_ERROR;
}

bool selftest_row_leaks(const struct selftest_row *row)
{
    if (row->policy != CONF_BACK_STARTTLS_REQUIRE || row->untested[0] != '\0') {
        return false;
    }
    for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
        const struct selftest_cell *cell = &row->cells[f];
        for (size_t i = 0; i < cell->n_conns; i++) {
            const struct selftest_conn *c = &cell->conns[i];
            if (c->envelope_clear || (c->message && !c->message_tls)) {
                return true;
            }
        }
    }
    return false;
}

int selftest_exit_status(const struct selftest_report *r)
{
    if (r->setup_error[0] != '\0') {
        return 2;
    }
    bool bug = false;
    bool incomplete = false;
    char text[SELFTEST_TEXT_MAX];
    for (size_t i = 0; i < r->n_rows; i++) {
        const struct selftest_row *row = &r->rows[i];
        bug |= selftest_row_leaks(row);
        for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
            switch (selftest_cell_outcome(text, sizeof(text), &row->cells[f], r->has_client_cert,
                                          row->untested)) {
            case SELFTEST_OUT_INCONSISTENT:
                bug = true;
                break;
            case SELFTEST_OUT_ERROR:
            case SELFTEST_OUT_NOT_TESTED:
                incomplete = true;
                break;
            default:
                break;
            }
        }
    }
    return bug ? 1 : incomplete ? 2 : 0;
}

/* ---- the text table ------------------------------------------------------------------------ */

static void selftest_row_label(char *out, size_t out_size, const struct selftest_row *row)
{
    if (row->is_default) {
        snprintf(out, out_size, "default (%s)", selftest_policy_name(row->policy));
    } else {
        snprintf(out, out_size, "%s %s", selftest_policy_name(row->policy), row->pattern);
    }
}

static const char *const selftest_legend[] = {
    "Each cell: one message sent through the proxy to a fake upstream that fails as the",
    "column says, under the row's policy. The fakes record what reached them:",
    "  TLS 1.3              delivered inside TLS 1.3 (TLS 1.2: inside TLS 1.2)",
    "  cleartext            delivered without TLS",
    "  after 454            STARTTLS was refused with 454 and the same connection went on",
    "  via a->b->c          the connections the proxy opened, in order, named by what the",
    "                       fake saw: tls (TLS 1.3 offered), tls12 (TLS 1.2 at most),",
    "                       no-client-cert (no certificate presented although one is",
    "                       configured; seen only where the fake got as far as asking for",
    "                       one), cleartext (no STARTTLS)",
    "  deferred 421 4.7.0   the client got that reply: the sending MTA keeps the message",
    "                       (via: the connections tried before the proxy gave up)",
    "  rejected 5xx         the client got a permanent error",
    "Columns: no-starttls (EHLO without STARTTLS), refuse-454 (STARTTLS answered 454),",
    "  alert (handshake_failure alert to the ClientHello), client-cert-rejected (asks for",
    "  a client certificate and rejects any), eof-after-220 (closes after its 220 to",
    "  STARTTLS), handshake-timeout (reads the ClientHello, then silence), post-tls-403",
    "  (TLS works, the EHLO inside it gets 403 4.7.0), tls-ok (a working TLS server).",
};

void selftest_print_table(FILE *out, const struct selftest_report *r)
{
    fprintf(out, "smtp-tls-proxy self-test of %s\n\n", r->path);
    char text[SELFTEST_TEXT_MAX];
    char label[CONF_HOST_MAX + 32];
    size_t label_w = strlen("policy");
    size_t width[SELFTEST_N_FAILURES];
    for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
        width[f] = strlen(selftest_failure_name(f));
    }
    for (size_t i = 0; i < r->n_rows; i++) {
        const struct selftest_row *row = &r->rows[i];
        selftest_row_label(label, sizeof(label), row);
        label_w = strlen(label) > label_w ? strlen(label) : label_w;
        for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
            selftest_cell_outcome(text, sizeof(text), &row->cells[f], r->has_client_cert,
                                  row->untested);
            width[f] = strlen(text) > width[f] ? strlen(text) : width[f];
        }
    }
    fprintf(out, "%-*s", (int)label_w, "policy");
    for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
        fprintf(out, "  %-*s", f + 1 < SELFTEST_N_FAILURES ? (int)width[f] : 0,
                selftest_failure_name(f));
    }
    fprintf(out, "\n");
    for (size_t i = 0; i < r->n_rows; i++) {
        const struct selftest_row *row = &r->rows[i];
        selftest_row_label(label, sizeof(label), row);
        fprintf(out, "%-*s", (int)label_w, label);
        for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
            selftest_cell_outcome(text, sizeof(text), &row->cells[f], r->has_client_cert,
                                  row->untested);
            fprintf(out, "  %-*s", f + 1 < SELFTEST_N_FAILURES ? (int)width[f] : 0, text);
        }
        fprintf(out, "\n");
    }
    fprintf(out, "\n");
    for (size_t i = 0; i < sizeof(selftest_legend) / sizeof(selftest_legend[0]); i++) {
        fprintf(out, "%s\n", selftest_legend[i]);
    }
    if (r->n_notes > 0) {
        fprintf(out, "\nNotes:\n");
        for (size_t i = 0; i < r->n_notes; i++) {
            fprintf(out, "  - %s\n", r->notes[i]);
        }
    }
    int status = selftest_exit_status(r);
    fprintf(out, "\n");
    if (r->n_rows > 0) {
        fprintf(out, "Ran %zu cells in %.1f s.\n", r->n_rows * SELFTEST_N_FAILURES, r->seconds);
    }
    if (r->setup_error[0] != '\0') {
        fprintf(out, "Result: the self-test could not be set up: %s (exit 2)\n", r->setup_error);
        return;
    }
    for (size_t i = 0; i < r->n_rows; i++) {
        if (selftest_row_leaks(&r->rows[i])) {
            selftest_row_label(label, sizeof(label), &r->rows[i]);
            fprintf(out, "Result: FAILED: \"%s\" let message data reach an upstream in cleartext\n",
                    label);
        }
    }
    switch (status) {
    case 0:
        fprintf(out, "Result: ok: no require destination got anything in cleartext (exit 0)\n");
        break;
    case 1:
        fprintf(out, "Result: FAILED: see above and the cells marked inconsistent (exit 1)\n");
        break;
    default:
        fprintf(out, "Result: incomplete: some cells could not be run (exit 2)\n");
        break;
    }
}

/* ---- JSON ------------------------------------------------------------------------------------ */

/* selftest_json_string writes |s| as a JSON string; bytes outside printable ASCII are
 * written as \u00XX. NULL is written as null. */
static void selftest_json_string(FILE *out, const char *s)
{
    if (s == NULL) {
        fputs("null", out);
        return;
    }
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\') {
            fprintf(out, "\\%c", *p);
        } else if (*p < 0x20 || *p >= 0x7f) {
            fprintf(out, "\\u%04x", *p);
        } else {
            fputc(*p, out);
        }
    }
    fputc('"', out);
}

static const char *selftest_version_name(uint16_t version)
{
    switch (version) {
    case 0x0301:
        return "TLSv1";
    case 0x0302:
        return "TLSv1.1";
    case 0x0303:
        return "TLSv1.2";
    case 0x0304:
        return "TLSv1.3";
    default:
        return NULL;
    }
}

static void selftest_json_conn(FILE *out, const struct selftest_conn *c, bool has_client_cert)
{
    static const char *const certs[] = {
        [SELFTEST_CERT_UNKNOWN] = "unknown",
        [SELFTEST_CERT_NONE] = "none",
        [SELFTEST_CERT_PRESENTED] = "presented",
    };
    fprintf(out, "{\"step\": ");
    selftest_json_string(out, selftest_conn_step(c, has_client_cert));
    fprintf(out, ", \"starttls\": %s, \"starttls_reply\": ", c->starttls ? "true" : "false");
    if (c->starttls_reply != 0) {
        fprintf(out, "%d", c->starttls_reply);
    } else {
        fputs("null", out);
    }
    fprintf(out, ", \"offered_max\": ");
    selftest_json_string(out, selftest_version_name(c->offered_max));
    fprintf(out, ", \"client_certificate\": \"%s\", \"tls_version\": ", certs[c->cert]);
    selftest_json_string(out, c->tls_version[0] != '\0' ? c->tls_version : NULL);
    fprintf(out, ", \"envelope_cleartext\": %s, \"envelope_tls\": %s, \"message\": %s}",
            c->envelope_clear ? "true" : "false", c->envelope_tls ? "true" : "false",
            !c->message      ? "null"
            : c->message_tls ? "\"tls\""
                             : "\"cleartext\"");
}

static void selftest_json_cell(FILE *out, const struct selftest_cell *cell, bool has_client_cert,
                               const char *untested)
{
    char text[SELFTEST_TEXT_MAX];
    enum selftest_outcome o =
        selftest_cell_outcome(text, sizeof(text), cell, has_client_cert, untested);
    fprintf(out, "{\"outcome\": \"%s\", \"text\": ", selftest_outcome_names[o]);
    selftest_json_string(out, text);
    fprintf(out, ", \"delivered\": %s, \"reply\": ", cell->sender.delivered ? "true" : "false");
    selftest_json_string(out, cell->sender.reply[0] != '\0' ? cell->sender.reply : NULL);
    fprintf(out, ", \"error\": ");
    selftest_json_string(out, cell->sender.error[0] != '\0' ? cell->sender.error : NULL);
    fprintf(out, ", \"connections_seen\": %zu, \"connections\": [", cell->n_conns_seen);
    for (size_t i = 0; i < cell->n_conns; i++) {
        fprintf(out, "%s", i > 0 ? ", " : "");
        selftest_json_conn(out, &cell->conns[i], has_client_cert);
    }
    fprintf(out, "]}");
}

void selftest_print_json(FILE *out, const struct selftest_report *r)
{
    fprintf(out, "{\"config\": ");
    selftest_json_string(out, r->path);
    fprintf(out, ",\n \"failures\": [");
    for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
        fprintf(out, "%s\"%s\"", f > 0 ? ", " : "", selftest_failure_name(f));
    }
    fprintf(out, "],\n \"client_certificate\": %s,\n \"rows\": [",
            r->has_client_cert ? "true" : "false");
    for (size_t i = 0; i < r->n_rows; i++) {
        const struct selftest_row *row = &r->rows[i];
        fprintf(out, "%s\n  {\"policy\": \"%s\", \"pattern\": ", i > 0 ? "," : "",
                selftest_policy_name(row->policy));
        selftest_json_string(out, row->is_default ? NULL : row->pattern);
        fprintf(out, ", \"greeting\": ");
        selftest_json_string(out, row->greeting);
        fprintf(out, ", \"untested\": ");
        selftest_json_string(out, row->untested[0] != '\0' ? row->untested : NULL);
        fprintf(out, ", \"require_leak\": %s,\n   \"cells\": {",
                selftest_row_leaks(row) ? "true" : "false");
        for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
            fprintf(out, "%s\n    \"%s\": ", f > 0 ? "," : "", selftest_failure_name(f));
            selftest_json_cell(out, &row->cells[f], r->has_client_cert, row->untested);
        }
        fprintf(out, "}}");
    }
    fprintf(out, "],\n \"notes\": [");
    for (size_t i = 0; i < r->n_notes; i++) {
        fprintf(out, "%s", i > 0 ? ", " : "");
        selftest_json_string(out, r->notes[i]);
    }
    fprintf(out, "],\n \"seconds\": %.3f,\n \"setup_error\": ", r->seconds);
    selftest_json_string(out, r->setup_error[0] != '\0' ? r->setup_error : NULL);
    fprintf(out, ",\n \"exit_status\": %d}\n", selftest_exit_status(r));
}
