"""Sign-in's second step and a person's own second factor, under /account/.

/account/two-factor/verify/ and /setup/ are what a session that still needs its second
factor may reach (accounts.middleware); the rest asks for a verified session. Backup codes
are shown once, in the answer to the POST that made them (``no-store``), never stored.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST

from accounts import mfa
from accounts.forms import CodeForm, RemoveForm
from accounts.requests import AuthenticatedHttpRequest
from enrollment.edge import client_address


class PortalLoginView(LoginView):
    """Django's sign-in, then straight on to the second step where one is needed, with
    where the person was going carried along."""

    def get_success_url(self) -> str:
        url = super().get_success_url()
        if mfa.session_needs_second_step(self.request):
            step = (
                "accounts:mfa-verify"
                if mfa.state_for(self.request.user).enrolled
                else ("accounts:mfa-setup")
            )
            return f"{reverse(step)}?{urlencode({'next': url})}"
        return url


def _next(request: HttpRequest) -> str:
    """Where to go once the second step is done: a local URL only."""
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if wanted and url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return wanted
    return reverse(settings.LOGIN_REDIRECT_URL)


def _verified_only(request: HttpRequest) -> HttpResponse | None:
    """Managing a second factor takes a session that confirmed the one it has."""
    if mfa.state_for(request.user).enrolled and not mfa.session_verified(request):
        query = urlencode({"next": request.get_full_path()})
        return redirect(f"{reverse('accounts:mfa-verify')}?{query}")
    return None


def _wait_message(until: Any) -> str:
    seconds = mfa.seconds_until(until)
    return (
        f"Too many wrong codes: wait {seconds} second{'s' if seconds != 1 else ''} and try again."
    )


@never_cache
@login_required
def overview(request: AuthenticatedHttpRequest) -> HttpResponse:
    """/account/: the person's second factor (and a link to their API tokens)."""
    if (refused := _verified_only(request)) is not None:
        return refused
    state = mfa.state_for(request.user)
    device = mfa.confirmed_totp(request.user)
    codes = mfa.backup_codes(request.user)
    context = {
        "state": state,
        "device": device,
        "codes_left": len(codes.digests) if codes is not None else 0,
        "remove_form": RemoveForm(),
        "single_sign_on_verified": bool(request.session.get(mfa.SSO_VERIFIED)),
    }
    return render(request, "accounts/overview.html", context)


@sensitive_post_parameters("code")
@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def verify(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The second step of a sign-in: a code from the app, or a backup code."""
    if mfa.session_verified(request):
        return redirect(_next(request))
    if not mfa.state_for(request.user).enrolled:
        # Nothing to verify with: the person sets a second factor up (or needs none).
        return redirect(f"{reverse('accounts:mfa-setup')}?{urlencode({'next': _next(request)})}")
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        check, device = mfa.check_code(
            user=request.user,
            code=form.cleaned_data["code"],
            source_address=client_address(request),
            via="web",
        )
        if check.ok:
            mfa.mark_verified(request, device)
            if check.backup_codes_left is not None:
                messages.warning(
                    request,
                    f"You used a backup code; {check.backup_codes_left} left. "
                    "Make new ones on your account page if you are running out.",
                )
            return redirect(_next(request))
        status = 429 if check.throttled_until else 400
        form.add_error(
            "code",
            _wait_message(check.throttled_until)
            if check.throttled_until
            else "That code is not right, or was used already.",
        )
    return render(
        request, "accounts/verify.html", {"form": form, "next": _next(request)}, status=status
    )


@sensitive_variables("codes")
@sensitive_post_parameters("code")
@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def setup(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Set up (or replace) an authenticator app: scan, confirm with a code, keep the
    backup codes shown once."""
    if (refused := _verified_only(request)) is not None:
        return refused
    device = mfa.pending_totp(request.user)
    form = CodeForm(request.POST or None)
    status = 200
    allowed, info = device.verify_is_allowed()
    if request.method == "POST" and form.is_valid() and not allowed:
        status = 429
        form.add_error("code", _wait_message((info or {}).get("locked_until")))
    elif request.method == "POST" and form.is_valid():
        codes = mfa.totp_confirm(
            user=request.user,
            device=device,
            code=form.cleaned_data["code"],
            source_address=client_address(request),
        )
        if codes is not None:
            mfa.mark_verified(request, device)
            response = render(
                request,
                "accounts/backup_codes.html",
                {"codes": codes, "next": _next(request), "new_device": True},
            )
            response["Cache-Control"] = "no-store"
            return response
        status = 400
        form.add_error(
            "code",
            "That code is not right: check the app shows this account, and the phone's clock.",
        )
    url = mfa.otpauth_url(device)
    context = {
        "form": form,
        "qr_svg": mfa.qr_svg(url),
        "secret": mfa.base32_secret(device),
        "otpauth_url": url,
        "next": _next(request),
        "state": mfa.state_for(request.user),
        "replacing": mfa.state_for(request.user).enrolled,
    }
    response = render(request, "accounts/setup.html", context, status=status)
    response["Cache-Control"] = "no-store"  # the page carries the seed
    return response


@sensitive_variables("codes")
@never_cache
@login_required
@require_POST
def backup_codes_regenerate(request: AuthenticatedHttpRequest) -> HttpResponse:
    if (refused := _verified_only(request)) is not None:
        return refused
    try:
        codes = mfa.backup_codes_regenerate(
            user=request.user, source_address=client_address(request)
        )
    except mfa.SecondFactorError as exc:
        messages.error(request, exc.message)
        return redirect("accounts:mfa-overview")
    response = render(
        request,
        "accounts/backup_codes.html",
        {"codes": codes, "next": reverse("accounts:mfa-overview"), "new_device": False},
    )
    response["Cache-Control"] = "no-store"
    return response


@never_cache
@login_required
@require_POST
def remove(request: AuthenticatedHttpRequest) -> HttpResponse:
    if (refused := _verified_only(request)) is not None:
        return refused
    form = RemoveForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Tick the box to confirm removing your second factor.")
        return redirect("accounts:mfa-overview")
    try:
        mfa.second_factor_remove(user=request.user, source_address=client_address(request))
    except mfa.SecondFactorError as exc:
        messages.error(request, exc.message)
        return redirect("accounts:mfa-overview")
    messages.success(request, "Your second factor is removed: signing in takes your password only.")
    return redirect("accounts:mfa-overview")
