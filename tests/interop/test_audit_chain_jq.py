"""An exported audit trail checked with jq and sha256sum, by the formula the README gives.

Nothing of ours computes these hashes: jq rebuilds each event's JSON object from the
export (sorted keys, compact) and sha256sum hashes it. On PostgreSQL the enrolment's
events were hashed by the database (hotsql.audit_chain_append), a batch too large for it
by us, and the first event of all by us (no chain head yet): one formula for all three.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from enrollment import audit, hotsql, services
from enrollment.audit import audit_record
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.tools import cryptography_csr
from tests.pki import KeyPool

pytestmark = [
    pytest.mark.interop,
    pytest.mark.django_db,
    pytest.mark.skipif(shutil.which("jq") is None, reason="needs jq (Debian's package)"),
]

HASHED = (
    "{action, actor_id, actor_name, created_at, detail, object_id, object_repr, "
    "object_type, outcome, previous_hash, source_address}"
)


def sha256_by_jq(line: str) -> str:
    """The README's formula, by tools: jq's compact, key-sorted object, then sha256sum."""
    done = subprocess.run(
        f"jq -cjS '{HASHED}' | sha256sum",
        shell=True,
        input=line.encode(),
        capture_output=True,
        check=True,
        timeout=30,
    )
    return done.stdout.decode().split()[0]


def test_every_exported_hash_is_the_sha256_of_the_documented_json(
    hierarchy, template, employee, officer
):
    audit_record(action="test.first", detail={"note": "the chain head is made here"})
    csr = cryptography_csr(KeyPool().get(KeyAlgorithm.EC_P256)).public_bytes(Encoding.PEM)
    services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr,
        source_address="2001:db8::5",
        channel="api",
    )
    with audit.deferred():  # more than one statement chains: the head is locked first
        for n in range(hotsql.CHAINED_IN_SQL + 1):
            audit_record(
                action="test.batch",
                detail={"n": n, "name": 'Zoë 名前 "quoted"', "ratio": 1.5, "zero": -0.0},
            )

    response = client_for(officer).get("/ra/audit/export.jsonl")
    assert response.status_code == 200
    lines = b"".join(response.streaming_content).decode().splitlines()

    rows = [json.loads(line) for line in lines]
    assert {"certificate.issue", "request.submit", "test.batch"} <= {r["action"] for r in rows}
    assert len(rows) >= hotsql.CHAINED_IN_SQL + 4
    for line, row in zip(lines, rows, strict=True):
        assert sha256_by_jq(line) == row["hash"], row["action"]
    assert rows[0]["previous_hash"] == ""
    assert [r["previous_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
