"""RFC 5424 syslog messages and their transports (RFC 6587 TCP, RFC 5425 TLS, RFC 5426
UDP), for forwarding the audit trail to a SIEM (enrollment.audit_shipping).

Pure Python over socket and ssl; imports nothing from Django, so settings.py parses the
target with it at start-up.

Why not a library: the Python syslog packages are logging.Handler subclasses
(rfc5424-logging-handler, the standard library's SysLogHandler), and a handler reports a
failed send to handleError(), which prints it and carries on. Forwarding at least once
must know that a batch did not go out, to leave the watermark where it was, so the
sender here raises SyslogError instead. The framing is a length and a space (RFC 6587
octet counting); TLS is the ssl module's, with certificate and host name checked.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

SCHEMES = ("tcp", "tls", "udp")
# RFC 5424 6.2.1: facility * 8 + severity. authpriv by default, as for sign-ins and sudo:
# security events that should not land in a world-readable log on the receiving host.
FACILITIES = {"auth": 4, "authpriv": 10, **{f"local{n}": 16 + n for n in range(8)}}
NOTICE, WARNING = 5, 4
APP_NAME = "pkiportal"
CONNECT_TIMEOUT_SECONDS = 10.0
# How long a finished connection waits for the receiver to close its side (it does once
# it has read everything): a courtesy, not a condition of delivery.
CLOSE_WAIT_SECONDS = 2.0


class SyslogError(Exception):
    """A message did not go out: the connection, the TLS handshake or a write failed.

    Its text names the target and the cause, never a message's content."""


@dataclass(frozen=True)
class SyslogTarget:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_target(value: str) -> SyslogTarget:
    """``tcp://host:port``, ``tls://host:port`` or ``udp://host:port``; ValueError says
    what is wrong with anything else (no default port: 514 and 6514 are both common)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"it is not a URL with a valid port ({exc})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError("it must start with tcp://, tls:// or udp://")
    if not parts.hostname:
        raise ValueError("it names no host")
    if port is None or port == 0:
        raise ValueError("it names no port (e.g. tcp://siem.example.com:514)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("it must not carry a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("it must be scheme://host:port and nothing more")
    return SyslogTarget(parts.scheme.lower(), parts.hostname, port)


def _printable(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters,
    or the NILVALUE "-" (RFC 5424 6.2)."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def message(
    *,
    facility: int,
    severity: int,
    timestamp: datetime,
    hostname: str,
    msgid: str,
    msg: str,
) -> bytes:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``,
    with no structured data and the MSG as UTF-8 without a byte-order mark (as rsyslog
    sends). ``msg`` must be one line: a syslog file receiver writes one line per message.
    """
    if "\n" in msg or "\r" in msg:
        raise ValueError("a syslog message must be one line")
    stamp = timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = (
        f"<{facility * 8 + severity}>1 {stamp} {_printable(hostname, 255)} {APP_NAME} - "
        f"{_printable(msgid, 32)} -"
    )
    return f"{header} {msg}".encode()


def octet_counted(payload: bytes) -> bytes:
    """RFC 6587 3.4.1 (and RFC 5425 4.3): the length in decimal, a space, the message."""
    return b"%d %s" % (len(payload), payload)


class SyslogSender:
    """One connection to the target, opened on the first send and closed by close().

    send() returns only once every message was handed to the kernel whole (sendall for
    TCP and TLS, one datagram each for UDP); otherwise it raises SyslogError and the
    connection is dropped. That is all TCP can promise: the receiver's kernel has the
    bytes or will get them, not its disk (RELP would add acknowledgements).
    """

    def __init__(self, target: SyslogTarget, *, ca_file: str = "", timeout: float = 10.0):
        self.target = target
        self.ca_file = ca_file
        self.timeout = timeout
        self._socket: socket.socket | None = None

    def _connect(self) -> socket.socket:
        host, port = self.target.host, self.target.port
        if self.target.scheme == "udp":
            family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[
                0
            ]
            udp = socket.socket(family, kind, proto)
            udp.settimeout(self.timeout)
            udp.connect(address)  # ICMP refusals then show on a later send, when they do
            return udp
        raw = socket.create_connection(
            (host, port), timeout=min(self.timeout, CONNECT_TIMEOUT_SECONDS)
        )
        raw.settimeout(self.timeout)
        if self.target.scheme == "tcp":
            return raw
        context = ssl.create_default_context(cafile=self.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # check_hostname and CERT_REQUIRED are the default context's.
            return context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise

    def send(self, messages: Sequence[bytes]) -> None:
        """Send every message, in order; SyslogError when one could not be."""
        try:
            if self._socket is None:
                self._socket = self._connect()
            if self.target.scheme == "udp":
                for item in messages:
                    self._socket.send(item)
            else:
                self._socket.sendall(b"".join(octet_counted(item) for item in messages))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.abort()
            raise SyslogError(f"{self.target}: {_reason(exc)}") from exc

    def close(self) -> None:
        """Close after the last send: say we are done and give the receiver a moment to
        read everything and close its side, rather than reset a connection whose last
        bytes it has not read yet. Errors here are ignored: the bytes were sent."""
        sock, self._socket = self._socket, None
        if sock is None:
            return
        try:
            if self.target.scheme != "udp":
                sock.settimeout(CLOSE_WAIT_SECONDS)
                if isinstance(sock, ssl.SSLSocket):
                    sock = sock.unwrap()  # close_notify, then the TCP half-close below
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        except (OSError, ValueError):
            pass
        finally:
            sock.close()

    def abort(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate was refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:300]
