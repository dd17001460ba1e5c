"""Sign-in's second step and a person's own second factor, under /account/.

/account/two-factor/verify/ and /setup/ are what a session that still needs its second
factor may reach (accounts.middleware); the rest asks for a verified session. Backup codes
are shown once, in the answer to the POST that made them (``no-store``), never stored.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST

from accounts import fido_metadata, mfa, passkeys
from accounts.forms import CodeForm, CurrentCodeForm, RemoveForm, SetupForm
from accounts.middleware import APPROVED_KEY_PAGES
from accounts.models import WebAuthnDevice
from accounts.requests import AuthenticatedHttpRequest
from accounts.sessions import sessions_end
from enrollment import recent_sign_in
from enrollment.audit import audit_record
from enrollment.edge import client_address
from pkiportal import plurals


class PortalLoginView(LoginView):
    """Django's sign-in, then straight on to the second step where one is needed, with
    where the person was going carried along."""

    def get_success_url(self) -> str:
        url = super().get_success_url()
        if mfa.session_needs_second_step(self.request):
            step = mfa.second_step_url_name(self.request.user)
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


def _recent_sign_in_only(request: HttpRequest, message: str, back_to: str) -> HttpResponse | None:
    """Changing the second factor takes a recent sign-in, as minting an API token does: a
    session cookie stolen hours after its sign-in must not replace or remove it.
    ``message`` is the whole translated sentence, its ``%(minutes)s`` the sign-in's age: a
    sentence put together from pieces could not be worded in every language."""
    if recent_sign_in.signed_in_recently(request):
        return None
    messages.info(
        request, message % {"minutes": plurals.minutes(settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES)}
    )
    return redirect(f"{reverse('login')}?{urlencode({'next': back_to})}")


# The Continue button waits out only short pauses (a typo's second or two). The same form
# takes backup codes, counted apart from the app's codes: after many wrong codes (minutes)
# a held button would keep someone who turns to a backup code out until they reload.
BUTTON_WAITS_AT_MOST = 30


def _button_wait(until: Any) -> int | None:
    """Seconds the page's button waits after a refused code; None: it does not wait."""
    if until is None:
        return None
    seconds = mfa.seconds_until(until)
    return seconds if seconds <= BUTTON_WAITS_AT_MOST else None


# What the account page offers besides its security keys, by URL name. A session held to
# the page (mfa.session_restriction) reaches only accounts.middleware.APPROVED_KEY_PAGES:
# a button or link to anything else would only bring it back here. "app" stands for the
# app's set-up and its removal (accounts:mfa-remove) alike: both stay shut to such a session.
ACCOUNT_PAGE_OFFERS = {
    "app": "accounts:mfa-setup",
    "backup_codes": "accounts:mfa-backup-codes",
    "sign_out_elsewhere": "accounts:sign-out-elsewhere",
    "tokens": "enrollment:token-list",
}


def _held_back_until(restriction: str, state: mfa.State) -> str:
    """What opens a held-back session's other pages, ending the page's one-line reasons
    ("Signing out everywhere else opens once …"); "" where nothing is held back."""
    if restriction == "approved_security_key":
        # Translators: ends sentences such as "Signing out everywhere else opens once …" (a
        # clause after "sobald" in German).
        return _("you confirm with a security key of an approved model, or add one (below)")
    if restriction and state.passkeys:
        # Translators: as above, a clause ending "… opens once".
        return _("you confirm with one of your security keys, or add one (below)")
    if restriction:
        # Translators: as above, a clause ending "… opens once".
        return _("you add a security key (below)")
    return ""


def _held_key_compromise(request: HttpRequest, restriction: str) -> str:
    """Why the key this session signed in with opens only this page, when it proved its
    model and the FIDO Alliance reports that model compromised (fido_metadata.compromise);
    "" for a key that proved no model."""
    device = getattr(request.user, "otp_device", None)
    if restriction != "approved_security_key" or not isinstance(device, WebAuthnDevice):
        return ""
    if not device.attested:
        return ""
    return fido_metadata.compromise(fido_metadata.compromised_models().get(device.aaguid.lower()))


