"""The smallest server that does a CSR enrolment's essential work: bench/enroll_ideal.py.

A plain WSGI callable on psycopg, no Django: per request it reads the JSON body, finds the
person by the SHA-512 digest of the bearer token (one prepared statement), parses and
verifies the CSR, issues the portal's certificate profile through enrollment.x509 (which
imports nothing from Django) with the CA key loaded once per process, stores the
certificate (one prepared INSERT, autocommit) and answers 201 with it as JSON.

What it leaves out is exactly what the portal adds on top: middleware, sessions, DRF's
negotiation and serializers, templates and their permissions, per-person limits and rate
limits, the key's claim and compromise check, the request row, the audit chain, the
answer's chain and links. Its rate is a ceiling, not a competitor.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg

from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enrollment.x509 import builder, csr, keys  # noqa: E402
from enrollment.x509.errors import X509Error  # noqa: E402
from enrollment.x509.policy import CertificatePolicy, Purpose  # noqa: E402

_DIR = Path(os.environ["IDEAL_CA_DIR"])
_CA = x509.load_pem_x509_certificate((_DIR / "issuing.pem").read_bytes())
_CA_KEY: Any = serialization.load_pem_private_key(
    (_DIR / "issuing-key.pem").read_bytes(), password=None
)
_POLICY = CertificatePolicy(purpose=Purpose.SIGNING)
_ALLOWED = frozenset(keys.KeyAlgorithm)
_PERSON = "SELECT id, given_name, surname, email FROM ideal_person WHERE token_sha512 = %s"
_STORE = (
    "INSERT INTO ideal_certificate (serial, owner_id, fingerprint_sha256, der, not_after) "
    "VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
_connection: psycopg.Connection[Any] | None = None


def _db() -> psycopg.Connection[Any]:
    global _connection
    if _connection is None:  # one per worker, made after gunicorn forks
        _connection = psycopg.connect(os.environ["IDEAL_DATABASE_URL"], autocommit=True)
        _connection.prepare_threshold = 0
    return _connection


def _answer(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["REQUEST_METHOD"] == "GET":  # the harness's readiness probe
        return _answer(start_response, "200 OK", {})
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        pem = json.loads(environ["wsgi.input"].read(length))["csr"]
    except (ValueError, KeyError, TypeError):
        return _answer(start_response, "400 Bad Request", {"csr": ["No CSR."]})
    digest = hashlib.sha512(token.encode()).hexdigest()
    db = _db()
    person = db.execute(_PERSON, (digest,)).fetchone() if scheme == "Token" else None
    if person is None:
        return _answer(start_response, "401 Unauthorized", {"detail": "Invalid token."})
    owner_id, given_name, surname, email = person
    try:
        public_key = csr.parse_csr(pem, allowed_key_algorithms=_ALLOWED).public_key
    except X509Error as exc:
        return _answer(start_response, "400 Bad Request", {"csr": [str(exc)]})
    subject = builder.Subject(
        common_name=f"{given_name} {surname}",
        given_name=given_name,
        surname=surname,
        organization_name="Bench Org",
        organization_identifier="NTRUS-0000000",
        email_addresses=(email,),
    )
    certificate = builder.build_end_entity(
        public_key=public_key,
        subject=subject,
        issuer_certificate=_CA,
        issuer_key=_CA_KEY,
        policy=_POLICY,
        crl_url="http://127.0.0.1:8000/pki/issuing.crl",
        ca_issuers_url="http://127.0.0.1:8000/pki/issuing.crt",
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    serial = format(certificate.serial_number, "x")
    fingerprint = hashlib.sha256(der).hexdigest()
    stored = db.execute(
        _STORE, (serial, owner_id, fingerprint, der, certificate.not_valid_after_utc)
    ).fetchone()
    body = {
        "id": stored[0] if stored else None,
        "serial": serial,
        "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    return _answer(start_response, "201 Created", body)
