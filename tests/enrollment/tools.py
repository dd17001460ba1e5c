"""Small helpers for the enrollment tests: CSRs from real tools, row counts, CRL text."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from django.contrib.auth.models import Permission
from django.core.signals import got_request_exception
from django.views.debug import ExceptionReporter

from enrollment import services
from enrollment.models import (
    ArchivedKey,
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CertificateTemplate,
    KeyRecoveryAgent,
    RevocationList,
)
from enrollment.x509.keys import KeyAlgorithm, PrivateKey, generate_private_key
from tests.pki import OpenSSL

# What a requester might try to smuggle into a certificate: the CSR asks for it, the
# account decides.
CLAIMED_NAME = "Mallory Impostor"
CLAIMED_EMAIL = "mallory@evil.example"
EC_P256 = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def openssl_csr(openssl: OpenSSL, name: str, *key_args: str, der: bool = False) -> Path:
    """A CSR made by `openssl req` that claims another person's name and e-mail."""
    out = openssl.path(f"{name}.csr")
    openssl.run(
        "req",
        "-new",
        *key_args,
        *(("-nodes", "-keyout", openssl.path(f"{name}-key.pem")) if "-newkey" in key_args else ()),
        "-subj",
        f"/CN={CLAIMED_NAME}/emailAddress={CLAIMED_EMAIL}",
        "-addext",
        f"subjectAltName=email:{CLAIMED_EMAIL}",
        "-outform",
        "DER" if der else "PEM",
        "-out",
        out,
    )
    return out


def cryptography_csr(key: PrivateKey) -> x509.CertificateSigningRequest:
    """The same claims, built with cryptography (as a browser-side library would)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, CLAIMED_NAME),
                    x509.NameAttribute(NameOID.EMAIL_ADDRESS, CLAIMED_EMAIL),
                ]
            )
        )
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(CLAIMED_EMAIL)]), False)
        .sign(key, hashes.SHA256())
    )


def csr_with_a_bad_signature() -> str:
    """A well-formed CSR whose signature does not verify: it proves no possession."""
    der = bytearray(cryptography_csr(new_key()).public_bytes(Encoding.DER))
    der[-1] ^= 0x01  # the last octet of the signature's s, which stays a valid INTEGER
    return x509.load_der_x509_csr(bytes(der)).public_bytes(Encoding.PEM).decode()


def row_counts() -> dict[str, int]:
    """How many rows each CA-side table holds: "nothing is stored" compares two of these."""
    models = (
        Certificate,
        AuditEvent,
        ArchivedKey,
        RevocationList,
        KeyRecoveryAgent,
        CertificateAuthority,
    )
    return {model.__name__: model.objects.count() for model in models}


def new_key() -> PrivateKey:
    """A P-256 key of its own (~0.1 ms): for certificates one test may revoke for
    keyCompromise, which revokes every other certificate of the same key."""
    return generate_private_key(KeyAlgorithm.EC_P256)


def as_staff(user, *codenames: str):  # type: ignore[no-untyped-def]
    """The account made staff with these model permissions, read back: gaining privilege
    bumps its session_generation, so a stale copy would sign in to a dead session."""
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    user.refresh_from_db()
    return user


def issue(owner, template: CertificateTemplate, key: PrivateKey) -> Certificate:
    """Issue for a key the requester holds, as the CSR path does."""
    return services.certificate_issue(template=template, owner=owner, public_key=key.public_key())


@dataclass
class ErrorReport:
    text: str = ""


TESTS = str(Path(__file__).resolve().parent.parent)


@contextmanager
def error_report(expected: type[BaseException]) -> Iterator[ErrorReport]:
    """The exception raised inside, as Django's DEBUG page and the mail to ADMINS show it
    (HTML and text). From a view: the request and traceback Django's handler reports; else
    the traceback from the first frame outside the tests (the test's own locals would hold
    the secrets)."""
    report, reported = ErrorReport(), []

    def keep(sender: object, request: object = None, **kwargs: object) -> None:
        reported.append((request, sys.exc_info()))

    got_request_exception.connect(keep)
    try:
        with pytest.raises(expected) as raised:
            yield report
    finally:
        got_request_exception.disconnect(keep)
    if reported:
        request, (exc_type, exc_value, tb) = reported[-1]
    else:
        request, exc_type, exc_value, tb = None, raised.type, raised.value, raised.tb
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(TESTS):
            tb = tb.tb_next
    reporter = ExceptionReporter(request, exc_type, exc_value, tb)
    report.text = reporter.get_traceback_html() + reporter.get_traceback_text()


@contextmanager
def revocation_fails(certificate: Certificate, error: BaseException) -> Iterator[None]:
    """Inside the block services.certificate_revoke raises ``error`` for ``certificate``
    (a refusal, a lost database, a killed worker) and revokes the others as usual."""
    revoke, failing_pk = services.certificate_revoke, certificate.pk

    def failing(*, certificate: Certificate, **options: Any) -> Certificate:
        if certificate.pk == failing_pk:
            raise error
        return revoke(certificate=certificate, **options)

    services.certificate_revoke = failing  # type: ignore[assignment]
    try:
        yield
    finally:
        services.certificate_revoke = revoke  # type: ignore[assignment]


def openssl_serial(serial: int) -> str:
    """A serial as `openssl crl -text` prints it: upper-case hex, whole octets."""
    digits = format(serial, "X")
    return digits.zfill(len(digits) + len(digits) % 2)


def crl_text_entries(openssl: OpenSSL, der: bytes) -> tuple[str, dict[str, str]]:
    """`openssl crl -inform DER -text`: the whole text and each entry's block by serial."""
    text = openssl.run("crl", "-inform", "DER", "-noout", "-text", input=der).stdout.decode()
    entries = {}
    for block in re.split(r"\n\s*Serial Number: ", text)[1:]:
        serial, _, rest = block.partition("\n")
        entries[serial.strip()] = rest.split("Signature Algorithm")[0]
    return text, entries


@dataclass(frozen=True)
class Message:
    """A task's message as a broker keeps it: its arguments and its id."""

    args: tuple[Any, ...]
    task_id: str


def keep_messages(monkeypatch, task) -> list[Message]:  # type: ignore[no-untyped-def]
    """The task's messages from now on, kept as a broker would for a worker: none runs."""
    kept: list[Message] = []

    def keep(args=(), kwargs=None, task_id=None, **options):  # type: ignore[no-untyped-def]
        assert not kwargs, kwargs  # what a message carries is its arguments, all shown
        kept.append(Message(tuple(args), task_id or ""))
        return AsyncResult(task_id)

    monkeypatch.setattr(task, "apply_async", keep)
    return kept


def deliver(task, message: Message) -> Any:  # type: ignore[no-untyped-def]
    """Run a kept message as a worker does: under its id, not eagerly."""
    task.push_request(id=message.task_id, is_eager=False, args=list(message.args))
    try:
        return task.run(*message.args)
    finally:
        task.pop_request()
