"""The admin's key recovery agent pages: register (a certificate upload) and deactivate.

Kept out of admin.py so the admin stays read-mostly in one obvious place; these are its
forms that change agents, and they go through the services like the register_kra and
deactivate_kra commands.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse

from enrollment import services
from enrollment.edge import client_address
from enrollment.exceptions import EnrollmentError
from enrollment.models import KeyRecoveryAgent
from enrollment.ra_forms import KeyRecoveryAgentDeactivateForm, KeyRecoveryAgentRegisterForm
from enrollment.ra_selectors import archives_only_agent_opens, usable_agents


def kra_register_view(
    model_admin: admin.ModelAdmin[KeyRecoveryAgent],
    request: HttpRequest,
    extra_context: dict[str, Any] | None,
) -> HttpResponse:
    """GET the upload form; POST registers the certificate or shows why it cannot be."""
    # Overriding add_view bypasses the admin's own check: repeat it.
    if not model_admin.has_add_permission(request):
        raise PermissionDenied("You may not register key recovery agents.")
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
                    f"Registered key recovery agent {agent.name}: keys archived from now on are "
                    "encrypted to it too.",
                    messages.SUCCESS,
                )
                return redirect("admin:enrollment_keyrecoveryagent_changelist")
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Register a key recovery agent certificate",
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
        model_admin.message_user(request, "None of the selected agents is active.", messages.INFO)
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
                    f"Deactivated {agent.name}: keys archived from now on are not encrypted to it.",
                    messages.SUCCESS,
                )
        if outcome is not None and not outcome.usable_agents_left:
            model_admin.message_user(request, services.NO_USABLE_AGENT_LEFT, messages.WARNING)
        return None
    remaining = usable_agents().exclude(pk__in=[agent.pk for agent in agents]).count()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Deactivate key recovery agents",
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
