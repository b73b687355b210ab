/*
 * test_smtp: the SMTP text functions at their edges: line caps, NUL bytes, every verb,
 * path and BDAT limits, multi-line replies, EHLO editing, and the end-of-data scanner fed
 * at every possible split, checked against a plain whole-buffer reference.
 */
#include "smtp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* A string literal as (pointer, length), so embedded NUL bytes count. */
#define LIT(s) (s), (sizeof(s) - 1)
#define CHECK_LIT(got, got_len, lit) CHECK_MEM((got), (got_len), (lit), sizeof(lit) - 1)

/* ---- smtp_line_find ---- */

static void check_line(const char *data, size_t len, size_t max_len, enum smtp_result want,
                       size_t want_line_len, size_t want_eol_len)
{
    size_t line_len = 99;
    size_t eol_len = 99;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, data, len, max_len), want);
    CHECK_INT(line_len, want_line_len);
    CHECK_INT(eol_len, want_eol_len);
}

static void test_line_find(void)
{
    check_line(LIT("EHLO x\r\n"), 512, SMTP_OK, 6, 2);
    check_line(LIT("EHLO x\n"), 512, SMTP_OK, 6, 1);
    check_line(LIT("\r\n"), 512, SMTP_OK, 0, 2);
    check_line(LIT("\n"), 512, SMTP_OK, 0, 1);
    check_line(LIT("a\rb\n"), 512, SMTP_OK, 3, 1);  /* a CR not before the LF is line text */
    check_line(LIT("a\r\r\n"), 512, SMTP_OK, 2, 2); /* "a\r" then CRLF */
    check_line(LIT("\r"), 512, SMTP_NEED_MORE, 0, 0);
    check_line(LIT("EHLO x"), 512, SMTP_NEED_MORE, 0, 0);
    check_line(LIT(""), 512, SMTP_NEED_MORE, 0, 0);
    check_line(NULL, 0, 512, SMTP_NEED_MORE, 0, 0);

    /* NUL bytes are ordinary bytes: never a line end, never a truncation. */
    check_line(LIT("a\0b\r\n"), 512, SMTP_OK, 3, 2);
    check_line(LIT("\0\0\n"), 512, SMTP_OK, 2, 1);
    check_line(LIT("\0\0\0"), 512, SMTP_NEED_MORE, 0, 0);
    check_line(LIT("\0\0\0"), 3, SMTP_TOO_LONG, 3, 0);

    /* The cap counts the line ending: 8 + CRLF fits in 10, 9 + CRLF does not. */
    check_line(LIT("12345678\r\n"), 10, SMTP_OK, 8, 2);
    check_line(LIT("123456789\n"), 10, SMTP_OK, 9, 1);
    check_line(LIT("123456789\r\n"), 10, SMTP_TOO_LONG, 11, 1);
    check_line(LIT("1234567890\n"), 10, SMTP_TOO_LONG, 11, 1);
    check_line(LIT("12345678\r\nnext"), 10, SMTP_OK, 8, 2);
    check_line(LIT("123456789\r\nnext"), 10, SMTP_TOO_LONG, 11, 1);

    /* No LF yet: waiting is right only while a line ending could still fit. */
    check_line(LIT("12345678\r"), 10, SMTP_NEED_MORE, 0, 0);
    check_line(LIT("123456789"), 10, SMTP_NEED_MORE, 0, 0);
    check_line(LIT("123456789\r"), 10, SMTP_TOO_LONG, 10, 0);
    check_line(LIT("1234567890"), 10, SMTP_TOO_LONG, 10, 0);
    check_line(LIT("12345678901234"), 10, SMTP_TOO_LONG, 14, 0);

    /* Past the cap, everything up to and including the LF may go at once. */
    check_line(LIT("1234567890123\nNEXT\r\n"), 10, SMTP_TOO_LONG, 14, 1);
    check_line(LIT("1234567890123\r\nNEXT\r\n"), 10, SMTP_TOO_LONG, 15, 1);

    /* Several lines in one buffer, walked the way a caller does. */
    static const char lines[] = "A\r\nBB\nCCC\r\n\r\nDD";
    const char *at = lines;
    size_t left = sizeof(lines) - 1;
    size_t line_len;
    size_t eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_OK);
    CHECK_LIT(at, line_len, "A");
    CHECK_INT(eol_len, 2);
    at += line_len + eol_len;
    left -= line_len + eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_OK);
    CHECK_LIT(at, line_len, "BB");
    CHECK_INT(eol_len, 1);
    at += line_len + eol_len;
    left -= line_len + eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_OK);
    CHECK_LIT(at, line_len, "CCC");
    CHECK_INT(eol_len, 2);
    at += line_len + eol_len;
    left -= line_len + eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_OK);
    CHECK_INT(line_len, 0);
    CHECK_INT(eol_len, 2);
    at += line_len + eol_len;
    left -= line_len + eol_len;
    CHECK_INT(smtp_line_find(&line_len, &eol_len, at, left, 512), SMTP_NEED_MORE);
    CHECK_INT(left, 2);

    /* A line exactly at a realistic cap, and one byte over. */
    enum { CAP = 512 };
    char big[CAP + 2];
    memset(big, 'x', sizeof(big));
    big[CAP - 2] = '\r';
    big[CAP - 1] = '\n';
    check_line(big, CAP, CAP, SMTP_OK, CAP - 2, 2);
    memset(big, 'x', sizeof(big));
    big[CAP - 1] = '\r';
    big[CAP] = '\n';
    check_line(big, CAP + 1, CAP, SMTP_TOO_LONG, CAP + 1, 1);
    check_line(big, CAP, CAP, SMTP_TOO_LONG, CAP, 0);
    check_line(big, CAP - 1, CAP, SMTP_NEED_MORE, 0, 0);
}

/* ---- smtp_command_parse ---- */

static void check_verb(const char *line, size_t len, enum smtp_verb want, const char *want_args)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_OK);
    CHECK_INT(cmd.verb, want);
    CHECK_MEM(cmd.args, cmd.args_len, want_args, strlen(want_args));
}

