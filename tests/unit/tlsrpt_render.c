/*
 * tlsrpt_render: drives the TLS-RPT aggregator (proxy/tlsrpt.h) from a script on standard
 * input and prints the reports it hands out, for tests/integration/test_tlsrpt_schema.py.
 * One command a line, fields separated by tabs; in a field "\t", "\n", "\\" and "\xHH"
 * stand for a tab, a line feed, a backslash and any byte but NUL:
 *
 *   policy <sts|tlsa|no-policy-found> <domain>   start a policy (no strings, no mx)
 *   string <text>                                 add a policy-string to it
 *   mx <pattern>                                  add an mx-host to it
 *   success <now> [<count>]                       count successful sessions under it
 *   failure <now> <result-type> <sending-ip> <receiving-ip> [<name>=<value>...]
 *                                                 one failure; names: mx, helo, info, reason
 *   take <now> | snapshot <now>                   print the reports tlsrpt_take/snapshot give
 *
 * Each report is printed as one line: its file name (sender "reporter.example"), a tab,
 * and its JSON (organization "Example Org", contact "tlsrpt@reporter.example", report-id
 * "<domain>-<begin>"). A command that fails prints "error <line>: <rc>" to standard error
 * and makes the exit status 1; the script goes on.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tlsrpt.h"

#define RENDER_FIELDS_MAX 16
#define RENDER_LIST_MAX 300

static char *render_strings[RENDER_LIST_MAX];
static size_t render_n_strings;
static char *render_mx[RENDER_LIST_MAX];
static size_t render_n_mx;
static struct tlsrpt_policy render_policy;
static char *render_domain;

static int render_hex(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* render_unescape decodes a field in place. */
static void render_unescape(char *s)
{
    char *o = s;
    for (char *i = s; *i != '\0'; i++) {
        if (*i != '\\' || i[1] == '\0') {
            *o++ = *i;
            continue;
        }
        i++;
        if (*i == 't') {
            *o++ = '\t';
        } else if (*i == 'n') {
            *o++ = '\n';
        } else if (*i == 'x' && render_hex(i[1]) >= 0 && render_hex(i[2]) >= 0 &&
                   (render_hex(i[1]) | render_hex(i[2])) != 0) {
            *o++ = (char)(render_hex(i[1]) << 4 | render_hex(i[2]));
            i += 2;
        } else {
            *o++ = *i;
        }
    }
    *o = '\0';
}

static void render_clear_policy(void)
{
    for (size_t i = 0; i < render_n_strings; i++) {
        free(render_strings[i]);
    }
    for (size_t i = 0; i < render_n_mx; i++) {
        free(render_mx[i]);
    }
    free(render_domain);
    render_domain = NULL;
    render_n_strings = 0;
    render_n_mx = 0;
    memset(&render_policy, 0, sizeof(render_policy));
}

static struct tlsrpt_policy *render_current(void)
{
    render_policy.policy_domain = render_domain;
    render_policy.policy_strings = (const char *const *)render_strings;
    render_policy.n_policy_strings = render_n_strings;
    render_policy.mx_hosts = (const char *const *)render_mx;
    render_policy.n_mx_hosts = render_n_mx;
    return &render_policy;
}

static int render_print(struct tlsrpt_report **reports, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const struct tlsrpt_report *r = reports[i];
        char name[TLSRPT_FILE_NAME_BUF];
        char id[DNSNAME_BUF + 32];
        snprintf(id, sizeof(id), "%s-%lld", r->policy_domain, (long long)r->begin);
        int name_rc = tlsrpt_file_name(name, sizeof(name), "reporter.example", r->policy_domain,
                                       r->begin, r->end, NULL, false);
        char *json = NULL;
        size_t len = 0;
        int json_rc =
            tlsrpt_report_json(r, &json, &len, "Example Org", "tlsrpt@reporter.example", id);
        if (name_rc != 0 || json_rc != 0) {
            rc = name_rc != 0 ? name_rc : json_rc;
        } else {
            printf("%s\t%.*s\n", name, (int)len, json);
        }
        free(json);
    }
    return rc;
}

