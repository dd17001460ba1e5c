"""RA pages of roll-outs (/ra/rollouts/): create one (preview, then confirm), follow it,
remind the people who have not collected, cancel it.

Officers only: anyone else gets a 403, as on the other RA lists. Creating, reminding and
cancelling are the template's approvers' (rollouts._approves), a 403 for other officers.
An officer in an officer scope invites, sees and counts only the people it covers, and
reminds or cancels only a roll-out whose waiting people it covers (rollouts.waiting_outside).
The invited person's side is their request's page (enrollment.views.request_detail).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.requests import AuthenticatedHttpRequest
from enrollment import rollouts
from enrollment.edge import client_address, officer_required, show_error
from enrollment.exceptions import EnrollmentError, public_message
from enrollment.models import Rollout, RolloutInvitation
from enrollment.permissions import decider
from enrollment.ra_forms import RolloutForm
from enrollment.rollouts import Reason
from enrollment.x509.keys import KeyAlgorithm

PEOPLE_PAGE_SIZE = 200


@login_required
@require_safe
def rollout_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Every roll-out, newest first, with how many were invited."""
    officer_required(request)
    page = Paginator(Rollout.objects.select_related("template", "created_by"), 50).get_page(
        request.GET.get("page")
    )
    return render(request, "enrollment/ra/rollout_list.html", {"page": page})


