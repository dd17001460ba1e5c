"""Run pkilint's own command-line entry points and read their JSON report.

The linters run in-process (their ``main(argv)``) to skip a ~0.7 s interpreter start per
document; one test also runs the installed console script to show the verdict is the same.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pkilint.bin import (
    lint_cabf_smime_cert,
    lint_crl,
    lint_pkix_cert,
    lint_pkix_signer_signee_cert_chain,
)

SERIOUS = frozenset({"ERROR", "FATAL"})


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str | None
    node_path: str

    def __str__(self) -> str:
        return f"{self.severity} {self.code} @ {self.node_path}: {self.message or ''}"


def _run(main: Callable[[list[str]], int], argv: Sequence[str | Path]) -> list[Finding]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([str(a) for a in argv])
    report = json.loads(out.getvalue())
    return [
        Finding(d["severity"], d["code"], d["message"], result["node_path"])
        for result in report["results"]
        for d in result["finding_descriptions"]
    ]


def lint_smime(path: Path, *extra: str) -> list[Finding]:
    """lint_cabf_smime_cert, type detected from the reserved policy OID (-d)."""
    return _run(
        lint_cabf_smime_cert.main, ["lint", "-d", "-s", "NOTICE", "-f", "JSON", *extra, path]
    )


def lint_crl_file(path: Path, *, kind: str = "CRL", profile: str = "PKIX") -> list[Finding]:
    return _run(
        lint_crl.main, ["lint", "-t", kind, "-p", profile, "-s", "NOTICE", "-f", "JSON", path]
    )


def lint_pkix(path: Path) -> list[Finding]:
    return _run(lint_pkix_cert.main, ["lint", "-s", "NOTICE", "-f", "JSON", path])


def lint_chain(issuer: Path, subject: Path) -> list[Finding]:
    return _run(
        lint_pkix_signer_signee_cert_chain.main,
        ["lint", "-s", "NOTICE", "-f", "JSON", issuer, subject],
    )


def serious(findings: list[Finding]) -> list[str]:
    return [str(f) for f in findings if f.severity in SERIOUS]


def minor(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.severity, f.code) for f in findings if f.severity not in SERIOUS}
