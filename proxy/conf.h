/*
 * conf: the INI configuration file, parsed with inih into one validated struct.
 *
 * conf_load() reads a file and either returns a complete, read-only struct conf or a
 * list of every error found, each as "file:line: key: what is wrong". It never does
 * network I/O and never exits the process; main.c decides what to do with errors.
 */
#ifndef PROXY_CONF_H
#define PROXY_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "redis_url.h"

#define CONF_DEFAULT_PATH "/etc/smtp-tls-proxy/smtp-tls-proxy.ini"
#define CONF_HOST_MAX 255
#define CONF_STORE_PREFIX_MAX 64
#define CONF_SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"
#define CONF_ROOT_TRUST_ANCHOR "/usr/share/dns/root.key"

/* A "host:port" or "[v6]:port" from the file. host is a name or a numeric address. */
struct conf_addr {
    char host[CONF_HOST_MAX + 1];
    uint16_t port;
    /* true when host is a numeric IPv4/IPv6 address; then sa holds it with the port. */
    bool numeric;
    struct sockaddr_storage sa;
    socklen_t sa_len;
};

/* An IPv4 or IPv6 network, as in "192.0.2.0/24" or "2001:db8::/32". */
struct conf_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    uint8_t prefix_len;
};

enum conf_mode {
    CONF_MODE_FORWARD = 0,
    CONF_MODE_TRANSPARENT,
};

enum conf_proxy_protocol {
    CONF_PROXY_PROTOCOL_OFF = 0,
    CONF_PROXY_PROTOCOL_V1,
    CONF_PROXY_PROTOCOL_V2,
    CONF_PROXY_PROTOCOL_ANY,
};

enum conf_identity {
    CONF_IDENTITY_NONE = 0,
    CONF_IDENTITY_XCLIENT,
    CONF_IDENTITY_PROXY_V1,
    CONF_IDENTITY_PROXY_V2,
    CONF_IDENTITY_SPOOF,
};

/* How DATA content with bare LF line endings is handled (end of data is only CRLF.CRLF). */
enum conf_bare_newline {
    CONF_BARE_NEWLINE_NORMALIZE = 0, /* relay a line ending in a bare LF with CRLF */
    CONF_BARE_NEWLINE_REJECT,        /* refuse the message: 550 5.5.2 */
};

enum conf_front_starttls {
    CONF_FRONT_STARTTLS_OFFER = 0,
    CONF_FRONT_STARTTLS_STRIP,
};

enum conf_back_starttls {
    CONF_BACK_STARTTLS_OFF = 0,
    CONF_BACK_STARTTLS_MAY,
    CONF_BACK_STARTTLS_REQUIRE,
};

enum conf_verify {
    CONF_VERIFY_NONE = 0,
    CONF_VERIFY_CA,
};

/* [upstream_tls] recipient_policies: whether the downgrade gate judges recipients. */
enum conf_recipient_policies {
    CONF_RECIPIENT_POLICIES_AUTO = 0, /* on in transparent mode, off in forward mode */
    CONF_RECIPIENT_POLICIES_ON,
    CONF_RECIPIENT_POLICIES_OFF,
};

/* TLS protocol versions, ordered; values are not BoringSSL's constants. */
enum conf_tls_version {
    CONF_TLS_1_0 = 0,
    CONF_TLS_1_1,
    CONF_TLS_1_2,
    CONF_TLS_1_3,
};

/* Steps of the leg-2 fallback ladder, in the order they are configured. */
enum conf_fallback_step {
    CONF_FALLBACK_NO_CLIENT_CERT = 0,
    CONF_FALLBACK_TLS12,
    CONF_FALLBACK_CLEARTEXT,
};

enum conf_log_level {
    CONF_LOG_ERROR = 0,
    CONF_LOG_WARN,
    CONF_LOG_INFO,
    CONF_LOG_DEBUG,
};

enum conf_log_format {
    CONF_LOG_TEXT = 0,
    CONF_LOG_JSON,
};

