"""Real syslog receivers on loopback for the audit forwarding tests: a TCP one (RFC 6587
octet counting) and a TLS one (RFC 5425) with a certificate from a test CA made here with
cryptography (EC keys). Each reads every connection to its end in a thread of its own and
keeps the bytes; messages() splits them into frames and parses each as RFC 5424.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# RFC 5424 6: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP
# STRUCTURED-DATA [SP MSG]
RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z) "
    rb"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    rb"(?P<msgid>[!-~]{1,32}) (?P<sd>-) (?P<msg>.*)",
    re.DOTALL,
)


@dataclass
class Message:
    facility: int
    severity: int
    timestamp: str
    hostname: str
    app: str
    procid: str
    msgid: str
    msg: str

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.msg)


def parse(frame: bytes) -> Message:
    found = RFC5424.fullmatch(frame)
    assert found is not None, f"not RFC 5424: {frame[:120]!r}"
    pri = int(found["pri"])
    return Message(
        facility=pri // 8,
        severity=pri % 8,
        timestamp=found["timestamp"].decode(),
        hostname=found["hostname"].decode(),
        app=found["app"].decode(),
        procid=found["procid"].decode(),
        msgid=found["msgid"].decode(),
        msg=found["msg"].decode("utf-8"),
    )


def frames(data: bytes) -> list[bytes]:
    """RFC 6587 3.4.1: MSG-LEN SP SYSLOG-MSG, repeated; anything left over fails."""
    out, at = [], 0
    while at < len(data):
        space = data.index(b" ", at)
        length = int(data[at:space])
        out.append(data[space + 1 : space + 1 + length])
        assert len(out[-1]) == length, "a frame was cut short"
        at = space + 1 + length
    return out


class Receiver:
    """Listens on 127.0.0.1 (a given or a free port) until stop()."""

    def __init__(self, port: int = 0, context: ssl.SSLContext | None = None):
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.connections: list[bytes] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._read, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _read(self, sock: socket.socket) -> None:
        chunks = []
        try:
            sock.settimeout(10)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_side=True)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()
        with self.lock:
            self.connections.append(b"".join(chunks))

    def received(self) -> list[Message]:
        for thread in list(self.threads):
            thread.join(timeout=10)
        with self.lock:
            return [parse(frame) for data in self.connections for frame in frames(data)]

    def raw(self) -> bytes:
        self.received()
        with self.lock:
            return b"".join(self.connections)

    def stop(self) -> None:
        self.listener.close()
        self.accepting.join(timeout=5)


@dataclass
class SyslogCa:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(name: str = "Syslog Test CA") -> SyslogCa:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return SyslogCa(certificate, key)


def server_context(ca: SyslogCa, directory: Path, *, names: list[str]) -> ssl.SSLContext:
    """A TLS server context whose certificate, issued by ``ca``, names ``names`` (DNS
    names or IP addresses) in its subjectAltName."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + ca.pem())
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context
