#!/usr/bin/env python3
"""DKIM benchmark: Mailwright's signer/verifier against dkimpy, one core, no DNS.

What it measures, for a 5 KB message and each of RSA-2048 (rsa-sha256) and Ed25519
(ed25519-sha256), c=relaxed/relaxed:

  * signatures/s: ``mailwright.mailauth.dkim.sign_message`` (cryptography/OpenSSL, key
    objects cached) against ``dkim.sign`` (dkimpy 1.1.8: pure-Python RSA; Ed25519 through
    PyNaCl, or skipped when PyNaCl is not installed);
  * verifications/s: ``verify_signature`` with the key record text against ``dkim.verify``
    with a ``dnsfunc`` returning the same text. Both include parsing the message.

Each figure runs for ``--seconds`` (default 0.5) after one warm-up call, so the whole run
takes a few seconds. Keys are generated afresh; no network, no DNS server.

Usage: .venv/bin/python bench/dkim_speed.py [--seconds S] [--size BYTES]
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
# This file is named dkim.py: keep its folder off the path so "import dkim" finds dkimpy.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import dkim as dkimpy  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from mailwright.mailauth.dkim import SigningKey, sign_message, verify_signature  # noqa: E402
from mailwright.mailauth.dkim_canon import split_message  # noqa: E402
from mailwright.mailauth.dkim_keys import dns_txt_record, generate_key  # noqa: E402


def make_message(size: int) -> bytes:
    head = (b"From: Alice <alice@example.com>\r\nTo: Bob <bob@example.net>\r\n"
            b"Subject: benchmark message\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            b"Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = b"The quick brown fox  jumps over the lazy dog, again and again. \r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()                                   # warm-up (and key caches)
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def have_nacl() -> bool:
    try:
        import nacl.signing  # noqa: F401
        return True
    except ImportError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=5 * 1024)
    args = ap.parse_args()
    message = make_message(args.size)
    rows = []
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        pem = generate_key(algorithm)
        key = SigningKey("example.com", "bench", algorithm, pem)
        txt = dns_txt_record(pem)
        ours_signed = sign_message(message, [key]) + message

        def ours_sign() -> bytes:
            return sign_message(message, [key])

        def ours_verify() -> str:
            headers, start = split_message(ours_signed)
            res = verify_signature(headers, ours_signed[start:], headers[0], txt)
            assert res.result == "pass", res
            return res.result

        ours = (rate(ours_sign, args.seconds), rate(ours_verify, args.seconds))
        theirs: tuple[float, float] | None = None
        if algorithm == "rsa-sha256" or have_nacl():
            if algorithm == "rsa-sha256":
                their_key, their_alg = pem, b"rsa-sha256"
            else:
                raw = serialization.load_pem_private_key(pem, None).private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                    serialization.NoEncryption())
                their_key, their_alg = base64.b64encode(raw), b"ed25519-sha256"

            def dkimpy_sign() -> bytes:
                return dkimpy.sign(message, b"bench", b"example.com", their_key,
                                   canonicalize=(b"relaxed", b"relaxed"),
                                   signature_algorithm=their_alg)

            def dkimpy_verify() -> bool:
                ok = dkimpy.verify(ours_signed, dnsfunc=lambda n, timeout=5: txt.encode())
                assert ok
                return ok

            theirs = (rate(dkimpy_sign, args.seconds), rate(dkimpy_verify, args.seconds))
        rows.append((algorithm, ours, theirs))

    print(f"DKIM, {len(message)}-byte message, one core, c=relaxed/relaxed "
          f"({sys.implementation.name} {sys.version.split()[0]})")
    print(f"{'algorithm':<16} {'':>10} {'sign/s':>10} {'verify/s':>10}")
    for algorithm, ours, theirs in rows:
        print(f"{algorithm:<16} {'mailwright':>10} {ours[0]:>10,.0f} {ours[1]:>10,.0f}")
        if theirs is None:
            print(f"{'':<16} {'dkimpy':>10} {'(PyNaCl not installed)':>21}")
        else:
            print(f"{'':<16} {'dkimpy':>10} {theirs[0]:>10,.0f} {theirs[1]:>10,.0f}")
            print(f"{'':<16} {'ratio':>10} {ours[0] / theirs[0]:>9.1f}x "
                  f"{ours[1] / theirs[1]:>9.1f}x")


if __name__ == "__main__":
    main()