static void test_command_verbs(void)
{
    check_verb(LIT("HELO a.example"), SMTP_VERB_HELO, "a.example");
    check_verb(LIT("EHLO a.example"), SMTP_VERB_EHLO, "a.example");
    check_verb(LIT("MAIL FROM:<a@b>"), SMTP_VERB_MAIL, "FROM:<a@b>");
    check_verb(LIT("RCPT TO:<a@b>"), SMTP_VERB_RCPT, "TO:<a@b>");
    check_verb(LIT("DATA"), SMTP_VERB_DATA, "");
    check_verb(LIT("BDAT 10"), SMTP_VERB_BDAT, "10");
    check_verb(LIT("RSET"), SMTP_VERB_RSET, "");
    check_verb(LIT("NOOP"), SMTP_VERB_NOOP, "");
    check_verb(LIT("NOOP hello there"), SMTP_VERB_NOOP, "hello there");
    check_verb(LIT("QUIT"), SMTP_VERB_QUIT, "");
    check_verb(LIT("STARTTLS"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("AUTH PLAIN AGFAAGI="), SMTP_VERB_AUTH, "PLAIN AGFAAGI=");
    check_verb(LIT("XCLIENT ADDR=192.0.2.1 NAME=x"), SMTP_VERB_XCLIENT, "ADDR=192.0.2.1 NAME=x");

    /* Verbs are case-insensitive (RFC 5321 section 2.4). */
    check_verb(LIT("ehlo a"), SMTP_VERB_EHLO, "a");
    check_verb(LIT("eHlO a"), SMTP_VERB_EHLO, "a");
    check_verb(LIT("helo a"), SMTP_VERB_HELO, "a");
    check_verb(LIT("mail from:<a>"), SMTP_VERB_MAIL, "from:<a>");
    check_verb(LIT("rcpt to:<a>"), SMTP_VERB_RCPT, "to:<a>");
    check_verb(LIT("data"), SMTP_VERB_DATA, "");
    check_verb(LIT("bdat 1 last"), SMTP_VERB_BDAT, "1 last");
    check_verb(LIT("rset"), SMTP_VERB_RSET, "");
    check_verb(LIT("noop"), SMTP_VERB_NOOP, "");
    check_verb(LIT("Quit"), SMTP_VERB_QUIT, "");
    check_verb(LIT("StartTLS"), SMTP_VERB_STARTTLS, "");
    check_verb(LIT("auth login"), SMTP_VERB_AUTH, "login");
    check_verb(LIT("xclient NAME=x"), SMTP_VERB_XCLIENT, "NAME=x");

    /* Arguments after argument-less verbs are the caller's business. */
    check_verb(LIT("STARTTLS foo"), SMTP_VERB_STARTTLS, "foo");
    check_verb(LIT("DATA x"), SMTP_VERB_DATA, "x");
    check_verb(LIT("QUIT "), SMTP_VERB_QUIT, "");
    check_verb(LIT("EHLO  two"), SMTP_VERB_EHLO, " two");

    /* A verb is a whole word: prefixes and extensions are other verbs. */
    check_verb(LIT("DATAX"), SMTP_VERB_OTHER, "");
    check_verb(LIT("STARTTLSX"), SMTP_VERB_OTHER, "");
    check_verb(LIT("STARTTL"), SMTP_VERB_OTHER, "");
    check_verb(LIT("DAT"), SMTP_VERB_OTHER, "");
    check_verb(LIT("MAILFROM:<a>"), SMTP_VERB_OTHER, "");
    check_verb(LIT("VRFY postmaster"), SMTP_VERB_OTHER, "postmaster");
    check_verb(LIT("EHLO\tx"), SMTP_VERB_OTHER, "");
    check_verb(LIT(" EHLO x"), SMTP_VERB_OTHER, "EHLO x");
    check_verb(LIT("\xc4\xb0HLO x"), SMTP_VERB_OTHER, "x");
    check_verb(LIT(""), SMTP_VERB_OTHER, "");

    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, NULL, 0), SMTP_OK);
    CHECK_INT(cmd.verb, SMTP_VERB_OTHER);
    CHECK_INT(cmd.args_len, 0);

    /* Fields that do not apply stay zero. */
    CHECK_INT(smtp_command_parse(&cmd, LIT("EHLO x")), SMTP_OK);
    CHECK(cmd.path == NULL);
    CHECK_INT(cmd.path_len, 0);
    CHECK_INT(cmd.bdat_size, 0);
    CHECK(!cmd.bdat_last);
}

static void test_command_bad_bytes(void)
{
    struct smtp_command cmd;
    /* A CR, LF or NUL inside a command is rejected whatever the verb. */
    CHECK_INT(smtp_command_parse(&cmd, LIT("EHLO a\0b")), SMTP_BAD_SYNTAX);
    CHECK_INT(cmd.verb, SMTP_VERB_EHLO);
    CHECK_INT(smtp_command_parse(&cmd, LIT("EHLO a\rb")), SMTP_BAD_SYNTAX);
    CHECK_INT(smtp_command_parse(&cmd, LIT("EHLO a\nb")), SMTP_BAD_SYNTAX);
    CHECK_INT(smtp_command_parse(&cmd, LIT("DATA\r")), SMTP_BAD_SYNTAX);
    CHECK_INT(cmd.verb, SMTP_VERB_OTHER); /* "DATA\r" is not the word DATA */
    CHECK_INT(smtp_command_parse(&cmd, LIT("\0")), SMTP_BAD_SYNTAX);
    CHECK_INT(smtp_command_parse(&cmd, LIT("MAIL FROM:<a\0b>")), SMTP_BAD_SYNTAX);
    CHECK_INT(cmd.verb, SMTP_VERB_MAIL);
    CHECK_INT(smtp_command_parse(&cmd, LIT("RCPT TO:<a>\r")), SMTP_BAD_SYNTAX);
    CHECK_INT(smtp_command_parse(&cmd, LIT("NOOP\0")), SMTP_BAD_SYNTAX);
    CHECK_INT(smtp_command_parse(&cmd, LIT("QUIT\r\nRSET")), SMTP_BAD_SYNTAX);
    CHECK_INT(smtp_command_parse(&cmd, LIT("X\0")), SMTP_BAD_SYNTAX);
}

static void check_path(const char *line, size_t len, enum smtp_verb verb, const char *want_path)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_OK);
    CHECK_INT(cmd.verb, verb);
    CHECK_MEM(cmd.path, cmd.path_len, want_path, strlen(want_path));
}

static void check_path_fails(const char *line, size_t len, enum smtp_result want)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), want);
}