static int render_command(struct tlsrpt *agg, char **f, size_t n)
{
    if (strcmp(f[0], "policy") == 0 && n == 3) {
        render_clear_policy();
        if (strcmp(f[1], "sts") == 0) {
            render_policy.type = TLSRPT_POLICY_STS;
        } else if (strcmp(f[1], "tlsa") == 0) {
            render_policy.type = TLSRPT_POLICY_TLSA;
        } else if (strcmp(f[1], "no-policy-found") == 0) {
            render_policy.type = TLSRPT_POLICY_NO_POLICY_FOUND;
        } else {
            return -EINVAL;
        }
        render_domain = strdup(f[2]);
        return render_domain != NULL ? 0 : -ENOMEM;
    }
    if (strcmp(f[0], "string") == 0 && n == 2 && render_n_strings < RENDER_LIST_MAX) {
        render_strings[render_n_strings] = strdup(f[1]);
        return render_strings[render_n_strings++] != NULL ? 0 : -ENOMEM;
    }
    if (strcmp(f[0], "mx") == 0 && n == 2 && render_n_mx < RENDER_LIST_MAX) {
        render_mx[render_n_mx] = strdup(f[1]);
        return render_mx[render_n_mx++] != NULL ? 0 : -ENOMEM;
    }
    if (strcmp(f[0], "success") == 0 && (n == 2 || n == 3)) {
        long count = n == 3 ? strtol(f[2], NULL, 10) : 1;
        for (long i = 0; i < count; i++) {
            int rc = tlsrpt_success(agg, render_current(), strtoll(f[1], NULL, 10));
            if (rc != 0) {
                return rc;
            }
        }
        return 0;
    }
    if (strcmp(f[0], "failure") == 0 && n >= 5) {
        struct tlsrpt_failure fl = {
            .result_type = f[2],
            .sending_mta_ip = f[3],
            .receiving_ip = f[4],
        };
        for (size_t i = 5; i < n; i++) {
            char *eq = strchr(f[i], '=');
            if (eq == NULL) {
                return -EINVAL;
            }
            *eq = '\0';
            const char **field = strcmp(f[i], "mx") == 0       ? &fl.receiving_mx_hostname
                                 : strcmp(f[i], "helo") == 0   ? &fl.receiving_mx_helo
                                 : strcmp(f[i], "info") == 0   ? &fl.additional_information
                                 : strcmp(f[i], "reason") == 0 ? &fl.failure_reason_code
                                                               : NULL;
            if (field == NULL) {
                return -EINVAL;
            }
            *field = eq + 1;
        }
        return tlsrpt_failure(agg, render_current(), &fl, strtoll(f[1], NULL, 10));
    }
    if ((strcmp(f[0], "take") == 0 || strcmp(f[0], "snapshot") == 0) && n == 2) {
        struct tlsrpt_report **reports;
        size_t n_reports;
        long long now = strtoll(f[1], NULL, 10);
        int rc = strcmp(f[0], "take") == 0 ? tlsrpt_take(agg, &reports, &n_reports, now)
                                           : tlsrpt_snapshot(agg, &reports, &n_reports, now);
        if (rc != 0) {
            return rc;
        }
        rc = render_print(reports, n_reports);
        tlsrpt_reports_free(reports, n_reports);
        return rc;
    }
    return -EINVAL;
}

int main(void)
{
    struct tlsrpt *agg = tlsrpt_new(10000);
    if (agg == NULL) {
        fprintf(stderr, "tlsrpt_new failed\n");
        return 1;
    }
    int status = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int line_no = 0;
    while ((len = getline(&line, &cap, stdin)) != -1) {
        line_no++;
        if (len > 0 && line[len - 1] == '\n') {
            line[--len] = '\0';
        }
        if (len == 0 || line[0] == '#') {
            continue;
        }
        char *fields[RENDER_FIELDS_MAX] = {0};
        size_t n = 0;
        char *save = NULL;
        for (char *t = strtok_r(line, "\t", &save); t != NULL && n < RENDER_FIELDS_MAX;
             t = strtok_r(NULL, "\t", &save)) {
            render_unescape(t);
            fields[n++] = t;
        }
        if (n == 0) {
            continue; /* tabs only */
        }
        int rc = render_command(agg, fields, n);
        if (rc != 0) {
            fprintf(stderr, "error %d: %d\n", line_no, rc);
            status = 1;
        }
    }
    free(line);
    render_clear_policy();
    tlsrpt_free(agg);
    fflush(stdout);
    return status;
}