/* One [upstream_policy] line: a pattern and the leg-2 policy for it. */
enum conf_pattern_kind {
    CONF_PATTERN_NAME = 0, /* exact host name, case-insensitive */
    CONF_PATTERN_WILDCARD, /* "*.example.com": any name ending in ".example.com" */
    CONF_PATTERN_CIDR,     /* an address or network */
};

struct conf_policy {
    enum conf_pattern_kind kind;
    char name[CONF_HOST_MAX + 1]; /* lower case; for WILDCARD without the leading '*' */
    struct conf_cidr cidr;
    enum conf_back_starttls starttls;
};

#define CONF_LISTEN_MAX 16
#define CONF_CIDR_MAX 64
#define CONF_CERT_MAX 4
#define CONF_POLICY_MAX 256
#define CONF_FALLBACK_STEPS_MAX 3

struct conf {
    char *path; /* the file this was loaded from */

    /* [proxy] */
    struct conf_addr listen[CONF_LISTEN_MAX];
    size_t n_listen;
    enum conf_mode mode;
    struct conf_addr upstream;
    char hostname[CONF_HOST_MAX + 1]; /* never empty after conf_load() */
    unsigned workers;                 /* 0 means auto: one per core */
    unsigned max_connections;
    size_t max_line_len; /* command line cap, CRLF included */
    uint64_t drain_timeout_ms;
    char *user; /* drop privileges to this user after binding; NULL: stay */
    enum conf_proxy_protocol proxy_protocol;
    enum conf_identity upstream_identity;
    enum conf_bare_newline bare_newline;

    /* [client_tls]: leg 1, front */
    struct {
        enum conf_front_starttls starttls;
        bool require;
        char *certificate[CONF_CERT_MAX]; /* paths; certificate[i] pairs with key[i] */
        char *key[CONF_CERT_MAX];
        size_t n_certificate;
        enum conf_tls_version min_protocol;
        char *ciphers; /* NULL: BoringSSL's default */
        bool learn_failures;
        uint64_t learn_ttl_ms;
        size_t learn_max_entries;
        struct conf_cidr never_offer_to[CONF_CIDR_MAX];
        size_t n_never_offer_to;
        struct conf_cidr always_offer_to[CONF_CIDR_MAX];
        size_t n_always_offer_to;
        bool ask_client_certificate; /* request one (never verified, never required) */
    } front_tls;

    /* [upstream_tls]: leg 2, back */
    struct {
        enum conf_back_starttls starttls;
        bool fallback;
        enum conf_fallback_step fallback_steps[CONF_FALLBACK_STEPS_MAX];
        size_t n_fallback_steps;
        uint64_t remember_failures_ms;
        size_t remember_max_entries;
        char *certificate; /* NULL: no client certificate */
        char *key;
        enum conf_verify verify;
        char *ca_file;
        enum conf_recipient_policies recipient_policies;
    } back_tls;

    /* [recipient_policy]: the downgrade gate (MTA-STS, DANE, REQUIRETLS, TLS-RPT) */
    struct {
        bool enabled; /* [upstream_tls] recipient_policies, auto resolved by mode */
        bool mta_sts;
        bool dane;
        bool requiretls;
        char *ca_file;        /* WebPKI roots; NULL: CONF_SYSTEM_CA_FILE */
        char *unbound_config; /* NULL: resolv.conf forwarders and the root trust anchor */
        uint64_t dns_timeout_ms;
        uint64_t fetch_timeout_ms;
        uint64_t max_policy_size;
        size_t cache_entries;
        uint64_t wait_ms;       /* the longest a RCPT waits for the lookups it needs */
        char *tlsrpt_directory; /* NULL: no TLS-RPT reports */
        bool tlsrpt_submit;
        char *tlsrpt_organization; /* NULL: hostname */
        char *tlsrpt_contact;      /* NULL: postmaster@hostname */
    } recipients;

