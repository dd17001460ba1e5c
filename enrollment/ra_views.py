"""The RA side's pages: /ra/ console, key recovery, certificate search and revocation,
the audit trail and its exports, recovery-agent status, people who have left.

Officers see everything here (a scoped officer, the certificates and leavers of the
people their scope covers: enrollment.scopes); key recovery agents see the recovery
pages; the person a recovery names sees that one recovery and downloads it (and, if they
asked for it as the key's holder, may withdraw it). Anyone else gets a 403 on the lists
and a 404 on a recovery, so its existence is not revealed. An officer or agent whose
officer scope leaves the key's owner out sees none of its recoveries: a 403 that names
nobody. Services decide the rest.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from typing import Any, cast
from urllib.parse import urlencode

from celery.result import EagerResult

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.uploadhandler import MemoryFileUploadHandler
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.requests import AuthenticatedHttpRequest
from enrollment import (
    audit,
    bulk_revoke,
    health,
    ldap_publish,
    ldap_sync,
    leavers,
    outdated,
    ra_notifications,
    ra_selectors,
    ra_services,
    recovery,
    scopes,
    services,
)
from enrollment.edge import (
    client_address,
    officer_required,
    officer_required_for,
    officer_required_to,
    report_download,
    show_error,
    status_for,
)
from enrollment.exceptions import EnrollmentError, InvalidState, NotPermitted
from enrollment.forms import RecoveryWithdrawForm
from enrollment.models import (
    ApprovalNoticeDigest,
    AuditEvent,
    BulkRevocationRun,
    Certificate,
    CertificateRequest,
    KeyRecoveryRequest,
)
from enrollment.permissions import (
    NOT_AN_AGENT,
    is_key_recovery_agent,
    is_ra_officer,
)
from enrollment.ra_forms import (
    AuditFilterForm,
    BulkRevokeResumeForm,
    CertificateSearchForm,
    LeaverRevokeForm,
    NoticeDeliveryForm,
    OfficerRevokeForm,
    RecoveredKeyForm,
    RecoveryAcceptForm,
    RecoveryOpenForm,
    RecoveryPerformForm,
    RecoveryRejectForm,
    RequestFilterForm,
)
from enrollment.scopes import reach_of
from pkiportal.i18n import mid_sentence

AUDIT_PAGE_SIZE = 50
REQUEST_PAGE_SIZE = 50
AUDIT_COLUMNS = audit.EXPORT_COLUMNS
# A spreadsheet runs a cell that starts with these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# --- helpers --------------------------------------------------------------------------


def _newest_first(
    request: HttpRequest, rows: QuerySet[Any], size: int
) -> tuple[list[Any], dict[str, Any]]:
    """A page of ``rows``, newest (highest id) first, continued by ``?before=<id>`` rather
    than an offset, so no count runs over a large table. With the page, the template's
    links: ``older`` (the query for the next page, or None), ``newest`` (whether this is a
    later page) and ``filters`` (the query without ``before``)."""
    before = _row_id(request.GET.get("before", ""))
    if before is not None:
        rows = rows.filter(pk__lt=before)
    page = list(rows.order_by("-id")[: size + 1])
    query = request.GET.copy()
    query.pop("before", None)
    filters = query.urlencode()
    older = None
    if len(page) > size:
        page = page[:size]
        query["before"] = str(page[-1].pk)
        older = query.urlencode()
    return page, {"older": older, "newest": before is not None, "filters": filters}


def _row_id(text: str) -> int | None:
    """A page's "continue before this row" id, or None: ASCII digits that fit a bigint
    ("²".isdigit() is true, and int() of a 5,000-digit string raises)."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


def _recovery_staff_required(request: HttpRequest) -> None:
    if not (is_ra_officer(request.user) or is_key_recovery_agent(request.user)):
        raise PermissionDenied(_("Only RA officers and key recovery agents may see this page."))


def _visible_recovery(
    request: HttpRequest, pk: int, *, step: str | None = None
) -> KeyRecoveryRequest:
    """Officers and agents see the recoveries of the key owners their scope covers (403
    for the others, naming nobody); the person it names sees theirs; others 404. ``step``:
    the audit action of the step a POST takes, whose refusal out of scope is audited."""
    found = get_object_or_404(
        KeyRecoveryRequest.objects.select_related(
            "certificate__owner",
            "certificate__template",
            "certificate__ca",
            "requested_by",
            "asked_by",
            "decided_by",
        ).defer("bundle"),
        pk=pk,
    )
    user = request.user
    # A requesting officer who lost the role (or the owner from their scope) still sees it:
    # the download is refused there, with a reason, on the audit trail.
    if found.recipient_id == user.pk:
        return found
    if not (is_ra_officer(user) or is_key_recovery_agent(user)):
        raise Http404("No such key recovery.")
    if step is not None:
        try:
            recovery.check_in_reach(
                found, user, action=step, source_address=client_address(request)
            )
        except recovery.OutOfReach as exc:
            raise PermissionDenied(exc.message) from None
    elif not recovery.in_reach(found, user):
        raise PermissionDenied(recovery.OUT_OF_REACH)
    return found


# --- console --------------------------------------------------------------------------


