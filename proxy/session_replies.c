/*
 * session_replies: the proxy's own replies to commands (enum session_local_reply), in one
 * table: what a client reads when the proxy answers instead of the upstream.
 */
#include "session_impl.h"

const char *const session_local_replies[] = {
    [SESSION_LOCAL_LINE_TOO_LONG] = "500 5.5.2 Line too long\r\n",
    [SESSION_LOCAL_BAD_SYNTAX] =
        "500 5.5.2 Syntax error: leading whitespace, NUL or bare CR in command\r\n",
    [SESSION_LOCAL_MAIL_PATH_TOO_LONG] = "501 5.1.7 Path too long\r\n",
    [SESSION_LOCAL_RCPT_PATH_TOO_LONG] = "501 5.1.3 Path too long\r\n",
    [SESSION_LOCAL_PATH_SYNTAX] = "501 5.5.4 Syntax: MAIL FROM:<address> or RCPT TO:<address>\r\n",
    [SESSION_LOCAL_BDAT_SYNTAX] = "501 5.5.4 Syntax: BDAT size [LAST]\r\n",
    [SESSION_LOCAL_HELO_SYNTAX] = "501 5.5.4 Syntax: EHLO hostname\r\n",
    /* starttls = strip: STARTTLS is "not implemented" here (502), not "temporarily
     * unavailable" (454), which would invite the client to try again and again. */
    [SESSION_LOCAL_STARTTLS_UNAVAILABLE] = "502 5.5.1 STARTTLS not available\r\n",
    [SESSION_LOCAL_BDAT_UNSUPPORTED] = "502 5.5.1 BDAT not supported by this server\r\n",
    [SESSION_LOCAL_REJECTED_CONTENT] =
        "550 5.5.2 Message rejected: bare CR, bare LF next to a \".\" line, or NUL starting a "
        "line (RFC 5321 section 2.3.8)\r\n",
    [SESSION_LOCAL_OK] = "250 2.0.0 OK\r\n",
    [SESSION_LOCAL_BYE] = "221 2.0.0 Bye\r\n",
    /* RFC 3207 section 4: STARTTLS after TLS is a bad sequence. */
    [SESSION_LOCAL_TLS_ACTIVE] = "503 5.5.1 TLS already active\r\n",
    [SESSION_LOCAL_STARTTLS_SYNTAX] = "501 5.5.4 Syntax: STARTTLS\r\n",
    /* Not offered to this client (a learned failure or never_offer_to): temporary. */
    [SESSION_LOCAL_TLS_HIDDEN] = "454 4.7.0 TLS not available\r\n",
    [SESSION_LOCAL_STARTTLS_IN_TRANSACTION] =
        "503 5.5.1 STARTTLS not allowed during a mail transaction\r\n",
    /* RFC 3207 section 4.2: after TLS the client starts over with EHLO. */
    [SESSION_LOCAL_EHLO_FIRST] = "503 5.5.1 Send EHLO first\r\n",
    /* Nothing goes upstream before the client's EHLO/HELO, so the identity (XCLIENT) and
     * leg 2's TLS always come first on the upstream connection. */
    [SESSION_LOCAL_HELLO_FIRST] = "503 5.5.1 Send EHLO or HELO first\r\n",
    [SESSION_LOCAL_TLS_REQUIRED] = "530 5.7.0 Must issue a STARTTLS command first\r\n",
    /* The upstream may trust the proxy's address for XCLIENT: a client must never use it. */
    [SESSION_LOCAL_XCLIENT_DENIED] = "550 5.7.0 XCLIENT not permitted\r\n",
    /* Postfix's reply over smtpd_client_message_rate_limit: this MAIL only, not the session */
    [SESSION_LOCAL_MESSAGE_RATE] = "450 4.7.1 Too much mail from your address, try again later\r\n",
    [SESSION_LOCAL_GATE_STS_TLS] =
        "450 4.7.10 The recipient domain's MTA-STS policy requires TLS to its server, which "
        "this connection lacks; try again later\r\n",
    [SESSION_LOCAL_GATE_STS_CERT] =
        "450 4.7.5 The recipient domain's MTA-STS policy does not accept this server's "
        "certificate; try again later\r\n",
    [SESSION_LOCAL_GATE_DANE_TLS] =
        "450 4.7.10 The recipient domain's DANE policy requires TLS to its server, which "
        "this connection lacks; try again later\r\n",
    [SESSION_LOCAL_GATE_DANE_CERT] =
        "450 4.7.5 The recipient domain's DANE policy (TLSA) does not match this server's "
        "certificate; try again later\r\n",
    [SESSION_LOCAL_GATE_DANE_NOT_MX] =
        "450 4.7.5 The recipient domain uses DANE and this server is not one of its MX "
        "hosts; try again later\r\n",
    [SESSION_LOCAL_GATE_DNSSEC] =
        "450 4.7.5 DNSSEC validation of the recipient domain's DANE policy failed; try "
        "again later\r\n",
    [SESSION_LOCAL_GATE_DNS_FAILED] =
        "450 4.4.3 The recipient domain's DANE policy could not be looked up; try again "
        "later\r\n",
    [SESSION_LOCAL_GATE_TIMEOUT] =
        "450 4.4.3 The recipient domain's TLS policy lookups timed out; try again later\r\n",
    [SESSION_LOCAL_GATE_IDN] =
        "450 4.7.5 The TLS policy of an internationalized domain name cannot be checked "
        "here; use its A-label (xn--) form\r\n",
    /* A recipient whose domain, as the upstream would route it, the gate cannot tell
     * (percent hack, bang path, an '@' in the local part, comments, spaces, escapes):
     * permanent, since the same spelling is refused at every retry; 553 and 5.1.3 as for a
     * mailbox name not allowed (RFC 5321 section 4.2.3, RFC 3463). */
    [SESSION_LOCAL_GATE_ADDRESS] =
        "553 5.1.3 Recipient address not accepted while recipient TLS policies apply: routing "
        "characters (%, !, an @ in the local part), comments, spaces or escapes leave unclear "
        "which domain it goes to\r\n",
    [SESSION_LOCAL_GATE_REQUIRETLS_TEMP] =
        "450 4.7.30 REQUIRETLS: the recipient's server is not authenticated over this "
        "connection; try again later\r\n",
    [SESSION_LOCAL_GATE_REQUIRETLS_PERM] =
        "550 5.7.30 REQUIRETLS support required: no DANE or MTA-STS policy authenticates the "
        "recipient's server\r\n",
    /* RFC 5321 section 3.3: DATA when every RCPT was refused here: nothing goes upstream. */
    [SESSION_LOCAL_NO_VALID_RECIPIENTS] = "554 5.5.1 No valid recipients\r\n",
    [SESSION_LOCAL_REQUIRETLS_UNAVAILABLE] =
        "555 5.5.4 REQUIRETLS is not available on this connection\r\n",
};
