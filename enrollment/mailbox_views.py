"""RA pages of shared mailboxes under /ra/mailboxes/: list, create, edit, (de)activate.

Officers who act for everyone only (a scoped officer's scope covers no mailbox: the list
says so, the rest is a 403); every change goes through enrollment.mailboxes (audited).
Delegates are named by user name or e-mail address, one a line, resolved to active
accounts here; the service decides the rest.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods, require_POST

from accounts.requests import AuthenticatedHttpRequest
from enrollment import leavers, mailboxes
from enrollment.edge import client_address, officer_required, show_error
from enrollment.exceptions import EnrollmentError
from enrollment.forms import PortalForm
from enrollment.models import SharedMailbox
from enrollment.scopes import reach_of

MAX_DELEGATES = 200
_SEPARATORS = re.compile(r"[\s,;]+")


class DelegatesField(forms.CharField):
    """User names or addresses, one a line (or comma-separated): active accounts only."""

    widget = forms.Textarea(attrs={"rows": 4, "spellcheck": "false"})

    def clean(self, value: Any) -> list[Any]:
        text = super().clean(value) or ""
        names = [name for name in _SEPARATORS.split(text) if name]
        if len(names) > MAX_DELEGATES:
            raise forms.ValidationError(
                _("Name at most %(max)d delegates.") % {"max": MAX_DELEGATES}
            )
        people: list[Any] = []
        unknown: list[str] = []
        for name in dict.fromkeys(names):
            found = list(
                get_user_model()
                .objects.filter(Q(username__iexact=name) | Q(email__iexact=name), is_active=True)
                .distinct()[:2]
            )
            if len(found) != 1:
                unknown.append(name[:60])
            else:
                people.append(found[0])
        if unknown:
            raise forms.ValidationError(
                _("No single active account has the user name or address: %(names)s")
                % {"names": ", ".join(unknown)}
            )
        return people


class MailboxForm(PortalForm):
    email = forms.CharField(label=_("Mailbox address"), max_length=254)
    display_name = forms.CharField(label=_("Display name"), max_length=400)
    delegates = DelegatesField(
        label=_("Delegates (user names or addresses, one a line)"),
        required=False,
        max_length=20000,
    )

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["email"]  # the address never changes (enrollment.mailboxes)


def _manager_required(request: AuthenticatedHttpRequest) -> None:
    """Officers who act for everyone (mailboxes.may_manage); a scoped officer gets a 403
    saying why, as the service would."""
    officer_required(request)
    if not mailboxes.may_manage(request.user):
        raise PermissionDenied(mailboxes.OUT_OF_SCOPE)


def _list_page(
    request: AuthenticatedHttpRequest, form: MailboxForm | None = None, status: int = 200
) -> HttpResponse:
    delay = leavers.revocation_delay()
    scope = reach_of(request.user)
    context = {
        # A scoped officer, whose scope covers no mailbox, is told so instead of a list.
        "mailboxes": mailboxes.mailboxes_overview() if scope.everyone else [],
        "scope": None if scope.everyone else scope.describe(),
        "form": form or MailboxForm(),
        "after_hours": None if delay is None else int(delay.total_seconds() // 3600),
    }
    return render(request, "enrollment/ra/mailboxes.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def mailbox_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Every shared mailbox, and the form that creates one (for officers who act for
    everyone; a scoped officer is told that on an empty page)."""
    officer_required(request)
    if request.method != "POST":
        return _list_page(request)
    _manager_required(request)
    form = MailboxForm(request.POST)
    if not form.is_valid():
        return _list_page(request, form, status=400)
    try:
        created = mailboxes.mailbox_create(
            email=form.cleaned_data["email"],
            display_name=form.cleaned_data["display_name"],
            delegates=form.cleaned_data["delegates"],
            actor=request.user,
            source_address=client_address(request),
        )
    except EnrollmentError as exc:
        return _list_page(request, form, status=show_error(form, exc))
    messages.success(request, _("Shared mailbox %(email)s created.") % {"email": created.email})
    return redirect("ra:mailbox-detail", pk=created.pk)


def _detail_page(
    request: AuthenticatedHttpRequest,
    mailbox: SharedMailbox,
    form: MailboxForm | None = None,
    status: int = 200,
    confirm_missing: bool = False,
) -> HttpResponse:
    if form is None:
        form = MailboxForm(
            editing=True,
            initial={
                "display_name": mailbox.display_name,
                "delegates": "\n".join(sorted(d.get_username() for d in mailbox.delegates.all())),
            },
        )
    delay = leavers.revocation_delay()
    due = (
        mailbox.deactivated_at + delay
        if mailbox.deactivated_at is not None and delay is not None
        else None
    )
    context = {
        "mailbox": mailbox,
        "form": form,
        "delegates": mailbox.delegates.order_by("username"),
        "certificates": mailbox.certificates.select_related("template").order_by("-not_before"),
        "revocation_due": due,
        "revocation_delay_hours": int(delay.total_seconds() // 3600) if delay is not None else None,
        "confirm_missing": confirm_missing,
    }
    return render(request, "enrollment/ra/mailbox_detail.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def mailbox_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """One mailbox: its delegates and display name (editable) and its certificates."""
    _manager_required(request)
    mailbox = get_object_or_404(SharedMailbox, pk=pk)
    if request.method != "POST":
        return _detail_page(request, mailbox)
    form = MailboxForm(request.POST, editing=True)
    if not form.is_valid():
        return _detail_page(request, mailbox, form, status=400)
    try:
        mailboxes.mailbox_update(
            mailbox=mailbox,
            display_name=form.cleaned_data["display_name"],
            delegates=form.cleaned_data["delegates"],
            actor=request.user,
            source_address=client_address(request),
        )
    except EnrollmentError as exc:
        return _detail_page(request, mailbox, form, status=show_error(form, exc))
    messages.success(request, _("%(email)s saved.") % {"email": mailbox.email})
    return redirect("ra:mailbox-detail", pk=mailbox.pk)


@login_required
@require_POST
def mailbox_active(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Deactivate (its certificates are revoked after the grace period) or reactivate."""
    _manager_required(request)
    mailbox = get_object_or_404(SharedMailbox, pk=pk)
    active = request.POST.get("active") == "1"
    if not active and mailbox.is_active and request.POST.get("confirm") != "on":
        # Withdraws its requests for good and starts its certificates' revocation: as
        # every other irreversible step on these pages, not on one click.
        return _detail_page(request, mailbox, status=400, confirm_missing=True)
    try:
        mailboxes.mailbox_set_active(
            mailbox=mailbox,
            active=active,
            actor=request.user,
            source_address=client_address(request),
        )
    except EnrollmentError as exc:
        messages.error(request, exc.message)
        return _detail_page(request, mailbox, status=409)
    done = _("%(email)s reactivated.") if active else _("%(email)s deactivated.")
    messages.success(request, done % {"email": mailbox.email})
    return redirect("ra:mailbox-detail", pk=mailbox.pk)
