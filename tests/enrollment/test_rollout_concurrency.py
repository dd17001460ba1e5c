"""Collecting an invitation at the same moment as its roll-out is cancelled or expires.

Cancel and expiry lock the roll-out's uncollected requests as request_collect locks its
request: whichever comes second sees the first's outcome. Never a certificate for a
withdrawn invitation, never a withdrawn invitation whose certificate was handed out.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.utils import timezone

from enrollment import rollouts
from enrollment.exceptions import InvalidState
from enrollment.models import AuditEvent, Certificate, CertificateRequest, RolloutInvitation
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.test_request_concurrency import collect, race, state_of
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
    pytest.mark.usefixtures("fast_pkcs12"),
]


@pytest.fixture
def invited(hierarchy, template, officer, employee):
    rollout = rollouts.rollout_create(
        officer=officer,
        template=template("smime-signing"),
        people=employee.username,
        key_algorithm=KeyAlgorithm.EC_P256,
    )
    return rollout, CertificateRequest.objects.get(invitation__rollout=rollout)


def end(rollout, officer, how: str):
    if how == "cancel":
        return lambda: rollouts.rollout_cancel(rollout=rollout, officer=officer)
    return lambda: rollouts.rollouts_expire_due(now=timezone.now() + timedelta(days=400))


@pytest.mark.parametrize("how", ["cancel", "expire"])
def test_a_collection_waiting_on_a_cancel_or_expiry_is_refused(invited, employee, officer, how):
    rollout, request = invited

    ended, collecting = race(end(rollout, officer, how), collect(request, employee))

    assert ended["value"] == 1
    assert isinstance(collecting.get("error"), InvalidState)
    assert state_of(request) == CertificateRequest.State.WITHDRAWN
    assert not Certificate.objects.exists()
    assert not AuditEvent.objects.filter(action="pkcs12.download").exists()


@pytest.mark.parametrize("how", ["cancel", "expire"])
def test_a_cancel_or_expiry_waiting_on_a_collection_leaves_it_issued(
    invited, employee, officer, how
):
    rollout, request = invited

    collected, ending = race(collect(request, employee), end(rollout, officer, how))

    assert ending["value"] == 0
    assert state_of(request) == CertificateRequest.State.ISSUED
    certificate, _bundle = collected["value"]
    assert list(Certificate.objects.all()) == [certificate]
    assert RolloutInvitation.objects.get(request=request).ended == ""
    assert not AuditEvent.objects.filter(action__in=["request.withdraw", "request.expire"]).exists()
