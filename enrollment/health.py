"""Is every CA's CRL fresh, is beat alive, and is an issuing CA near its end? Read-only
checks for /health/, the watchdog and the RA console.

A stale or unreachable CRL is the classic reason S/MIME signatures show errors, so each
CA's CRL gets a verdict: "ok", "warn" (the offline root's CRL expires within
PKIPORTAL_ROOT_CRL_WARNING_DAYS: bring the key out) or "fail" (no CRL, expired, missed its
refresh, a failed publication, or revocations waiting for a CRL far too long).

A CRL shows a dead beat only days later, when it nears its overlap window; expiry notices
stop silently. So beat gets its own verdict, from the last run of the CRL watchdog.

An issuing CA cuts every certificate at its own end: the templates that use it get a
verdict long before that end, and a failure once they cannot issue (issuing_ca_status).

An issuing CA name-constrained more narrowly than PKIPORTAL_MAIL_DOMAINS refuses the
addresses outside its constraint: a warning (mail_domain_status).

A template that names an approvers group with no active RA officer in it has requests
that no officer can decide (only a superuser): a warning (approver_status). So do pending
requests that no active RA officer may decide: outside the scope of every officer who
approves them, or left only to their own requester (scope_status).

An online CA whose key this server cannot sign with (a missing or unreadable key file, an
HSM token that is unreachable, busy, refuses the PIN, lost the key or holds another) can
issue nothing and publish no CRL: a failure (ca_key_status), checked at most once a minute
per process for anonymous probes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy

from enrollment import ca_lifetime, keystore
from enrollment.exceptions import KeyStoreError
from enrollment.models import (
    CRL_QUEUED_AT,
    CertificateAuthority,
    CertificateRequest,
    CertificateTemplate,
    CrlEntry,
    RevocationList,
    ScheduledRun,
)
from enrollment.permissions import ra_officers
from enrollment.x509.mail_domains import issuer_mail_domains, uncovered_domains
from pkiportal import plurals
from pkiportal.i18n import english, worded

OK, WARN, FAIL = "ok", "warn", "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

# The beat entry whose runs prove beat alive: it runs every few minutes (settings.py).
WATCHDOG_RUN = "crl-watchdog"
# Watchdog periods without a run before beat counts as stopped: one late or expired run
# (a busy worker lets it expire) is not an outage.
BEAT_PATIENCE_PERIODS = 3


# --- wording ----------------------------------------------------------------------------
# The checks' texts are read twice: on the RA console, in the officer's language, and in
# /health/'s JSON, logs and command output, in English for whoever monitors. So they are
# built lazily (pkiportal.i18n.worded) and worded only where they are read.


def joined(separator: str, parts: list[str]) -> str:
    """The parts, each worded when read, joined by ``separator`` (punctuation, the same in
    every language); lazy like them, where a " ".join would word them now, or fail."""
    return lazy(lambda: separator.join(str(part) for part in parts), str)()


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


# What to do about an issuing CA near its end, in the reader's language.
SWITCH_HINT = _(
    "Create its successor with `manage.py create_issuing_ca` and move the templates to it "
    "with `manage.py switch_issuing_ca` (README: Replacing the issuing CA)."
)


def worst(*statuses: str) -> str:
    """The most serious of several verdicts ("ok" < "warn" < "fail")."""
    return max(statuses, key=_RANK.__getitem__, default=OK)


@dataclass
class CrlStatus:
    """One CA's CRL as monitoring sees it."""

    slug: str
    name: str
    online: bool
    number: int | None = None
    this_update: datetime | None = None
    next_update: datetime | None = None
    entries: int | None = None
    unpublished_revocations: int = 0
    oldest_unpublished: datetime | None = None
    failed_at: datetime | None = None
    error: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return FAIL if self.problems else WARN if self.warnings else OK

    def as_dict(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment is not None else None

        return {
            "status": self.status,
            "online": self.online,
            "number": self.number,
            "this_update": when(self.this_update),
            "next_update": when(self.next_update),
            "entries": self.entries,
            "unpublished_revocations": self.unpublished_revocations,
            "oldest_unpublished": when(self.oldest_unpublished),
            "last_failure": when(self.failed_at),
            "last_error": self.error,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def crl_status(now: datetime | None = None) -> list[CrlStatus]:
    """The verdict on every CA's newest CRL, root first."""
    now = now or timezone.now()
    warning = timedelta(days=settings.PKIPORTAL_ROOT_CRL_WARNING_DAYS)
    # A revocation normally reaches a CRL within seconds; after two watchdog periods the
    # task and the watchdog have both missed it.
    patience = timedelta(minutes=2 * settings.PKIPORTAL_CRL_WATCHDOG_MINUTES)
    waiting = {
        row["ca"]: row
        for row in CrlEntry.objects.filter(first_crl_number__isnull=True)
        .values("ca")
        # Since it was queued, not revoked: a reason made keyCompromise long after the
        # revocation queues its entry again, and waits only from then.
        .annotate(count=Count("pk"), oldest=Min(CRL_QUEUED_AT))
    }
    statuses = []
    # Imported CAs publish their CRLs elsewhere: the portal has none to publish for them.
    for ca in CertificateAuthority.objects.ours().order_by("parent_id", "name"):
        crl = (
            RevocationList.objects.filter(ca=ca)
            .newest_first()
            .only("number", "this_update", "next_update", "entries")
            .first()
        )
        status = CrlStatus(ca.slug, ca.name, ca.is_online, failed_at=ca.crl_failed_at)
        if ca.crl_failed_at is not None:
            status.error = ca.crl_error
            status.problems.append(
                worded(
                    _("Publishing failed at %(time)s UTC: %(error)s"),
                    time=_utc(ca.crl_failed_at),
                    error=ca.crl_error,
                )
            )
        pending = waiting.get(ca.pk)
        if pending is not None:
            status.unpublished_revocations = pending["count"]
            status.oldest_unpublished = pending["oldest"]
            if pending["oldest"] is not None and now - pending["oldest"] > patience:
                status.problems.append(
                    worded(
                        ngettext_lazy(
                            "%(count)d revocation(s) have waited for a CRL since %(time)s UTC: "
                            "are the worker and beat running?",
                            "%(count)d revocation(s) have waited for a CRL since %(time)s UTC: "
                            "are the worker and beat running?",
                            pending["count"],
                        ),
                        count=pending["count"],
                        time=_utc(pending["oldest"]),
                    )
                )
        if crl is None:
            status.problems.append(worded(_("No CRL has been published.")))
            statuses.append(status)
            continue
        status.number, status.entries = crl.number, crl.entries
        status.this_update, status.next_update = crl.this_update, crl.next_update
        if crl.next_update <= now:
            status.problems.append(
                worded(_("The CRL expired at %(time)s UTC."), time=_utc(crl.next_update))
            )
        elif ca.is_online and crl.next_update - now <= ca.crl_overlap():
            status.problems.append(
                worded(
                    _(
                        "The CRL is older than its refresh interval and ends at %(time)s UTC: "
                        "are the worker and beat running?"
                    ),
                    time=_utc(crl.next_update),
                )
            )
        elif not ca.is_online and crl.next_update - now <= warning:
            status.warnings.append(_root_warning(ca, crl.next_update))
        statuses.append(status)
    return statuses


def _root_warning(ca: CertificateAuthority, next_update: datetime) -> str:
    return worded(
        _(
            "%(ca)s's CRL expires on %(time)s UTC: bring the offline key out and run "
            "`manage.py sign_root_crl --ca %(slug)s --key-file ...` before then."
        ),
        ca=ca.name,
        time=_utc(next_update),
        slug=ca.slug,
    )


def root_crl_warnings(now: datetime | None = None) -> list[str]:
    """What the watchdog logs about offline CAs, in English: CRLs that expire within a
    month or have."""
    return [
        english(message)
        for status in crl_status(now)
        if not status.online
        for message in (*status.problems, *status.warnings)
    ]


def no_scheduler() -> bool:
    """No broker is configured (the embedded default): tasks run inline in the web process
    and no beat runs, so nothing happens on a schedule. /health/ then reports the scheduler
    as "not used"; pages that promise a scheduled run say it will not come."""
    return bool(settings.CELERY_TASK_ALWAYS_EAGER)


def beat_status(now: datetime | None = None) -> dict[str, Any]:
    """Beat's verdict from the watchdog's last run; for a portal with a broker only.

    "fail" once the last run is older than BEAT_PATIENCE_PERIODS watchdog periods.
    "warn" when it never ran: beat first runs the watchdog one period after it starts, and
    a fresh install or one just given a broker must not take every web process out of a
    load balancer meanwhile. A beat that never starts still shows, as a warning here and
    as a failure once the CRLs age.
    """
    now = now or timezone.now()
    period = settings.PKIPORTAL_CRL_WATCHDOG_MINUTES
    run = ScheduledRun.objects.filter(name=WATCHDOG_RUN).first()
    result: dict[str, Any] = {
        "status": OK,
        "last_run": run.last_run_at.isoformat() if run is not None else None,
        "every_minutes": period,
    }
    if run is None:
        result["status"] = WARN
        result["warning"] = worded(
            _(
                "Beat has never run the CRL watchdog (due every %(period)s): is "
                "`celery -A pkiportal beat` running?"
            ),
            period=plurals.minutes_when_read(period),
        )
    elif now - run.last_run_at > timedelta(minutes=BEAT_PATIENCE_PERIODS * period):
        minutes = int((now - run.last_run_at).total_seconds() // 60)
        result["status"] = FAIL
        result["error"] = worded(
            _(
                "The CRL watchdog last ran at %(time)s UTC, %(ago)s ago; beat runs it every "
                "%(period)s: are `celery -A pkiportal beat` and a worker running? Scheduled "
                "CRLs and expiry notices wait meanwhile."
            ),
            time=_utc(run.last_run_at),
            ago=plurals.minutes_when_read(minutes),
            period=plurals.minutes_when_read(period),
        )
    return result


# --- issuing CAs' ends ----------------------------------------------------------------


@dataclass
class IssuingCaStatus:
    """One issuing CA's end, as it affects the templates that issue from it."""

    slug: str
    name: str
    online: bool
    is_default: bool
    not_after: datetime
    days_left: int
    templates: list[str] = field(default_factory=list)  # active templates issuing from it (slugs)
    template_names: list[str] = field(default_factory=list)  # the same, as people read them
    longest_validity_days: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return FAIL if self.problems else WARN if self.warnings else OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "online": self.online,
            "default": self.is_default,
            "not_after": self.not_after.isoformat(),
            "days_left": self.days_left,
            "templates": self.templates,
            "longest_validity_days": self.longest_validity_days,
            "problems": self.problems,
            "warnings": self.warnings,
        }


@dataclass
class IssuingCaCheck:
    authorities: list[IssuingCaStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # templates without a CA to issue from
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        own = FAIL if self.problems else WARN if self.warnings else OK
        return worst(own, *(ca.status for ca in self.authorities))

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "authorities": {ca.slug: ca.as_dict() for ca in self.authorities},
            "problems": self.problems,
            "warnings": self.warnings,
        }


def issuing_ca_status(now: datetime | None = None) -> IssuingCaCheck:
    """Every issuing CA, and whether its end cuts short or stops what templates issue.

    "warn" when a CA that active templates use ends within PKIPORTAL_CA_EXPIRY_WARNING_DAYS
    or before a certificate of its longest template issued today would (it is cut short
    already); "fail" when it expired, cuts certificates below PKIPORTAL_MIN_CERTIFICATE_DAYS
    (they are refused), or templates have no CA they can issue from. A CA no active
    template uses any more is retired from issuing: its end is no news.
    """
    now = now or timezone.now()
    lead = timedelta(days=settings.PKIPORTAL_CA_EXPIRY_WARNING_DAYS)
    check = IssuingCaCheck()
    authorities = list(CertificateAuthority.objects.ours().order_by("parent_id", "name", "pk"))
    by_pk = {ca.pk: ca for ca in authorities}
    default = next((ca for ca in authorities if ca.is_default), None)
    users: dict[int, list[CertificateTemplate]] = {}
    for template in CertificateTemplate.objects.filter(is_active=True).order_by("slug"):
        ca = by_pk.get(template.issuing_ca_id) if template.issuing_ca_id else default
        if ca is None:
            continue
        users.setdefault(ca.pk, []).append(template)
        if ca.is_root or not ca.is_online:
            check.problems.append(
                worded(
                    _(
                        "%(template)s names %(ca)s, which cannot sign certificates here: "
                        "choose an online issuing CA for it in the admin."
                    ),
                    template=template.name,
                    ca=ca.name,
                )
            )
    following_default = [
        t.slug for t in CertificateTemplate.objects.filter(is_active=True, issuing_ca__isnull=True)
    ]
    if default is None and following_default:
        if authorities:
            check.problems.append(
                worded(
                    _(
                        "No issuing CA is the default, so %(templates)s cannot issue: make one "
                        "the default with `manage.py switch_issuing_ca`."
                    ),
                    templates=", ".join(following_default),
                )
            )
        else:
            check.warnings.append(worded(_("No CA exists yet: run `manage.py create_pki`.")))
    for ca in authorities:
        if ca.is_root:
            continue
        templates = users.get(ca.pk, [])
        left = ca.not_after - now
        status = IssuingCaStatus(
            ca.slug,
            ca.name,
            ca.is_online,
            ca.is_default,
            ca.not_after,
            max(left.days, 0),
            [t.slug for t in templates],
            [t.name for t in templates],
        )
        check.authorities.append(status)
        if not templates or not ca.is_online:
            continue
        longest = max(templates, key=lambda t: t.validity_days)
        status.longest_validity_days = longest.validity_days
        refused = [t for t in templates if ca_lifetime.issuance_problem(ca, t, now) is not None]
        names = ", ".join(t.name for t in refused)
        said = {"ca": ca.name, "time": _utc(ca.not_after), "hint": SWITCH_HINT}
        if ca.not_after <= now:
            status.problems.append(
                worded(
                    _("%(ca)s expired on %(time)s UTC: %(templates)s cannot issue. %(hint)s"),
                    templates=names,
                    **said,
                )
            )
        elif ca.not_before > now:
            status.problems.append(
                worded(
                    _(
                        "%(ca)s is valid only from %(time)s UTC: %(templates)s cannot issue "
                        "until then (is this server's clock right?)."
                    ),
                    ca=ca.name,
                    time=_utc(ca.not_before),
                    templates=names,
                )
            )
        elif refused:
            status.problems.append(
                worded(
                    _(
                        "%(ca)s ends on %(time)s UTC, in %(left)s: %(templates)s no longer "
                        "issue, as their certificates would last fewer than %(minimum)s. "
                        "%(hint)s"
                    ),
                    left=plurals.days_when_read(left.days),
                    templates=names,
                    minimum=plurals.days_when_read(settings.PKIPORTAL_MIN_CERTIFICATE_DAYS),
                    **said,
                )
            )
        elif left < timedelta(days=longest.validity_days):
            status.warnings.append(
                worded(
                    _(
                        "%(ca)s ends on %(time)s UTC, in %(left)s: certificates from "
                        "%(template)s (%(validity)s) issued now are cut short to end then. "
                        "%(hint)s"
                    ),
                    left=plurals.days_when_read(left.days),
                    template=longest.name,
                    validity=plurals.days_when_read(longest.validity_days),
                    **said,
                )
            )
        elif left <= lead:
            status.warnings.append(
                worded(
                    _(
                        "%(ca)s ends on %(time)s UTC, in %(left)s "
                        "(PKIPORTAL_CA_EXPIRY_WARNING_DAYS is %(setting)s). %(hint)s"
                    ),
                    left=plurals.days_when_read(left.days),
                    setting=settings.PKIPORTAL_CA_EXPIRY_WARNING_DAYS,
                    **said,
                )
            )
    return check


def mail_domain_status(*, with_cas: bool = True) -> dict[str, Any]:
    """Which addresses the CA issues for (PKIPORTAL_MAIL_DOMAINS), and whether the issuing
    CAs in use can certify them all.

    "ok" whatever the setting says: issuing for any domain is a configuration choice
    (`check --deploy` warns), not an outage. "warn" when a CA that templates issue from is
    name-constrained more narrowly than the setting (or at all, with the setting empty):
    addresses in the rest are refused. "fail" without the database, like every check.
    """
    domains = list(settings.PKIPORTAL_MAIL_DOMAINS)
    result: dict[str, Any] = {"status": OK, "restricted": bool(domains), "domains": domains}
    if not domains:
        result["detail"] = (
            "PKIPORTAL_MAIL_DOMAINS is empty: certificates are issued for an account's "
            "address in any domain."
        )
    if not with_cas:  # the database is down: what the CAs allow is unknown, not fine
        result.update(status=FAIL, error="The database is unreachable.")
        return result
    named = CertificateTemplate.objects.filter(is_active=True, issuing_ca__isnull=False)
    in_use = CertificateAuthority.objects.filter(
        Q(is_default=True) | Q(pk__in=named.values("issuing_ca_id")), is_online=True
    ).order_by("name")
    warnings = []
    for ca in in_use:
        subtrees = issuer_mail_domains(ca.certificate)
        if subtrees is None:
            continue
        missing = uncovered_domains(domains, subtrees) if domains else ["any other domain"]
        if missing:
            warnings.append(
                f"{ca.name} is name-constrained to {', '.join(subtrees)}: addresses in "
                f"{', '.join(missing)} are refused. Issue from a CA constrained to "
                "PKIPORTAL_MAIL_DOMAINS (`create_issuing_ca`, then `switch_issuing_ca`)."
            )
    if warnings:
        result["status"] = WARN
        result["warnings"] = warnings
    return result


# /health/ answers anyone, and an HSM key's check has the token sign: a probe must not
# drive the HSM. Each process checks a CA's key at most once per period for callers who
# only get the verdict; callers allowed details get a fresh check (keystore.check_ca_key).
CA_KEY_CHECK_SECONDS = 60.0
_CA_KEY_CHECKS: dict[tuple[object, ...], tuple[float, dict[str, Any]]] = {}
_CA_KEY_REFRESH = threading.Lock()


def forget_ca_key_checks() -> None:
    """Drop this process's remembered checks (tests; a token just repaired)."""
    _CA_KEY_CHECKS.clear()


def _check_ca_key(ca: CertificateAuthority) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": OK, "backend": ca.key_backend}
    try:
        keystore.check_ca_key(ca, patience=keystore.HEALTH_WAIT_SECONDS)
    except KeyStoreError as exc:
        entry.update(status=FAIL, error=exc.message)
    except Exception as exc:  # noqa: BLE001 - a check fails; it never takes /health/ down
        entry.update(status=FAIL, error=f"The key cannot be checked: {type(exc).__name__}.")
    return entry


def _remembered_check(ca: CertificateAuthority, *, fresh: bool) -> dict[str, Any]:
    """The check of ``ca``'s key made within CA_KEY_CHECK_SECONDS, or a new one. While
    another thread checks, a caller takes the remembered answer rather than wait."""
    key = (ca.pk, ca.key_backend, ca.key_reference, ca.fingerprint_sha256)

    def remembered() -> dict[str, Any] | None:
        found = _CA_KEY_CHECKS.get(key)
        if found is None or fresh or time.monotonic() - found[0] >= CA_KEY_CHECK_SECONDS:
            return None
        return found[1]

    entry = remembered()
    if entry is not None:
        return dict(entry)
    stale = _CA_KEY_CHECKS.get(key)
    if stale is not None and not fresh:
        got = _CA_KEY_REFRESH.acquire(blocking=False)
    else:
        got = _CA_KEY_REFRESH.acquire(timeout=keystore.HEALTH_WAIT_SECONDS)
    if not got:
        if stale is not None:
            return dict(stale[1])
        return {"status": FAIL, "backend": ca.key_backend, "error": "The key is being checked."}
    try:
        entry = remembered()  # another thread may have checked it meanwhile
        if entry is None:
            entry = _check_ca_key(ca)
            _CA_KEY_CHECKS[key] = (time.monotonic(), entry)
        return dict(entry)
    finally:
        _CA_KEY_REFRESH.release()


def ca_key_status(*, fresh: bool = False) -> dict[str, Any]:
    """Can this server sign with every online issuing CA's key? An HSM key signs a
    challenge the certificate's public key verifies (keystore.check_ca_key): at most once
    per CA_KEY_CHECK_SECONDS in this process, unless ``fresh``."""
    authorities: dict[str, dict[str, Any]] = {}
    for ca in CertificateAuthority.objects.issuing().order_by("slug"):
        authorities[ca.slug] = _remembered_check(ca, fresh=fresh)
    statuses = (entry["status"] for entry in authorities.values())
    return {"status": worst(*statuses), "authorities": authorities}


# --- approvers --------------------------------------------------------------------------


def approver_officers(group: Any) -> QuerySet[Any]:
    """The active RA officers (superusers included) in a group, by id or OuterRef: who may
    decide the requests of a template naming it as its approvers."""
    # Two filter() calls, two joins: one filter would look for one group that is both.
    return get_user_model().objects.filter(ra_officers()).filter(groups=group)


def templates_without_approvers() -> list[CertificateTemplate]:
    """Templates whose approvers group holds no active RA officer, and that have requests
    to decide: those that take requests needing approval, or still have some pending.
    Only a superuser can decide them. With ``pending``, how many wait. One query."""
    pending = Q(certificaterequest__state=CertificateRequest.State.PENDING)
    officers = approver_officers(OuterRef("approver_group"))
    return list(
        CertificateTemplate.objects.filter(approver_group__isnull=False)
        .annotate(pending=Count("certificaterequest", filter=pending))
        .filter(Q(is_active=True, requires_approval=True) | Q(pending__gt=0))
        .exclude(Exists(officers))
        .select_related("approver_group")
        .order_by("name")
    )


def without_approvers_message(template: CertificateTemplate) -> str:
    """What the console, /health/ and the template's admin page say of one of them."""
    assert template.approver_group is not None
    waiting = getattr(template, "pending", 0)
    said = {"template": template.name, "group": template.approver_group.name}
    if not waiting:
        return worded(
            _(
                "%(template)s: no active RA officer is in its approvers group %(group)s, so "
                "only a superuser can approve or reject its requests. Add RA officers to the "
                "group, or choose another group (or none: every officer) for the template in "
                "the admin."
            ),
            **said,
        )
    return worded(
        ngettext_lazy(
            "%(template)s: no active RA officer is in its approvers group %(group)s, so only "
            "a superuser can approve or reject its requests (%(waiting)d waiting). Add RA "
            "officers to the group, or choose another group (or none: every officer) for the "
            "template in the admin.",
            "%(template)s: no active RA officer is in its approvers group %(group)s, so only "
            "a superuser can approve or reject its requests (%(waiting)d waiting). Add RA "
            "officers to the group, or choose another group (or none: every officer) for the "
            "template in the admin.",
            waiting,
        ),
        waiting=waiting,
        **said,
    )


def approver_status() -> dict[str, Any]:
    """ "warn" while a template's requests wait for approvers it has not got
    (templates_without_approvers): not a failure, as a superuser can still decide them
    and nothing a node serves is affected."""
    templates = templates_without_approvers()
    return {
        "status": WARN if templates else OK,
        "templates": {t.slug: getattr(t, "pending", 0) for t in templates},
        "problems": [without_approvers_message(t) for t in templates],
    }


# --- officer scopes ---------------------------------------------------------------------


@dataclass(frozen=True)
class OutsideScopes:
    """Pending requests no active RA officer may decide (all but superusers in a scope, or
    the only ones who could are barred from them personally)."""

    requests: int = 0
    mailboxes: int = 0  # of them, shared mailboxes' (in no unit: only for everyone's officers)
    # Of them, those some officer's scope and approvers group cover, but only the officers
    # whose own request it is or who read its shared mailbox (Decider.barred).
    barred: int = 0


def requests_outside_scopes() -> OutsideScopes:
    """Pending requests that only a superuser can decide: no active RA officer may decide
    them by the rule services._decide enforces (Decider.barred, through
    decidable_by_some): every officer who may (every officer for a template naming no
    approvers group, else the group's officers) is outside their requester's scope (a
    shared mailbox's: only an officer in no scope acts for it), or is its requester, or a
    delegate of its shared mailbox. A template whose group holds no active officer at all is
    the approvers check's (approver_status), not counted here. Nothing to count while none
    is left but superusers. Four queries without scopes, six at most, however many
    officers and requests."""
    from enrollment.permissions import decidable_by_some, deciders

    officers = (
        get_user_model()
        .objects.filter(ra_officers(), is_superuser=False)
        .values_list("pk", flat=True)
        .distinct()
    )
    found = list(deciders((pk, False) for pk in officers).values())
    if not found:
        return OutsideScopes()
    decided = decidable_by_some(found)
    if not decided:  # every request: nothing is left out
        return OutsideScopes()
    # The templates some officer may decide: naming no group, or a group one of them is in.
    theirs = Q(template__approver_group__isnull=True)
    groups = sorted(frozenset().union(*(officer.group_ids for officer in found)))
    if groups:
        theirs |= Q(template__approver_group_id__in=groups)
    outside = theirs & ~decided
    counts = CertificateRequest.objects.filter(state=CertificateRequest.State.PENDING).aggregate(
        outside=Count("pk", filter=outside),
        mailboxes=Count("pk", filter=outside & Q(mailbox__isnull=False)),
        barred=Count("pk", filter=outside & decidable_by_some(found, personally=False)),
    )
    return OutsideScopes(counts["outside"], counts["mailboxes"], counts["barred"])


def outside_scopes_message(outside: OutsideScopes) -> str:
    """What the console and /health/ say of them: how many, never whose."""
    count = outside.requests
    notes = []
    if outside.mailboxes:
        notes.append(
            worded(
                ngettext_lazy(
                    "%(count)d of them for a shared mailbox, which only an officer in no scope "
                    "handles",
                    "%(count)d of them for a shared mailbox, which only an officer in no scope "
                    "handles",
                    outside.mailboxes,
                ),
                count=outside.mailboxes,
            )
        )
    if outside.barred and outside.barred < count:
        notes.append(
            worded(
                ngettext_lazy(
                    "%(count)d of them is left to no RA officer but its own requester or a "
                    "delegate of its shared mailbox, who may not decide it",
                    "%(count)d of them are left to no RA officers but their own requesters or "
                    "delegates of their shared mailboxes, who may not decide them",
                    outside.barred,
                ),
                count=outside.barred,
            )
        )
    # Translators: notes on pending requests, after "who may decide them" as %(aside)s.
    aside = worded(_(" (%(notes)s)"), notes=joined("; ", notes)) if notes else ""
    if outside.barred == count:  # none is a matter of scopes only
        situation = ngettext_lazy(
            "%(count)d pending request is left to no RA officer but its own requester or a "
            "delegate of its shared mailbox, who may not decide it%(aside)s, so only a "
            "superuser can approve or reject it.",
            "%(count)d pending requests are left to no RA officers but their own requesters "
            "or delegates of their shared mailboxes, who may not decide them%(aside)s, so "
            "only a superuser can approve or reject them.",
            count,
        )
    else:
        situation = ngettext_lazy(
            "%(count)d pending request is outside the officer scope of every RA officer who "
            "may decide it%(aside)s, so only a superuser can approve or reject it.",
            "%(count)d pending requests are outside the officer scope of every RA officer "
            "who may decide them%(aside)s, so only a superuser can approve or reject them.",
            count,
        )
    sentences = [
        worded(situation, count=count, aside=aside),
        worded(
            _(
                "Give a scope the people they are for, or leave an officer in no scope (they "
                "act for everyone)."
            )
        ),
    ]
    if outside.barred:
        sentences.append(
            worded(
                _(
                    "Nobody decides their own request, or one of a shared mailbox they read: "
                    "another officer must be able to."
                )
            )
        )
    return joined(" ", sentences)


def scope_status() -> dict[str, Any]:
    """ "warn" while pending requests wait for an officer who may decide them
    (requests_outside_scopes): not a failure, as a superuser can still decide them."""
    outside = requests_outside_scopes()
    if not outside.requests:
        return {"status": OK, "requests": 0, "mailboxes": 0, "barred": 0, "problems": []}
    return {
        "status": WARN,
        "requests": outside.requests,
        "mailboxes": outside.mailboxes,
        "barred": outside.barred,
        "problems": [outside_scopes_message(outside)],
    }