@login_required
@require_http_methods(["GET", "POST"])
def rollout_new(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The form; "Preview" shows who would be invited and who not, "Invite" creates it.

    The preview is advice: confirming resolves the people again, in the transaction that
    invites them, so what changed in between (a certificate collected meanwhile) counts.
    """
    officer_required(request)
    form = RolloutForm(request.POST if request.method == "POST" else None, officer=request.user)
    preview = None
    status = 200
    if request.method == "POST":
        if not form.is_valid():
            status = 400
        else:
            data = form.cleaned_data
            algorithm = (
                KeyAlgorithm(data["key_algorithm"])
                if data["key_algorithm"]
                else rollouts.default_key_algorithm(data["template"])
            )
            try:
                if "confirm" in request.POST:
                    created = rollouts.rollout_create(
                        officer=request.user,
                        template=data["template"],
                        group=data["group"],
                        people=data["people"],
                        name=data["name"],
                        key_algorithm=algorithm,
                        source_address=client_address(request),
                    )
                    messages.success(
                        request,
                        ngettext(
                            "%(count)d person was invited; their mail is on its way.",
                            "%(count)d people were invited; their mail is on its way.",
                            created.invited,
                        )
                        % {"count": created.invited},
                    )
                    return redirect("ra:rollout-detail", pk=created.pk)
                rollouts.check_template(data["template"], algorithm)
                preview = rollouts.rollout_resolve(
                    officer=request.user,
                    template=data["template"],
                    group=data["group"],
                    people=data["people"],
                )
            except EnrollmentError as exc:
                status = show_error(form, exc)
    return render(
        request,
        "enrollment/ra/rollout_new.html",
        {
            "form": form,
            "preview": preview,
            "labels": Reason.LABELS,
            "outside_scope": _left_out(preview) if preview is not None else "",
        },
        status=status,
    )


def _left_out(preview: rollouts.Resolution) -> str:
    """What the preview says of the people outside the officer's scope: how many, never
    whom."""
    count = preview.outside_scope
    if not count:
        return ""
    return ngettext(
        "%(count)d person named is outside your officer scope (%(scope)s) and would not be "
        "invited; they are not listed. An officer whose scope covers them can invite them.",
        "%(count)d people named are outside your officer scope (%(scope)s) and would not be "
        "invited; they are not listed. An officer whose scope covers them can invite them.",
        count,
    ) % {"count": count, "scope": preview.scope}


@dataclass(frozen=True)
class SkippedRow:
    """A row of the page's "Not invited": one person as named, or (``count``) those
    outside the inviting officer's scope, unnamed."""

    entry: str
    label: str
    count: int = 1
    named: bool = True


def _skipped_rows(rollout: Rollout) -> list[SkippedRow]:
    rows = []
    for item in rollout.skipped:
        reason = item.get("reason", "")
        if reason == Reason.OUTSIDE_SCOPE:
            count = int(item.get("count", 0))
            rows.append(
                SkippedRow(
                    ngettext("%(count)d person", "%(count)d people", count) % {"count": count},
                    _("outside the officer scope of the officer who invited (not named)"),
                    count,
                    named=False,
                )
            )
        else:
            rows.append(SkippedRow(item.get("entry", ""), Reason.LABELS.get(reason, "")))
    return rows


def _detail(
    request: AuthenticatedHttpRequest, rollout: Rollout, *, status: int = 200
) -> HttpResponse:
    officer = decider(request.user)
    reach = officer.reach
    # A scoped officer sees, and counts, only the people their scope covers.
    invitations = (
        RolloutInvitation.objects.filter(reach.people("request__requester"), rollout=rollout)
        .select_related("request__requester")
        .order_by("pk")
    )
    page = Paginator(invitations, PEOPLE_PAGE_SIZE).get_page(request.GET.get("page"))
    hidden = 0
    if not reach.everyone:
        hidden = RolloutInvitation.objects.filter(rollout=rollout).count() - page.paginator.count
    counts = rollouts.rollout_counts(rollout, reach)
    # Whom the inviting officer named, and why each was not invited: a scoped officer sees
    # it of their own roll-outs only (another's may name people outside their scope).
    skipped = (
        _skipped_rows(rollout)
        if reach.everyone or rollout.created_by_id == request.user.pk
        else None
    )
    context = {
        "rollout": rollout,
        # Remind and cancel are the template's approvers' (rollouts._approves), and act on
        # everyone waiting, so only for an officer whose scope covers them all: the others
        # get no buttons, only who may.
        "may_act": rollout.is_open
        and officer.approves(rollout.template)
        and not rollouts.waiting_outside(rollout, reach),
        "approves": officer.approves(rollout.template),
        "counts": counts,
        "unmailed": rollouts.unmailed_count(rollout, reach),
        "mail_attempts": rollouts.MAIL_ATTEMPTS,
        "page": page,
        "outside_scope": _hidden_people(hidden, reach.describe()),
        "skipped": skipped,
        "skipped_kept": sum(row.count for row in skipped or []),
    }
    return render(request, "enrollment/ra/rollout_detail.html", context, status=status)


def _hidden_people(count: int, scope: str) -> str:
    if not count:
        return ""
    return ngettext(
        "%(count)d person of this roll-out is outside your officer scope (%(scope)s) and not "
        "shown or counted here.",
        "%(count)d people of this roll-out are outside your officer scope (%(scope)s) and not "
        "shown or counted here.",
        count,
    ) % {"count": count, "scope": scope}


@login_required
@require_safe
def rollout_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Its people and their state, with counts."""
    officer_required(request)
    rollout = get_object_or_404(
        Rollout.objects.select_related("template__approver_group", "created_by"), pk=pk
    )
    return _detail(request, rollout)


def _act(request: AuthenticatedHttpRequest, pk: int, action: str) -> HttpResponse:
    officer_required(request)
    rollout = get_object_or_404(
        Rollout.objects.select_related("template__approver_group", "created_by"), pk=pk
    )
    try:
        if action == "remind":
            count = rollouts.rollout_remind(
                rollout=rollout, officer=request.user, source_address=client_address(request)
            )
            messages.success(
                request,
                ngettext(
                    "%(count)d person who has not collected was reminded.",
                    "%(count)d people who have not collected were reminded.",
                    count,
                )
                % {"count": count},
            )
        else:
            count = rollouts.rollout_cancel(
                rollout=rollout, officer=request.user, source_address=client_address(request)
            )
            messages.success(
                request,
                ngettext(
                    "The roll-out is cancelled; %(count)d uncollected invitation withdrawn.",
                    "The roll-out is cancelled; %(count)d uncollected invitations withdrawn.",
                    count,
                )
                % {"count": count},
            )
    except EnrollmentError as exc:
        from enrollment.edge import status_for

        messages.error(request, public_message(exc))
        return _detail(request, rollout, status=status_for(exc))
    return redirect("ra:rollout-detail", pk=rollout.pk)


@login_required
@require_POST
def rollout_remind(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Mail the people who have not collected yet (at most once a period)."""
    return _act(request, pk, "remind")


@login_required
@require_POST
def rollout_cancel(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Withdraw every uncollected invitation; collected certificates stay valid."""
    return _act(request, pk, "cancel")
