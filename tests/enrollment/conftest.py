"""Fixtures the officers' approval-notice tests share (test_request_approval_digest.py,
test_ra_notice_summary.py, test_ra_notice_delivery.py, test_approver_groups.py,
test_approval_digest_concurrency.py): a portal whose beat sends summaries, and requests
waiting for approval committed at a moment. And the officer scope the scope tests share
(``sales_scope``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from django.contrib.auth.models import Group

from enrollment import services
from enrollment.models import CertificateRequest, OfficerScope
from enrollment.x509.keys import KeyAlgorithm
from tests.factories import UserFactory


@pytest.fixture
def scheduler(settings, monkeypatch):
    """A portal with a broker (so beat sends the summaries) and the default 15-minute
    window; the console's broker and worker pings are not the point here. Returns the
    settings, for a test to change the window or take the broker away."""
    import pkiportal.health

    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = 15
    monkeypatch.setattr(pkiportal.health, "checks", dict)
    return settings


@pytest.fixture
def submit_at(committed_at, hierarchy, approval):
    """A person's request (someone new's, unless ``who`` is given) for a template that needs
    approval, committed at a moment, with the notices it queues on commit sent."""
    needs_approval = approval("smime-signing")

    def run(moment, who=None) -> CertificateRequest:
        return committed_at(
            moment,
            lambda: services.request_submit(
                requester=who or UserFactory(),
                template=needs_approval,
                key_algorithm=KeyAlgorithm.EC_P256,
                channel="web",
            ),
        )

    return run


@dataclass
class SalesScope:
    scope: OfficerScope
    officers: Group  # the scope's officers' group: Olivia is in it
    people: Group  # a group of people the scope covers besides its unit


@pytest.fixture
def sales_scope(officer, employee, colleague) -> SalesScope:
    """Olivia (``officer``) acts for Sales only: the unit "Sales" (Alice, ``employee``, is
    in it) and the group "Sales people". Bob (``colleague``) is in Engineering, outside."""
    employee.organizational_unit = "Sales"
    employee.save()
    colleague.organizational_unit = "Engineering"
    colleague.save()
    officers = Group.objects.create(name="Sales officers")
    officers.user_set.add(officer)
    people = Group.objects.create(name="Sales people")
    scope = OfficerScope.objects.create(
        name="Sales", officers=officers, organizational_units="Sales"
    )
    scope.people_groups.add(people)
    return SalesScope(scope, officers, people)