@login_required
@require_safe
def console(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Everything an officer checks in the morning, on one page."""
    officer_required(request)
    return _console_page(request)


def _console_page(
    request: AuthenticatedHttpRequest,
    *,
    resume_failed: int | None = None,
    resume_form: BulkRevokeResumeForm | None = None,
    notice_form: NoticeDeliveryForm | None = None,
    status: int = 200,
) -> HttpResponse:
    # Only those of the key owners the officer's scope covers, as the recovery list.
    recoveries = list(ra_selectors.open_recoveries(reach_of(request.user)))
    # The signed-in officer's own, never another's.
    notice_summary = ra_selectors.approval_notice_summary(request.user)
    pending = ra_selectors.pending_enrolment_counts(request.user)
    reach = reach_of(request.user)
    context = {
        "pending_count": pending.theirs,
        "pending_total": pending.total,
        "without_approvers": health.approver_status(),
        "outside_scopes": health.scope_status(),
        "notice_summary": notice_summary,
        "notice_form": notice_form
        or NoticeDeliveryForm(initial={"delivery": notice_summary.delivery}),
        "no_scheduler": health.no_scheduler(),
        "recoveries": recoveries,
        "recovery_asks": sum(r.state == KeyRecoveryRequest.State.REQUESTED for r in recoveries),
        "approvals_required": recovery.approvals_required(),
        "search_form": CertificateSearchForm(),
        "crls": ra_selectors.crl_overview(),
        "services": ra_selectors.service_health(),
        "agents": ra_selectors.agent_overview(),
        # Of the people the officer's scope covers (everyone, for most).
        "leaver_count": leavers.leavers_holding_count(reach=reach),
        "outdated_count": outdated.outdated_count(now=timezone.now(), reach=reach),
        "leaver_check": leavers.leaver_check(),
        # Beat's "Not used" is a warning while revocations wait for a run that never comes.
        "unscheduled": leavers.waiting_without_scheduler(reach=reach),
        "cron_hint": leavers.CRON_HINT,
        "issuing": health.issuing_ca_status(),
        "ldap_check": ldap_publish.ldap_check(),
        "ldap_sync_check": ldap_sync.ldap_sync_check(),
        "bulk_revocations": bulk_revoke.bulk_revoke_runs(),
        "bulk_revoke_days": bulk_revoke.RUNS_DAYS,
        "bulk_revoke_stall_minutes": bulk_revoke.STALL_MINUTES,
        "may_resume": bulk_revoke.may_revoke_in_bulk(request.user),
        "resume_failed": resume_failed,
        "resume_form": resume_form,
    }
    return render(request, "enrollment/ra/console.html", context, status=status)


@login_required
@require_POST
def bulk_revoke_resume(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Resume a stalled or stopped bulk revocation from the selection its row keeps: for
    whom the admin's action serves (bulk_revoke.may_revoke_in_bulk), checked again here
    and before each batch. What is already revoked is skipped."""
    officer_required(request)
    if not bulk_revoke.may_revoke_in_bulk(request.user):
        raise PermissionDenied(
            _("Only RA officers who may revoke certificates in the admin may resume a run.")
        )
    run = get_object_or_404(BulkRevocationRun.objects.defer("certificate_ids"), pk=pk)
    form = BulkRevokeResumeForm(request.POST)
    if not form.is_valid():
        return _console_page(request, resume_failed=run.pk, resume_form=form, status=400)
    try:
        resumed = bulk_revoke.bulk_revoke_resume(
            run=run, actor=request.user, source_address=client_address(request)
        )
    except InvalidState as exc:  # running again, or finished, since the page was shown
        form.add_error(None, exc.message)
        return _console_page(request, resume_failed=run.pk, resume_form=form, status=409)
    except EnrollmentError as exc:
        status = show_error(form, exc)
        return _console_page(request, resume_failed=run.pk, resume_form=form, status=status)
    result = bulk_revoke.bulk_revoke_queue(resumed)
    if result is None:
        messages.error(
            request,
            _(
                "Bulk revocation #%(run)s could not be handed to the background worker (is the "
                "broker down?): nothing more was revoked. Try again in a moment."
            )
            % {"run": run.pk},
        )
    elif isinstance(result, EagerResult):  # no broker: it ran here, to the end
        done = BulkRevocationRun.objects.defer("certificate_ids").get(pk=run.pk)
        outcome = _(
            "Bulk revocation #%(run)s resumed and %(state)s: %(revoked)s of %(selected)s "
            "revoked in all."
        ) % {
            "run": run.pk,
            "state": mid_sentence(done.get_state_display()),
            "revoked": done.revoked,
            "selected": done.selected,
        }
        tell = messages.success if done.state == done.State.DONE else messages.warning
        tell(request, " ".join(part for part in (outcome, done.error) if part))
    else:
        messages.success(
            request,
            ngettext(
                "Bulk revocation #%(run)s resumed: the %(count)d certificate left is revoked "
                "in the background, %(batch)d at a time.",
                "Bulk revocation #%(run)s resumed: the %(count)d certificates left are revoked "
                "in the background, %(batch)d at a time.",
                resumed.not_reached,
            )
            % {"run": run.pk, "count": resumed.not_reached, "batch": bulk_revoke.BATCH},
        )
    return redirect(reverse("ra:console") + "#bulk-revocations")


NOTICE_CHOSEN = {
    ApprovalNoticeDigest.Delivery.SUMMARIES: _lazy("Approval notices: in summaries."),
    ApprovalNoticeDigest.Delivery.IMMEDIATE: _lazy("Approval notices: every request at once."),
    ApprovalNoticeDigest.Delivery.NONE: _lazy(
        "Approval notices: none by mail. Requests waiting for your approval are in the queue "
        "on this console."
    ),
}
# Summaries chosen where the portal sends none (ra_notifications.notice_window is zero):
# the officer hears of every request at once, as the panel says, and is told so: that it
# runs no scheduler to send them, or that it sends none.
NOTICE_SUMMARIES_NO_SCHEDULER = _lazy(
    "Approval notices: in summaries, once this portal sends them. It runs no scheduler to "
    "send summaries, so for now every request waiting for your approval is mailed to you as "
    "it comes."
)
NOTICE_SUMMARIES_NOT_SENT = _lazy(
    "Approval notices: in summaries, once this portal sends them. It sends none, so for now "
    "every request waiting for your approval is mailed to you as it comes."
)


def _notice_chosen(delivery: str) -> str:
    """The confirmation of an officer's choice: what they will get, not only what they
    picked (summaries chosen on a portal that sends none are immediate notices)."""
    if delivery == ApprovalNoticeDigest.Delivery.SUMMARIES and not ra_notifications.notice_window():
        if health.no_scheduler():
            return str(NOTICE_SUMMARIES_NO_SCHEDULER)
        return str(NOTICE_SUMMARIES_NOT_SENT)
    return str(NOTICE_CHOSEN[ApprovalNoticeDigest.Delivery(delivery)])


@login_required
@require_POST
def notice_delivery(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The signed-in officer chooses how requests waiting for their approval reach them:
    their own choice only, so the form names no officer."""
    officer_required(request)
    form = NoticeDeliveryForm(request.POST)
    if not form.is_valid():
        return _console_page(request, notice_form=form, status=400)
    delivery = form.cleaned_data["delivery"]
    mailed = ra_notifications.approval_notice_delivery_set(officer=request.user, delivery=delivery)
    text = _notice_chosen(delivery)
    if mailed:
        went = ngettext(
            "The %(count)d request collected for your summary went to you now.",
            "The %(count)d requests collected for your summary went to you now.",
            mailed,
        ) % {"count": mailed}
        text = " ".join((text, went))
    messages.success(request, text)
    return redirect(reverse("ra:console") + "#notice-summary")


# --- certificates ---------------------------------------------------------------------


def _certificates_page(
    request: HttpRequest,
    *,
    failed: Certificate | None = None,
    revoke_form: OfficerRevokeForm | None = None,
    status: int = 200,
) -> HttpResponse:
    # A scoped officer finds only the certificates of the people their scope covers, and
    # an account outside it is as one that does not exist: nothing says who else matched.
    reach = reach_of(request.user)
    owner_id = _row_id(request.GET.get("owner", ""))
    owner = (
        get_user_model().objects.filter(reach.people(), pk=owner_id).first() if owner_id else None
    )
    form = CertificateSearchForm(None if owner else request.GET or None)
    results: list[Certificate] = []
    if owner is not None:
        results = list(ra_selectors.certificates_of(owner.pk, reach=reach)[:50])
    elif form.is_bound and form.is_valid():
        results = list(ra_selectors.certificate_search(form.cleaned_data["q"], reach=reach)[:50])
    if failed is not None and all(c.pk != failed.pk for c in results):
        results.insert(0, failed)  # _may_revoke let the officer at it: theirs to see
    reason_field = OfficerRevokeForm.base_fields["reason"]
    assert isinstance(reason_field, forms.ChoiceField)  # as ra_forms declares it
    context = {
        "form": form,
        "results": results,
        "searched": form.is_bound or owner is not None,
        "owner": owner,
        "failed_id": failed.pk if failed else None,
        "revoke_form": revoke_form,
        "reasons": reason_field.choices,
        "preset_reason": _preset_reason(request.GET.get("reason", "")),
        "scope": None if reach.everyone else reach.describe(),
    }
    return render(request, "enrollment/ra/certificates.html", context, status=status)


def _may_revoke(request: HttpRequest, certificate: Certificate) -> None:
    """The service's rule (services.certificate_revoke_check), asked first: a 403 page."""
    try:
        services.certificate_revoke_check(
            request.user, certificate, source_address=client_address(request)
        )
    except NotPermitted as exc:
        raise PermissionDenied(exc.message) from exc


def _preset_reason(given: str) -> str:
    """A reason the page offers chosen in advance (the leavers' page links with
    affiliationChanged); the officer still confirms each revocation."""
    return given if given in Certificate.RevocationReasonChoice.values else ""


@login_required
@require_safe
def certificate_search(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Find any certificate by name, e-mail, serial or fingerprint, and revoke it."""
    officer_required(request)
    return _certificates_page(request)


@login_required
@require_POST
def certificate_revoke(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Revoke one certificate found above: one outside the officer's scope is refused
    (403) before the form is read, so the page never shows it."""
    officer_required_to(request, "certificate.revoke", Certificate, pk)
    certificate = get_object_or_404(
        Certificate.objects.select_related("owner", "template", "mailbox"), pk=pk
    )
    _may_revoke(request, certificate)
    form = OfficerRevokeForm(request.POST)
    if not form.is_valid():
        return _certificates_page(request, failed=certificate, revoke_form=form, status=400)
    try:
        services.certificate_revoke(
            certificate=certificate,
            reason=form.cleaned_data["reason"],
            actor=request.user,
            invalidity_date=form.cleaned_data["invalidity_date"],
            source_address=client_address(request),
        )
    except NotPermitted as exc:  # the scope changed since the check above
        raise PermissionDenied(exc.message) from exc
    except EnrollmentError as exc:
        status = show_error(form, exc)
        return _certificates_page(request, failed=certificate, revoke_form=form, status=status)
    note = services.imported_revocation_note(certificate)
    if certificate.mailbox is None:
        told = (
            _("The holder was told by e-mail.")
            if note
            else _("The holder was told by e-mail; the next CRL lists it.")
        )
    else:
        told = (
            _("The shared mailbox %(mailbox)s and its delegates were told by e-mail.")
            if note
            else _(
                "The shared mailbox %(mailbox)s and its delegates were told by e-mail; the "
                "next CRL lists it."
            )
        ) % {"mailbox": certificate.mailbox.email}
    revoked = _("Revoked %(name)s's certificate (serial %(serial)s).") % {
        "name": certificate.common_name,
        "serial": certificate.serial,
    }
    # Each its own sentence (the note, an imported certificate's: services).
    messages.success(request, " ".join(part for part in (revoked, told, note) if part))
    owner = _row_id(request.POST.get("owner", ""))
    query = {"owner": str(owner)} if owner else {"q": request.POST.get("q", "")}
    if preset := _preset_reason(request.POST.get("preset_reason", "")):
        query["reason"] = preset  # the holder's other certificates, with the same preset
    return redirect(f"{reverse('ra:certificates')}?{urlencode(query)}")


# --- people who have left -------------------------------------------------------------


@login_required
@require_safe
def request_history(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Every enrolment request, newest first, filtered; the queue page shows only the last
    few decisions, and an officer asked "who approved Bob's certificate in March?" needs
    the rest. Continued by id, like the audit trail, so no count runs over the table."""
    officer_required(request)
    form = RequestFilterForm(request.GET)
    # Only those within the officer's scope (enrollment.scopes), whatever the filters.
    found = CertificateRequest.objects.filter(
        scopes.reach_of(request.user).requests()
    ).select_related("requester", "template", "decided_by", "certificate")
    found = form.filter(found) if form.is_valid() else found.none()
    page, context = _newest_first(request, found, REQUEST_PAGE_SIZE)
    context |= {"form": form, "requests": page}
    return render(request, "enrollment/ra/request_history.html", context)


@login_required
@require_safe
def leaver_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Deactivated accounts still holding certificates, certificates naming an address
    their holder no longer has, and when those are revoked."""
    officer_required(request)
    return _leavers_page(request)


def _leavers_page(
    request: HttpRequest,
    *,
    failed: int | None = None,
    revoke_form: LeaverRevokeForm | None = None,
    status: int = 200,
) -> HttpResponse:
    now = timezone.now()
    reach = reach_of(request.user)  # a scoped officer sees the people it covers only
    found = leavers.leavers_holding_certificates(now=now, limit=leavers.PAGE_LIMIT + 1, reach=reach)
    changed = outdated.outdated_certificates(
        delay=leavers.revocation_delay(), now=now, limit=leavers.PAGE_LIMIT + 1, reach=reach
    )
    context = {
        "leavers": found[: leavers.PAGE_LIMIT],
        "more": len(found) > leavers.PAGE_LIMIT,
        "outdated": changed[: leavers.PAGE_LIMIT],
        "more_outdated": len(changed) > leavers.PAGE_LIMIT,
        "limit": leavers.PAGE_LIMIT,
        "now": now,
        "after_hours": settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS,
        "cap": settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN,
        "leaver_check": leavers.leaver_check(now),
        "ldap_sync_check": ldap_sync.ldap_sync_check(now),
        "reason": Certificate.RevocationReasonChoice.AFFILIATION_CHANGED.value,
        # No beat: the due dates are when a run would revoke, and none will.
        "no_scheduler": health.no_scheduler(),
        "cron_hint": leavers.CRON_HINT,
        "failed_id": failed,
        "revoke_form": revoke_form,
    }
    return render(request, "enrollment/ra/leavers.html", context, status=status)


@login_required
@require_POST
def leaver_revoke(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Revoke, now, every certificate a deactivated account still holds (affiliationChanged),
    as the hourly run would after the grace period: the officer has checked they left."""
    officer_required(request)
    user = get_object_or_404(get_user_model(), pk=pk)
    try:  # outside the officer's scope: 403 before the form, as on Find & revoke
        leavers.leaver_revoke_check(request.user, user, source_address=client_address(request))
    except NotPermitted as exc:
        raise PermissionDenied(exc.message) from exc
    form = LeaverRevokeForm(request.POST)
    if not form.is_valid():
        return _leavers_page(request, failed=user.pk, revoke_form=form, status=400)
    try:
        revoked = leavers.leaver_revoke(
            user=user, actor=request.user, source_address=client_address(request)
        )
    except NotPermitted as exc:  # the scope changed since the check above
        raise PermissionDenied(exc.message) from exc
    except EnrollmentError as exc:
        status = show_error(form, exc)
        return _leavers_page(request, failed=user.pk, revoke_form=form, status=status)
    who = f"{user.get_full_name() or user.get_username()} ({user.get_username()})"
    if revoked:
        messages.success(
            request,
            ngettext(
                "Revoked %(count)d certificate of %(who)s (affiliation changed). The holder "
                "was told by e-mail; the next CRL lists it.",
                "Revoked %(count)d certificates of %(who)s (affiliation changed). The holder "
                "was told by e-mail; the next CRL lists them.",
                revoked,
            )
            % {"count": revoked, "who": who},
        )
    else:
        messages.info(
            request,
            _("%(who)s holds no valid certificate any more: nothing to revoke.") % {"who": who},
        )
    return redirect("ra:leavers")


# --- key recovery ---------------------------------------------------------------------


@login_required
@require_safe
def recovery_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    _recovery_staff_required(request)
    reach = reach_of(request.user)
    recent = (
        KeyRecoveryRequest.objects.filter(reach.certificates("certificate__"))
        .exclude(state__in=recovery.OPEN_STATES)
        .select_related("certificate__owner", "requested_by", "asked_by", "performed_by")
        .defer("bundle")[:20]
    )
    context = {
        "open": ra_selectors.open_recoveries(reach),
        "recent": recent,
        "approvals_required": recovery.approvals_required(),
        "is_officer": is_ra_officer(request.user),
        "is_agent": is_key_recovery_agent(request.user),
    }
    return render(request, "enrollment/ra/recovery_list.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def recovery_new(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Pick a certificate whose key is archived, say why and for whom: open a recovery."""
    officer_required(request)
    reach = reach_of(request.user)
    search = CertificateSearchForm(request.GET if "q" in request.GET else None)
    results: list[Certificate] = []
    if search.is_bound and search.is_valid():
        # Only keys the officer may open a recovery of (their scope's people).
        found = ra_selectors.certificate_search(
            search.cleaned_data["q"], archived_only=True, reach=reach
        )
        results = list(found[:50])
    certificate = None
    status = 200
    if request.method == "POST":
        form = RecoveryOpenForm(request.POST)
        if form.is_valid():
            certificate = get_object_or_404(Certificate, pk=form.cleaned_data["certificate"])
            try:
                opened = recovery.recovery_open(
                    certificate=certificate,
                    officer=request.user,
                    reason=form.cleaned_data["reason"],
                    deliver_to=form.cleaned_data["deliver_to"],
                    pkcs12_format=form.cleaned_data["pkcs12_format"],
                    close_holder_ask=form.cleaned_data["close_holder_ask"],
                    source_address=client_address(request),
                )
            except recovery.OutOfReach as exc:  # refused and audited; the page names nobody
                raise PermissionDenied(exc.message) from None
            except EnrollmentError as exc:
                status = show_error(form, exc)
            else:
                needed = recovery.approvals_required()
                messages.success(
                    request,
                    ngettext(
                        "Recovery #%(recovery)s is open. It needs the approval of %(count)d "
                        "other officer, then a key recovery agent carries it out.",
                        "Recovery #%(recovery)s is open. It needs the approval of %(count)d "
                        "other officers, then a key recovery agent carries it out.",
                        needed,
                    )
                    % {"recovery": opened.pk, "count": needed},
                )
                return redirect("ra:recovery-detail", pk=opened.pk)
        else:
            status = 400
            pk = _row_id(str(form.data.get("certificate") or ""))
            if pk is not None:
                certificate = Certificate.objects.filter(reach.certificates(), pk=pk).first()
    else:
        pk = _row_id(request.GET.get("certificate", ""))
        if pk is not None:
            certificate = get_object_or_404(
                Certificate.objects.select_related("owner", "template"), pk=pk
            )
            if not reach.covers_certificate(certificate):
                raise PermissionDenied(
                    _(
                        "This certificate's holder is outside the people your officer scope "
                        "covers: an officer whose scope covers them opens a recovery of its key."
                    )
                )
        # A shared mailbox's key has no owner to deliver to: the officer is the one choice.
        form = RecoveryOpenForm(
            initial={
                "certificate": certificate.pk if certificate else None,
                "deliver_to": KeyRecoveryRequest.Recipient.REQUESTER
                if certificate is not None and certificate.mailbox_id is not None
                else KeyRecoveryRequest.Recipient.OWNER,
            }
        )
    holder_ask = (
        KeyRecoveryRequest.objects.filter(
            certificate=certificate, state=KeyRecoveryRequest.State.REQUESTED
        ).first()
        if certificate is not None
        else None
    )
    context = {
        "search": search,
        "results": results,
        "certificate": certificate,
        "archived": certificate is not None and hasattr(certificate, "archived_key"),
        # Its holder asks for it under My certificates; another officer opens it.
        "own_key": certificate is not None
        and recovery.holds_certificate_key(certificate, request.user.pk),
        "holder_ask": holder_ask,
        "form": form,
        "approvals_required": recovery.approvals_required(),
    }
    return render(request, "enrollment/ra/recovery_new.html", context, status=status)


def _recovery_page(
    request: AuthenticatedHttpRequest,
    found: KeyRecoveryRequest,
    *,
    reject_form: RecoveryRejectForm | None = None,
    accept_form: RecoveryAcceptForm | None = None,
    withdraw_form: RecoveryWithdrawForm | None = None,
    errors: list[str] | None = None,
    status: int = 200,
) -> HttpResponse:
    user = request.user
    officer = is_ra_officer(user)
    approvals = list(found.approvals.select_related("officer"))
    State = KeyRecoveryRequest.State
    # Which approvals count now, and why the others no longer do (the approver's role).
    quorum = recovery.quorum(found, approvals)
    lapses = {approval.pk: lapse.value for approval, lapse in quorum.lapsed}
    open_for_approval = found.state in (State.PENDING, State.APPROVED)
    archived = getattr(found.certificate, "archived_key", None)
    conflict = recovery.agent_conflict(found, user.pk, (a.officer_id for a in approvals))
    took_part = conflict.value if conflict is not None else None
    # The key's owner, or for a shared mailbox any of its delegates: never one who decides.
    holds_key = recovery.holds_key(found, user.pk)
    # Seen out of scope only by the person it is delivered to: no step is theirs to take.
    in_reach = recovery.in_reach(found, user)
    context = {
        "recovery": found,
        "approvals": [(approval, lapses.get(approval.pk)) for approval in approvals],
        "quorum": quorum,
        "approved_now": recovery.may_be_performed(found, quorum),
        "short_now": open_for_approval and not quorum.met,
        # Approvals that stopped counting hold it up (approval, perform or download).
        "lapse_blocks": bool(quorum.lapsed)
        and not quorum.met
        and found.state in (State.PENDING, State.APPROVED, State.READY),
        "approvals_required": quorum.required,
        "agents": list(archived.recipients.all()) if archived else [],
        "recipient": recovery.recipient_name(found),
        "is_recipient": recovery.may_download(found, user),
        "no_longer_recipient": found.recipient_id == user.pk
        and not recovery.may_download(found, user),
        "out_of_reach": not in_reach,
        "can_approve": officer
        and in_reach
        and open_for_approval
        and not quorum.met
        and user.pk not in (found.requested_by_id, found.certificate.owner_id)
        and not holds_key
        and all(a.officer_id != user.pk for a in approvals),
        "can_reject": officer
        and in_reach
        and found.state in (State.REQUESTED, State.PENDING, State.APPROVED)
        and recovery.may_reject(found, user.pk),
        # The holder's request: an officer other than the holder accepts, and so opens, it.
        "can_accept": officer
        and in_reach
        and found.state == State.REQUESTED
        and user.pk not in (found.asked_by_id, found.certificate.owner_id)
        and not holds_key,
        "accept_form": accept_form or RecoveryAcceptForm(),
        "asked_by_me": found.asked_by_id is not None and found.asked_by_id == user.pk,
        "can_withdraw": found.asked_by_id == user.pk and found.may_be_withdrawn,
        "withdraw_form": withdraw_form or RecoveryWithdrawForm(recovery_pk=found.pk),
        "can_perform": is_key_recovery_agent(user)
        and in_reach
        and recovery.may_be_performed(found, quorum)
        and took_part is None,
        "took_part": took_part,
        "download_open": found.state == KeyRecoveryRequest.State.READY
        and found.download_expires_at is not None
        and found.download_expires_at > timezone.now(),
        # What the one who downloads does next: shown once they have, and ready in the
        # page before (hidden) for its script to show when the download arrives.
        "revoke_url": _revoke_url(user, found.certificate)
        if found.recipient_id == user.pk
        else None,
        "reject_form": reject_form or RecoveryRejectForm(),
        # Scopes that leave nobody to take the next step: said plainly to the officer.
        "stranded": recovery.left_stranded(found, quorum) if officer and in_reach else None,
    }
    # A step refused because the recovery moved on hides its form: say why at the top.
    hidden = [
        form
        for form, shown in (
            (reject_form, context["can_reject"]),
            (accept_form, context["can_accept"]),
            (withdraw_form, context["can_withdraw"]),
        )
        if form is not None and not shown
    ]
    context["errors"] = [*(errors or []), *(e for f in hidden for e in f.non_field_errors())]
    return render(request, "enrollment/ra/recovery_detail.html", context, status=status)


def _revoke_url(user: Any, certificate: Certificate) -> str | None:
    """Where the person a key was recovered for revokes its certificate while it is valid
    (a key is often recovered because the device holding it was lost or stolen): its
    page's form for a holder, Find & revoke for the officer it was delivered to."""
    if certificate.state != "valid":
        return None
    if services.may_hold(user, certificate):
        return reverse("enrollment:certificate-detail", args=[certificate.pk]) + "#revoke"
    if is_ra_officer(user):
        return f"{reverse('ra:certificates')}?{urlencode({'q': certificate.serial})}"
    return None


@login_required
@require_safe
def recovery_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _recovery_page(request, _visible_recovery(request, pk))


@login_required
@require_POST
def recovery_approve(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    found = _visible_recovery(request, pk, step="recovery.approve")
    officer_required_for(request, "recovery.approve", found)
    try:
        approved = recovery.recovery_approve(
            recovery=found, officer=request.user, source_address=client_address(request)
        )
    except EnrollmentError as exc:
        return _recovery_page(request, found, errors=[exc.message], status=status_for(exc))
    if approved.state == KeyRecoveryRequest.State.APPROVED:
        messages.success(request, _("Approved. The recovery now waits for a key recovery agent."))
    else:
        messages.success(request, _("Approved. It still needs another officer's approval."))
    return redirect("ra:recovery-detail", pk=found.pk)


def _recovery_step(
    request: AuthenticatedHttpRequest,
    found: KeyRecoveryRequest,
    form: Any,
    slot: str,
    step: Callable[[dict[str, Any]], object],
    done: str,
) -> HttpResponse:
    """One step of a recovery from a form on its page: the page again with the form's
    errors (400, or the refusal's status, the recovery re-read as it now stands), or back
    to the page with ``done`` said. ``slot`` names the form in _recovery_page."""
    if not form.is_valid():
        return _recovery_page(request, found, status=400, **{slot: form})
    try:
        step(form.cleaned_data)
    except EnrollmentError as exc:
        status = show_error(form, exc)
        found.refresh_from_db()
        return _recovery_page(request, found, status=status, **{slot: form})
    messages.success(request, done)
    return redirect("ra:recovery-detail", pk=found.pk)


@login_required
@require_POST
def recovery_accept(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """An officer takes on a key holder's request: it is then open like one they opened."""
    found = _visible_recovery(request, pk, step="recovery.accept")
    officer_required_for(request, "recovery.accept", found)
    needed = recovery.approvals_required()
    return _recovery_step(
        request,
        found,
        RecoveryAcceptForm(request.POST),
        "accept_form",
        lambda data: recovery.recovery_accept(
            recovery=found,
            officer=request.user,
            note=data["note"],
            source_address=client_address(request),
        ),
        ngettext(
            "You accepted recovery #%(recovery)s: it is open. It needs the approval of "
            "%(count)d other officer, then a key recovery agent carries it out.",
            "You accepted recovery #%(recovery)s: it is open. It needs the approval of "
            "%(count)d other officers, then a key recovery agent carries it out.",
            needed,
        )
        % {"recovery": found.pk, "count": needed},
    )


@login_required
@require_POST
def recovery_withdraw(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The holder who asked takes their request back while nothing is recovered yet."""
    found = _visible_recovery(request, pk)
    if found.asked_by_id != request.user.pk:
        raise PermissionDenied(
            _("Only the holder who asked for a recovery withdraws it; an RA officer rejects it.")
        )
    return _recovery_step(
        request,
        found,
        RecoveryWithdrawForm(request.POST, recovery_pk=found.pk),
        "withdraw_form",
        lambda data: recovery.recovery_withdraw(
            recovery=found, holder=request.user, source_address=client_address(request)
        ),
        _("You withdrew recovery #%(recovery)s. Nothing will be recovered for it.")
        % {"recovery": found.pk},
    )


@login_required
@require_POST
def recovery_reject(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    found = _visible_recovery(request, pk, step="recovery.reject")
    officer_required_for(request, "recovery.reject", found)
    return _recovery_step(
        request,
        found,
        RecoveryRejectForm(request.POST),
        "reject_form",
        lambda data: recovery.recovery_reject(
            recovery=found,
            officer=request.user,
            reason=data["reason"],
            source_address=client_address(request),
        ),
        _("Recovery #%(recovery)s is rejected; nothing was recovered.") % {"recovery": found.pk},
    )


class AgentFileInMemory(MemoryFileUploadHandler):
    """The agent's PKCS#12 stays in memory whatever its size: never a temporary file.

    Past the size limit the bytes are counted but dropped, so the form can refuse it.
    """

    def handle_raw_input(self, *args: Any, **kwargs: Any) -> None:
        self.activated = True

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        self.received = 0
        super().new_file(*args, **kwargs)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.received += len(raw_data)
        if self.received <= recovery.MAX_AGENT_PKCS12_BYTES + 1:
            self.file.write(raw_data)


@csrf_exempt  # only to install the upload handler first: the view below checks the token
def recovery_perform(request: HttpRequest, pk: int) -> HttpResponse:
    """A key recovery agent decrypts the archive with their own PKCS#12."""
    request.upload_handlers = [AgentFileInMemory(request)]
    # login_required on _recovery_perform turns anonymous callers away before its body runs.
    return _recovery_perform(cast(AuthenticatedHttpRequest, request), pk)


# Out of error reports: the POST data, and every local here and below (form cleaning
# holds the password, the rendered context the one-time password, under names not ours).
@sensitive_variables()
@sensitive_post_parameters("agent_password")
@csrf_protect
@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def _recovery_perform(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    found = _agents_recovery(
        request, pk, step="recovery.perform" if request.method == "POST" else None
    )
    status = 200
    if request.method == "POST":
        form = RecoveryPerformForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                performed, password = recovery.recovery_perform(
                    recovery=found,
                    agent_user=request.user,
                    agent_pkcs12=form.cleaned_data["agent_pkcs12"],
                    agent_password=form.cleaned_data["agent_password"],
                    source_address=client_address(request),
                )
            except EnrollmentError as exc:
                status = show_error(form, exc)
            else:
                return _performed_page(request, found, performed, password)
        else:
            status = 400
    else:
        form = RecoveryPerformForm()
    return _perform_page(request, found, RecoveredKeyForm(), online_form=form, status=status)


@sensitive_variables()  # the one-time password
def _performed_page(
    request: HttpRequest, found: KeyRecoveryRequest, performed: KeyRecoveryRequest, password: str
) -> HttpResponse:
    # Shown in this response only: never in a message, the session or a log.
    return render(
        request,
        "enrollment/ra/recovery_performed.html",
        {**_perform_context(found), "recovery": performed, "one_time_password": password},
    )


def _agents_recovery(
    request: AuthenticatedHttpRequest, pk: int, *, step: str | None = None
) -> KeyRecoveryRequest:
    """A recovery the agent may see, for the pages that carry one out; 403 for others
    (``step``: as _visible_recovery)."""
    if not is_key_recovery_agent(request.user):
        # Who may see it learns no more here than elsewhere; others still get a 404.
        found = _visible_recovery(request, pk)
        if step is not None:  # an RA officer's attempt, refused as the service would
            services.access_refusal_record(
                actor=request.user,
                attempted=step,
                target=found,
                refusal=NOT_AN_AGENT,
                source_address=client_address(request),
            )
        raise PermissionDenied(_("Only key recovery agents carry out recoveries."))
    return _visible_recovery(request, pk, step=step)


def _perform_context(found: KeyRecoveryRequest) -> dict[str, Any]:
    archived = getattr(found.certificate, "archived_key", None)
    return {
        "recovery": found,
        "recipient": recovery.recipient_name(found),
        "agents": list(archived.recipients.all()) if archived else [],
    }


def _perform_page(
    request: AuthenticatedHttpRequest,
    found: KeyRecoveryRequest,
    offline_form: forms.Form,
    *,
    online_form: forms.Form | None = None,
    errors: list[str] | None = None,
    status: int = 200,
) -> HttpResponse:
    """The agent's page: online with their PKCS#12, or offline with the archive."""
    archived = getattr(found.certificate, "archived_key", None)
    context = {
        **_perform_context(found),
        "form": online_form or RecoveryPerformForm(),
        "offline_form": offline_form,
        "errors": errors or [],
        "usable_offline": archived is not None
        and bool(recovery.usable_agents(archived, request.user)),
        "archive_name": f"recovery-{found.pk}-{found.certificate.serial[:12]}.p7m",
    }
    return render(request, "enrollment/ra/recovery_perform.html", context, status=status)


@never_cache
@login_required
@require_POST
def recovery_archive(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The archive (CMS EnvelopedData) for an agent who decrypts it on their own machine."""
    found = _agents_recovery(request, pk, step="recovery.export")
    try:
        current, envelope = recovery.recovery_archive_export(
            recovery=found, agent_user=request.user, source_address=client_address(request)
        )
    except EnrollmentError as exc:
        return _perform_page(
            request, found, RecoveredKeyForm(), errors=[exc.message], status=status_for(exc)
        )
    response = HttpResponse(envelope, content_type="application/pkcs7-mime")
    response["Content-Disposition"] = (
        f'attachment; filename="recovery-{current.pk}-{current.certificate.serial[:12]}.p7m"'
    )
    return response


@csrf_exempt  # only to install the upload handler first: the view below checks the token
def recovery_perform_offline(request: HttpRequest, pk: int) -> HttpResponse:
    """A key recovery agent hands in the key they decrypted offline from the archive."""
    request.upload_handlers = [AgentFileInMemory(request)]  # the holder's key: never on disk
    return _recovery_perform_offline(cast(AuthenticatedHttpRequest, request), pk)


# As _recovery_perform: the key and its passphrase stay out of error reports.
@sensitive_variables()
@sensitive_post_parameters("key_passphrase")
@csrf_protect
@never_cache
@login_required
@require_POST
def _recovery_perform_offline(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    found = _agents_recovery(request, pk, step="recovery.perform")
    form = RecoveredKeyForm(request.POST, request.FILES)
    if not form.is_valid():
        return _perform_page(request, found, form, status=400)
    try:
        performed, password = recovery.recovery_perform_offline(
            recovery=found,
            agent_user=request.user,
            key_file=form.cleaned_data["recovered_key"],
            key_passphrase=form.cleaned_data["key_passphrase"],
            source_address=client_address(request),
        )
    except EnrollmentError as exc:
        status = show_error(form, exc)
        return _perform_page(request, found, form, status=status)
    return _performed_page(request, found, performed, password)


@never_cache
@login_required
@require_POST
def recovery_download(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The named person's one download of the recovered PKCS#12."""
    found = _visible_recovery(request, pk)
    try:
        performed, bundle = recovery.recovery_download(
            recovery=found, user=request.user, source_address=client_address(request)
        )
    except EnrollmentError as exc:
        found.refresh_from_db()
        return _recovery_page(request, found, errors=[exc.message], status=status_for(exc))
    certificate = performed.certificate
    name = slugify(certificate.common_name) or "certificate"
    response = HttpResponse(bundle, content_type="application/x-pkcs12")
    response["Content-Disposition"] = (
        f'attachment; filename="{name}-{certificate.serial[:12]}-recovered.p12"'
    )
    # The page stays put while the file arrives: its script learns it did from the cookie.
    return report_download(request, response)


# --- audit trail ----------------------------------------------------------------------


def _filtered_events(request: HttpRequest) -> tuple[AuditFilterForm, Any]:
    form = AuditFilterForm(request.GET)
    events = AuditEvent.objects.all()
    return form, (form.filter(events) if form.is_valid() else events.none())


@login_required
@require_safe
def audit_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Newest first, fifty at a time, continued by id (no count over the whole trail)."""
    officer_required(request)
    _trail_for_everyone(request)
    return _audit_page(request)


AUDIT_OUT_OF_SCOPE = _lazy(
    "The audit trail names people of every unit, so it is for officers who act for "
    "everyone: your officer scope limits you to some of them. Their requests, "
    "certificates and recoveries have their own pages here."
)


def _trail_for_everyone(request: HttpRequest) -> None:
    """The trail's events name people, certificates and recoveries of every unit, and
    sorting them by whom they concern would be guesswork: an officer a scope limits does
    not browse or export it (enrollment.scopes)."""
    if not reach_of(request.user).everyone:
        raise PermissionDenied(AUDIT_OUT_OF_SCOPE)


def _audit_page(request: HttpRequest, status: int = 200) -> HttpResponse:
    form, events = _filtered_events(request)
    page, context = _newest_first(request, events, AUDIT_PAGE_SIZE)
    context |= {"form": form, "events": page, "actions": ra_selectors.audit_actions()}
    return render(request, "enrollment/ra/audit.html", context, status=status)


class _Echo:
    """csv.writer writes to this and gets each line back, to stream it."""

    def write(self, value: str) -> str:
        return value


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def _csv_lines(events: Any) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(AUDIT_COLUMNS)
    for event in events.iterator(chunk_size=2000):
        yield writer.writerow([_csv_cell(v) for v in audit.export_values(event)])


def _json_lines(events: Any) -> Iterator[str]:
    for event in events.iterator(chunk_size=2000):
        yield audit.export_json(event) + "\n"


EXPORTS: dict[str, tuple[Callable[[Any], Iterator[str]], str, str]] = {
    "csv": (_csv_lines, "text/csv; charset=utf-8", "csv"),
    "jsonl": (_json_lines, "application/jsonl; charset=utf-8", "jsonl"),
}


@login_required
@require_safe
def audit_export(request: AuthenticatedHttpRequest, fmt: str) -> HttpResponseBase:
    """The filtered trail, oldest first, streamed with its hash columns."""
    officer_required(request)
    _trail_for_everyone(request)
    if fmt not in EXPORTS:
        raise Http404("No such export format.")
    form, events = _filtered_events(request)
    if not form.is_valid():
        # The trail page, with each bad filter's error beside it: nothing is exported.
        return _audit_page(request, status=400)
    lines, content_type, suffix = EXPORTS[fmt]
    ra_services.audit_export_record(
        actor=request.user,
        fmt=fmt,
        filters={name: value for name, value in form.cleaned_data.items() if value},
        source_address=client_address(request),
    )
    response = StreamingHttpResponse(lines(events.order_by("id")), content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{suffix}"'
    response["Cache-Control"] = "no-store"
    return response


# --- recovery agents ------------------------------------------------------------------


@login_required
@require_safe
def agents(request: AuthenticatedHttpRequest) -> HttpResponse:
    officer_required(request)
    return render(request, "enrollment/ra/agents.html", {"agents": ra_selectors.agent_overview()})