    /* [upstream_policy] in file order */
    struct conf_policy policy[CONF_POLICY_MAX];
    size_t n_policy;

    /* [timeouts], milliseconds */
    struct {
        uint64_t connect_ms;
        uint64_t greeting_ms;
        uint64_t tls_handshake_ms;
        uint64_t command_ms;
        uint64_t data_block_ms;
        uint64_t data_end_ms;
    } timeouts;

    /* [limits]: per client address (0: off) */
    struct {
        unsigned sessions;     /* sessions at once */
        unsigned session_rate; /* new sessions per window */
        unsigned message_rate; /* MAIL commands per window */
        uint64_t window_ms;
        unsigned ipv6_prefix;
        struct conf_cidr exempt[CONF_CIDR_MAX];
        size_t n_exempt;
        unsigned reserve; /* connections over max_connections kept for exempt clients */
        size_t max_clients;
    } limits;

    /* [store]: the learned state shared with other instances (off when !enabled) */
    struct {
        bool enabled;
        struct redis_url redis;
        char *password_file; /* read into redis.password by conf_load() */
        uint64_t timeout_ms; /* the longest a session waits for an answer */
        char prefix[CONF_STORE_PREFIX_MAX + 1];
    } store;

    /* [log] */
    enum conf_log_level log_level;
    enum conf_log_format log_format;

    /* [metrics] */
    bool metrics_enabled;
    struct conf_addr metrics_listen;
};

/* conf_errors collects error lines; each is "file:line: key: message". */
struct conf_errors {
    char **lines;
    size_t n_lines;
};

/*
 * conf_load reads and validates |path|. On success it returns a new struct conf (caller
 * frees with conf_free()) and leaves |out_errors| empty. On failure it returns NULL and
 * fills |out_errors| with every problem found (caller frees with conf_errors_cleanup()).
 * A read error, a NUL byte or a line longer than the cap (65536 bytes, line end not
 * counted) ends the reading there: memory stays bounded whatever the file.
 */
struct conf *conf_load(struct conf_errors *out_errors, const char *path);

/* conf_free releases everything conf_load() allocated. conf_free(NULL) does nothing. */
void conf_free(struct conf *conf);

/* conf_errors_cleanup frees the error lines; the struct may be reused afterwards. */
void conf_errors_cleanup(struct conf_errors *errors);

/*
 * conf_parse_duration parses "30s", "5m", "1h", "1d", "250ms" or a bare number of seconds
 * into milliseconds. Returns true on success.
 */
bool conf_parse_duration(uint64_t *out_ms, const char *text);

/* conf_parse_size parses "512", "64k", "10M", "1G" (powers of 1024) into bytes. */
bool conf_parse_size(uint64_t *out_bytes, const char *text);

/*
 * conf_parse_addr parses "host:port", "[v6]:port" or "*:port" (all IPv4 addresses) into
 * |out|. Returns true on success; a numeric host also fills out->sa.
 */
bool conf_parse_addr(struct conf_addr *out, const char *text);

/* conf_parse_cidr parses "192.0.2.1", "192.0.2.0/24", "2001:db8::/32". */
bool conf_parse_cidr(struct conf_cidr *out, const char *text);

/* conf_cidr_match tells whether the socket address |sa| lies in |cidr|. An IPv4-mapped
 * IPv6 address matches IPv4 networks. */
bool conf_cidr_match(const struct conf_cidr *cidr, const struct sockaddr *sa);

/*
 * conf_policy_lookup finds the [upstream_policy] pattern that best fits an upstream known
 * by up to |n_names| host names (NULL entries are skipped) and the address |sa| (may be
 * NULL). The most specific pattern wins: an exact name, then the longest wildcard suffix,
 * then the longest network prefix. Returns true and sets *out when one fits.
 */
bool conf_policy_lookup(enum conf_back_starttls *out, const struct conf *conf,
                        const char *const *names, size_t n_names, const struct sockaddr *sa);

#endif
