"""Which language a person reads: the pages and mail of one person agree."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.middleware.locale import LocaleMiddleware as DjangoLocaleMiddleware
from django.utils import translation
from django.utils.cache import patch_vary_headers
from django.utils.functional import Promise, lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST


def worded(message: str | Promise, **params: Any) -> str:
    """``message % params``, worded when it is read rather than now: in the reader's
    language on a page, in English where an EnrollmentError raised with it is audited
    (EnrollmentError.english). For messages that are returned, not raised; a value may
    itself be lazy (a span of days in words)."""
    return lazy(lambda: str(message) % params if params else str(message), str)()


def english(message: Any) -> str:
    """``message`` worded in English now: for the audit trail, logs, command output and
    /health/, which read the same whatever the request's or the portal's language."""
    with translation.override("en"):
        return str(message)


# Languages that write nouns with a capital letter wherever they stand.
_CAPITALISED_NOUNS = frozenset({"de"})


def mid_sentence(label: Any) -> str:
    """A label (a state: "Pending", "Approved: waiting for ...") put into a sentence: its
    first letter small, the rest as written, so a name inside keeps its capitals."""
    text = str(label)
    return text[:1].lower() + text[1:]


# Worded when read: a state put into a refusal that is raised now and read later.
mid_sentence_when_read = lazy(mid_sentence, str)


def noun_mid_sentence(label: Any) -> str:
    """A label that is a noun (a purpose, a revocation reason) put into a sentence: small
    in English, as written in German, which capitalises nouns."""
    text = str(label)
    language = (translation.get_language() or "").split("-")[0]
    return text if language in _CAPITALISED_NOUNS else mid_sentence(text)


def supported(code: str | None) -> str | None:
    """The LANGUAGES code ``code`` names (a regional variant maps to its language), or None."""
    if not code:
        return None
    try:
        return translation.get_supported_language_variant(code)
    except LookupError:
        return None


def language_of(person: Any) -> str:
    """For mail, which has no browser to ask: the person's choice, else PKIPORTAL_LANGUAGE."""
    return supported(getattr(person, "language", "")) or settings.LANGUAGE_CODE


def in_language_of(person: Any) -> AbstractContextManager[None]:
    """Word what is built inside (a mail's subject and body) for this person."""
    return translation.override(language_of(person))


class LocaleMiddleware(DjangoLocaleMiddleware):
    """Django's, but a signed-in person's own choice comes before the browser's: one
    language on every device, and the same one their mail is written in.

    After AuthenticationMiddleware (it reads request.user). A call without a session
    cookie (the API by token) has no one signed in to ask and follows its
    Accept-Language, as DRF's own messages do, without loading an anonymous user.
    The portal's URLs carry no language prefix (no i18n_patterns), so neither method
    looks for one, as Django's would on every request.
    """

    def process_request(self, request: HttpRequest) -> None:
        if _language_neutral(request.path_info):
            language = "en"
        else:
            chosen = None
            if settings.SESSION_COOKIE_NAME in request.COOKIES:
                chosen = supported(getattr(request.user, "language", ""))
            language = chosen or translation.get_language_from_request(request)
        translation.activate(language)
        request.LANGUAGE_CODE = language

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if not _language_neutral(request.path_info):
            patch_vary_headers(response, ("Accept-Language",))
            response.headers.setdefault("Content-Language", translation.get_language())
        return response


def _language_neutral(path: str) -> bool:
    """Answers that are the same in every language, for machines: CRLs, CA certificates
    and OCSP answers, which HTTP caches and CDNs keep one copy of for everyone (no Vary:
    Accept-Language to split them by), EST, monitoring, static files. The repository's
    own page (/pki/) is for people and is translated."""
    return path.startswith(_NEUTRAL) and path != "/pki/"


_NEUTRAL = (
    "/pki/",
    "/.well-known/est/",
    "/health/",
    "/metrics",
    "/" + settings.STATIC_URL.strip("/") + "/",
)


@require_POST
def choose_language(request: HttpRequest) -> HttpResponse:
    """The footer's language form. Open to anyone (the sign-in page needs it most): the
    cookie keeps the choice in this browser, and a signed-in, verified session also keeps
    it on the account, for other devices and for mail."""
    wanted = request.POST.get("language", "")
    language = supported(wanted) if wanted else ""
    if language is None:
        return HttpResponseBadRequest(
            translation.gettext("Choose one of the languages offered."), content_type="text/plain"
        )
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        back = "/"
    response = HttpResponseRedirect(back)
    if language:
        response.set_cookie(
            settings.LANGUAGE_COOKIE_NAME,
            language,
            max_age=settings.LANGUAGE_COOKIE_AGE,
            path=settings.LANGUAGE_COOKIE_PATH,
            domain=settings.LANGUAGE_COOKIE_DOMAIN,
            secure=settings.LANGUAGE_COOKIE_SECURE,
            httponly=settings.LANGUAGE_COOKIE_HTTPONLY,
            samesite=settings.LANGUAGE_COOKIE_SAMESITE,
        )
    else:
        response.delete_cookie(
            settings.LANGUAGE_COOKIE_NAME,
            path=settings.LANGUAGE_COOKIE_PATH,
            domain=settings.LANGUAGE_COOKIE_DOMAIN,
            samesite=settings.LANGUAGE_COOKIE_SAMESITE,
        )
    user = request.user
    if user.is_authenticated and not _in_second_step(request) and user.language != language:
        user.language = language
        user.save(update_fields=["language"])
    return response


def _in_second_step(request: HttpRequest) -> bool:
    # A session that has not yet confirmed its second factor is not signed in for the
    # account's settings: its choice stays in the browser.
    from accounts import mfa

    return mfa.session_needs_second_step(request) or bool(mfa.session_restriction(request))
