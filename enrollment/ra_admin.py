"""The admin's pages that change things: register (a certificate upload) and deactivate
key recovery agents, revoke selected certificates, deactivate shared mailboxes, switch
the issuing CA.

Kept out of admin.py so the admin stays read-mostly in one obvious place; these are its
forms, and they go through the services like the commands and the RA pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from celery.result import EagerResult

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from enrollment import bulk_revoke, health, leavers, mailboxes, services
from enrollment.edge import client_address, show_error
from enrollment.exceptions import EnrollmentError, public_message
from enrollment.models import (
    BulkRevocationRun,
    Certificate,
    CertificateAuthority,
    KeyRecoveryAgent,
    SharedMailbox,
)
from enrollment.ra_forms import (
    BulkRevokeForm,
    CaSwitchForm,
    KeyRecoveryAgentDeactivateForm,
    KeyRecoveryAgentRegisterForm,
    MailboxDeactivateForm,
)
from enrollment.ra_selectors import archives_only_agent_opens, usable_agents
from pkiportal import plurals
from pkiportal.i18n import noun_mid_sentence

# The confirmation page lists this many of the certificates it would revoke, and counts
# the rest; a message is shown for this many failures, and the rest are counted.
REVOKE_SHOWN = 50
REVOKE_ERRORS_SHOWN = 10


def kra_register_view(
    model_admin: admin.ModelAdmin[KeyRecoveryAgent],
    request: HttpRequest,
    extra_context: dict[str, Any] | None,
) -> HttpResponse:
    """GET the upload form; POST registers the certificate or shows why it cannot be."""
    # Overriding add_view bypasses the admin's own check: repeat it.
    if not model_admin.has_add_permission(request):
        raise PermissionDenied(_("You may not register key recovery agents."))
    form = KeyRecoveryAgentRegisterForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                agent = services.kra_register(
                    certificate=form.cleaned_data["certificate"],
                    name=form.cleaned_data["name"],
                    user=form.cleaned_data["user"],
                    actor=request.user,
                    source_address=client_address(request),
                )
            except EnrollmentError as exc:
                form.add_error("certificate", exc.message)
            else:
                model_admin.message_user(
                    request,
                    _(
                        "Registered key recovery agent %(name)s: keys archived from now on are "
                        "encrypted to it too."
                    )
                    % {"name": agent.name},
                    messages.SUCCESS,
                )
                return redirect("admin:enrollment_keyrecoveryagent_changelist")
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Register a key recovery agent certificate"),
        "opts": opts,
        "form": form,
        **(extra_context or {}),
    }
    return TemplateResponse(
        request, "admin/enrollment/keyrecoveryagent/register.html", context, status=status
    )


def kra_deactivate_action(
    model_admin: admin.ModelAdmin[KeyRecoveryAgent],
    request: HttpRequest,
    queryset: QuerySet[KeyRecoveryAgent],
) -> HttpResponse | None:
    """The "deactivate" action: a confirmation page that asks why, then kra_deactivate.

    The page says, before anything changes, how many archived keys only each agent can
    open (its private key must be kept for them) and whether any agent is left to archive
    to: without one, templates that archive keys stop issuing.
    """
    agents = list(queryset.filter(is_active=True).order_by("name"))
    if not agents:
        model_admin.message_user(
            request, _("None of the selected agents is active."), messages.INFO
        )
        return None
    form = KeyRecoveryAgentDeactivateForm(request.POST if "confirm" in request.POST else None)
    if form.is_bound and form.is_valid():
        outcome = None
        for agent in agents:
            try:
                outcome = services.kra_deactivate(
                    agent=agent,
                    reason=form.cleaned_data["reason"],
                    actor=request.user,
                    source_address=client_address(request),
                )
            except EnrollmentError as exc:
                model_admin.message_user(request, f"{agent.name}: {exc.message}", messages.ERROR)
            else:
                model_admin.message_user(
                    request,
                    _("Deactivated %(name)s: keys archived from now on are not encrypted to it.")
                    % {"name": agent.name},
                    messages.SUCCESS,
                )
        if outcome is not None and not outcome.usable_agents_left:
            model_admin.message_user(request, services.NO_USABLE_AGENT_LEFT, messages.WARNING)
        return None
    remaining = usable_agents().exclude(pk__in=[agent.pk for agent in agents]).count()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Deactivate key recovery agents"),
        "opts": model_admin.model._meta,
        "form": form,
        "rows": [(agent, archives_only_agent_opens(agent)) for agent in agents],
        "remaining": remaining,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(
        request,
        "admin/enrollment/keyrecoveryagent/deactivate.html",
        context,
        status=400 if form.is_bound else 200,
    )


def certificate_revoke_action(
    model_admin: admin.ModelAdmin[Certificate],
    request: HttpRequest,
    queryset: QuerySet[Certificate],
) -> HttpResponse | None:
    """The "revoke selected certificates" action: a confirmation page that lists them and
    asks, as the RA page does, for a reason and "I am sure" (and the number, for more than
    one); then each is revoked through services.certificate_revoke, as on the RA page: in
    this request up to PKIPORTAL_ADMIN_REVOKE_INLINE_MAX, by a background task above it.

    Only certificates still held (neither revoked nor expired) are revoked; the others are
    skipped and counted. The number typed is checked against the selection as it is when
    the form comes back, so a "select all" that grew meanwhile is shown again.
    """
    now = timezone.now()
    selected = queryset.count()
    revocable = Certificate.objects.held(now).filter(pk__in=queryset.values("pk"))
    ids = list(revocable.order_by("pk").values_list("pk", flat=True))
    skipped = selected - len(ids)
    if not ids:
        model_admin.message_user(
            request,
            ngettext(
                "No certificate revoked: the %(count)d selected certificate is already revoked "
                "or expired.",
                "No certificate revoked: the %(count)d selected certificates are already "
                "revoked or expired.",
                selected,
            )
            % {"count": selected},
            messages.WARNING,
        )
        return None
    form = BulkRevokeForm(request.POST if "post" in request.POST else None, expected=len(ids))
    status = 400 if form.is_bound else 200
    if form.is_bound and form.is_valid():
        refused = _revoke(model_admin, request, form, ids, skipped)
        if refused is None:
            return None
        status = refused
    rows = list(
        Certificate.objects.filter(pk__in=ids[:REVOKE_SHOWN])
        .select_related("owner", "template", "ca", "mailbox")
        .defer("der", "ca__der")
        .order_by("pk")
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Revoke certificates"),
        "opts": model_admin.model._meta,
        "form": form,
        "rows": rows,
        "count": len(ids),
        "more": len(ids) - len(rows),
        "skipped": skipped,
        "imported": revocable.filter(ca__is_imported=True).count(),
        "background": len(ids) > settings.PKIPORTAL_ADMIN_REVOKE_INLINE_MAX,
        "inline_max": settings.PKIPORTAL_ADMIN_REVOKE_INLINE_MAX,
        # Without a broker the "background" task runs in this request (tasks run inline).
        "no_worker": health.no_scheduler(),
        "batch": bulk_revoke.BATCH,
        # What the changelist posted, posted again: the admin runs the action on the same
        # selection (select_across: every certificate its filters match).
        "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across") == "1",
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(
        request,
        "admin/enrollment/certificate/revoke.html",
        context,
        status=status,
    )


def _revoke(
    model_admin: admin.ModelAdmin[Certificate],
    request: HttpRequest,
    form: BulkRevokeForm,
    ids: list[int],
    skipped: int,
) -> int | None:
    """Record the run (enrollment.bulk_revoke: its row and .queued event), then revoke in
    batches: here, up to PKIPORTAL_ADMIN_REVOKE_INLINE_MAX, as the RA page does; above it,
    in a background task, so the web server's timeout cannot cut a large selection off
    half-way. An invalidity date the service would refuse is put on the form first: its
    status is returned and nothing is recorded."""
    try:
        with transaction.atomic():
            run = bulk_revoke.bulk_revoke_start(
                ids=ids,
                reason=form.cleaned_data["reason"],
                invalidity_date=form.cleaned_data["invalidity_date"],
                source_address=client_address(request),
                actor=request.user,
                skipped=skipped,
            )
    except EnrollmentError as exc:
        return show_error(form, exc)
    if len(ids) > settings.PKIPORTAL_ADMIN_REVOKE_INLINE_MAX:
        _revoke_in_background(model_admin, request, run)
        return None
    worked = bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim)
    _tell(model_admin, request, worked or run)
    return None


def _revoke_in_background(
    model_admin: admin.ModelAdmin[Certificate],
    request: HttpRequest,
    run: BulkRevocationRun,
) -> None:
    """Hand the recorded run to the task (a message naming it alone). Without a broker
    the task runs here, to the end, and the officer is told its outcome as for a small
    selection."""
    result = bulk_revoke.bulk_revoke_queue(run)
    if result is None:
        model_admin.message_user(
            request,
            ngettext(
                "Nothing revoked: the revocation of %(count)d certificate could not be handed "
                "to the background worker. Try again in a moment.",
                "Nothing revoked: the revocation of %(count)d certificates could not be handed "
                "to the background worker. Try again in a moment.",
                run.total,
            )
            % {"count": run.total},
            messages.ERROR,
        )
        return
    if isinstance(result, EagerResult):
        _tell(
            model_admin, request, BulkRevocationRun.objects.defer("certificate_ids").get(pk=run.pk)
        )
        return
    label = noun_mid_sentence(Certificate.RevocationReasonChoice(run.reason).label)
    model_admin.message_user(
        request,
        format_html(
            ngettext(
                "Revoking {count} certificate ({reason}) in the background, {batch} at a time; "
                'skipped {skipped} (already revoked or expired). The <a href="{console}">RA '
                'console</a> shows how far it has got, and the <a href="{trail}">audit '
                "trail</a> has each batch. Should it stall or stop early, resume it there: it "
                "revokes what is left.",
                "Revoking {count} certificates ({reason}) in the background, {batch} at a "
                'time; skipped {skipped} (already revoked or expired). The <a href="{console}">'
                'RA console</a> shows how far it has got, and the <a href="{trail}">audit '
                "trail</a> has each batch. Should it stall or stop early, resume it there: it "
                "revokes what is left.",
                run.total,
            ),
            count=run.total,
            reason=label,
            batch=bulk_revoke.BATCH,
            skipped=run.skipped,
            console=reverse("ra:console") + "#bulk-revocations",
            trail=f"{reverse('ra:audit')}?{urlencode({'run': run.pk})}",
        ),
        messages.SUCCESS,
    )


def _tell(
    model_admin: admin.ModelAdmin[Certificate], request: HttpRequest, run: BulkRevocationRun
) -> None:
    """How many were revoked and skipped, which failed, and why it stopped if it did."""
    label = noun_mid_sentence(Certificate.RevocationReasonChoice(run.reason).label)
    # Each its own sentence, joined: what was revoked, who was told, what came from afar.
    summary = [
        ngettext(
            "Revoked %(count)d certificate (%(reason)s); skipped %(skipped)d (already revoked "
            "or expired).",
            "Revoked %(count)d certificates (%(reason)s); skipped %(skipped)d (already revoked "
            "or expired).",
            run.revoked,
        )
        % {"count": run.revoked, "reason": label, "skipped": run.skipped}
    ]
    if run.revoked:
        summary.append(
            _(
                "Their holders (a shared mailbox's delegates) were told by e-mail; the next "
                "CRL lists them."
            )
        )
    if run.imported:
        summary.append(
            ngettext(
                "%(count)d of them came from another CA: recorded here only, revoke it there too.",
                "%(count)d of them came from another CA: recorded here only, revoke them "
                "there too.",
                run.imported,
            )
            % {"count": run.imported}
        )
    model_admin.message_user(
        request, " ".join(summary), messages.SUCCESS if run.revoked else messages.WARNING
    )
    for failure in run.failures[:REVOKE_ERRORS_SHOWN]:
        model_admin.message_user(
            request, _("Not revoked: %(failure)s") % {"failure": failure}, messages.ERROR
        )
    if run.failed > REVOKE_ERRORS_SHOWN:
        more = run.failed - REVOKE_ERRORS_SHOWN
        model_admin.message_user(
            request,
            ngettext(
                "%(count)d more could not be revoked; the log names it.",
                "%(count)d more could not be revoked; the log names them.",
                more,
            )
            % {"count": more},
            messages.ERROR,
        )
    if run.error:
        model_admin.message_user(
            request,
            format_html(
                "{} {}",
                run.error,
                format_html(
                    ngettext(
                        '{count} certificate not reached: resume run #{run} on the <a href="'
                        '{console}">RA console</a> to revoke it.',
                        '{count} certificates not reached: resume run #{run} on the <a href="'
                        '{console}">RA console</a> to revoke them.',
                        run.not_reached,
                    ),
                    count=run.not_reached,
                    run=run.pk,
                    console=reverse("ra:console") + "#bulk-revocations",
                ),
            ),
            messages.ERROR,
        )


def mailbox_deactivate_action(
    model_admin: admin.ModelAdmin[SharedMailbox],
    request: HttpRequest,
    queryset: QuerySet[SharedMailbox],
) -> HttpResponse | None:
    """The shared mailboxes' "deactivate" action: a page that lists the active ones chosen
    with the certificates each holds and says when those are revoked, then, confirmed,
    mailbox_set_active for each, as /ra/mailboxes/ does."""
    now = timezone.now()
    held = Q(certificates__status=Certificate.Status.VALID, certificates__not_after__gt=now)
    chosen = list(
        queryset.filter(is_active=True)
        .annotate(held=Count("certificates", filter=held))
        .order_by("email")
    )
    if not chosen:
        model_admin.message_user(
            request, _("None of the selected mailboxes is active."), messages.INFO
        )
        return None
    form = MailboxDeactivateForm(request.POST if "post" in request.POST else None)
    if form.is_bound and form.is_valid():
        done = mailboxes_set_active(model_admin, request, chosen, active=False)
        if done:
            model_admin.message_user(
                request,
                " ".join(
                    (
                        ngettext(
                            "Deactivated %(count)d shared mailbox: %(mailboxes)s.",
                            "Deactivated %(count)d shared mailboxes: %(mailboxes)s.",
                            len(done),
                        )
                        % {"count": len(done), "mailboxes": ", ".join(done)},
                        _when_revoked(),
                    )
                ),
                messages.SUCCESS,
            )
        return None
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Deactivate shared mailboxes"),
        "opts": model_admin.model._meta,
        "form": form,
        "rows": chosen,
        "when_revoked": _when_revoked(),
        "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across") == "1",
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(
        request,
        "admin/enrollment/sharedmailbox/deactivate.html",
        context,
        status=400 if form.is_bound else 200,
    )


def mailboxes_set_active(
    model_admin: admin.ModelAdmin[SharedMailbox],
    request: HttpRequest,
    chosen: Iterable[SharedMailbox],
    *,
    active: bool,
) -> list[str]:
    """Each through the service, as /ra/mailboxes/ does; a refusal is told, the rest go
    on. The addresses it switched (the admin's deactivate and reactivate actions)."""
    done = []
    for mailbox in chosen:
        try:
            mailboxes.mailbox_set_active(
                mailbox=mailbox,
                active=active,
                actor=request.user,
                source_address=client_address(request),
            )
        except EnrollmentError as exc:
            model_admin.message_user(
                request, f"{mailbox.email}: {public_message(exc)}", messages.ERROR
            )
        else:
            done.append(mailbox.email)
    return done


def _when_revoked() -> str:
    delay = leavers.revocation_delay()
    if delay is None:
        return _(
            "Automatic revocation is off: revoke their certificates on /ra/certificates/ "
            "(cessation of operation)."
        )
    hours = int(delay.total_seconds() // 3600)
    when = _(
        "Their certificates are due for revocation (cessation of operation) %(hours)s from "
        "now; reactivate a mailbox before then and it keeps them."
    ) % {"hours": plurals.hours(hours)}
    if health.no_scheduler():
        scheduler = _("Nothing runs on a schedule here: %(hint)s") % {"hint": leavers.CRON_HINT}
        when = f"{when} {scheduler}"
    return when


def ca_switch_action(
    model_admin: admin.ModelAdmin[CertificateAuthority],
    request: HttpRequest,
    queryset: QuerySet[CertificateAuthority],
) -> HttpResponse | None:
    """The CAs' "issue from this CA" action: a page that lists which templates move from
    which CA to the chosen one (and that it becomes the default), then, confirmed,
    services.issuing_ca_switch, as `manage.py switch_issuing_ca` does.

    A switch the service would refuse is refused before the page; one whose templates
    changed between the page and the confirmation is shown again, not carried out."""
    chosen = list(queryset[:2])
    if len(chosen) != 1:
        model_admin.message_user(request, _("Choose exactly one issuing CA."), messages.ERROR)
        return None
    (to,) = chosen
    try:
        plan = services.issuing_ca_switch_preview(to=to)
    except EnrollmentError as exc:
        model_admin.message_user(request, f"{to}: {public_message(exc)}", messages.ERROR)
        return None
    token = plan_token(plan)
    confirming = "post" in request.POST
    # Confirmed for other templates than these: the page again, its box unticked.
    stale = confirming and request.POST.get("plan") != token
    form = CaSwitchForm(request.POST if confirming and not stale else None)
    if form.is_bound and form.is_valid():
        try:
            switch = services.issuing_ca_switch(
                to=to, actor=request.user, source_address=client_address(request)
            )
        except EnrollmentError as exc:
            model_admin.message_user(request, f"{to}: {public_message(exc)}", messages.ERROR)
            return None
        # Names, as the confirmation page shows them: slugs are for the CLI and the audit.
        moved = ", ".join(switch.template_names) or _("no template yet")
        model_admin.message_user(
            request,
            _(
                "%(ca)s issues from now on for: %(templates)s. Certificates already issued "
                "keep their CA, which goes on publishing its CRL."
            )
            % {"ca": switch.current, "templates": moved},
            messages.SUCCESS,
        )
        return None
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Issue from %(ca)s") % {"ca": plan.current.name},
        "opts": model_admin.model._meta,
        "form": form,
        "plan": plan,
        "plan_token": token,
        "stale": stale,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(
        request,
        "admin/enrollment/certificateauthority/switch.html",
        context,
        status=400 if confirming else 200,
    )


def plan_token(plan: services.IssuingCaSwitchPlan) -> str:
    """What the confirmation page shows, as a string the form posts back: the CAs, the
    default flag and the templates' ids, each with the CA it names."""
    previous = plan.previous.pk if plan.previous is not None else "-"
    templates = ",".join(
        f"{template.pk}:{template.issuing_ca_id or '-'}"
        for template in (*plan.moved, *plan.following)
    )
    return f"{previous}>{plan.current.pk}:{int(plan.made_default)}:{templates}"
