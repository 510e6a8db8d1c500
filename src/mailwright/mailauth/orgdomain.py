"""Organizational domains for DMARC (RFC 7489 §3.2), from the Public Suffix List.

What: ``organizational_domain(domain)`` gives the registered domain a name belongs to
("mail.example.co.uk" -> "example.co.uk"), the unit DMARC's relaxed alignment (§3.1) and
policy discovery (§6.6.3) work with; ``same_organization(a, b)`` compares two names by it;
``normalize_domain(name)`` is the common form every DMARC comparison uses.

How: RFC 7489 §3.2: take the longest public suffix the list matches (the PSL algorithm's
implicit "*" rule makes an unlisted TLD such as ".test" a suffix of one label), then add
one label. The list is the copy shipped inside the ``publicsuffixlist`` package (ICANN and
private sections, as publicsuffix.org publishes it), loaded once, lazily, under a lock.

Invariants:
  * Every returned name is lower case, in IDNA A-labels ("xn--..."), without the trailing
    dot. U-labels are converted with dnspython's IDNA codec.
  * A name that is itself a public suffix (e.g. "co.uk") is its own organizational domain:
    it has no registered domain above it, and DMARCbis lets public suffix operators publish
    policy there (RFC 9091).
  * Names that are no mail domains (empty label, label > 63 octets, characters other
    than letters, digits, "-" and "_", undecodable IDN) raise ``ValueError``.
"""
from __future__ import annotations

import functools

import re
import threading

import dns.exception
import dns.name
from publicsuffixlist import PublicSuffixList

__all__ = ["normalize_domain", "organizational_domain", "same_organization"]

# Letters, digits, hyphens (RFC 1035 §2.3.1 preferred syntax, RFC 5321 §4.1.2 Domain) and
# the underscore of service names. Anything else (dnspython would accept escapes such as
# "\\046", a dot inside a label) is no mail domain.
_LABEL_RE = re.compile(rb"^[A-Za-z0-9_-]{1,63}$")

_psl: PublicSuffixList | None = None
_psl_lock = threading.Lock()


def _list() -> PublicSuffixList:
    global _psl
    if _psl is None:
        with _psl_lock:
            if _psl is None:
                _psl = PublicSuffixList()
    return _psl


@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """``domain`` as lower-case A-labels without the trailing dot; ValueError if it is not
    a usable DNS name."""
    text = domain.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text or text.startswith(".") or "\\" in text:   # no master-file escapes
        raise ValueError(f"not a domain name: {domain!r}")
    try:
        if text.isascii():
            name = dns.name.from_text(text, origin=None)
        else:
            name = dns.name.from_unicode(text, origin=None)
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise ValueError(f"not a domain name: {domain!r}: {exc}") from None
    labels = name.labels
    if not labels or not all(_LABEL_RE.match(label) for label in labels):
        raise ValueError(f"not a domain name: {domain!r}")
    return b".".join(labels).decode("ascii").lower()


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """The organizational domain of ``domain`` (RFC 7489 §3.2), normalized."""
    name = normalize_domain(domain)
    org = _list().privatesuffix(name)
    # privatesuffix() is None when the name is itself a public suffix: it is its own
    # organizational domain (see the module docstring).
    return org if org else name


def same_organization(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` have the same organizational domain (relaxed alignment,
    RFC 7489 §3.1)."""
    return organizational_domain(a) == organizational_domain(b)