@never_cache
@login_required
def overview(request: AuthenticatedHttpRequest) -> HttpResponse:
    """/account/: the person's second factor (and a link to their API tokens)."""
    if (refused := _verified_only(request)) is not None:
        return refused
    state = mfa.state_for(request.user)
    restriction = mfa.session_restriction(request)
    device = mfa.confirmed_totp(request.user)
    codes = mfa.backup_codes(request.user)
    codes_left = len(codes.digests) if codes is not None else 0  # all used: none to ask
    codes_form = CurrentCodeForm(auto_id="codes-%s")
    code_label = mfa.current_code_label(request.user)
    codes_form.fields["current_code"].label = code_label
    remove_form = RemoveForm(auto_id="remove-%s")
    remove_form.fields["current_code"].label = code_label
    keys = passkeys.devices(request.user)
    context = {
        "state": state,
        "device": device,
        "code_label": code_label,
        "codes_left": codes_left,
        "has_codes": codes_left > 0,
        "remove_form": remove_form,
        "codes_form": codes_form,
        "sign_in_again": not recent_sign_in.signed_in_recently(request),
        "sign_in_minutes": settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES,
        "single_sign_on_verified": bool(request.session.get(mfa.SSO_VERIFIED)),
        "passkey_devices": keys,
        # Each key's model where the FIDO metadata names it (one query for the list).
        "passkey_rows": fido_metadata.key_rows(keys),
        "held_key_compromise": _held_key_compromise(request, restriction),
        "passkey_confirmed": passkeys.has_confirmed(request.session),
        # A code proves the current second factor, unless a key was confirmed just now.
        "ask_code": (device is not None or codes_left > 0)
        and not passkeys.has_confirmed(request.session),
        "passkey_next": reverse("accounts:mfa-overview"),
        # Signed in with a key of no approved model, where the person's keys must be of one:
        # this page is all the session reaches until an approved key is added.
        "approved_key_needed": restriction == "approved_security_key",
        # Signed in with the app, a backup code or single sign-on, where only a key will do:
        # this page is all the session reaches until a key is confirmed here or added.
        "security_key_needed": restriction == "security_key",
        # A session held to this page is offered only what it reaches; the rest says, in a
        # line, what opens it (held_back_until).
        "offers": {
            offer: not restriction or name in APPROVED_KEY_PAGES
            for offer, name in ACCOUNT_PAGE_OFFERS.items()
        },
        "held_back_until": _held_back_until(restriction, state),
    }
    # Adding a key: no code either after one proved it for a ceremony that did not finish.
    context["ask_key_code"] = context["ask_code"] and not passkeys.has_proved_for_adding(
        request.session
    )
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
        step = reverse(mfa.second_step_url_name(request.user))
        return redirect(f"{step}?{urlencode({'next': _next(request)})}")
    form = CodeForm(request.POST or None)
    status = 200
    wait_until = None  # after a refused code: the button waits until the next is checked
    state = mfa.state_for(request.user)
    # Someone with only keys types a backup code while one is left (a lost key).
    has_codes = state.totp or mfa.has_backup_codes(request.user)
    if request.method == "POST" and not has_codes:
        # Someone with only security keys has no code to type: a posted code is refused
        # before anything checks (or audits) it, so guessing here costs nothing to log.
        status = 400
        form = CodeForm()
        messages.error(
            request,
            _(
                "Your account has no authenticator app and no backup code left: use your "
                "security key."
            ),
        )
    elif request.method == "POST" and form.is_valid():
        check, device = mfa.check_code(
            user=request.user,
            code=form.cleaned_data["code"],
            source_address=client_address(request),
            via="web",
        )
        if check.ok:
            mfa.mark_verified(request, device, sign_in=True)
            if check.backup_codes_left is not None:
                messages.warning(
                    request,
                    ngettext(
                        "You used a backup code; %(count)d left. Make new ones on your "
                        "account page if you are running out.",
                        "You used a backup code; %(count)d left. Make new ones on your "
                        "account page if you are running out.",
                        check.backup_codes_left,
                    )
                    % {"count": check.backup_codes_left},
                )
            if mfa.session_needs_security_key(request):
                # Only a key opens this person's portal: the account page says so and
                # adds one; nothing else opens (accounts.middleware).
                return redirect("accounts:mfa-overview")
            return redirect(_next(request))
        # Sent while the device waits after a wrong code (a second or two after a typo):
        # not checked, not counted, and no error page but the form again, saying how long
        # to wait, its button waiting as long (static/js/wait.js). A wrong code is a 400.
        status = 200 if check.throttled_until else 400
        wait_until = check.throttled_until or check.next_try_at
        if check.problem:
            still = (
                " " + _("A backup code still works.") if mfa.has_backup_codes(request.user) else ""
            )
            message = f"{check.problem}{still}"
        elif check.throttled_until:
            message = mfa.wait_message(check.throttled_until)
        else:
            message = mfa.sign_in_code_refused_message(request.user)
        if not check.throttled_until:
            # A refused code leaves the field: kept there, autofocused with the caret before
            # it, the next code would be typed in front of it (twelve digits). A code sent
            # during the wait stays, to be sent again as it is.
            data = request.POST.copy()
            data["code"] = ""
            form.data = data
        form.add_error("code", message)
    context = {
        "form": form,
        "next": _next(request),
        "has_passkeys": state.passkeys,
        "has_codes": has_codes,
        "has_app": state.totp,
        # Only a key opens the portal for them: a code opens just their account page.
        "keys_only": state.keys_only,
        "wait_seconds": _button_wait(wait_until),
    }
    return render(request, "accounts/verify.html", context, status=status)


