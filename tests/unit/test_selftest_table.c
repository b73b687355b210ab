/*
 * test_selftest_table: the --self-test report: how a connection's step is named from what
 * a fake recorded, each cell's outcome and text (TLS, cleartext after a reply or via a
 * path, deferred, rejected, inconsistent, error, not tested), the require check and the
 * exit status, the patterns and greeting names of the rows, and the table and JSON output.
 */
#include "selftest_table.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static struct selftest_conn conn_clear(void)
{
    return (struct selftest_conn){.envelope_clear = true, .message = true};
}

static struct selftest_conn conn_tls(uint16_t offered, enum selftest_cert cert, bool message)
{
    struct selftest_conn c = {
        .starttls = true,
        .starttls_reply = 220,
        .offered_max = offered,
        .cert = cert,
        .envelope_tls = message,
        .message = message,
        .message_tls = message,
    };
    if (message) {
        snprintf(c.tls_version, sizeof(c.tls_version), "%s",
                 offered == 0x0304 ? "TLSv1.3" : "TLSv1.2");
    }
    return c;
}

/* conn_failed is a TLS attempt that failed before any command went up. */
static struct selftest_conn conn_failed(uint16_t offered)
{
    return conn_tls(offered, SELFTEST_CERT_UNKNOWN, false);
}

static void cell_add(struct selftest_cell *cell, struct selftest_conn c)
{
    if (cell->n_conns < SELFTEST_CONNS_MAX) {
        cell->conns[cell->n_conns++] = c;
    }
    cell->n_conns_seen++;
}

static enum selftest_outcome outcome(char *text, const struct selftest_cell *cell, bool cert)
{
    return selftest_cell_outcome(text, SELFTEST_TEXT_MAX, cell, cert, "");
}

static void test_steps(void)
{
    struct selftest_conn c = conn_clear();
    CHECK_STR(selftest_conn_step(&c, false), "cleartext");
    c = (struct selftest_conn){.starttls = true, .starttls_reply = 454};
    CHECK_STR(selftest_conn_step(&c, false), "starttls-refused");
    c = conn_failed(0x0304);
    CHECK_STR(selftest_conn_step(&c, true), "tls"); /* the certificate was not seen */
    c = conn_failed(0x0303);
    CHECK_STR(selftest_conn_step(&c, true), "tls12");
    c = conn_failed(0); /* no ClientHello seen */
    CHECK_STR(selftest_conn_step(&c, false), "tls");
    c = conn_tls(0x0304, SELFTEST_CERT_NONE, true);
    CHECK_STR(selftest_conn_step(&c, true), "no-client-cert");
    CHECK_STR(selftest_conn_step(&c, false), "tls"); /* none configured: nothing left out */
    c = conn_tls(0x0303, SELFTEST_CERT_NONE, true);
    CHECK_STR(selftest_conn_step(&c, true), "no-client-cert+tls12");
    c = conn_tls(0x0304, SELFTEST_CERT_PRESENTED, true);
    CHECK_STR(selftest_conn_step(&c, true), "tls");
}

static void test_outcomes(void)
{
    char text[SELFTEST_TEXT_MAX];
    struct selftest_cell cell = {0};
    cell_add(&cell, conn_tls(0x0304, SELFTEST_CERT_NONE, true));
    cell.sender.delivered = true;
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_TLS);
    CHECK_STR(text, "TLS 1.3");

    cell = (struct selftest_cell){0};
    cell_add(&cell, conn_tls(0x0304, SELFTEST_CERT_PRESENTED, false));
    cell_add(&cell, conn_tls(0x0304, SELFTEST_CERT_NONE, true));
    cell.sender.delivered = true;
    CHECK_INT(outcome(text, &cell, true), SELFTEST_OUT_TLS);
    CHECK_STR(text, "TLS 1.3 via tls->no-client-cert");

    cell = (struct selftest_cell){0};
    cell_add(&cell, conn_failed(0x0304));
    cell_add(&cell, conn_tls(0x0303, SELFTEST_CERT_NONE, true));
    cell.sender.delivered = true;
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_TLS);
    CHECK_STR(text, "TLS 1.2 via tls->tls12");

    cell = (struct selftest_cell){0};
    cell_add(&cell, conn_clear());
    cell.sender.delivered = true;
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_CLEARTEXT);
    CHECK_STR(text, "cleartext");

    cell = (struct selftest_cell){0};
    struct selftest_conn refused = conn_clear();
    refused.starttls = true;
    refused.starttls_reply = 454;
    cell_add(&cell, refused);
    cell.sender.delivered = true;
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_CLEARTEXT);
    CHECK_STR(text, "cleartext after 454");

    cell = (struct selftest_cell){0};
    cell_add(&cell, conn_failed(0x0304));
    cell_add(&cell, conn_failed(0x0303));
    cell_add(&cell, conn_clear());
    cell.sender.delivered = true;
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_CLEARTEXT);
    CHECK_STR(text, "cleartext via tls->tls12->cleartext");

    /* More connections than are kept: the path says so. */
    cell = (struct selftest_cell){0};
    for (size_t i = 0; i < SELFTEST_CONNS_MAX + 2; i++) {
        cell_add(&cell, conn_failed(0x0304));
    }
    snprintf(cell.sender.reply, sizeof(cell.sender.reply), "421 4.4.2 Upstream lost");
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_DEFERRED);
    CHECK_STR(text, "deferred 421 4.4.2 via tls->tls->tls->tls->tls->tls->tls->tls->...");
}