static void test_command_paths(void)
{
    check_path(LIT("MAIL FROM:<a@b.example>"), SMTP_VERB_MAIL, "<a@b.example>");
    check_path(LIT("RCPT TO:<a@b.example>"), SMTP_VERB_RCPT, "<a@b.example>");
    check_path(LIT("MAIL FROM:<>"), SMTP_VERB_MAIL, "<>");
    check_path(LIT("RCPT TO:<>"), SMTP_VERB_RCPT, "<>");
    check_path(LIT("mail From:<a@b>"), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("RCPT to:<Postmaster>"), SMTP_VERB_RCPT, "<Postmaster>");
    check_path(LIT("MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME"), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("MAIL FROM:<> SIZE=1000"), SMTP_VERB_MAIL, "<>");
    check_path(LIT("RCPT TO:<a@b> NOTIFY=NEVER ORCPT=rfc822;a@b"), SMTP_VERB_RCPT, "<a@b>");
    check_path(LIT("MAIL FROM:<a@b> "), SMTP_VERB_MAIL, "<a@b>");
    check_path(LIT("RCPT TO:<@r.example:a@b>"), SMTP_VERB_RCPT, "<@r.example:a@b>");
    /* Many clients put a space after the colon; accept it. */
    check_path(LIT("MAIL FROM: <x>"), SMTP_VERB_MAIL, "<x>");
    check_path(LIT("RCPT TO:  <x> NOTIFY=NEVER"), SMTP_VERB_RCPT, "<x>");
    /* A '>' inside a quoted local part does not end the path (RFC 5321 section 4.1.2). */
    check_path(LIT("MAIL FROM:<\"a>b\"@c> SIZE=1"), SMTP_VERB_MAIL, "<\"a>b\"@c>");
    check_path(LIT("RCPT TO:<\"a\\\">b\"@c>"), SMTP_VERB_RCPT, "<\"a\\\">b\"@c>");
    /* 8-bit local parts (RFC 6531) pass through untouched. */
    check_path(LIT("RCPT TO:<\xc3\xa9@b>"), SMTP_VERB_RCPT, "<\xc3\xa9@b>");

    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, LIT("MAIL FROM:<a@b> SIZE=9")), SMTP_OK);
    CHECK_LIT(cmd.args, cmd.args_len, "FROM:<a@b> SIZE=9");
    CHECK(cmd.path == cmd.args + 5);

    check_path_fails(LIT("MAIL FROM:a@b"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<a@b"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM: "), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM <a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL TO:<a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL "), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL  FROM:<a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<a@b>SIZE=1"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("MAIL FROM:<\"a>b@c>"), SMTP_BAD_SYNTAX); /* unclosed quote */
    check_path_fails(LIT("MAIL FROM:<\"a\\"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT FROM:<a@b>"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:a@b"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:<a@b"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT TO:<a@b>x"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("RCPT"), SMTP_BAD_SYNTAX);

    /* RFC 5321 section 4.5.3.1.3: 256 octets, brackets included, and no more. */
    char line[400];
    for (size_t path_len = 250; path_len <= 260; path_len++) {
        for (int rcpt = 0; rcpt <= 1; rcpt++) {
            const char *prefix = rcpt ? "RCPT TO:<" : "MAIL FROM:<";
            size_t prefix_len = strlen(prefix);
            memcpy(line, prefix, prefix_len);
            memset(line + prefix_len, 'a', path_len - 2);
            line[prefix_len + path_len - 2] = '>';
            static const char params[] = " SIZE=1";
            memcpy(line + prefix_len + path_len - 1, params, sizeof(params) - 1);
            size_t len = prefix_len + path_len - 1 + sizeof(params) - 1;
            enum smtp_result want = path_len <= SMTP_PATH_MAX ? SMTP_OK : SMTP_PATH_TOO_LONG;
            CHECK_INT(smtp_command_parse(&cmd, line, len), want);
            if (want == SMTP_OK) {
                CHECK_INT(cmd.path_len, path_len);
                CHECK(cmd.path == line + prefix_len - 1);
            }
            /* Without the closing bracket it is a syntax error, however long. */
            CHECK_INT(smtp_command_parse(&cmd, line, prefix_len + path_len - 2), SMTP_BAD_SYNTAX);
        }
    }
}

static void check_bdat(const char *line, size_t len, uint64_t want_size, bool want_last)
{
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, line, len), SMTP_OK);
    CHECK_INT(cmd.verb, SMTP_VERB_BDAT);
    CHECK(cmd.bdat_size == want_size);
    CHECK_INT(cmd.bdat_last, want_last);
}

static void test_command_bdat(void)
{
    check_bdat(LIT("BDAT 0"), 0, false);
    check_bdat(LIT("BDAT 0 LAST"), 0, true);
    check_bdat(LIT("BDAT 1"), 1, false);
    check_bdat(LIT("BDAT 86 LAST"), 86, true);
    check_bdat(LIT("bdat 5 last"), 5, true);
    check_bdat(LIT("BDAT 5 LaSt"), 5, true);
    check_bdat(LIT("BDAT 1048576"), 1048576, false);
    check_bdat(LIT("BDAT 1099511627776"), SMTP_BDAT_SIZE_MAX, false);
    check_bdat(LIT("BDAT 1099511627776 LAST"), SMTP_BDAT_SIZE_MAX, true);
    check_bdat(LIT("BDAT 0000000000000000000000000000000000012"), 12, false);

    check_path_fails(LIT("BDAT 1099511627777"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 18446744073709551615"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 18446744073709551616"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 99999999999999999999999999999999"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT "), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT x"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 12x"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 0x10"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT -1"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT +1"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT  1"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1 "), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1  LAST"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1 LAST "), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1 LASTX"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1 LAST x"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1 LAS"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1 FIRST"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT LAST"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1\0"), SMTP_BAD_SYNTAX);
    check_path_fails(LIT("BDAT 1\t"), SMTP_BAD_SYNTAX);

    /* BDATX is not BDAT: no size is parsed and nothing is rejected. */
    struct smtp_command cmd;
    CHECK_INT(smtp_command_parse(&cmd, LIT("BDATX nonsense")), SMTP_OK);
    CHECK_INT(cmd.verb, SMTP_VERB_OTHER);
    CHECK(cmd.bdat_size == 0);
}

/* ---- replies ---- */

static void check_reply_line(struct smtp_reply_parser *p, const char *line, size_t len,
                             enum smtp_result want, int want_code, bool want_done)
{
    int code = -1;
    bool done = !want_done;
    CHECK_INT(smtp_reply_parse_line(p, &code, &done, line, len), want);
    CHECK_INT(code, want_code);
    CHECK_INT(done, want_done);
}

static void test_replies(void)
{
    struct smtp_reply_parser p;
    smtp_reply_parser_init(&p);
    check_reply_line(&p, LIT("220 mx.example ESMTP"), SMTP_OK, 220, true);
    check_reply_line(&p, LIT("250 "), SMTP_OK, 250, true);
    check_reply_line(&p, LIT("250"), SMTP_OK, 250, true);
    check_reply_line(&p, LIT("554 5.7.1 no"), SMTP_OK, 554, true);
    check_reply_line(&p, LIT("559 x"), SMTP_OK, 559, true);
    check_reply_line(&p, LIT("200 x"), SMTP_OK, 200, true);
    check_reply_line(&p, LIT("250 a\0b"), SMTP_OK, 250, true);

    check_reply_line(&p, LIT("250-a"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("250-b"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("250-"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("250 c"), SMTP_OK, 250, true);
    /* Ready for the next reply, with another code. */
    check_reply_line(&p, LIT("451-x"), SMTP_OK, 451, false);
    check_reply_line(&p, LIT("451"), SMTP_OK, 451, true);

    /* A continuation with a different code is broken, and the parser starts over. */
    check_reply_line(&p, LIT("250-a"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("251 b"), SMTP_BAD_SYNTAX, 0, false);
    CHECK_INT(p.code, 0);
    check_reply_line(&p, LIT("251 b"), SMTP_OK, 251, true);
    check_reply_line(&p, LIT("250-a"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("550-b"), SMTP_BAD_SYNTAX, 0, false);

    static const char *const bad[] = {
        "099 x", "199 x", "599 x", "269 x", "600 x", "900 x", "260 x", "2x0 x",
        "25x x", "x50 x", "25",    "2",     "",      "2500",  "250x",  "250\t",
        "250_",  "250:x", " 250",  "-250",  "250.",  "2 0 x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        smtp_reply_parser_init(&p);
        check_reply_line(&p, bad[i], strlen(bad[i]), SMTP_BAD_SYNTAX, 0, false);
    }
    check_reply_line(&p, NULL, 0, SMTP_BAD_SYNTAX, 0, false);
    check_reply_line(&p, LIT("25\0 x"), SMTP_BAD_SYNTAX, 0, false);
    check_reply_line(&p, LIT("250\0x"), SMTP_BAD_SYNTAX, 0, false);
    check_reply_line(&p, LIT("250\r"), SMTP_BAD_SYNTAX, 0, false);

    /* A bad line in the middle of a reply resets the parser too. */
    smtp_reply_parser_init(&p);
    check_reply_line(&p, LIT("250-a"), SMTP_OK, 250, false);
    check_reply_line(&p, LIT("250x"), SMTP_BAD_SYNTAX, 0, false);
    CHECK_INT(p.code, 0);
}

/* ---- smtp_ehlo_edit ---- */

/* check_reply_whole checks that |data| is exactly one reply with CRLF line endings. */
static void check_reply_whole(const char *data, size_t len)
{
    struct smtp_reply_parser p;
    smtp_reply_parser_init(&p);
    bool done = false;
    size_t pos = 0;
    while (pos < len && !done) {
        size_t line_len;
        size_t eol_len;
        CHECK_INT(smtp_line_find(&line_len, &eol_len, data + pos, len - pos, len), SMTP_OK);
        CHECK_INT(eol_len, 2);
        int code;
        CHECK_INT(smtp_reply_parse_line(&p, &code, &done, data + pos, line_len), SMTP_OK);
        CHECK_INT(code, 250);
        pos += line_len + eol_len;
    }
    CHECK(done);
    CHECK_INT(pos, len);
}

static void check_ehlo(const char *reply, size_t reply_len, bool add_starttls, const char *want,
                       unsigned want_caps)
{
    char out[1024];
    size_t out_len = 99;
    unsigned caps = 99;
    size_t want_len = strlen(want);
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), reply, reply_len, add_starttls, 0),
              SMTP_OK);
    CHECK_MEM(out, out_len, want, want_len);
    CHECK_INT(caps, want_caps);
    check_reply_whole(out, out_len);

    /* The exact size fits; one byte less is refused without writing past it. */
    char *exact = malloc(want_len + 1);
    CHECK(exact != NULL);
    memset(exact, '#', want_len + 1);
    CHECK_INT(smtp_ehlo_edit(exact, &out_len, &caps, want_len, reply, reply_len, add_starttls, 0),
              SMTP_OK);
    CHECK_MEM(exact, out_len, want, want_len);
    CHECK_INT(exact[want_len], '#');
    memset(exact, '#', want_len + 1);
    CHECK_INT(
        smtp_ehlo_edit(exact, &out_len, &caps, want_len - 1, reply, reply_len, add_starttls, 0),
        SMTP_TOO_LONG);
    CHECK_INT(out_len, 0);
    CHECK_INT(caps, 0);
    CHECK_INT(exact[want_len - 1], '#');
    CHECK_INT(exact[want_len], '#');
    free(exact);

    /* The documented bound always suffices. */
    CHECK(want_len <= reply_len + reply_len / 4 + 16);
}

static void check_ehlo_fails(const char *reply, size_t reply_len, enum smtp_result want)
{
    char out[1024];
    size_t out_len = 99;
    unsigned caps = 99;
    for (int add = 0; add <= 1; add++) {
        CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), reply, reply_len, add, 0),
                  want);
        CHECK_INT(out_len, 0);
        CHECK_INT(caps, 0);
    }
}

