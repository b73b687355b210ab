/*
 * test_reason: the name tables: every value has its own name, fit for a log word and a
 * metric label; values out of range get the fallback name; and the names that logs,
 * metrics and the integration tests rely on are spelled as they expect.
 */
#include "reason.h"

#include <stdbool.h>
#include <string.h>

#include "check.h"

/* A log word and a metric label: lower-case letters, digits and inner '-'. */
static bool name_is_word(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || name[0] == '-' || name[len - 1] == '-') {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
            return false;
        }
    }
    return true;
}

static void test_end_names(void)
{
    CHECK_INT(REASON_END_UNKNOWN, 0);
    CHECK_STR(reason_end_name(REASON_END_UNKNOWN), "unknown");
    for (int i = 0; i < REASON_END_COUNT; i++) {
        const char *name = reason_end_name((enum reason_end)i);
        CHECK(name != NULL);
        if (name == NULL) {
            continue;
        }
        CHECK(name_is_word(name));
        if (i != REASON_END_UNKNOWN) {
            CHECK(strcmp(name, "unknown") != 0);
        }
        for (int j = 0; j < i; j++) {
            if (strcmp(name, reason_end_name((enum reason_end)j)) == 0) {
                fprintf(stderr, "reason_end %d and %d are both \"%s\"\n", j, i, name);
                CHECK(strcmp(name, reason_end_name((enum reason_end)j)) != 0);
            }
        }
    }

    /* Out of range. */
    CHECK_STR(reason_end_name(REASON_END_COUNT), "unknown");
    CHECK_STR(reason_end_name((enum reason_end)(REASON_END_COUNT + 1)), "unknown");
    CHECK_STR(reason_end_name((enum reason_end)1000), "unknown");
    CHECK_STR(reason_end_name((enum reason_end) - 1), "unknown");

    /* The names the logs, the metrics and the tests look for. */
    CHECK_STR(reason_end_name(REASON_END_QUIT), "quit");
    CHECK_STR(reason_end_name(REASON_END_CLIENT_CLOSED), "client-closed");
    CHECK_STR(reason_end_name(REASON_END_UPSTREAM_421), "upstream-421");
    CHECK_STR(reason_end_name(REASON_END_UPSTREAM_PROTOCOL_ERROR), "upstream-protocol-error");
    CHECK_STR(reason_end_name(REASON_END_UPSTREAM_IDENTITY_REFUSED), "upstream-identity-refused");
    CHECK_STR(reason_end_name(REASON_END_TIMEOUT), "timeout");
    CHECK_STR(reason_end_name(REASON_END_TOO_MANY_CONNECTIONS), "too-many-connections");
    CHECK_STR(reason_end_name(REASON_END_SHUTDOWN), "shutdown");
    CHECK_STR(reason_end_name(REASON_END_CLIENT_LOST_IN_DATA), "client-lost-in-data");
    CHECK_STR(reason_end_name(REASON_END_UPSTREAM_UNREACHABLE), "upstream-unreachable");
    CHECK_STR(reason_end_name(REASON_END_UPSTREAM_CLOSED), "upstream-closed");
    CHECK_STR(reason_end_name(REASON_END_UPSTREAM_ERROR), "upstream-error");
}

static void test_back_tls_names(void)
{
    CHECK_INT(REASON_BACK_TLS_STARTTLS_REFUSED, 0);
    for (int i = 0; i < REASON_BACK_TLS_COUNT; i++) {
        const char *name = reason_back_tls_name((enum reason_back_tls)i);
        CHECK(name != NULL);
        if (name == NULL) {
            continue;
        }
        CHECK(name_is_word(name));
        CHECK(strcmp(name, "other") != 0);
        CHECK(strcmp(name, "unknown") != 0);
        for (int j = 0; j < i; j++) {
            if (strcmp(name, reason_back_tls_name((enum reason_back_tls)j)) == 0) {
                fprintf(stderr, "reason_back_tls %d and %d are both \"%s\"\n", j, i, name);
                CHECK(strcmp(name, reason_back_tls_name((enum reason_back_tls)j)) != 0);
            }
        }
    }

    /* Out of range. */
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_COUNT), "other");
    CHECK_STR(reason_back_tls_name((enum reason_back_tls)(REASON_BACK_TLS_COUNT + 1)), "other");
    CHECK_STR(reason_back_tls_name((enum reason_back_tls)1000), "other");
    CHECK_STR(reason_back_tls_name((enum reason_back_tls) - 1), "other");

    /* The metric labels (back_tls_fallback_total{reason=...}) and log words in use. */
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_STARTTLS_REFUSED), "starttls-refused");
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_STARTTLS_BAD_REPLY), "starttls-bad-reply");
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_ALERT), "tls-alert");
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_EOF), "eof");
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_TIMEOUT), "handshake-timeout");
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_POST_TLS_EHLO), "post-tls-ehlo");
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_POST_TLS_EOF), "post-tls-eof");
    CHECK_STR(reason_back_tls_name(REASON_BACK_TLS_CERTIFICATE), "certificate");
}

int main(void)
{
    test_end_names();
    test_back_tls_names();
    return check_exit("test_reason");
}