static void test_refusals(void)
{
    char text[SELFTEST_TEXT_MAX];
    struct selftest_cell cell = {0};
    cell_add(&cell, conn_failed(0x0304));
    snprintf(cell.sender.reply, sizeof(cell.sender.reply),
             "421 4.7.0 TLS to the upstream failed, try again later");
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_DEFERRED);
    CHECK_STR(text, "deferred 421 4.7.0");

    cell_add(&cell, conn_failed(0x0303));
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_DEFERRED);
    CHECK_STR(text, "deferred 421 4.7.0 via tls->tls12");

    cell = (struct selftest_cell){0};
    snprintf(cell.sender.reply, sizeof(cell.sender.reply), "554 no service");
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_REJECTED);
    CHECK_STR(text, "rejected 554"); /* no enhanced code to show */

    snprintf(cell.sender.reply, sizeof(cell.sender.reply), "421");
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_DEFERRED);
    CHECK_STR(text, "deferred 421");

    snprintf(cell.sender.reply, sizeof(cell.sender.reply), "221 2.0.0 Bye");
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_ERROR);
    CHECK_STR(text, "error: unexpected reply 221 2.0.0");

    cell = (struct selftest_cell){0};
    snprintf(cell.sender.error, sizeof(cell.sender.error), "no reply to EHLO");
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_ERROR);
    CHECK_STR(text, "error: no reply to EHLO");

    CHECK_INT(selftest_cell_outcome(text, sizeof(text), &cell, false, "no host name fits"),
              SELFTEST_OUT_NOT_TESTED);
    CHECK_STR(text, "not tested: no host name fits");
}

static void test_inconsistent(void)
{
    char text[SELFTEST_TEXT_MAX];
    struct selftest_cell cell = {0};
    cell_add(&cell, conn_failed(0x0304));
    cell.sender.delivered = true; /* a made-up 250 */
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_INCONSISTENT);
    CHECK_STR(text, "inconsistent: 250 to the client, no message upstream");

    cell = (struct selftest_cell){0};
    cell_add(&cell, conn_clear());
    snprintf(cell.sender.reply, sizeof(cell.sender.reply), "421 4.4.2 lost");
    CHECK_INT(outcome(text, &cell, false), SELFTEST_OUT_INCONSISTENT);
    CHECK_STR(text, "inconsistent: 421 4.4.2 to the client, message accepted upstream");
}

/* report_of makes a report of |n| rows, every cell delivered over TLS 1.3. */
static struct selftest_report report_of(struct selftest_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t f = 0; f < SELFTEST_N_FAILURES; f++) {
            rows[i].cells[f] = (struct selftest_cell){0};
            cell_add(&rows[i].cells[f], conn_tls(0x0304, SELFTEST_CERT_NONE, true));
            rows[i].cells[f].sender.delivered = true;
        }
    }
    return (struct selftest_report){.path = "t.ini", .rows = rows, .n_rows = n};
}