static void test_ehlo_edit(void)
{
    /* STARTTLS removed in the middle, at the end, and as the only capability. */
    check_ehlo(LIT("250-mx.example Hello\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
               false, "250-mx.example Hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_STARTTLS | SMTP_CAP_8BITMIME);
    check_ehlo(LIT("250-mx\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"), false,
               "250-mx\r\n250 SIZE 1000\r\n", SMTP_CAP_SIZE | SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250 STARTTLS\r\n"), false, "250 mx\r\n", SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS\r\n250 STARTTLS\r\n"), false, "250 mx\r\n",
               SMTP_CAP_STARTTLS);

    /* Added as the last line when absent; kept exactly once when present. */
    check_ehlo(LIT("250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"), true,
               "250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_SIZE);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n"), true,
               "250-mx\r\n250-8BITMIME\r\n250 STARTTLS\r\n", SMTP_CAP_STARTTLS | SMTP_CAP_8BITMIME);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS\r\n250-STARTTLS\r\n250 8BITMIME\r\n"), true,
               "250-mx\r\n250-8BITMIME\r\n250 STARTTLS\r\n", SMTP_CAP_STARTTLS | SMTP_CAP_8BITMIME);
    check_ehlo(LIT("250-mx\r\n250 STARTTLS\r\n"), true, "250-mx\r\n250 STARTTLS\r\n",
               SMTP_CAP_STARTTLS);

    /* A single-line reply. */
    check_ehlo(LIT("250 mx\r\n"), true, "250-mx\r\n250 STARTTLS\r\n", 0);
    check_ehlo(LIT("250 mx\r\n"), false, "250 mx\r\n", 0);
    check_ehlo(LIT("250 mx.example greets you\r\n"), true,
               "250-mx.example greets you\r\n250 STARTTLS\r\n", 0);
    check_ehlo(LIT("250\r\n"), false, "250 \r\n", 0);
    check_ehlo(LIT("250\r\n"), true, "250-\r\n250 STARTTLS\r\n", 0);

    /* Keywords are case-insensitive and whole words; the greeting is never one. */
    check_ehlo(LIT("250-mx\r\n250-starttls\r\n250 ok\r\n"), false, "250-mx\r\n250 ok\r\n",
               SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-StartTls\r\n250 ok\r\n"), true,
               "250-mx\r\n250-ok\r\n250 STARTTLS\r\n", SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS REQUIRED\r\n250 ok\r\n"), false, "250-mx\r\n250 ok\r\n",
               SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-STARTTLSX\r\n250 XSTARTTLS\r\n"), false,
               "250-mx\r\n250-STARTTLSX\r\n250 XSTARTTLS\r\n", 0);
    check_ehlo(LIT("250-mx\r\n250-STARTTLS-LIKE\r\n250 X STARTTLS\r\n"), true,
               "250-mx\r\n250-STARTTLS-LIKE\r\n250-X STARTTLS\r\n250 STARTTLS\r\n", 0);
    check_ehlo(LIT("250-STARTTLS\r\n250 ok\r\n"), false, "250-STARTTLS\r\n250 ok\r\n", 0);
    check_ehlo(LIT("250 STARTTLS\r\n"), false, "250 STARTTLS\r\n", 0);

    /* Bare LF (and a mix) comes out as CRLF. */
    check_ehlo(LIT("250-mx\n250-PIPELINING\n250 STARTTLS\n"), false, "250-mx\r\n250 PIPELINING\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_STARTTLS);
    check_ehlo(LIT("250-mx\r\n250-PIPELINING\n250 CHUNKING\r\n"), true,
               "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_CHUNKING);
    check_ehlo(LIT("250 mx\n"), true, "250-mx\r\n250 STARTTLS\r\n", 0);
    /* The worst growth: short bare-LF lines plus the added line, still under the bound. */
    check_ehlo(LIT("250-\n250-\n250-\n250-\n250\n"), true,
               "250-\r\n250-\r\n250-\r\n250-\r\n250-\r\n250 STARTTLS\r\n", 0);
    check_ehlo(LIT("250\n"), true, "250-\r\n250 STARTTLS\r\n", 0);

    /* Every capability flag, in any case, with parameters. */
    check_ehlo(LIT("250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 1000\r\n"
                   "250-8BITMIME\r\n250-XCLIENT ADDR NAME\r\n250-BINARYMIME\r\n"
                   "250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"),
               false,
               "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 1000\r\n"
               "250-8BITMIME\r\n250-XCLIENT ADDR NAME\r\n250-BINARYMIME\r\n"
               "250 AUTH PLAIN LOGIN\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_CHUNKING | SMTP_CAP_SIZE | SMTP_CAP_8BITMIME |
                   SMTP_CAP_XCLIENT | SMTP_CAP_BINARYMIME | SMTP_CAP_STARTTLS | SMTP_CAP_AUTH);
    check_ehlo(LIT("250-mx\r\n250-pipelining\r\n250-Chunking\r\n250-size\r\n"
                   "250-8bitmime\r\n250-xclient NAME\r\n250 binarymime\r\n"),
               false,
               "250-mx\r\n250-pipelining\r\n250-Chunking\r\n250-size\r\n"
               "250-8bitmime\r\n250-xclient NAME\r\n250 binarymime\r\n",
               SMTP_CAP_PIPELINING | SMTP_CAP_CHUNKING | SMTP_CAP_SIZE | SMTP_CAP_8BITMIME |
                   SMTP_CAP_XCLIENT | SMTP_CAP_BINARYMIME);
    check_ehlo(LIT("250-mx\r\n250-SIZEX\r\n250-PIPELINING2\r\n250 X PIPELINING\r\n"), false,
               "250-mx\r\n250-SIZEX\r\n250-PIPELINING2\r\n250 X PIPELINING\r\n", 0);

    /* Not a well-formed 250 reply. */
    check_ehlo_fails(LIT(""), SMTP_BAD_SYNTAX);
    check_ehlo_fails(NULL, 0, SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("220 mx\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("500 no\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("251 mx\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n550 no\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n251 x\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx\r"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n250-STARTTLS\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx\r\n250 x\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx\r\nx"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250 mx\r\n\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n\r\n250 x\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-m\rx\r\n250 a\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n250 a\r\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250-mx\r\n250-STARTTLS\0\r\n250 a\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("250x mx\r\n"), SMTP_BAD_SYNTAX);
    check_ehlo_fails(LIT("25\r\n"), SMTP_BAD_SYNTAX);

    /* Too small an output; NULL with no room is fine too. */
    char out[8];
    size_t out_len = 99;
    unsigned caps = 99;
    CHECK_INT(smtp_ehlo_edit(NULL, &out_len, &caps, 0, LIT("250 mx\r\n"), false, 0), SMTP_TOO_LONG);
    CHECK_INT(out_len, 0);
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), LIT("250 mx\r\n"), true, 0),
              SMTP_TOO_LONG);
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), LIT("250 mx\r\n"), false, 0),
              SMTP_OK);
    CHECK_LIT(out, out_len, "250 mx\r\n");
    /* A syntax error wins over a full output. */
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out),
                             LIT("250-a long greeting line\r\n550 x\r\n"), false, 0),
              SMTP_BAD_SYNTAX);

    /* A realistic large reply, at the bound for CRLF input. */
    char reply[SMTP_EHLO_REPLY_MAX];
    size_t reply_len = 0;
    reply_len += (size_t)snprintf(reply, sizeof(reply), "250-mx.example\r\n");
    for (int i = 0; i < 200; i++) {
        reply_len += (size_t)snprintf(reply + reply_len, sizeof(reply) - reply_len,
                                      i == 100 ? "250-STARTTLS\r\n" : "250-X-CAP-%03d\r\n", i);
    }
    reply_len += (size_t)snprintf(reply + reply_len, sizeof(reply) - reply_len, "250 LAST\r\n");
    char big_out[SMTP_EHLO_REPLY_MAX + 16];
    CHECK_INT(smtp_ehlo_edit(big_out, &out_len, &caps, reply_len + 16, reply, reply_len, true, 0),
              SMTP_OK);
    CHECK_INT(out_len, reply_len); /* "250-STARTTLS\r\n" moved to "250 STARTTLS\r\n" */
    CHECK_INT(caps, SMTP_CAP_STARTTLS);
    check_reply_whole(big_out, out_len);
}

