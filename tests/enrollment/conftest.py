"""Fixtures the officers' approval-notice tests share (test_request_approval_digest.py,
test_ra_notice_summary.py, test_ra_notice_delivery.py, test_approver_groups.py,
test_approval_digest_concurrency.py): a portal whose beat sends summaries, and requests
waiting for approval committed at a moment. And the officer scope the scope tests share
(``sales_scope``), with the keys and recoveries of the key recovery scope tests
(test_recovery_scopes.py, test_recovery_scope_pages.py). And the roll-out tests' signing
template (``signing``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from django.contrib.auth.models import Group

from enrollment import recovery, services
from enrollment.models import CertificateRequest, KeyRecoveryRequest, OfficerScope
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.ra_fixtures import HOLDER_REASON, OWNER_PKCS12_PASSWORD, REASON, Archived
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


@pytest.fixture
def signing(hierarchy, template):
    """The seeded signing template, EC keys only: key generation stays fast (the roll-out
    tests' template; a module's own ``signing`` fixture overrides it)."""
    chosen = template("smime-signing")
    chosen.allowed_key_algorithms = ["ec-p256"]
    chosen.save()
    return chosen


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


# --- key recovery under a scope: Bob's key is outside Olivia's, Alice's inside ----------


@pytest.fixture
def bobs_key(kra, template, colleague, sales_scope) -> Archived:
    """Bob's (Engineering) archived encryption key: outside Olivia's scope."""
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-encryption"),
        owner=colleague,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password=OWNER_PKCS12_PASSWORD,
    )
    return Archived(certificate, None)  # type: ignore[arg-type]  # the key is not needed


@pytest.fixture
def alices_key(archived, sales_scope) -> Archived:
    """Alice's (Sales) archived key, inside Olivia's scope."""
    return archived


@pytest.fixture
def scoped_agent(agent_user, sales_scope):
    """Karl, the agent, limited to Sales."""
    sales_scope.officers.user_set.add(agent_user)
    return agent_user


@pytest.fixture
def bobs_opened(bobs_key, second_officer) -> KeyRecoveryRequest:
    """Oscar (who acts for everyone) opened the recovery of Bob's key."""
    return recovery.recovery_open(
        certificate=bobs_key.certificate, officer=second_officer, reason=REASON
    )


@pytest.fixture
def bobs_approved(bobs_opened, admin_user) -> KeyRecoveryRequest:
    """... and the admin approved it."""
    return recovery.recovery_approve(recovery=bobs_opened, officer=admin_user)


@pytest.fixture
def bob_asks(bobs_key, colleague) -> KeyRecoveryRequest:
    """Bob asked for his own key back."""
    return recovery.recovery_ask(
        certificate=bobs_key.certificate, holder=colleague, reason=HOLDER_REASON
    )


@pytest.fixture
def olivia_approved(alices_key, second_officer, officer) -> KeyRecoveryRequest:
    """Oscar opened the recovery of Alice's key; Olivia (Sales) approved it: one of one."""
    found = recovery.recovery_open(
        certificate=alices_key.certificate, officer=second_officer, reason=REASON
    )
    return recovery.recovery_approve(recovery=found, officer=officer)
