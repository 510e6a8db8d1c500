"""SMTP replies as values, from one catalog.

Every reply Mailwright sends carries an enhanced status code (RFC 2034, RFC 3463).
Reply text sent to a peer is generic; it never echoes an exception.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int                # basic reply code, RFC 5321 §4.2
    enhanced: str            # enhanced status code "c.s.d", RFC 3463 ("" only for 220/221 greetings if ever)
    text: str | tuple[str, ...]  # one line, or several for multi-line replies (EHLO, HELP)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    def to_bytes(self) -> bytes:
        """Serialise per RFC 5321 §4.2.1: "code-" on every line but the last."""
        lines = self.lines()
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            # The enhanced code goes on every line (RFC 2034 §4).
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8")

    def with_text(self, text: str | tuple[str, ...]) -> "Reply":
        return Reply(self.code, self.enhanced, text)

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {' / '.join(self.lines())}".replace("  ", " ")