/* ---- the end-of-data scanner ---- */

/* What feeding a whole content in pieces produced; |at| counts from the content start. */
struct scan_outcome {
    enum smtp_data_result result;
    size_t at;     /* MORE: all bytes; END: just past the marker; BARE_EOL: the offset */
    long skip_end; /* after BARE_EOL, where smtp_skip_bad_data() found the end, or -1 */
};

/*
 * scan_pieces feeds data[0, len) cut at cuts[0] <= cuts[1] <= ... (pieces may be empty),
 * to smtp_data_scan(), then after a BARE_EOL the rest to smtp_skip_bad_data(), as the
 * session does. Returns what happened; contract violations count in *violations.
 */
static struct scan_outcome scan_pieces(const char *data, size_t len, const size_t *cuts,
                                       size_t n_cuts, int *violations)
{
    struct smtp_data_scanner s;
    smtp_data_scanner_init(&s);
    struct scan_outcome outcome = {SMTP_DATA_MORE, len, -1};
    bool skipping = false;
    size_t start = 0;
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        size_t piece_len = end - start;
        size_t used = 12345;
        if (!skipping) {
            enum smtp_data_result r = smtp_data_scan(&s, &used, data + start, piece_len);
            if (used > piece_len || (r == SMTP_DATA_MORE && used != piece_len) ||
                (r == SMTP_DATA_END && used == 0)) {
                (*violations)++;
                return outcome;
            }
            if (r == SMTP_DATA_END) {
                outcome.result = r;
                outcome.at = start + used;
                return outcome;
            }
            if (r == SMTP_DATA_BARE_EOL) {
                outcome.result = r;
                outcome.at = start + used;
                skipping = true;
                start += used;
                piece_len -= used;
            }
        }
        if (skipping) {
            bool found = smtp_skip_bad_data(&s, &used, data + start, piece_len);
            if (used > piece_len || (!found && used != piece_len) || (found && used == 0)) {
                (*violations)++;
                return outcome;
            }
            if (found) {
                outcome.skip_end = (long)(start + used);
                return outcome;
            }
        }
        start = end;
    }
    return outcome;
}

/*
 * The reference: where a strictly conforming client means the content to end, found by
 * looking at the whole buffer: the first CRLF "." CRLF, the content start counting as a
 * CRLF. Returns the offset just past it, or -1.
 */
static long reference_end(const char *data, size_t len)
{
    for (size_t i = 2; i < len; i++) {
        if (data[i] == '\n' && data[i - 1] == '\r' && data[i - 2] == '.' &&
            (i == 2 || (i >= 4 && data[i - 3] == '\n' && data[i - 4] == '\r'))) {
            return (long)i + 1;
        }
    }
    return -1;
}