static void test_verdict(void)
{
    static struct selftest_row rows[2];
    memset(rows, 0, sizeof(rows));
    rows[0].policy = CONF_BACK_STARTTLS_REQUIRE;
    snprintf(rows[0].pattern, sizeof(rows[0].pattern), "*.example.com");
    rows[1].is_default = true;
    rows[1].policy = CONF_BACK_STARTTLS_MAY;
    struct selftest_report r = report_of(rows, 2);
    CHECK(!selftest_row_leaks(&rows[0]));
    CHECK_INT(selftest_exit_status(&r), 0);

    /* Cleartext under may is what may means. */
    rows[1].cells[SELFTEST_ALERT] = (struct selftest_cell){0};
    cell_add(&rows[1].cells[SELFTEST_ALERT], conn_clear());
    rows[1].cells[SELFTEST_ALERT].sender.delivered = true;
    CHECK(!selftest_row_leaks(&rows[1]));
    CHECK_INT(selftest_exit_status(&r), 0);

    /* Under require, even an envelope without the message is a leak. */
    struct selftest_cell *cell = &rows[0].cells[SELFTEST_NO_STARTTLS];
    *cell = (struct selftest_cell){0};
    cell_add(cell, (struct selftest_conn){.envelope_clear = true});
    snprintf(cell->sender.reply, sizeof(cell->sender.reply), "421 4.7.0 refused");
    CHECK(selftest_row_leaks(&rows[0]));
    CHECK_INT(selftest_exit_status(&r), 1);

    /* A leak wins over a cell that could not be run. */
    rows[1].cells[SELFTEST_TLS_OK] = (struct selftest_cell){0};
    snprintf(rows[1].cells[SELFTEST_TLS_OK].sender.error, SELFTEST_TEXT_MAX, "no reply");
    CHECK_INT(selftest_exit_status(&r), 1);
    *cell = (struct selftest_cell){0};
    snprintf(cell->sender.reply, sizeof(cell->sender.reply), "421 4.7.0 refused");
    CHECK_INT(selftest_exit_status(&r), 2);

    /* An untested row counts as incomplete, and its cells never as leaks. */
    r = report_of(rows, 2);
    snprintf(rows[0].untested, sizeof(rows[0].untested), "why");
    rows[0].cells[0].conns[0].envelope_clear = true;
    CHECK(!selftest_row_leaks(&rows[0]));
    CHECK_INT(selftest_exit_status(&r), 2);
    rows[0].untested[0] = '\0';
    CHECK_INT(selftest_exit_status(&r), 1);

    /* The proxy's 250 without a message upstream is a bug too. */
    r = report_of(rows, 2);
    rows[1].cells[SELFTEST_TLS_OK].conns[0].message = false;
    CHECK_INT(selftest_exit_status(&r), 1);

    r = report_of(rows, 2);
    snprintf(r.setup_error, sizeof(r.setup_error), "no loop");
    CHECK_INT(selftest_exit_status(&r), 2);
}

static void test_patterns(void)
{
    char text[CONF_HOST_MAX + 8];
    struct conf_policy p = {.kind = CONF_PATTERN_NAME, .name = "mx.partner.example"};
    selftest_pattern_text(text, sizeof(text), &p);
    CHECK_STR(text, "mx.partner.example");
    CHECK(selftest_greeting_for(text, sizeof(text), &p));
    CHECK_STR(text, "mx.partner.example");

    p = (struct conf_policy){.kind = CONF_PATTERN_WILDCARD, .name = ".example.com"};
    selftest_pattern_text(text, sizeof(text), &p);
    CHECK_STR(text, "*.example.com");
    CHECK(selftest_greeting_for(text, sizeof(text), &p));
    CHECK_STR(text, "selftest.example.com");

    /* A suffix so long that "selftest" does not fit: one letter does, then nothing. */
    p.name[0] = '.';
    memset(p.name + 1, 'a', 252);
    p.name[253] = '\0';
    CHECK(selftest_greeting_for(text, sizeof(text), &p));
    CHECK_INT(text[0], 'x');
    CHECK_INT(strlen(text), 254);
    memset(p.name + 1, 'a', 254);
    p.name[255] = '\0';
    CHECK(!selftest_greeting_for(text, sizeof(text), &p));

    p = (struct conf_policy){.kind = CONF_PATTERN_CIDR,
                             .cidr = {.family = AF_INET, .prefix_len = 24}};
    inet_pton(AF_INET, "192.0.2.0", p.cidr.addr);
    selftest_pattern_text(text, sizeof(text), &p);
    CHECK_STR(text, "192.0.2.0/24");
    CHECK(selftest_greeting_for(text, sizeof(text), &p));
    CHECK_STR(text, "selftest.invalid");
    p.cidr.prefix_len = 32;
    selftest_pattern_text(text, sizeof(text), &p);
    CHECK_STR(text, "192.0.2.0");
    p.cidr = (struct conf_cidr){.family = AF_INET6, .prefix_len = 48};
    inet_pton(AF_INET6, "2001:db8:5::", p.cidr.addr);
    selftest_pattern_text(text, sizeof(text), &p);
    CHECK_STR(text, "2001:db8:5::/48");

    CHECK(selftest_greeting_for(text, sizeof(text), NULL));
    CHECK_STR(text, "selftest.invalid");
    CHECK_STR(selftest_failure_name(SELFTEST_NO_STARTTLS), "no-starttls");
    CHECK_STR(selftest_failure_name(SELFTEST_TLS_OK), "tls-ok");
    CHECK_STR(selftest_policy_name(CONF_BACK_STARTTLS_REQUIRE), "require");
}

/* printed runs |print| on |r| into a string (caller frees). */
static char *printed(void (*print)(FILE *, const struct selftest_report *),
                     const struct selftest_report *r)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    print(out, r);
    fclose(out);
    return text;
}

