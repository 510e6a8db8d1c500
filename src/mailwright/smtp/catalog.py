"""The reply catalog: every reply the SMTP server core sends, as named ``Reply`` values.

What: one place that fixes the code, enhanced status code (RFC 3463) and generic text of
each reply, so that drivers, policy and tests refer to names instead of ad-hoc strings.

How: constants for fixed replies; small functions for the few replies that carry the
server's host name or a number.  Drivers and policy may use these too (for example
``queued(queue_id)`` after a durable commit).

Invariants:

* Every reply after EHLO carries an enhanced status code (RFC 2034 §3), except, by long
  tradition (Postfix, Sendmail), the 220 greeting (sent before EHLO), the 250 EHLO/HELO
  replies and the 354 intermediate reply to DATA.
* Reply text is ASCII, generic, and never echoes peer input or exception text.
* Address-syntax and address-length errors at MAIL use 501 5.1.7; at RCPT 501 5.1.3
  (RFC 3463 §3.2).  Non-ASCII addresses without SMTPUTF8 use 553 5.6.7 (RFC 6531 §3.5).
  Bad parameter values use 501 5.5.4; unknown parameters 555 5.5.4 (RFC 5321 §4.1.1.11).
"""
from __future__ import annotations

import base64

from .replies import Reply

# ------------------------------------------------------------------ 2xx / 3xx

#: 214: reply to HELP (RFC 5321 §4.1.1.8).
HELP = Reply(214, "2.0.0", (
    "Mailwright SMTP: see RFC 5321",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
))
#: 220 to STARTTLS (RFC 3207 §4).
STARTTLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
#: 235 after a successful SASL exchange (RFC 4954 §6).
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
#: 221 to QUIT (RFC 5321 §4.1.1.10).
BYE = Reply(221, "2.0.0", "Bye")
#: 250 to RSET and NOOP.
OK = Reply(250, "2.0.0", "Ok")
#: Default positive reply to MailFrom (RFC 3463: X.1.0 other address status).
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
#: Default positive reply to RcptTo (RFC 3463: X.1.5 destination address valid).
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
#: 252 to VRFY: we never confirm or deny addresses (RFC 5321 §3.5.3, §7.3).
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
#: 354 to DATA (RFC 5321 §4.1.1.4).  No enhanced code (intermediate reply).
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")

# ------------------------------------------------------------------ 4xx

#: 452: recipient limit reached; the client retries the rest later (RFC 5321 §4.5.3.1.10).
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
#: 421 instead of the greeting when the listener is full (then close, RFC 5321 §3.8).
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address, try again later")
#: Any failure on our side that a retry may cure (GUIDE idea 4: unknown means 4xx).
TEMP_LOCAL_ERROR = Reply(451, "4.3.0", "Temporary local error, try again later")
#: The body could not be stored (disk full, blob write failed), RFC 3463 X.3.1.
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")

#: 454: authentication refused for now (RFC 4954 §6 "temporary authentication failure");
#: Mailwright sends it while an account is locked out after repeated failures.
AUTH_TEMP_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")
#: 421 and close: too many failed authentications from this client address.
AUTH_LOCKED_OUT = Reply(421, "4.7.0", "Too many authentication failures, closing connection")

# ------------------------------------------------------------------ 5xx: authentication (RFC 4954)

#: ``*`` cancelled the exchange (RFC 4954 §4).
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
#: A response that is not valid base64 (RFC 4954 §4).
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
SYNTAX_AUTH = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
#: AUTH after a successful AUTH, or inside a mail transaction (RFC 4954 §4).
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
#: A mechanism we do not offer (RFC 4954 §4).
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
#: Wrong credentials (RFC 4954 §6).
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
#: AUTH or submission before TLS where TLS is required (RFC 3207 §4, RFC 4954 §6).
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
#: MAIL on a submission listener without authentication (RFC 4954 §6, RFC 6409 §4.3).
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")

# ------------------------------------------------------------------ 5xx: policy (used by policy/)

#: Recipient has no mailbox or alias here (RFC 3463 X.1.1).
UNKNOWN_USER = Reply(550, "5.1.1", "No such user here")
#: Relaying refused (RFC 3463 X.7.1), as Postfix answers.
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")

# ------------------------------------------------------------------ 5xx: command level

#: Command line longer than ServerConfig.max_line_length (RFC 5321 §4.5.3.1.4).
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
#: A NUL byte in a command line.
NUL_IN_COMMAND = Reply(500, "5.5.2", "NUL character not allowed")
#: A bare CR (not followed by LF) inside a command line (RFC 5321 §2.3.8).
BARE_CR_IN_COMMAND = Reply(500, "5.5.2", "Syntax error: bare CR in command")
#: Unknown verb.
UNRECOGNIZED = Reply(500, "5.5.2", "Command unrecognized")
#: A command line that is not valid UTF-8.
INVALID_UTF8 = Reply(501, "5.5.2", "Invalid UTF-8 in command")
#: Non-ASCII outside a MAIL/RCPT address.
NON_ASCII_COMMAND = Reply(501, "5.5.2", "Non-ASCII characters not allowed in this command")
#: Known but not implemented by this core (EXPN, AUTH, XCLIENT, TURN ...), RFC 5321 §4.2.4.
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
#: STARTTLS when no certificate is configured.
TLS_NOT_AVAILABLE = Reply(502, "5.5.1", "STARTTLS not available")

SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_VRFY = Reply(501, "5.5.4", "Syntax: VRFY address")
SYNTAX_BDAT = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
#: DATA, RSET, QUIT, STARTTLS take no arguments.
SYNTAX_NO_ARGUMENTS = Reply(501, "5.5.4", "Syntax error: no arguments allowed")

# ------------------------------------------------------------------ 5xx: sequence (503)

NEED_HELO = Reply(503, "5.5.1", "Send HELO/EHLO first")
NEED_EHLO = Reply(503, "5.5.1", "Send EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "RCPT not allowed after BDAT")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
TLS_IN_TRANSACTION = Reply(503, "5.5.1", "STARTTLS not allowed during a mail transaction")
#: DATA/BDAT when every RCPT was rejected (RFC 5321 §3.3 allows 503 or 554).
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")

# ------------------------------------------------------------------ 5xx: addresses, parameters

BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
#: Local part > 64, domain > 255 or path > 256 octets (RFC 5321 §4.5.3.1).
SENDER_TOO_LONG = Reply(501, "5.1.7", "Sender address too long")
RECIPIENT_TOO_LONG = Reply(501, "5.1.3", "Recipient address too long")
#: RFC 6531 §3.5: non-ASCII address without SMTPUTF8 on MAIL.
NON_ASCII_SENDER = Reply(553, "5.6.7", "Non-ASCII sender address requires SMTPUTF8")
NON_ASCII_RECIPIENT = Reply(553, "5.6.7", "Non-ASCII recipient address requires SMTPUTF8")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid parameter value")
DUPLICATE_PARAMETER = Reply(501, "5.5.4", "Duplicate parameter")
UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter")
#: MAIL/RCPT parameters are service extensions; they need EHLO (RFC 5321 §4.1.1.11).
PARAMETERS_NEED_EHLO = Reply(555, "5.5.4", "Parameters not allowed after HELO")

# ------------------------------------------------------------------ 5xx: message content

#: SIZE= too large at MAIL, or the body grew too large (RFC 1870 §6).
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
#: SMTP smuggling defence, see smtp.framing.
BARE_LINE_ENDING = Reply(554, "5.5.2", "Message rejected: bare CR or LF in data (RFC 5321 section 2.3.8)")
NUL_IN_DATA = Reply(554, "5.6.0", "Message rejected: NUL byte in data")


# ------------------------------------------------------------------ parametrised


def greeting(hostname: str, text: str | None = None) -> Reply:
    """220 banner (RFC 5321 §4.3.1).  No enhanced code: it precedes EHLO."""
    return Reply(220, "", f"{hostname} {text or 'ESMTP Mailwright'}")


def helo_ok(hostname: str) -> Reply:
    """Default positive reply to HELO."""
    return Reply(250, "", hostname)


def ehlo_ok(hostname: str, capabilities: tuple[str, ...]) -> Reply:
    """Default positive reply to EHLO: host name line, then one keyword per line
    (RFC 5321 §4.1.1.1).  No enhanced codes, as Postfix does."""
    return Reply(250, "", (hostname, *capabilities))


def bdat_chunk_ok(size: int) -> Reply:
    """250 to a non-final BDAT chunk (RFC 3030 §2)."""
    return Reply(250, "2.0.0", f"{size} octets received")


def queued(queue_id: str) -> Reply:
    """What the driver answers to BodyComplete after a durable commit (GUIDE idea 5)."""
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def auth_challenge(data: bytes) -> Reply:
    """334 continuation carrying a base64 server challenge (RFC 4954 §4).  No enhanced
    code: it is an intermediate reply, like 354."""
    return Reply(334, "", base64.b64encode(data).decode("ascii"))


def timeout(hostname: str) -> Reply:
    """421 on command/data timeout (RFC 5321 §4.5.3.2), then close."""
    return Reply(421, "4.4.2", f"{hostname} Error: timeout exceeded")


def too_many_errors(hostname: str) -> Reply:
    """421 after ServerConfig.max_errors error replies, then close."""
    return Reply(421, "4.7.0", f"{hostname} Error: too many errors")


def bdat_framing_lost(hostname: str) -> Reply:
    """421 after a malformed BDAT line: its octet count is unknown, so we cannot find
    the next command and must close (RFC 3030 §2 gives no recovery)."""
    return Reply(421, "4.5.0", f"{hostname} Error: BDAT framing lost, closing connection")


# --------------------------------------------------------------------------- policy and intake
# Replies the session driver and the policy checks send (not the protocol core itself).

RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")                       # RFC 5321 §3.6.1
UNKNOWN_USER = Reply(550, "5.1.1", "Recipient address rejected: no such user here")
TEMP_LOCAL_ERROR = Reply(451, "4.3.0", "Temporary local problem, please try again later")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")       # RFC 5321 §4.5.3.1.10
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address")
SHUTTING_DOWN = Reply(421, "4.3.2", "Server shutting down, try again later")
#: Submission: MAIL FROM / header From not owned by the authenticated user (RFC 6409 §6.1).
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
HEADER_FROM_NOT_OWNED = Reply(550, "5.7.1", "From header address not owned by the authenticated user")
#: Too many Received fields: a mail loop (RFC 5321 §6.3; Postfix hopcount_limit).
MAIL_LOOP = Reply(554, "5.4.6", "Too many hops: mail loop detected")