/* The reference for smtp_data_scan(): the first bare LF or bare CR, else the end. */
static struct scan_outcome reference_scan(const char *data, size_t len)
{
    struct scan_outcome want = {SMTP_DATA_MORE, len, -1};
    long end = reference_end(data, len);
    for (size_t i = 0; i < len && (end < 0 || (long)i < end); i++) {
        bool after_cr = i > 0 && data[i - 1] == '\r';
        if ((data[i] == '\n') != after_cr) {
            want.result = SMTP_DATA_BARE_EOL;
            want.at = i; /* a bare LF, or the byte after a bare CR */
            want.skip_end = reference_end(data, len);
            return want;
        }
    }
    if (end >= 0) {
        want.result = SMTP_DATA_END;
        want.at = (size_t)end;
    }
    return want;
}

static bool scan_outcome_equal(struct scan_outcome a, struct scan_outcome b)
{
    return a.result == b.result && a.at == b.at && a.skip_end == b.skip_end;
}

static void print_bytes(const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == '\r') {
            fprintf(stderr, "\\r");
        } else if (c == '\n') {
            fprintf(stderr, "\\n");
        } else if (c < 0x20 || c >= 0x7f) {
            fprintf(stderr, "\\x%02x", c);
        } else {
            fputc(c, stderr);
        }
    }
}

/* One mismatch is printed per input so a broken scanner does not flood the output. */
static int check_scan_split(const char *data, size_t len, const size_t *cuts, size_t n_cuts,
                            struct scan_outcome want, int bad_so_far)
{
    int violations = 0;
    struct scan_outcome got = scan_pieces(data, len, cuts, n_cuts, &violations);
    if (violations == 0 && scan_outcome_equal(got, want)) {
        return 0;
    }
    if (bad_so_far == 0) {
        fprintf(stderr, "scanner: \"");
        print_bytes(data, len);
        fprintf(stderr, "\" cut at");
        for (size_t i = 0; i < n_cuts; i++) {
            fprintf(stderr, " %zu", cuts[i]);
        }
        fprintf(stderr, ": got %d at %zu skip %ld, want %d at %zu skip %ld%s\n", got.result, got.at,
                got.skip_end, want.result, want.at, want.skip_end,
                violations ? " (contract violated)" : "");
    }
    return 1;
}

/*
 * check_scan_all_splits feeds |data| whole, in every 2-piece split, one byte at a time,
 * and (when short) in every 3-piece split, and checks each gives |want|. Returns the
 * number of splits that did not.
 */
static int check_scan_all_splits(const char *data, size_t len, struct scan_outcome want)
{
    int bad = 0;
    bad += check_scan_split(data, len, NULL, 0, want, bad);
    for (size_t a = 0; a <= len; a++) {
        bad += check_scan_split(data, len, &a, 1, want, bad);
    }
    size_t *each = malloc((len + 1) * sizeof(*each));
    for (size_t i = 0; i <= len; i++) {
        each[i] = i;
    }
    bad += check_scan_split(data, len, each, len + 1, want, bad);
    free(each);
    if (len <= 24) {
        for (size_t a = 0; a <= len; a++) {
            for (size_t b = a; b <= len; b++) {
                size_t cuts[2] = {a, b};
                bad += check_scan_split(data, len, cuts, 2, want, bad);
            }
        }
    }
    return bad;
}

struct scan_case {
    const char *data;
    size_t len;
    enum smtp_data_result result;
    size_t at;
    long skip_end; /* for BARE_EOL: where skipping the rest finds the end, or -1 */
};

#define SCAN_CASE(lit, result, at, skip_end)                                                       \
    {                                                                                              \
        (lit), sizeof(lit) - 1, (result), (at), (skip_end)                                         \
    }

static const struct scan_case scan_cases[] = {
    /* The empty message and ordinary ones; bytes after the marker are not used. */
    SCAN_CASE(".\r\n", SMTP_DATA_END, 3, -1),
    SCAN_CASE(".\r\nQUIT\r\n", SMTP_DATA_END, 3, -1),
    SCAN_CASE("\r\n.\r\n", SMTP_DATA_END, 5, -1),
    SCAN_CASE("a\r\n.\r\n", SMTP_DATA_END, 6, -1),
    SCAN_CASE("Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<a>\r\n", SMTP_DATA_END, 23, -1),
    SCAN_CASE("a\r\n.\r\n.\r\n", SMTP_DATA_END, 6, -1),
    SCAN_CASE("", SMTP_DATA_MORE, 0, -1),
    SCAN_CASE("a", SMTP_DATA_MORE, 1, -1),
    SCAN_CASE("a\r\nb\r\n", SMTP_DATA_MORE, 6, -1),
    SCAN_CASE("a\r\n.", SMTP_DATA_MORE, 4, -1),
    SCAN_CASE("a\r\n.\r", SMTP_DATA_MORE, 5, -1),
    SCAN_CASE("a\r", SMTP_DATA_MORE, 2, -1),
    SCAN_CASE(".", SMTP_DATA_MORE, 1, -1),
    SCAN_CASE(".\r", SMTP_DATA_MORE, 2, -1),
    /* Dot-stuffed lines (RFC 5321 section 4.5.2) and dots that are not alone. */
    SCAN_CASE("..\r\n.\r\n", SMTP_DATA_END, 7, -1),
    SCAN_CASE("..x\r\n...\r\n.\r\n", SMTP_DATA_END, 13, -1),
    SCAN_CASE(".x\r\n. \r\n.\r\n", SMTP_DATA_END, 11, -1),
    SCAN_CASE("a.\r\n.\r\n", SMTP_DATA_END, 7, -1),
    SCAN_CASE("a\r\n.a\r\n", SMTP_DATA_MORE, 7, -1),
    /* 8-bit and NUL bytes are content. */
    SCAN_CASE("\xff\xfe\0\x80\r\n\0.\r\n.\r\n", SMTP_DATA_END, 13, -1),
    SCAN_CASE("\0\r\n.\r\n", SMTP_DATA_END, 6, -1),
    SCAN_CASE(".\0\r\n", SMTP_DATA_MORE, 4, -1),
    /* Bare LF: reported at the LF itself. */
    SCAN_CASE("\n", SMTP_DATA_BARE_EOL, 0, -1),
    SCAN_CASE("a\nb", SMTP_DATA_BARE_EOL, 1, -1),
    SCAN_CASE("\n.\n", SMTP_DATA_BARE_EOL, 0, -1),
    SCAN_CASE("a\r\n.\n", SMTP_DATA_BARE_EOL, 4, -1),
    SCAN_CASE("\r\n.\n", SMTP_DATA_BARE_EOL, 3, -1),
    SCAN_CASE(".\n", SMTP_DATA_BARE_EOL, 1, -1),
    SCAN_CASE("a\n.\r\n", SMTP_DATA_BARE_EOL, 1, -1),
    SCAN_CASE("\n.\r\n", SMTP_DATA_BARE_EOL, 0, -1),
    SCAN_CASE("a\r\n\n", SMTP_DATA_BARE_EOL, 3, -1),
    /* Bare CR: reported at the byte after it. */
    SCAN_CASE("a\rb", SMTP_DATA_BARE_EOL, 2, -1),
    SCAN_CASE("\r.\r", SMTP_DATA_BARE_EOL, 1, -1),
    SCAN_CASE("\r\r\n", SMTP_DATA_BARE_EOL, 1, -1),
    SCAN_CASE("a\r\n.\rx", SMTP_DATA_BARE_EOL, 5, -1),
    SCAN_CASE(".\r.", SMTP_DATA_BARE_EOL, 2, -1),
    SCAN_CASE("a\r\0", SMTP_DATA_BARE_EOL, 2, -1),
    /* Smuggling attempts (CVE-2023-51764): whatever follows is content to skip, and only a
     * real CRLF.CRLF ends it. */
    SCAN_CASE("a\n.\nMAIL FROM:<x>\r\n.\r\nQUIT\r\n", SMTP_DATA_BARE_EOL, 1, 22),
    SCAN_CASE("a\r\n.\nRCPT TO:<x>\r\n.\r\n", SMTP_DATA_BARE_EOL, 4, 21),
    SCAN_CASE("a\r.\r\nRCPT TO:<x>\r\n.\r\nQUIT", SMTP_DATA_BARE_EOL, 2, 21),
    SCAN_CASE("a\r.\r\n.\r\n", SMTP_DATA_BARE_EOL, 2, 8),
    SCAN_CASE("a\n.\r\n.\r\n", SMTP_DATA_BARE_EOL, 1, 8),
    SCAN_CASE("a\r\r\n.\r\nx", SMTP_DATA_BARE_EOL, 2, 7),
    SCAN_CASE("\r\r\n.\r\n", SMTP_DATA_BARE_EOL, 1, 6),
    SCAN_CASE("a\r\n.\r\r\n.\r\n", SMTP_DATA_BARE_EOL, 5, 10),
    SCAN_CASE("a\nb\r\n\r\n.\r\n", SMTP_DATA_BARE_EOL, 1, 10),
    SCAN_CASE("a\n\r\n.\r\n", SMTP_DATA_BARE_EOL, 1, 7),
    SCAN_CASE("a\n.\n.\n\r\n.\n\r.\r", SMTP_DATA_BARE_EOL, 1, -1),
};

