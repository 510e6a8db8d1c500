"""TLS material and contexts for the listeners.

* ``ensure_self_signed(cert, key, hostname)`` makes a self-signed certificate on first start
  so STARTTLS works at once on the embedded default (an operator replaces it with a real
  one through ``[tls] cert_file``/``key_file``).
* ``server_context(...)`` builds the one server-side ``ssl.SSLContext`` every listener shares.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def make_self_signed(hostname: str, days: int = 3650) -> tuple[bytes, bytes]:
    """Return (cert_pem, key_pem) for a P-256 self-signed certificate naming ``hostname``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        sans.append(x509.DNSName("localhost"))
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert_pem, key_pem


def ensure_self_signed(cert_file: str, key_file: str, hostname: str) -> bool:
    """Create the pair if either file is missing. Returns True when it created them."""
    if os.path.exists(cert_file) and os.path.exists(key_file):
        return False
    os.makedirs(os.path.dirname(cert_file) or ".", exist_ok=True)
    os.makedirs(os.path.dirname(key_file) or ".", exist_ok=True)
    cert_pem, key_pem = make_self_signed(hostname)
    _write_private(key_file, key_pem, 0o600)
    _write_private(cert_file, cert_pem, 0o644)
    return True


def _write_private(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def server_context(cert_file: str, key_file: str, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS.get(min_version, ssl.TLSVersion.TLSv1_2)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # SMTP clients rarely present certificates; we do not request them on port 25.
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """"TLSv1.3 TLS_AES_256_GCM_SHA384" for trace headers, "" when not encrypted."""
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    version = ssl_object.version() or ""
    return f"{version} {cipher[0]}" if cipher else version
