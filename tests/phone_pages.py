"""A portal with a row in every RA queue and list, and the pages that show them, for the
phone layout's tests: tests/browser/test_phone_tables.py measures the pages in chromium,
tests/enrollment/test_stacked_tables.py reads their tables' markup. The admin's
confirmation pages, with the long words that widened them, for the first of those.

Loaded for every test as a plugin (tests/conftest.py ``pytest_plugins``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
import time_machine

from django.contrib.auth.models import Group
from django.utils import timezone

from enrollment import bulk_revoke, keystore, leavers, mailboxes, rollouts, services
from enrollment.models import Certificate, SharedMailbox
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.tools import as_staff, issue, new_key
from tests.factories import UserFactory


@dataclass
class Busy:
    """Ids of the rows whose pages have their own paths."""

    mailbox: int
    rollout: int

    def pages(self) -> dict[str, dict[str, list[str]]]:
        """Role -> path -> the controls (CSS selectors) that page must show at least once:
        what a person there reads or presses, so a page that lost its rows fails too."""
        return {
            "officer": {
                "/ra/": [
                    ".badge[class*=recovery-]",
                    ".badge[class*=health-]",
                    "table.bulk-revocations a[href*='run=']",
                    "table.bulk-revocations .badge.bulk-stalled",
                ],
                "/ra/requests/": [
                    "form.decide input[name=reason]",
                    "form.decide button[value=approve]",
                    "form.decide button[value=reject]",
                    ".badge[class*=state-]",
                    "#other-approvers a[href*='all=1']",
                ],
                # With the HR approvers' request, read-only: "Decided by members of …".
                "/ra/requests/?all=1": [
                    "form.decide button[value=approve]",
                    "table.requests [id^=approvers-]",
                    "#other-approvers a",
                ],
                "/ra/requests/history/": [".badge[class*=state-]"],
                "/ra/certificates/?q=Andersson": [
                    "form.decide select[name=reason]",
                    "form.decide input[name=confirm]",
                    "form.decide button.danger",
                    ".badge[class*=status-]",
                ],
                "/ra/leavers/": [
                    "table.leavers input[name=confirm]",
                    "table.leavers button.danger",
                    "table.outdated a[href*='reason=']",
                ],
                "/ra/mailboxes/": ["table.mailboxes a"],
                f"/ra/mailboxes/{self.mailbox}/": [".badge[class*=status-]"],
                "/ra/recovery/": [".badge[class*=recovery-]"],
                "/ra/recovery/new/?q=Andersson": ["a.button[href*=certificate]"],
                "/ra/audit/": [".badge[class*=outcome-]"],
                "/ra/agents/": [".badge[class*=agent-]"],
                "/ra/rollouts/": ["table a[href*=rollouts]"],
                f"/ra/rollouts/{self.rollout}/": ["table a[href*=requests]"],
            },
            "employee": {
                "/": [".badge[class*=status-]"],
                "/certificates/": [
                    ".badge[class*=status-]",
                    ".badge[class*=recovery-]",
                    ".badge[class*=state-]",
                    "details.withdraw button",
                ],
                "/account/tokens/": ["details.withdraw input[name=confirm]", "button.danger"],
                # Cards, not a table, already: measured all the same.
                "/directory/?q=Andersson": [".badge[class*=status-]", "a.details"],
                "/directory/?q=finance": [".badge[class*=status-]", "a.details"],
            },
        }


@pytest.fixture
def busy_portal(
    settings, hierarchy, template, approval, kra, employee, colleague, officer, archived, asked
) -> Busy:  # fmt: skip
    """Requests waiting and decided (one for a template whose approvers the officer is not
    among), a leaver, an outdated address, a shared mailbox with a certificate, a roll-out,
    an API token, two bulk revocations from the admin (queued, stalled), and Alice's own
    request and key recovery request."""
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    issue(employee, template("smime-signing"), new_key())
    signing = approval("smime-signing")
    # Waiting for an officer: Bob's, and Alice's own (she may withdraw it).
    for requester in (colleague, employee):
        services.request_submit(
            requester=requester, template=signing, key_algorithm=KeyAlgorithm.EC_P256, channel="web"
        )
    rejected = services.request_submit(
        requester=colleague,
        template=approval("smime-dual-use"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    services.request_reject(
        request=rejected, officer=officer, reason="Ask for S/MIME Signing instead, please."
    )
    # Waiting for the HR approvers, whom Olivia is not among: counted above her queue and
    # listed read-only behind "Show it too" (/ra/requests/?all=1).
    hr = Group.objects.create(name="Human Resources and Payroll approvers")
    harriet = UserFactory(username="harriet", first_name="Harriet", last_name="Hall")
    harriet.groups.add(Group.objects.get(name="RA officers"), hr)
    for_hr = template("smime-signing")
    for_hr.pk = None  # a copy, decided by HR alone
    for_hr.name = "S/MIME Signing (HR and payroll staff)"
    for_hr.slug = "smime-signing-hr"
    for_hr.approver_group = hr
    for_hr.save()
    services.request_submit(
        requester=UserFactory(
            username="henrike", first_name="Henrike", last_name="Hallström-Vasquez"
        ),
        template=for_hr,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    # Erin's address changed an hour ago: her certificate names the old one.
    erin = UserFactory(username="erin", first_name="Erin", last_name="Eriksson-Lindqvist")
    erins = issue(erin, template("smime-signing"), new_key())
    moment = timezone.now() - timedelta(hours=1)
    with time_machine.travel(moment, tick=False):
        erin.email = "erin.eriksson-lindqvist@example.com"
        erin.save()
    with time_machine.travel(moment + timedelta(minutes=10), tick=False):
        leavers.leavers_revoke()
    # Dora left an hour ago with two certificates.
    dora = UserFactory(username="dora", first_name="Dora", last_name="Departed")
    for slug in ("smime-signing", "smime-dual-use"):
        issue(dora, template(slug), new_key())
    dora.is_active = False
    with time_machine.travel(timezone.now() - timedelta(hours=1), tick=False):
        dora.save()
    finance = mailboxes.mailbox_create(
        email="finance@example.com", display_name="Finance", delegates=[employee], actor=officer
    )
    for_finance = services.request_submit(
        requester=employee,
        template=template("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=finance,
        channel="web",
    )
    services.request_collect(
        request=for_finance, actor=employee, pkcs12_password="Mailbox-Shared-Lantern-27"
    )
    for username in ("frank", "grace"):
        UserFactory(username=username)
    rollout = rollouts.rollout_create(
        officer=officer,
        template=template("smime-encryption"),
        people="frank grace nobody-by-this-name",
        name="Finance, spring",
        key_algorithm=KeyAlgorithm.EC_P256,
    )
    services.api_token_create(owner=employee, label="Nightly backup script", via="web")
    # A bulk revocation from the admin, queued for a worker (the console lists it).
    admin_officer = as_staff(UserFactory(username="oliver"), "view_certificate")
    admin_officer.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    bulk_revoke.bulk_revoke_start(ids=[erins.pk], reason="affiliationChanged", actor=admin_officer)
    # And one whose worker died twenty minutes ago: stalled, to be resumed.
    with time_machine.travel(timezone.now() - timedelta(minutes=20), tick=False):
        bulk_revoke.bulk_revoke_start(ids=[erins.pk], reason="superseded", actor=admin_officer)
    return Busy(mailbox=finance.pk, rollout=rollout.pk)


@dataclass
class Confirmation:
    """An admin page that asks before it acts: an action's, reached from its list with
    these rows ticked, or (no action) a page of its own at path."""

    path: str
    action: str = ""
    selected: tuple[int, ...] = ()


@pytest.fixture
def admin_confirmations(
    busy_portal, hierarchy, template, kra, employee, officer
) -> list[Confirmation]:
    """The busy portal, a shared mailbox with a long address, a template with a long slug
    and a second issuing CA to move the templates to: one long word (a serial, an address,
    a slug) in a confirmation page's table made it wider than a phone."""
    mailboxes.mailbox_create(
        email="accounts.payable.international@emea.subsidiary.example.com",
        display_name="Accounts Payable (International)",
        actor=officer,
    )
    contractors = template("smime-signing")
    contractors.pk = None  # a copy, under a slug of the kind an administrator types
    contractors.name = "S/MIME Signing (contractors)"
    contractors.slug = "smime_signing_external_contractors"
    contractors.save()
    successor = services.issuing_ca_create(
        spec=services.CaSpec("Test Issuing CA G2", "issuing-g2", KeyAlgorithm.EC_P256, 1825),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
    )
    admin = "/admin/enrollment"
    return [
        Confirmation(
            f"{admin}/certificate/",
            "revoke",
            tuple(Certificate.objects.values_list("pk", flat=True)),
        ),
        Confirmation(
            f"{admin}/sharedmailbox/",
            "deactivate",
            tuple(SharedMailbox.objects.values_list("pk", flat=True)),
        ),
        Confirmation(f"{admin}/certificateauthority/", "switch_templates", (successor.pk,)),
        Confirmation(f"{admin}/keyrecoveryagent/", "deactivate", (kra.agent.pk,)),
        Confirmation(f"/admin/accounts/user/{employee.pk}/two-factor/reset/"),
    ]