static void test_data_scan_cases(void)
{
    for (size_t i = 0; i < sizeof(scan_cases) / sizeof(scan_cases[0]); i++) {
        const struct scan_case *c = &scan_cases[i];
        struct scan_outcome want = {c->result, c->at, c->skip_end};
        /* The hand-written expectation agrees with the reference... */
        struct scan_outcome reference = reference_scan(c->data, c->len);
        if (!scan_outcome_equal(reference, want)) {
            fprintf(stderr, "scan case %zu: reference says %d at %zu skip %ld\n", i,
                    reference.result, reference.at, reference.skip_end);
        }
        CHECK(scan_outcome_equal(reference, want));
        /* ...and the scanner gives it however the content is cut. */
        CHECK_INT(check_scan_all_splits(c->data, c->len, want), 0);
    }
}

/*
 * Every content of up to 8 bytes over the bytes that matter ("\r", "\n", ".", "x"), at
 * every 2-piece split and byte by byte, and up to 6 bytes at every 3-piece split.
 */
static void test_data_scan_exhaustive(void)
{
    static const char alphabet[4] = {'\r', '\n', '.', 'x'};
    int bad = 0;
    int n_inputs = 0;
    for (size_t len = 0; len <= 8; len++) {
        size_t n = (size_t)1 << (2 * len);
        for (size_t code = 0; code < n; code++) {
            char data[8];
            for (size_t i = 0; i < len; i++) {
                data[i] = alphabet[(code >> (2 * i)) & 3];
            }
            struct scan_outcome want = reference_scan(data, len);
            for (size_t a = 0; a <= len; a++) {
                bad += check_scan_split(data, len, &a, 1, want, bad);
            }
            size_t each[9];
            for (size_t i = 0; i <= len; i++) {
                each[i] = i;
            }
            bad += check_scan_split(data, len, each, len + 1, want, bad);
            if (len <= 6) {
                for (size_t a = 0; a <= len; a++) {
                    for (size_t b = a; b <= len; b++) {
                        size_t cuts[2] = {a, b};
                        bad += check_scan_split(data, len, cuts, 2, want, bad);
                    }
                }
            }
            n_inputs++;
        }
    }
    CHECK_INT(n_inputs, 87381);
    CHECK_INT(bad, 0);
}

static void test_data_scan_state(void)
{
    struct smtp_data_scanner s;
    size_t used = 99;

    /* Empty pieces, even NULL ones, change nothing. */
    smtp_data_scanner_init(&s);
    CHECK_INT(smtp_data_scan(&s, &used, NULL, 0), SMTP_DATA_MORE);
    CHECK_INT(used, 0);
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r")), SMTP_DATA_MORE);
    CHECK_INT(smtp_data_scan(&s, &used, NULL, 0), SMTP_DATA_MORE);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("\nNEXT")), SMTP_DATA_END);
    CHECK_INT(used, 1);

    /* After the end the scanner is at the start of the next message. */
    CHECK_INT(smtp_data_scan(&s, &used, LIT("x\r\n.\r\n")), SMTP_DATA_END);
    CHECK_INT(used, 6);
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_END);
    CHECK_INT(used, 3);

    /* A trailing CR is held over to the next piece: fine with an LF, bare without. */
    smtp_data_scanner_init(&s);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("a\r")), SMTP_DATA_MORE);
    CHECK_INT(used, 2);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("\nb\r")), SMTP_DATA_MORE);
    CHECK_INT(used, 3);
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_BARE_EOL);
    CHECK_INT(used, 0);
    /* Once bare, it stays so until re-initialised. */
    CHECK_INT(smtp_data_scan(&s, &used, LIT("\r\n.\r\n")), SMTP_DATA_BARE_EOL);
    CHECK_INT(used, 0);
    smtp_data_scanner_init(&s);
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_END);

    /* A zeroed scanner is an initialised one. */
    struct smtp_data_scanner zero = {0};
    CHECK_INT(smtp_data_scan(&zero, &used, LIT(".\r\n")), SMTP_DATA_END);
}

/* ---- smtp_skip_bad_data from a fresh scanner ---- */

struct skip_case {
    const char *data;
    size_t len;
    long end;
};

#define SKIP_CASE(lit, end)                                                                        \
    {                                                                                              \
        (lit), sizeof(lit) - 1, (end)                                                              \
    }

static const struct skip_case skip_cases[] = {
    SKIP_CASE(".\r\n", 3),
    SKIP_CASE(".\r\nQUIT\r\n", 3),
    SKIP_CASE("a\r\n.\r\nQUIT\r\n", 6),
    SKIP_CASE("\n.\n.\r\n", -1),
    SKIP_CASE("\n.\n\r\n.\r\n", 8),
    SKIP_CASE("a\r.\r\n", -1),
    SKIP_CASE("a\n.\r\n", -1),
    SKIP_CASE("\r.\r\n", -1),
    SKIP_CASE("\r\r\n.\r\n", 6),
    SKIP_CASE("a\r\n.\r\r\n.\r\n", 10),
    SKIP_CASE("\0\xff\r\n.\r\n", 7),
    SKIP_CASE("a\r\n.", -1),
    SKIP_CASE("", -1),
};

