"""/account/tokens/: a signed-in person's own API tokens: list, create, revoke.

The way to an API token for people who sign in with single sign-on or a directory and
so have no portal password for HTTP basic. A new token is in the one response to the
POST that made it (``no-store``): never in a message, the session, a URL or a log, and
the database holds only knox's digest. Every page is the owner's alone: another person's
token is a 404, whoever asks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_POST, require_safe

from accounts import mfa
from accounts.requests import AuthenticatedHttpRequest
from enrollment import recent_sign_in, services
from enrollment.edge import client_address, show_error
from enrollment.exceptions import EnrollmentError
from enrollment.forms import CONFIRM_REVOKE_ALL, ApiTokenForm, ConfirmForm
from enrollment.models import ApiToken
from enrollment.permissions import holds_token_role, token_role_refusal
from pkiportal import plurals

WEB = services.TokenVia.WEB


def _own_tokens(user: Any) -> QuerySet[ApiToken]:
    return (
        ApiToken.objects.filter(auth_token__user=user)
        .select_related("auth_token")
        .order_by("-auth_token__created", "-id")
    )


def _revoke_form(token: ApiToken, data: Any = None) -> ConfirmForm:
    return ConfirmForm(data, id_prefix=f"revoke-{token.pk}")


def _revoke_all_form(data: Any = None) -> ConfirmForm:
    return ConfirmForm(data, id_prefix="revoke-all", label=CONFIRM_REVOKE_ALL)


def _page(
    request: HttpRequest,
    *,
    form: ApiTokenForm | None = None,
    failed: tuple[int, ConfirmForm] | None = None,
    revoke_all_form: ConfirmForm | None = None,
    status: int = 200,
) -> HttpResponse:
    now = timezone.now()
    rows = []
    live = 0
    # A token its owner's role does not count (enrollment.permissions) says so, and how to
    # get one that it counts: the API's 403 names this page.
    role = holds_token_role(request.user)
    for token in _own_tokens(request.user):
        expiry = token.auth_token.expiry
        expired = expiry is not None and expiry <= now
        live += not expired
        revoke = failed[1] if failed and failed[0] == token.pk else _revoke_form(token)
        no_role_power = (
            token_role_refusal(request.user, token.minted_with) if role and not expired else None
        )
        rows.append(
            {
                "token": token,
                "expired": expired,
                "revoke_form": revoke,
                "no_role_power": no_role_power,
            }
        )
    cap = settings.PKIPORTAL_MAX_API_TOKENS
    context = {
        "rows": rows,
        "form": form or ApiTokenForm(),
        "revoke_all_form": revoke_all_form or _revoke_all_form(),
        "cap": cap,
        "at_cap": live >= cap,
        # The same in words ("30 days"), for a sentence that counts the tokens.
        "longest_span": plurals.days(settings.API_TOKEN_TTL_DAYS),
        "sign_in_again": not recent_sign_in.signed_in_recently(request),
        "sign_in_minutes": settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES,
    }
    return render(request, "enrollment/tokens.html", context, status=status)


@never_cache
@login_required
@require_safe
def token_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """My API tokens by name and prefix, a form for a new one, and revocation."""
    return _page(request)


# The new token is a local here and in the template's context: out of error reports.
@sensitive_variables()
@never_cache
@login_required
@require_POST
def token_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Mint a token and show it once, in this response only."""
    if not recent_sign_in.signed_in_recently(request):
        # A token outlives this session: a stolen session cookie must not be enough.
        messages.info(
            request,
            _("To create an API token, sign in again: it must be within %(span)s of signing in.")
            % {"span": plurals.minutes(settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES)},
        )
        query = urlencode({"next": reverse("enrollment:token-list")})
        return redirect(f"{reverse('login')}?{query}")
    form = ApiTokenForm(request.POST)
    if not form.is_valid():
        return _page(request, form=form, status=400)
    verified_by = mfa.session_verification(request)
    try:
        named, clear = services.api_token_create(
            owner=request.user,
            label=form.cleaned_data["label"],
            lifetime_days=form.cleaned_data["lifetime_days"],
            via=WEB,
            source_address=client_address(request),
            second_factor=mfa.session_verified(request),
            second_factor_kind=verified_by.kind,
            second_factor_key_model=verified_by.key_model,
        )
    except EnrollmentError as exc:
        return _page(request, form=form, status=show_error(form, exc))
    example = request.build_absolute_uri(reverse("enrollment-api:certificate-list"))
    return render(
        request,
        "enrollment/token_created.html",
        {"api_token": named, "token": clear, "example_url": example},
    )


@never_cache
@login_required
@require_POST
def token_revoke(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Revoke one of my tokens; anyone else's does not exist here."""
    named = get_object_or_404(
        ApiToken.objects.select_related("auth_token__user"), pk=pk, auth_token__user=request.user
    )
    form = _revoke_form(named, request.POST)
    if not form.is_valid():
        return _page(request, failed=(named.pk, form), status=400)
    revoked = services.api_token_revoke(
        token=named.auth_token,
        actor=request.user,
        via=WEB,
        source_address=client_address(request),
    )
    values = {"name": named.label, "prefix": named.auth_token.token_key}
    if revoked:
        done = (
            _("“%(name)s” (%(prefix)s…) is revoked: it no longer works.")
            if named.label
            else _("The unnamed token (%(prefix)s…) is revoked: it no longer works.")
        )
        messages.success(request, done % values)
    else:
        already = (
            _("“%(name)s” was already revoked.")
            if named.label
            else _("The unnamed token was already revoked.")
        )
        messages.info(request, already % values)
    return redirect("enrollment:token-list")


@never_cache
@login_required
@require_POST
def token_revoke_all(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Revoke every token I hold: a lost laptop, a leaked script, someone else's doing."""
    form = _revoke_all_form(request.POST)
    if not form.is_valid():
        return _page(request, revoke_all_form=form, status=400)
    count = services.api_tokens_revoke_all(
        owner=request.user, actor=request.user, via=WEB, source_address=client_address(request)
    )
    messages.success(
        request,
        ngettext(
            "Revoked %(count)d token: none of your tokens works any more.",
            "Revoked %(count)d tokens: none of your tokens works any more.",
            count,
        )
        % {"count": count},
    )
    return redirect("enrollment:token-list")