@sensitive_variables("codes", "done", "form")
@sensitive_post_parameters("code", "current_code")
@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def setup(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Set up (or replace) an authenticator app: scan, confirm with a code, keep the
    backup codes shown once. Both take a recent sign-in; replacing also a code of the
    app being replaced (or a backup code); someone with only keys, a key confirmed just
    now or one of their backup codes (their key may be the thing they lost)."""
    if (refused := _verified_only(request)) is not None:
        return refused
    state = mfa.state_for(request.user)
    replacing = state.totp
    back_to = f"{reverse('accounts:mfa-setup')}?{urlencode({'next': _next(request)})}"
    again = (
        _(
            "To replace your authenticator app, sign in again: it must be within %(minutes)s "
            "of signing in."
        )
        if replacing
        else _(
            "To set up an authenticator app, sign in again: it must be within %(minutes)s of "
            "signing in."
        )
    )
    if (refused := _recent_sign_in_only(request, again, back_to)) is not None:
        return refused
    # Someone with only keys proves them with a key confirmed just now, or a backup code.
    code_for_keys = (
        state.passkeys and not state.totp and not passkeys.has_confirmed(request.session)
    )
    if code_for_keys and not mfa.has_backup_codes(request.user):
        messages.info(
            request, _("Confirm with one of your security keys first, then set up the app.")
        )
        return redirect("accounts:mfa-overview")
    started = request.session.get(mfa.PENDING_SESSION_KEY)
    device = mfa.pending_totp(request)
    # Someone with only keys and no code asked: the key confirmed just now is the proof.
    uses_confirmation = state.passkeys and not state.totp and not code_for_keys
    form = SetupForm(request.POST or None, replacing=replacing or code_for_keys)
    if "current_code" in form.fields:
        form.fields["current_code"].label = mfa.current_code_label(request.user)
    status = 200
    allowed, info = device.verify_is_allowed()
    if request.method == "POST" and not form.is_valid():
        status = 400
    elif request.method == "POST" and started != device.pk:
        status = 400
        form.add_error(
            "code",
            _(
                "This set-up expired (%(minutes)s): scan the new code below (remove the old "
                "entry from your app) and enter the code it shows."
            )
            % {"minutes": plurals.minutes(mfa.PENDING_MINUTES)},
        )
    elif request.method == "POST" and not allowed:
        # Not checked, not counted: the form again, saying how long to wait (as at sign-in).
        form.add_error("code", mfa.wait_message((info or {}).get("locked_until")))
    elif request.method == "POST":
        # The key's confirmation is taken (the session row locked) before anything is
        # checked: a change sent at the same moment with it (new backup codes, a key
        # removed) finds it taken, and is refused, or this one is. A wrong code of the new
        # app puts it back below: a typo spends nothing.
        confirmation = passkeys.take_confirmation(request.session) if uses_confirmation else None
        if uses_confirmation and confirmation is None:
            messages.error(
                request,
                _(
                    "Your security key's confirmation was used by another change, or has "
                    "expired: confirm again (or use a backup code)."
                ),
            )
            return redirect(back_to)
        try:
            done = mfa.totp_confirm(
                user=request.user,
                device=device,
                code=form.cleaned_data["code"],
                current_code=form.cleaned_data.get("current_code"),
                current_required=code_for_keys,
                source_address=client_address(request),
            )
        except mfa.SecondFactorError as exc:
            if confirmation is not None:
                passkeys.restore_confirmation(request.session, confirmation)
            messages.error(request, exc.message)
            return redirect(back_to)
        codes = done.codes
        if codes is None and confirmation is not None:
            passkeys.restore_confirmation(request.session, confirmation)
        if codes is not None:
            request.session.pop(mfa.PENDING_SESSION_KEY, None)
            # Verified by the new app from now on; except a session a key verified, of
            # someone only a key lets in: the app would hold it to the account page.
            before = getattr(request.user, "otp_device", None)
            keep_key = isinstance(before, WebAuthnDevice) and state.keys_only
            mfa.mark_verified(request, before if keep_key else device)
            response = render(
                request,
                "accounts/backup_codes.html",
                {"codes": codes, "next": _next(request), "new_device": True},
            )
            response["Cache-Control"] = "no-store"
            return response
        if done.wrong == "current_code":
            status = 200 if done.throttled_until else 400
            form.add_error(
                "current_code",
                mfa.wait_message(done.throttled_until)
                + " "
                + _("Then send it again with the new app's next code.")
                if done.throttled_until
                else done.problem
                or mfa.code_refused_message(request.user)
                + " "
                + _("Wait for the new app's next code and try again."),
            )
        else:
            status = 400
            form.add_error(
                "code",
                _(
                    "That code is not right: check the app shows this account, and the "
                    "phone's clock."
                ),
            )
    url = mfa.otpauth_url(device)
    context = {
        "form": form,
        "qr_svg": mfa.qr_svg(url),
        "secret": mfa.base32_secret(device),
        "otpauth_url": url,
        "next": _next(request),
        "state": state,
        "replacing": replacing,
        "code_for_keys": code_for_keys,
        "offer_passkey": not state.enrolled,
    }
    response = render(request, "accounts/setup.html", context, status=status)
    response["Cache-Control"] = "no-store"  # the page carries the seed
    return response


def _keep_verified(request: HttpRequest, was_verified: bool) -> None:
    """After removing the device this session confirmed, the session stays verified with
    one that remains (not counted as a sign-in): removing a key or the app is not signing
    out of the second step."""
    if not was_verified or request.session.get(mfa.SSO_VERIFIED):
        return
    persistent_id = request.session.get(DEVICE_ID_SESSION_KEY)
    if isinstance(persistent_id, str) and Device.from_persistent_id(persistent_id) is not None:
        return
    mfa.forget_state(request.user)
    keys = passkeys.devices(request.user)
    remaining: Device | None
    if mfa.state_for(request.user).keys_only:
        # Where only a key opens the portal, a remaining key (an approved one first) keeps
        # it open; the app would hold the session to the account page.
        keys.sort(key=lambda key: not key.approved)
        remaining = next(iter(keys), None) or mfa.confirmed_totp(request.user)
    else:
        remaining = mfa.confirmed_totp(request.user) or next(iter(keys), None)
    if remaining is not None:
        mfa.mark_verified(request, remaining)


def _code_refused(request: HttpRequest, exc: mfa.SecondFactorError) -> HttpResponse:
    messages.error(request, exc.message)
    response = redirect("accounts:mfa-overview")
    if isinstance(exc, mfa.CodeRefused) and exc.throttled_until is not None:
        response["Retry-After"] = str(mfa.seconds_until(exc.throttled_until))
    return response


@sensitive_variables("codes")
@sensitive_post_parameters("current_code")
@never_cache
@login_required
@require_POST
def backup_codes_regenerate(request: AuthenticatedHttpRequest) -> HttpResponse:
    """New backup codes for whoever has an app or a key: a recent sign-in, and a current
    code (app or backup code) or a security key confirmed just now."""
    if (refused := _verified_only(request)) is not None:
        return refused
    overview_url = reverse("accounts:mfa-overview")
    again = _(
        "To make new backup codes, sign in again: it must be within %(minutes)s of signing in."
    )
    if (refused := _recent_sign_in_only(request, again, overview_url)) is not None:
        return refused
    try:
        mfa.check_backup_codes_allowed(request.user)  # before a proof is spent on it
        _prove_current_factor(request, request.POST.get("current_code"), "backup_codes")
        codes = mfa.backup_codes_regenerate(
            user=request.user, source_address=client_address(request)
        )
    except mfa.SecondFactorError as exc:
        return _code_refused(request, exc)
    response = render(
        request,
        "accounts/backup_codes.html",
        {"codes": codes, "next": overview_url, "new_device": False},
    )
    response["Cache-Control"] = "no-store"
    return response


@sensitive_post_parameters("current_code")
@never_cache
@login_required
@require_POST
def remove(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Remove one's own second factor, given a current code and a recent sign-in."""
    if (refused := _verified_only(request)) is not None:
        return refused
    overview_url = reverse("accounts:mfa-overview")
    again = _(
        "To remove your second factor, sign in again: it must be within %(minutes)s of signing in."
    )
    if (refused := _recent_sign_in_only(request, again, overview_url)) is not None:
        return refused
    form = RemoveForm(request.POST)
    if not form.is_valid():
        messages.error(
            request,
            _("Tick the box and enter a code of your second factor to confirm removing it."),
        )
        return redirect("accounts:mfa-overview")
    was_verified = mfa.session_verified(request)
    try:
        keys_left = mfa.second_factor_remove(
            user=request.user,
            current_code=form.cleaned_data["current_code"],
            source_address=client_address(request),
            session=request.session,
        )
    except mfa.SecondFactorError as exc:
        return _code_refused(request, exc)
    if keys_left:
        _keep_verified(request, was_verified)
        messages.success(
            request,
            _(
                "Your authenticator app is removed: signing in asks for one of your security "
                "keys (or a backup code). Your other sessions are signed out."
            ),
        )
    else:
        messages.success(
            request,
            _(
                "Your authenticator app and backup codes are removed: signing in takes your "
                "password only. Your other sessions are signed out."
            ),
        )
    return redirect("accounts:mfa-overview")


@never_cache
@login_required
@require_POST
def sign_out_elsewhere(request: AuthenticatedHttpRequest) -> HttpResponse:
    """End every other browser session of the person, keeping this one: for a browser left
    signed in elsewhere. A verified session, but no code and no recent sign-in: signing
    others out gives nobody anything, so it should be as easy as possible to do. API
    tokens are not sessions and stay (the API tokens page revokes those)."""
    if (refused := _verified_only(request)) is not None:
        return refused
    with transaction.atomic():
        ended = sessions_end(request.user, keep=request.session)
        audit_record(
            action="account.sessions_end",
            actor=request.user,
            target=request.user,
            source_address=client_address(request),
            detail={"via": "self", "sessions_ended": ended},
        )
    messages.success(
        request,
        ngettext(
            "%(count)d other session signed out. This one stays signed in; your API tokens "
            "are not affected.",
            "%(count)d other sessions signed out. This one stays signed in; your API tokens "
            "are not affected.",
            ended,
        )
        % {"count": ended},
    )
    return redirect("accounts:mfa-overview")


# --- security keys (WebAuthn): JSON for static/js/passkey.js ------------------------------


def _json_error(message: str, status: int = 400, **extra: Any) -> JsonResponse:
    response = JsonResponse({"detail": message, **extra}, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _json_body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep: a 400
        return None
    return body if isinstance(body, dict) else None


def _local_next(request: HttpRequest, wanted: Any) -> str:
    if isinstance(wanted, str) and url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return wanted
    return reverse(settings.LOGIN_REDIRECT_URL)


def _options_response(options: str) -> HttpResponse:
    response = HttpResponse(options, content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


def _key_change_refused(request: HttpRequest) -> JsonResponse | None:
    """As for the authenticator app: a session that confirmed its second factor, signed in
    recently (JSON answers for the script)."""
    if mfa.state_for(request.user).enrolled and not mfa.session_verified(request):
        return _json_error(
            _("Confirm your second factor first."), 403, url=reverse("accounts:mfa-verify")
        )
    if not recent_sign_in.signed_in_recently(request):
        back = reverse("accounts:mfa-overview")
        return _json_error(
            _(
                "Sign in again: changing your second factor must be within %(minutes)s of "
                "signing in."
            )
            % {"minutes": plurals.minutes(settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES)},
            403,
            url=f"{reverse('login')}?{urlencode({'next': back})}",
        )
    return None


@sensitive_variables(*mfa.TYPED_CODE_LOCALS)
def _prove_current_factor(request: AuthenticatedHttpRequest, current_code: Any, via: str) -> None:
    """Whoever has a second factor proves it again to change it: a security key confirmed
    just now in this session, or a current code (raises mfa.CodeRefused / PasskeyError)."""
    if not mfa.state_for(request.user).enrolled or passkeys.take_confirmed(request.session):
        return
    code = current_code.strip()[:40] if isinstance(current_code, str) else ""
    if not code:
        raise passkeys.PasskeyError(
            _(
                "Enter a code of your current second factor, or confirm with one of your "
                "security keys first."
            )
        )
    mfa._require_current_code(
        user=request.user, current_code=code, source_address=client_address(request), via=via
    )


@never_cache
@login_required
@require_http_methods(["GET", "HEAD"])
def passkey_setup(request: AuthenticatedHttpRequest) -> HttpResponse:
    """A page to add a security key: a first second factor instead of an app (the app's
    set-up page links here; it carries a seed, so it loads no script), or another key."""
    if (refused := _verified_only(request)) is not None:
        return refused
    back_to = f"{reverse('accounts:passkey-setup')}?{urlencode({'next': _next(request)})}"
    again = _("To add a security key, sign in again: it must be within %(minutes)s of signing in.")
    if (refused := _recent_sign_in_only(request, again, back_to)) is not None:
        return refused
    state = mfa.state_for(request.user)
    context = {
        "state": state,
        "passkey_next": _next(request),
        "ask_code": (state.totp or mfa.has_backup_codes(request.user))
        and not passkeys.has_proved_for_adding(request.session),
    }
    return render(request, "accounts/passkey_setup.html", context)


@sensitive_variables("body", "current_code")  # the JSON body: no POST parameters to hide
@sensitive_post_parameters()
@never_cache
@login_required
@require_POST
def passkey_register_options(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Start adding a security key: its name, and proof of the current second factor."""
    if (refused := _key_change_refused(request)) is not None:
        return refused
    body = _json_body(request)
    if body is None:
        return _json_error(_("Send a JSON object."))
    try:
        name = passkeys.clean_name(body.get("name"))
        passkeys.check_room(request.user)  # before a proof is spent on it
        if not passkeys.has_proved_for_adding(request.session):
            _prove_current_factor(request, body.get("current_code"), "security_key_add")
            # A cancelled or failed ceremony is retried without a new code (a backup code
            # spent again for each would run out); the proof's time is kept, not renewed.
            passkeys.note_proved_for_adding(request.session)
        options = passkeys.registration_options(
            session=request.session, user=request.user, name=name
        )
    except mfa.CodeRefused as exc:
        status = 429 if exc.throttled_until is not None else 400
        return _json_error(exc.message, status, field="current_code")
    except mfa.SecondFactorError as exc:
        return _json_error(exc.message)
    return _options_response(options)


@sensitive_variables("registered", "answer")
@never_cache
@login_required
@require_POST
def passkey_register(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Finish adding a security key with the browser's answer to the challenge."""
    if (refused := _key_change_refused(request)) is not None:
        return refused
    body = _json_body(request)
    if body is None:
        return _json_error(_("Send a JSON object."))
    try:
        registered = passkeys.register(
            session=request.session,
            user=request.user,
            credential=body.get("credential"),
            source_address=client_address(request),
        )
    except mfa.SecondFactorError as exc:
        return _json_error(exc.message)
    device = registered.device
    passkeys.forget_proved_for_adding(request.session)  # one key per proof
    if not mfa.session_verified(request) or mfa.session_restriction(request):
        # A first second factor, as an app's set-up; or the key a session held to the
        # account page was sent to add (an approved one, or any key where the person signed
        # in without one): it now counts.
        mfa.mark_verified_with_key(request, device)
    messages.success(request, _("The security key “%(name)s” is added.") % {"name": device.name})
    answer: dict[str, Any] = {"redirect": _local_next(request, body.get("next"))}
    if registered.backup_codes:
        # Shown once, by the page's script (never_cache: no-store); never kept anywhere.
        answer["backup_codes"] = registered.backup_codes
    return JsonResponse(answer)


@never_cache
@login_required
@require_POST
def passkey_authenticate_options(request: AuthenticatedHttpRequest) -> HttpResponse:
    """A challenge for one of the person's own security keys."""
    try:
        options = passkeys.authentication_options(session=request.session, user=request.user)
    except passkeys.Throttled as exc:
        response = _json_error(exc.message, 429)
        response["Retry-After"] = str(mfa.seconds_until(exc.throttled_until))
        return response
    except mfa.SecondFactorError as exc:
        return _json_error(exc.message)
    return _options_response(options)


@never_cache
@login_required
@require_POST
def passkey_authenticate(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The second step of a sign-in with a security key; in a verified session, a fresh
    confirmation that lets it change its second factor in the next few minutes."""
    body = _json_body(request)
    if body is None:
        return _json_error(_("Send a JSON object."))
    verified_before = mfa.session_verified(request)
    try:
        device = passkeys.authenticate(
            session=request.session,
            user=request.user,
            credential=body.get("credential"),
            source_address=client_address(request),
            via="confirm" if verified_before else "web",
        )
    except mfa.SecondFactorError as exc:
        return _json_error(exc.message)
    if verified_before:
        passkeys.note_confirmed(request.session)
        if mfa.session_restriction(request):
            # A session held to the account page (signed in with the app, a backup code or
            # single sign-on where only a key will do; or with a key of no approved model)
            # confirmed a key here: the key now verifies it, and opens it if it counts.
            mfa.mark_verified_with_key(request, device)
            if not mfa.session_restriction(request):
                messages.success(
                    request,
                    _("Confirmed with “%(name)s”: the whole portal is open to you.")
                    % {"name": device.name},
                )
        return JsonResponse({"confirmed": True, "redirect": reverse("accounts:mfa-overview")})
    mfa.mark_verified(request, device, sign_in=True)
    if mfa.session_restriction(request):
        # A key of no approved model, where the person's must be: the account page says so
        # and adds an approved one; nothing else opens (accounts.middleware).
        return JsonResponse({"redirect": reverse("accounts:mfa-overview")})
    return JsonResponse({"redirect": _local_next(request, body.get("next"))})


@sensitive_post_parameters("current_code")
@never_cache
@login_required
@require_POST
def passkey_remove(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Remove one of one's security keys: a current code or a key confirmed just now, and a
    recent sign-in."""
    if (refused := _verified_only(request)) is not None:
        return refused
    overview_url = reverse("accounts:mfa-overview")
    again = _(
        "To remove a security key, sign in again: it must be within %(minutes)s of signing in."
    )
    if (refused := _recent_sign_in_only(request, again, overview_url)) is not None:
        return refused
    was_verified = mfa.session_verified(request)
    try:
        passkeys.check_removable(request.user, pk)  # before a proof is spent on it
        _prove_current_factor(request, request.POST.get("current_code"), "security_key_remove")
        removal = passkeys.remove(
            user=request.user,
            device_id=pk,
            source_address=client_address(request),
            session=request.session,
        )
    except mfa.SecondFactorError as exc:
        return _code_refused(request, exc)
    _keep_verified(request, was_verified)
    if removal.last and removal.backup_codes_dropped:
        message = _(
            "The security key “%(name)s” is removed. It was your last second factor: signing "
            "in takes your password only, and your backup codes no longer work. Your other "
            "sessions are signed out."
        )
    elif removal.last:
        message = _(
            "The security key “%(name)s” is removed. It was your last second factor: signing "
            "in takes your password only. Your other sessions are signed out."
        )
    else:
        message = _("The security key “%(name)s” is removed.")
    messages.success(request, message % {"name": removal.name})
    return redirect("accounts:mfa-overview")
