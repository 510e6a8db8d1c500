"""The ValiMail ARC test suite (draft-ietf-dmarc-arc-protocol era) against our ARC module.

The suite files are read in place from the shared conformance folder (support.CONFORMANCE):
  * arc-draft-validation-tests.yml: 171 cases in 10 scenarios; each scenario's
    ``txt-records`` are served by one real DNSServer on loopback and every message goes
    through ``verify_chain`` (real sockets, our Resolver, dkimpy on the fetched keys).
  * arc-draft-sign-tests.yml: 17 signing cases; ``seal_message`` must reproduce the
    expected ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results.

What the signing comparison checks, and why: RSASSA-PKCS1-v1_5 is deterministic, so an
equal ``b=`` proves that we hashed exactly the same canonical bytes as the suite's
generator. AS and AMS are therefore compared tag by tag, every tag and value exact
(``b=`` and ``bh=`` included); only whitespace is ignored, because the YAML folds the
expected values across lines and FWS inside b=/bh= carries no meaning (RFC 6376 §3.5).
The tag order is compared too: the suite's README fixes it (alphabetical) for these
expectations. The AAR is compared in its relaxed canonical form (RFC 6376 §3.4.2), which
is what the ARC-Seal signs: folding is presentation, comments and results are content.
Finally each seal we made is validated through ``verify_chain`` against the same DNS.

The suite's README defines how several Authentication-Results fields of the sealing ADMD
are consolidated into one AAR; ``consolidated_results`` below implements that rule (our
``seal_message`` takes the results directly, as Mailwright builds them itself).
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml

from dnsserver import DNSServer
from mailwright.mailauth.arc import ARCResult, seal_message, split_auth_results, verify_chain
from mailwright.net.dns import Resolver
from support import CONFORMANCE

SUITE = CONFORMANCE / "arc"
VALIDATION = SUITE / "arc-draft-validation-tests.yml"
SIGNING = SUITE / "arc-draft-sign-tests.yml"

# Cases whose draft-era expectation RFC 8617 changed. case id -> (the suite's cv, our cv,
# reason). The suite's "" is dkimpy's None, "the chain is terminated": a status the RFC
# does not have.
_CV_FAIL_SEAL = ("RFC 8617 §5.2 step 2 (newest seal) and step 3.3 (any seal): an ARC-Seal "
                 "with cv=fail makes the Chain Validation Status 'fail'; the draft-era suite "
                 "expects no status at all (dkimpy's None)")
KNOWN_DIFFERENCES: dict[str, tuple[str, str, str]] = {
    "cv_fail_i1_as_cv_fail": ("", "fail", _CV_FAIL_SEAL),
    "cv_fail_i2_as2_fail": ("", "fail", _CV_FAIL_SEAL),
    "cv_fail_i2_as1_fail": ("", "fail", _CV_FAIL_SEAL),
}

SUITE_CV = {"pass": "pass", "fail": "fail", "none": "none"}


def _load(path: Path) -> list[dict]:
    assert path.is_file(), f"conformance data missing: {path} (../shared/conformance)"
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _crlf(text: str | None) -> bytes:
    """The YAML messages have LF line ends; SMTP delivers CRLF."""
    return (text or "").replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _suite_cv(value: object) -> str:
    return str(value if value is not None else "").strip().lower()


def _zone_char(octet: int) -> str:
    """One octet of a TXT string in master-file syntax (RFC 1035 §5.1: \\DDD escapes).
    The signing suite's key records keep the YAML line breaks; they are served as is."""
    if 0x20 <= octet <= 0x7E and octet not in (0x22, 0x5C):
        return chr(octet)
    return f"\\{octet:03d}"


def zone_text(txt_records: dict[str, str]) -> str:
    """A root zone (so unknown names are NXDOMAIN, not REFUSED) serving the TXT records,
    each split into <=255-octet strings (RFC 1035 §3.3.14)."""
    lines = ["$ORIGIN .", "@ SOA ns. hostmaster. 1 3600 600 86400 300"]
    for name, value in txt_records.items():
        raw = value.encode("utf-8")
        chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
        quoted = " ".join('"' + "".join(_zone_char(b) for b in c) + '"' for c in chunks)
        lines.append(f"{name.rstrip('.')}. TXT {quoted}")
    return "\n".join(lines) + "\n"


