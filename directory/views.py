"""Directory pages: /directory/ search, /directory/<fingerprint>/ and its downloads.

Downloads are public certificate material only (DER, PEM, a .p7b with the chain, a vCard);
there is no path here to any private key.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.views.decorators.http import require_safe

from directory import selectors
from directory.facts import certificate_facts
from directory.forms import SearchForm
from directory.permissions import directory_readable
from directory.vcard import certificate_vcard
from enrollment.models import Certificate, SharedMailbox
from enrollment.x509 import pkcs7

PAGE_SIZE = 20

DOWNLOADS = {
    "cer": "application/pkix-cert",
    "pem": "application/x-pem-file",
    "p7b": "application/pkcs7-mime",
    "vcf": "text/vcard; charset=utf-8",
}


@require_safe
@directory_readable
def search(request: HttpRequest) -> HttpResponse:
    """The search page; with ?partial=1 only the results, for search-as-you-type."""
    form = SearchForm(request.GET)
    page, status, query = None, 200, ""
    shared: list[SharedMailbox] = []
    if form.is_valid():
        query = form.cleaned_data["q"]
        if not form.cleaned_data["after"]:
            # Shared mailboxes (finance@) head the first page; people follow, by pages.
            shared = list(
                selectors.mailbox_search(
                    query=query, include_inactive=form.cleaned_data["include_inactive"]
                )
            )
        try:
            page = selectors.certificate_search(
                query=query,
                include_inactive=form.cleaned_data["include_inactive"],
                after=form.cleaned_data["after"] or None,
                limit=PAGE_SIZE,
            )
        except selectors.PageGone as exc:
            form.add_error(None, str(exc))
            status = 400
        else:
            for person in page.people:
                # The reader among the results is spoken to, not of: "You have no…".
                person.directory_you = person.pk == request.user.pk
        if shared and request.user.is_authenticated:
            # A mailbox whose delegate reads: they are told they can get it a certificate.
            theirs = set(request.user.delegated_mailboxes.values_list("pk", flat=True))
            for mailbox in shared:
                mailbox.directory_delegate = mailbox.pk in theirs
    else:
        status = 400
    params = request.GET.copy()
    params.pop("partial", None)
    after = params.pop("after", None)
    first_url = f"?{params.urlencode()}" if after else ""
    next_url = ""
    if page is not None and page.next_after is not None:
        params["after"] = page.next_after
        next_url = f"?{params.urlencode()}"
    context = {
        "form": form,
        "page": page,
        "mailboxes": shared,
        "query": query,
        "too_short": bool(query) and not selectors.search_terms(query),
        "first_url": first_url,
        "next_url": next_url,
    }
    partial = request.GET.get("partial") == "1"
    template = "directory/_results.html" if partial else "directory/search.html"
    return render(request, template, context, status=status)


def _certificate(fingerprint: str) -> Certificate:
    certificate = selectors.certificate_by_fingerprint(fingerprint)
    if certificate is None:
        raise Http404(_("No certificate has that fingerprint."))
    return certificate


@require_safe
@directory_readable
def certificate_detail(request: HttpRequest, fingerprint: str) -> HttpResponse:
    certificate = _certificate(fingerprint)
    # For an address its holder no longer has: its notice says what to use instead, and
    # no "newer one" or "newest of" notice tells anyone to use this one.
    old_address = certificate.names_old_address
    # Two valid certificates of one kind (enrolled again rather than renewed): say which
    # is the one to use, as the search results mark it.
    same_kind = (
        selectors.valid_of_same_kind(certificate)
        if certificate.state == "valid" and not old_address
        else []
    )
    newer = [
        c for c in same_kind if (c.not_before, c.pk) > (certificate.not_before, certificate.pk)
    ]
    encrypt_to = selectors.encryption_certificate_of(certificate)
    return render(
        request,
        "directory/certificate.html",
        {
            "cert": certificate,
            **_spoken_to(request, certificate),
            "encrypt_to": encrypt_to,
            "old_address": old_address,
            # Downloads lead with the one to encrypt to when this one is not for that.
            "offer_instead": encrypt_to is not None and (not certificate.encrypts or old_address),
            "newer": newer[-1] if newer else None,
            "newest_of": len(same_kind) if len(same_kind) > 1 and not newer else 0,
            "facts": certificate_facts(certificate.certificate),
            "chain": certificate.ca.chain(),
            "downloads": list(DOWNLOADS),
            "own_card": _has_own_card(certificate),
        },
    )


def _holder(certificate: Certificate) -> str:
    """Whom a certificate belongs to, in words: its owner, its shared mailbox, or its name.
    Empty when nobody active holds it (someone who left, a closed mailbox): pages then
    offer nothing to encrypt to and say why."""
    if certificate.owner is not None:
        owner = certificate.owner
        return (owner.get_full_name() or certificate.common_name) if owner.is_active else ""
    if certificate.mailbox is not None:
        mailbox = certificate.mailbox
        if not mailbox.is_active:
            return ""
        return _("the shared mailbox %(name)s") % {"name": mailbox.display_name}
    return ""


def _has_own_card(certificate: Certificate) -> bool:
    """A contact card is what an address book encrypts to, so only a certificate its page
    offers to encrypt to has a card of its own: one the directory's rule allows (valid,
    encryption-capable, for its holder's current address) held by someone active. Its
    page and its .vcf download both follow this one rule."""
    return selectors.to_encrypt_to(certificate) and bool(_holder(certificate))


def _spoken_to(request: HttpRequest, certificate: Certificate) -> dict[str, Any]:
    """How a certificate's pages speak of its holder to this reader (``holder``, ``you``,
    ``delegate``). To the holder themself: "you hold", "You have no certificate others can
    encrypt to yet". To a delegate of its shared mailbox, of "this shared mailbox": the
    mailbox holds it, not they, but they are whom "get one" is for. To anyone else, of
    the holder by name."""
    holder = _holder(certificate)
    you = certificate.owner_id is not None and certificate.owner_id == request.user.pk
    delegate = (
        bool(holder)
        and certificate.mailbox is not None
        and request.user.is_authenticated
        and certificate.mailbox.delegates.filter(pk=request.user.pk).exists()
    )
    return {
        "holder": _("this shared mailbox") if delegate else holder,
        "you": you,
        "delegate": delegate,
    }


def _vcard(certificate: Certificate) -> str:
    owner = certificate.owner
    return certificate_vcard(
        full_name=owner.get_full_name()
        if owner
        else (certificate.mailbox.display_name if certificate.mailbox else certificate.common_name),
        given_name=owner.first_name if owner else "",
        family_name=owner.last_name if owner else "",
        emails=certificate.emails or [certificate.email],
        organization=settings.PKIPORTAL_ORGANIZATION_NAME,
        unit=owner.organizational_unit if owner else "",
        certificate_der=bytes(certificate.der),
    )


@require_safe
@directory_readable
def certificate_download(request: HttpRequest, fingerprint: str, fmt: str) -> HttpResponse:
    certificate = _certificate(fingerprint)
    # Only the card stops at a certificate not to encrypt to: its .cer, .pem and .p7b stay,
    # revoked or expired, because checking the signatures it made (old mail) needs them.
    if fmt == "vcf" and not _has_own_card(certificate):
        return _no_card_of_its_own(request, certificate)
    leaf = certificate.certificate
    if fmt == "cer":
        body: bytes | str = pkcs7.certificate_der(leaf)
    elif fmt == "pem":
        body = pkcs7.certificate_pem(leaf)
    elif fmt == "p7b":
        body = pkcs7.certificates_to_p7b([leaf, *(ca.certificate for ca in certificate.ca.chain())])
    else:
        body = _vcard(certificate)
    name = slugify(certificate.common_name) or "certificate"
    response = HttpResponse(body, content_type=DOWNLOADS[fmt])
    response["Content-Disposition"] = (
        f'attachment; filename="{name}-{certificate.fingerprint_sha256[:8]}.{fmt}"'
    )
    return response


def _no_card_of_its_own(request: HttpRequest, certificate: Certificate) -> HttpResponse:
    """The .vcf of a certificate not to encrypt to (signing-only, revoked, expired, for an
    address its holder no longer has, or its holder gone) is its holder's card with the
    certificate to encrypt to; without one, a page saying why there is none (a card
    carrying such a certificate makes mail clients encrypt to it, or fail obscurely).

    That page is a 410 for a revoked or expired certificate: its card is gone for good, and
    a script that kept the URL can tell it from an unknown fingerprint (404) and drop it.
    Otherwise a 404, as there never was a card (signing-only) or not now: its holder gone,
    or its address no longer theirs, both of which an account can undo (reactivated, the
    address changed back within the grace period; after it the certificate is revoked and
    this is a 410). Either way an error status, so an address-book import or `curl -f`
    takes no HTML for a card, and the HTML body tells a person in a browser what to do."""
    encrypt_to = selectors.encryption_certificate_of(certificate)
    if encrypt_to is not None:
        return redirect("directory:download", encrypt_to.fingerprint_sha256, "vcf")
    return render(
        request,
        "directory/no_vcard.html",
        {
            "cert": certificate,
            **_spoken_to(request, certificate),
            "old_address": certificate.names_old_address,
        },
        status=410 if certificate.state in ("revoked", "expired") else 404,
    )