/* skip_pieces feeds a fresh scanner's smtp_skip_bad_data() data cut at |cuts|. */
static long skip_pieces(const char *data, size_t len, const size_t *cuts, size_t n_cuts,
                        int *violations)
{
    struct smtp_data_scanner s;
    smtp_data_scanner_init(&s);
    size_t start = 0;
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        size_t used = 12345;
        bool found = smtp_skip_bad_data(&s, &used, data + start, end - start);
        if (used > end - start || (!found && used != end - start)) {
            (*violations)++;
        }
        if (found) {
            return (long)(start + used);
        }
        start = end;
    }
    return -1;
}

static int check_skip_all_splits(const char *data, size_t len, long want)
{
    int bad = 0;
    int violations = 0;
    bad += skip_pieces(data, len, NULL, 0, &violations) != want;
    for (size_t a = 0; a <= len; a++) {
        bad += skip_pieces(data, len, &a, 1, &violations) != want;
    }
    size_t *each = malloc((len + 1) * sizeof(*each));
    for (size_t i = 0; i <= len; i++) {
        each[i] = i;
    }
    bad += skip_pieces(data, len, each, len + 1, &violations) != want;
    free(each);
    for (size_t a = 0; a <= len && len <= 24; a++) {
        for (size_t b = a; b <= len; b++) {
            size_t cuts[2] = {a, b};
            bad += skip_pieces(data, len, cuts, 2, &violations) != want;
        }
    }
    return bad + violations;
}

static void test_skip_bad_data(void)
{
    for (size_t i = 0; i < sizeof(skip_cases) / sizeof(skip_cases[0]); i++) {
        const struct skip_case *c = &skip_cases[i];
        CHECK_INT(reference_end(c->data, c->len), c->end);
        CHECK_INT(check_skip_all_splits(c->data, c->len, c->end), 0);
    }
    for (size_t i = 0; i < sizeof(scan_cases) / sizeof(scan_cases[0]); i++) {
        const struct scan_case *c = &scan_cases[i];
        CHECK_INT(check_skip_all_splits(c->data, c->len, reference_end(c->data, c->len)), 0);
    }

    /* Exhaustively, as for the scanner. */
    static const char alphabet[4] = {'\r', '\n', '.', 'x'};
    int bad = 0;
    for (size_t len = 0; len <= 8; len++) {
        for (size_t code = 0; code < ((size_t)1 << (2 * len)); code++) {
            char data[8];
            for (size_t i = 0; i < len; i++) {
                data[i] = alphabet[(code >> (2 * i)) & 3];
            }
            long want = reference_end(data, len);
            int violations = 0;
            for (size_t a = 0; a <= len; a++) {
                bad += skip_pieces(data, len, &a, 1, &violations) != want;
            }
            bad += violations;
        }
    }
    CHECK_INT(bad, 0);

    /* After the end, the scanner is ready for the next message. */
    struct smtp_data_scanner s;
    size_t used;
    smtp_data_scanner_init(&s);
    CHECK(smtp_skip_bad_data(&s, &used, LIT("x\r\n.\r\n")));
    CHECK_INT(smtp_data_scan(&s, &used, LIT(".\r\n")), SMTP_DATA_END);
    CHECK(!smtp_skip_bad_data(&s, &used, NULL, 0));
    CHECK_INT(used, 0);

    /* Re-initialising after BARE_EOL instead of continuing is the misuse the header warns
     * about: "\r.\r\n" would then look like an end. */
    smtp_data_scanner_init(&s);
    CHECK_INT(smtp_data_scan(&s, &used, LIT("a\r.\r\n")), SMTP_DATA_BARE_EOL);
    CHECK_INT(used, 2);
    CHECK(!smtp_skip_bad_data(&s, &used, LIT(".\r\n")));
    smtp_data_scanner_init(&s);
    CHECK(smtp_skip_bad_data(&s, &used, LIT(".\r\n")));
}

static void test_ehlo_caps(void)
{
    static const char reply[] = "250-mx.example\r\n250-STARTTLS\r\n250-CHUNKING\r\n250 SIZE 10\r\n";
    unsigned caps = 0;
    CHECK_INT(smtp_ehlo_caps(&caps, reply, sizeof(reply) - 1), SMTP_OK);
    CHECK_INT(caps, SMTP_CAP_STARTTLS | SMTP_CAP_CHUNKING | SMTP_CAP_SIZE);
    static const char single[] = "250 mx.example STARTTLS\r\n"; /* greeting line only */
    CHECK_INT(smtp_ehlo_caps(&caps, single, sizeof(single) - 1), SMTP_OK);
    CHECK_INT(caps, 0);
    static const char refused[] = "502 5.5.1 no\r\n";
    CHECK_INT(smtp_ehlo_caps(&caps, refused, sizeof(refused) - 1), SMTP_BAD_SYNTAX);
}

static void test_ehlo_drop_and_params(void)
{
    static const char reply[] = "250-mx.example\r\n250-XCLIENT NAME ADDR HELO\r\n"
                                "250-AUTH PLAIN\r\n250 8BITMIME\r\n";
    char out[256];
    size_t out_len = 0;
    unsigned caps = 0;
    CHECK_INT(smtp_ehlo_edit(out, &out_len, &caps, sizeof(out), reply, sizeof(reply) - 1, false,
                             SMTP_CAP_XCLIENT | SMTP_CAP_AUTH),
              SMTP_OK);
    CHECK_MEM(out, out_len, "250-mx.example\r\n250 8BITMIME\r\n", 30);
    CHECK_INT(caps, SMTP_CAP_XCLIENT | SMTP_CAP_AUTH | SMTP_CAP_8BITMIME);
    const char *params = NULL;
    size_t params_len = 0;
    CHECK(smtp_ehlo_params(&params, &params_len, reply, sizeof(reply) - 1, "XCLIENT"));
    CHECK_MEM(params, params_len, "NAME ADDR HELO", 14);
    CHECK(smtp_ehlo_params(&params, &params_len, reply, sizeof(reply) - 1, "8BITMIME"));
    CHECK_INT(params_len, 0);
    CHECK(!smtp_ehlo_params(&params, &params_len, reply, sizeof(reply) - 1, "MX.EXAMPLE"));
    CHECK(!smtp_ehlo_params(&params, &params_len, reply, sizeof(reply) - 1, "XCLIENTX"));
}

int main(void)
{
    test_ehlo_drop_and_params();
    test_ehlo_caps();
    test_line_find();
    test_command_verbs();
    test_command_bad_bytes();
    test_command_paths();
    test_command_bdat();
    test_replies();
    test_ehlo_edit();
    test_data_scan_cases();
    test_data_scan_exhaustive();
    test_data_scan_state();
    test_skip_bad_data();
    return check_exit("test_smtp");
}