def _cases(docs: list[dict]) -> list[tuple[int, str]]:
    return [(i, case) for i, doc in enumerate(docs) for case in doc["tests"]]


VALIDATION_DOCS = _load(VALIDATION) if VALIDATION.is_file() else []
SIGNING_DOCS = _load(SIGNING) if SIGNING.is_file() else []


class ScenarioServers:
    """One DNSServer per scenario, started on first use, stopped at module end."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs = docs
        self.servers: dict[int, DNSServer] = {}

    def get(self, index: int) -> DNSServer:
        if index not in self.servers:
            records = self.docs[index].get("txt-records") or {}
            self.servers[index] = DNSServer(zone_text(records)).start()
        return self.servers[index]

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="module")
def validation_servers():
    servers = ScenarioServers(VALIDATION_DOCS)
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def signing_servers():
    servers = ScenarioServers(SIGNING_DOCS)
    yield servers
    servers.close()


def verify(server: DNSServer, message: bytes) -> ARCResult:
    resolver = Resolver([server.nameserver], timeout=2.0, attempts=2)
    return asyncio.run(asyncio.wait_for(verify_chain(resolver, message), 60))


# ---------------------------------------------------------------------- validation

def test_suite_size():
    assert len(_cases(VALIDATION_DOCS)) == 171
    assert len(_cases(SIGNING_DOCS)) == 17


@pytest.mark.parametrize("scenario,case", _cases(VALIDATION_DOCS),
                         ids=[c for _, c in _cases(VALIDATION_DOCS)])
def test_validation(validation_servers, scenario, case):
    spec = VALIDATION_DOCS[scenario]["tests"][case]
    expected = _suite_cv(spec["cv"])
    if case in KNOWN_DIFFERENCES:
        suite_cv, our_cv, reason = KNOWN_DIFFERENCES[case]
        # The table cannot rot: the suite still says what we recorded, and we still give
        # the documented different answer.
        assert expected == suite_cv, f"suite expectation changed for {case}"
        assert suite_cv != our_cv
        expected = our_cv
    else:
        assert expected in SUITE_CV, f"unknown expectation {spec['cv']!r}"
    result = verify(validation_servers.get(scenario), _crlf(spec["message"]))
    assert result.cv == SUITE_CV[expected], (case, spec.get("description"), result)
    if result.cv == "pass":
        assert result.instances >= 1 and result.failed_instance is None
        served = {name.split("._domainkey.", 1)[1].lower()
                  for name in VALIDATION_DOCS[scenario]["txt-records"]}
        assert result.sealer_domain in served and result.oldest_pass is not None
    elif result.cv == "none":
        assert result.instances == 0


def test_known_differences_are_suite_cases():
    cases = {c for _, c in _cases(VALIDATION_DOCS)}
    assert set(KNOWN_DIFFERENCES) <= cases


def _case(docs: list[dict], case: str) -> tuple[int, dict]:
    for i, doc in enumerate(docs):
        if case in doc["tests"]:
            return i, doc["tests"][case]
    raise KeyError(case)


@pytest.mark.parametrize("case,oldest_pass", [
    ("cv_pass_i1_1", 0),
    ("cv_pass_i3_1", 0),
    # "i=2 base1 modified from header, ams(1) no longer valid": AMS 1 fails, AMS 2
    # validates, so oldest-pass is 2 (RFC 8617 §5.2 step 5: M + 1 with M = 1).
    ("cv_pass_i2_1_ams1_invalid", 2),
])
def test_oldest_pass(validation_servers, case, oldest_pass):
    scenario, spec = _case(VALIDATION_DOCS, case)
    result = verify(validation_servers.get(scenario), _crlf(spec["message"]))
    assert result.cv == "pass"
    assert result.oldest_pass == oldest_pass


@pytest.mark.parametrize("case,failed_instance", [
    ("cv_fail_i2_ams_invalid", 2),     # the newest AMS does not validate (§5.2 step 4)
    ("cv_fail_i2_as1_invalid", 1),     # AS(1) does not validate (§5.2 step 6)
    ("cv_fail_i2_as2_invalid", 2),
])
def test_failed_instance(validation_servers, case, failed_instance):
    scenario, spec = _case(VALIDATION_DOCS, case)
    result = verify(validation_servers.get(scenario), _crlf(spec["message"]))
    assert result.cv == "fail"
    assert result.failed_instance == failed_instance


# ---------------------------------------------------------------------- signing

def consolidated_results(message: str, srv_id: str) -> list[str]:
    """The suite README's AR consolidation: every result of every Authentication-Results
    field whose authserv-id is ``srv_id``, in message order."""
    results: list[str] = []
    for m in re.finditer(r"^Authentication-Results:([^\n]*(?:\n[ \t][^\n]*)*)", message,
                         re.M | re.I):
        pieces = split_auth_results(m.group(1))
        if pieces and pieces[0].lower() == srv_id.lower():
            results += pieces[1:]
    return results


def chain_validation_of(results: list[str]) -> str:
    """cv for the new seal: the ``arc=`` result the sealer recorded (suite README)."""
    arc = [r.split("=", 1)[1].split()[0].lower() for r in results
           if r.split("=", 1)[0].strip().lower() == "arc"]
    return arc[0] if arc else "none"


def tag_list(value: str) -> list[tuple[str, str]]:
    """Tag=value pairs in order, all whitespace removed (the YAML folds inside values)."""
    compact = re.sub(r"\s+", "", value)
    return [tuple(t.split("=", 1)) for t in compact.split(";") if t]  # type: ignore[misc]


def relaxed(value: str) -> str:
    """RFC 6376 §3.4.2 relaxed header value: unfold, WSP runs to one SP, trim."""
    return re.sub(r"[ \t]+", " ", re.sub(r"\r?\n", "", value)).strip()


def yaml_field(block: str) -> str:
    """A field value as the YAML shows it: each line of the block is one folded line of
    the field (YAML removed the leading WSP of the continuation lines)."""
    return "\r\n ".join(line.strip() for line in block.strip().splitlines())


def sealed_fields(headers: bytes) -> dict[str, str]:
    text = headers.decode("utf-8")
    fields = re.findall(r"^([A-Za-z-]+):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)\r\n", text, re.M)
    assert "".join(f"{n}:{v}\r\n" for n, v in fields) == text
    return {name: value for name, value in fields}


@pytest.mark.parametrize("scenario,case", _cases(SIGNING_DOCS),
                         ids=[c for _, c in _cases(SIGNING_DOCS)])
def test_signing(signing_servers, scenario, case):
    doc = SIGNING_DOCS[scenario]
    spec = doc["tests"][case]
    message = _crlf(spec["message"])
    results = consolidated_results(spec["message"], spec["srv-id"])
    cv = chain_validation_of(results)
    out = seal_message(
        message, domain=doc["domain"], selector=doc["sel"],
        private_key_pem=doc["privatekey"].encode("ascii"), authserv_id=spec["srv-id"],
        auth_results="; ".join(results), chain_validation=cv, now=float(spec["t"]),
        sign_headers=spec["sig-headers"].split(":"))

    expected = {k: (spec[k] or "").strip() for k in ("AS", "AMS", "AAR")}
    if not any(expected.values()):
        # "if a chain is failing, dont add another set" (RFC 8617 §5.1 step 2)
        assert out == b""
        return
    fields = sealed_fields(out)
    assert list(fields) == ["ARC-Seal", "ARC-Message-Signature",
                            "ARC-Authentication-Results"]
    assert tag_list(fields["ARC-Seal"]) == tag_list(expected["AS"])
    assert tag_list(fields["ARC-Message-Signature"]) == tag_list(expected["AMS"])
    assert relaxed(fields["ARC-Authentication-Results"]) == relaxed(yaml_field(expected["AAR"]))

    # Our seal validates: a cv=fail seal ends the chain (§5.2 step 2), others pass.
    result = verify(signing_servers.get(scenario), out + message)
    assert result.cv == ("fail" if cv == "fail" else "pass"), result
    assert result.instances == int(dict(tag_list(expected["AS"]))["i"])