static void test_output(void)
{
    static struct selftest_row rows[2];
    memset(rows, 0, sizeof(rows));
    rows[0].policy = CONF_BACK_STARTTLS_REQUIRE;
    snprintf(rows[0].pattern, sizeof(rows[0].pattern), "*.example.com");
    snprintf(rows[0].greeting, sizeof(rows[0].greeting), "selftest.example.com");
    rows[1].is_default = true;
    rows[1].policy = CONF_BACK_STARTTLS_MAY;
    snprintf(rows[1].greeting, sizeof(rows[1].greeting), "selftest.invalid");
    struct selftest_report r = report_of(rows, 2);
    struct selftest_cell *cell = &rows[0].cells[SELFTEST_REFUSE_454];
    *cell = (struct selftest_cell){0};
    cell_add(cell, (struct selftest_conn){.starttls = true, .starttls_reply = 454});
    snprintf(cell->sender.reply, sizeof(cell->sender.reply), "421 4.7.0 say \"no\"\x01");
    snprintf(r.notes[r.n_notes++], SELFTEST_NOTE_MAX, "a note");

    char *table = printed(selftest_print_table, &r);
    CHECK(strstr(table, "smtp-tls-proxy self-test of t.ini\n") != NULL);
    CHECK(strstr(table, "\npolicy                 no-starttls  refuse-454          alert") != NULL);
    CHECK(strstr(table, "\nrequire *.example.com  TLS 1.3      deferred 421 4.7.0  TLS 1.3") !=
          NULL);
    CHECK(strstr(table, "\ndefault (may)          TLS 1.3      TLS 1.3             TLS 1.3") !=
          NULL);
    CHECK(strstr(table, "  - a note\n") != NULL);
    CHECK(strstr(table, "Result: ok: no require destination got anything in cleartext (exit 0)") !=
          NULL);
    free(table);

    char *json = printed(selftest_print_json, &r);
    CHECK(strstr(json, "{\"config\": \"t.ini\",\n \"failures\": [\"no-starttls\", \"refuse-454\", "
                       "\"alert\", \"client-cert-rejected\", \"eof-after-220\", "
                       "\"handshake-timeout\", \"post-tls-403\", \"tls-ok\"],\n") != NULL);
    CHECK(strstr(json,
                 "{\"policy\": \"require\", \"pattern\": \"*.example.com\", \"greeting\": "
                 "\"selftest.example.com\", \"untested\": null, \"require_leak\": false,") != NULL);
    CHECK(strstr(json, "\"refuse-454\": {\"outcome\": \"deferred\", \"text\": \"deferred 421 "
                       "4.7.0\", \"delivered\": false, \"reply\": \"421 4.7.0 say \\\"no\\\""
                       "\\u0001\", \"error\": null, \"connections_seen\": 1, \"connections\": "
                       "[{\"step\": \"starttls-refused\", \"starttls\": true, \"starttls_reply\": "
                       "454, \"offered_max\": null, \"client_certificate\": \"unknown\", "
                       "\"tls_version\": null, \"envelope_cleartext\": false, \"envelope_tls\": "
                       "false, \"message\": null}]}") != NULL);
    CHECK(strstr(json, "\"tls-ok\": {\"outcome\": \"tls\", \"text\": \"TLS 1.3\", \"delivered\": "
                       "true, \"reply\": null, \"error\": null, \"connections_seen\": 1, "
                       "\"connections\": [{\"step\": \"tls\", \"starttls\": true, "
                       "\"starttls_reply\": 220, \"offered_max\": \"TLSv1.3\", "
                       "\"client_certificate\": \"none\", \"tls_version\": \"TLSv1.3\", "
                       "\"envelope_cleartext\": false, \"envelope_tls\": true, \"message\": "
                       "\"tls\"}]}") != NULL);
    CHECK(strstr(json, "{\"policy\": \"may\", \"pattern\": null, \"greeting\": "
                       "\"selftest.invalid\"") != NULL);
    CHECK(strstr(json, "\"notes\": [\"a note\"],\n \"seconds\": 0.000,\n \"setup_error\": null,\n "
                       "\"exit_status\": 0}\n") != NULL);
    free(json);

    /* A leak is named in the verdict. */
    cell->conns[0].envelope_clear = true;
    table = printed(selftest_print_table, &r);
    CHECK(strstr(table, "Result: FAILED: \"require *.example.com\" let message data reach an "
                        "upstream in cleartext\n") != NULL);
    free(table);
    json = printed(selftest_print_json, &r);
    CHECK(strstr(json, "\"require_leak\": true") != NULL);
    CHECK(strstr(json, "\"exit_status\": 1}") != NULL);
    free(json);
}

int main(void)
{
    test_steps();
    test_outcomes();
    test_refusals();
    test_inconsistent();
    test_verdict();
    test_patterns();
    test_output();
    return check_exit("test_selftest_table");
}
