"""The admin's "register a key recovery agent" page: a certificate upload through kra_register.

Kept out of admin.py so the admin stays read-mostly in one obvious place; this is its one
form that creates a row, and it goes through the service like the register_kra command.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse

from enrollment import services
from enrollment.exceptions import EnrollmentError
from enrollment.ra_forms import KeyRecoveryAgentRegisterForm


def kra_register_view(
    model_admin: admin.ModelAdmin, request: HttpRequest, extra_context: dict[str, Any] | None
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
