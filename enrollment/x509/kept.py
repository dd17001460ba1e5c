"""Facts read from a certificate, kept per certificate object.

Each enrolment reads the same things from its issuing CA's certificate (name
constraints, basic constraints, validity), and the models hand out one parsed object
per CA and DER (enrollment.models). Reading them from cryptography again, or keeping
them in an lru_cache, which hashes and compares the certificate's DER on every call,
costs more than the check they serve. A certificate object never changes, so facts kept
by its identity, while the object itself is held, cannot belong to another certificate:
a renewed CA is another object, and gets its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from cryptography import x509

Fact = TypeVar("Fact")


class PerCertificate(Generic[Fact]):
    """``read(certificate)``, computed once per certificate object (a few kept)."""

    def __init__(self, read: Callable[[x509.Certificate], Fact], *, kept: int = 16) -> None:
        self._read = read
        self._kept = kept
        self._facts: dict[int, tuple[x509.Certificate, Fact]] = {}

    def __call__(self, certificate: x509.Certificate) -> Fact:
        found = self._facts.get(id(certificate))
        if found is not None and found[0] is certificate:
            return found[1]
        fact = self._read(certificate)
        if len(self._facts) >= self._kept:
            self._facts.clear()  # objects come and go only in tests and CA renewals
        # The certificate is held with its fact, so its id cannot be another's meanwhile.
        self._facts[id(certificate)] = (certificate, fact)
        return fact
