"""Reads of the directory: people, their published certificates and the CA chains.

No CA logic and no writes. Search matches the folded `User.directory_search` column with
LIKE, which PostgreSQL answers from a pg_trgm GIN index (substring) or the sort index
(common prefixes, in order), and SQLite by scanning its small table. Nothing is cached:
a revocation leaves the default results with its commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core import signing
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet, prefetch_related_objects
from django.utils import timezone

from accounts.models import User
from accounts.search import query_words, word_pattern
from enrollment.models import Certificate, CertificateAuthority, SharedMailbox
from enrollment.outdated import current_address
from enrollment.querysets import CertificateQuerySet
from enrollment.x509 import pkcs7

MAX_QUERY_LENGTH = 200
MAX_PAGE_SIZE = 100
MAX_EMAIL_RESULTS = 100
# How many matches a search samples to choose its plan on PostgreSQL (see _first_people).
SAMPLE = 2000
_PERSON = (
    "username",
    "first_name",
    "last_name",
    "display_name",
    "email",
    "organizational_unit",
    "directory_search",  # the last person's sort key goes into the next page's cursor
)
# The `after` cursor: the last listed person's sort key and id, signed and compressed: at
# most ~3,100 characters, for 500 folded characters that JSON escapes (\uXXXX).
CURSOR_SALT = "directory.search.after"
MAX_CURSOR_LENGTH = 5000


class PageGone(LookupError):
    """A `next` link that this portal did not make (or made under another SECRET_KEY)."""


@dataclass(frozen=True)
class SearchPage:
    """One page of people (each with `.directory_certificates`), sorted by name."""

    people: list[Any]
    next_after: str | None  # the cursor of the next page

    @property
    def certificates(self) -> list[Certificate]:
        return [cert for person in self.people for cert in person.directory_certificates]


def _cursor(person: Any) -> str:
    return signing.dumps([person.directory_search, person.pk], salt=CURSOR_SALT, compress=True)


def _position(cursor: str) -> tuple[str, int]:
    """The (sort key, id) a cursor continues after; PageGone for anything else.

    The cursor is signed and names its position itself, so it is never looked up: an id
    cannot be tried, and nothing tells an account outside the directory from no account.
    """
    try:
        key, pk = signing.loads(cursor, salt=CURSOR_SALT)
    except (signing.BadSignature, ValueError, TypeError) as exc:
        raise PageGone("That page link is not valid; search again.") from exc
    return str(key), int(pk)


def search_terms(query: str) -> list[str]:
    """The folded words of a query; empty unless one has at least two characters."""
    terms = query_words(query)
    return terms if any(len(term) >= 2 for term in terms) else []


def _published(now: datetime, include_inactive: bool) -> CertificateQuerySet:
    certificates = Certificate.objects.all()
    return certificates if include_inactive else certificates.valid(now)


def certificate_search(
    *,
    query: str,
    include_inactive: bool = False,
    after: str | None = None,
    limit: int = 20,
    now: datetime | None = None,
) -> SearchPage:
    """People whose name, e-mail or unit match every term, with their certificates.

    Only active accounts with a currently valid certificate, unless `include_inactive`;
    then also their expired and revoked ones (never deactivated accounts). Keyset
    pagination (`after` = the previous page's `next_after`, a signed cursor), so a page
    costs the same however deep it is and nothing counts the whole result.
    """
    terms = search_terms(query)
    if not terms:
        return SearchPage([], None)
    now = now or timezone.now()
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    # A deactivated account is someone who has left: not a colleague to encrypt to.
    people = get_user_model().objects.filter(is_active=True)
    for term in terms:
        people = people.filter(directory_search__contains=word_pattern(term))
    if after is not None:
        key, pk = _position(after)
        # The >= bound lets the index range-scan; the OR settles ties on the same name.
        people = people.filter(
            Q(directory_search__gt=key) | Q(directory_search=key, pk__gt=pk),
            directory_search__gte=key,
        )
    published = Exists(_published(now, include_inactive).filter(owner=OuterRef("pk")))
    page = _first_people(people, published, limit + 1)
    prefetch_related_objects(
        page,
        Prefetch(
            "certificates",
            queryset=_published(now, include_inactive)
            .select_related("template", "ca")
            .order_by("-not_before", "-pk"),
            to_attr="directory_certificates",
        ),
    )
    for person in page:
        mark_newest(person.directory_certificates)
        person.directory_encrypt_to = mark_encrypt_to(person.directory_certificates)
    # The extra row only says "there is more".
    if len(page) > limit:
        return SearchPage(page[:limit], _cursor(page[limit - 1]))
    return SearchPage(page, None)


def _first_people(matching: QuerySet[User], published: Exists, count: int) -> list[Any]:
    """The first `count` matching people (by name) who have a published certificate.

    PostgreSQL's planner picks between the trigram index (cheap when few match, but it
    reads every match before sorting) and the sorted index (cheap when matches are common
    and spread out, but a near-full scan when they cluster, as "zoe" does among names
    sorted by first name). Neither is safe alone at a million rows, so a capped, unordered
    sample of the matches decides, and bounds, the work:

    - at most SAMPLE matches: all of them are in hand, by id;
    - more: the sample's k-th smallest key is at or past the k-th match overall, so the
      matches up to that key hold the whole page: a bounded set, read by bitmap scans.

    Either way the page is exactly the first `count` people by (directory_search, id).
    """
    if connection.vendor != "postgresql":  # the embedded default: a small table to scan
        return list(_ordered(matching.filter(published))[:count])
    sample = sorted(matching.order_by().values_list("directory_search", "pk")[: SAMPLE + 1])
    if len(sample) <= SAMPLE:
        return _page(matching.filter(pk__in=[pk for _key, pk in sample]), published, count)
    k = count + 5  # a margin for matches without a published certificate
    with transaction.atomic(), connection.cursor() as cursor:
        # Bitmap scans only: a plain or index-only scan of the sort index would assume the
        # matches spread evenly and read every row before a late cluster of them.
        for setting in _BITMAP_ONLY:
            cursor.execute(f"SET LOCAL {setting} = {_BITMAP_ONLY[setting]}")
        try:
            while k < len(sample):
                # Python and PostgreSQL may collate differently: a full page proves it.
                bounded = matching.filter(directory_search__lte=sample[k - 1][0])
                page = _page(bounded, published, count)
                if len(page) == count:
                    return page
                k *= 4
        finally:
            for setting in _BITMAP_ONLY:
                cursor.execute(f"RESET {setting}")
    return list(_ordered(matching.filter(published))[:count])


# Planner settings for the bounded search (SET LOCAL: they end with the transaction).
_BITMAP_ONLY = {
    "enable_indexscan": "off",
    "enable_indexonlyscan": "off",
    # A few thousand rows: parallel workers cost more to start than they save.
    "max_parallel_workers_per_gather": "0",
}


def _ordered(people: QuerySet[User]) -> QuerySet[User]:
    return people.order_by("directory_search", "pk").only(*_PERSON)


def _page(pool: QuerySet[User], published: Exists, count: int) -> list[Any]:
    """The first `count` people of a bounded pool with a published certificate.

    The pool is sorted first and checked for certificates after, a few candidates at a
    time: checking every match before sorting costs an index probe per match.
    """
    wanted = count * 2
    while True:
        candidates = list(
            pool.order_by("directory_search", "pk").values_list("pk", flat=True)[:wanted]
        )
        page = list(_ordered(pool.filter(pk__in=candidates).filter(published))[:count])
        if len(page) == count or len(candidates) < wanted:
            return page
        wanted *= 4


def normalise_email(address: str) -> str:
    """Stored certificate addresses are lower-cased at issuance; compare the same way."""
    return address.strip().lower()


# A certificate partners may encrypt to: held by an active account (not someone who has
# left), or naming an active shared mailbox (not one that was closed).
HELD_BY_ACTIVE = Q(owner__is_active=True) | Q(owner__isnull=True, mailbox__is_active=True)


def certificates_for_email(
    *, email: str, now: datetime | None = None, limit: int = MAX_EMAIL_RESULTS
) -> list[Certificate]:
    """What a sender encrypts to: valid, not revoked, encryption-capable, newest first,
    held by an active account or an active shared mailbox, and for the holder's current
    address. An active mailbox's address gives its certificates only: a person who got
    that address later (and a certificate for it) must not receive the mail meant for its
    delegates. A former holder's certificates for it, valid during their grace period
    (enrollment.outdated), are left out: mail to the address no longer reaches them."""
    address = normalise_email(email)
    found = (
        Certificate.objects.valid(now).encryption_capable().filter(HELD_BY_ACTIVE, email=address)
    )
    if SharedMailbox.objects.filter(email=address, is_active=True).exists():
        found = found.filter(mailbox__isnull=False)
    certificates = [
        certificate
        for certificate in found.select_related("owner", "template", "ca", "mailbox").order_by(
            "-not_before", "-pk"
        )[:limit]
        # In Python, by the rule the pages follow (owners loaded): a former holder's few
        # certificates for the address can only shorten a list at its cap.
        if certificate.names_current_address
    ]
    by_holder: dict[tuple[int | None, int | None], list[Certificate]] = {}
    for certificate in certificates:
        by_holder.setdefault((certificate.owner_id, certificate.mailbox_id), []).append(certificate)
    for held in by_holder.values():
        mark_encrypt_to(held)
    return certificates


MAX_MAILBOX_RESULTS = 20


def mailbox_search(
    *, query: str, include_inactive: bool = False, now: datetime | None = None
) -> list[SharedMailbox]:
    """Active shared mailboxes whose address or display name contains every term, each
    with `.directory_certificates` (valid ones, or all with `include_inactive`); those
    without any are left out. Mailboxes are few: a plain scan, the first page only."""
    terms = search_terms(query)
    if not terms:
        return []
    now = now or timezone.now()
    found = SharedMailbox.objects.filter(is_active=True)
    for term in terms:
        found = found.filter(Q(email__icontains=term) | Q(display_name__icontains=term))
    published = _published(now, include_inactive).filter(mailbox=OuterRef("pk"))
    page = list(
        found.filter(Exists(published)).order_by("display_name", "pk")[:MAX_MAILBOX_RESULTS]
    )
    prefetch_related_objects(
        page,
        Prefetch(
            "certificates",
            queryset=_published(now, include_inactive)
            .select_related("template", "ca")
            .order_by("-not_before", "-pk"),
            to_attr="directory_certificates",
        ),
    )
    for mailbox in page:
        mark_newest(mailbox.directory_certificates)
        mailbox.directory_encrypt_to = mark_encrypt_to(mailbox.directory_certificates)
    return page


def _naming_current_address(certificate: Certificate) -> Q:
    """Certificate.names_current_address as a filter over the certificates of
    `certificate`'s holder. A certificate whose address its holder no longer has stays
    valid for a grace period (enrollment.outdated), but mail to that address now reaches
    someone else, or no one: never one to encrypt to."""
    if certificate.owner_id is None:
        return Q()
    return Q(email="") | Q(email=current_address(certificate.owner))


def to_encrypt_to(certificate: Certificate) -> bool:
    """The directory's one rule for a certificate a sender may encrypt to (its holder being
    active aside): valid now, its key usage allows encryption, and it names its holder's
    current address. The search results, the certificate page, its .vcf and the API's
    usable_for_encryption all follow it; encryption_certificate_of is its query."""
    return (
        certificate.state == "valid" and certificate.encrypts and certificate.names_current_address
    )


def mark_newest(certificates: list[Certificate]) -> None:
    """Set ``.newest`` on the newest valid certificate of each purpose among one holder's
    listed certificates, where they list more than one of that purpose: a colleague who
    finds two valid signing certificates can tell which to use (the newest; enrolling
    again rather than renewing leaves the older one valid). Never one for an old address."""
    by_purpose: dict[str, list[Certificate]] = {}
    for certificate in certificates:
        certificate.newest = False
        by_purpose.setdefault(certificate.purpose, []).append(certificate)
    for same in by_purpose.values():
        valid = [c for c in same if c.state == "valid" and c.names_current_address]
        if len(same) > 1 and valid:
            max(valid, key=lambda c: (c.not_before, c.pk)).newest = True


def mark_encrypt_to(certificates: list[Certificate]) -> Certificate | None:
    """Set ``.encrypt_to`` on the one certificate of one holder's listed certificates that
    a sender should encrypt to, and return it: the newest that to_encrypt_to allows. Never
    a signing-only one (mail clients given it fail obscurely), an expired or revoked one,
    nor one for an address the holder no longer has; None when the holder has no such
    certificate listed."""
    usable = [c for c in certificates if to_encrypt_to(c)]
    chosen = max(usable, key=lambda c: (c.not_before, c.pk), default=None)
    for certificate in certificates:
        certificate.encrypt_to = certificate is chosen
    return chosen


def encryption_certificate_of(
    certificate: Certificate, now: datetime | None = None
) -> Certificate | None:
    """The certificate to encrypt to for its holder (owner or shared mailbox), as the
    search results mark it: the newest valid encryption-capable one for the holder's
    current address, perhaps this one. None for a holder who has left (or a closed
    mailbox) or has no such certificate. Reads the certificate's owner (loaded by
    certificate_by_fingerprint) for the address."""
    if certificate.owner_id is not None:
        holder = Q(owner_id=certificate.owner_id)
    elif certificate.mailbox_id is not None:
        holder = Q(mailbox_id=certificate.mailbox_id)
    else:
        return None
    return (
        Certificate.objects.valid(now)
        .encryption_capable()
        .filter(holder, _naming_current_address(certificate), HELD_BY_ACTIVE)
        .order_by("-not_before", "-pk")
        .first()
    )


def valid_of_same_kind(certificate: Certificate, now: datetime | None = None) -> list[Certificate]:
    """Its holder's (owner's or shared mailbox's) valid certificates of the same purpose
    for their current address, newest first, this one among them if it is one: its
    directory page says which to use."""
    if certificate.owner_id is not None:
        holder = Q(owner_id=certificate.owner_id)
    elif certificate.mailbox_id is not None:
        holder = Q(mailbox_id=certificate.mailbox_id)
    else:
        return []
    return list(
        Certificate.objects.valid(now)
        .filter(holder, _naming_current_address(certificate), purpose=certificate.purpose)
        .order_by("-not_before", "-pk")[:MAX_PAGE_SIZE]
    )


def normalise_fingerprint(value: str) -> str:
    """SHA-256 fingerprints arrive as 64 hex digits, any case, with or without colons."""
    return value.replace(":", "").lower()


def certificate_by_fingerprint(fingerprint: str) -> Certificate | None:
    """Any stored certificate, whatever its status: its page says whether it is usable."""
    return (
        Certificate.objects.select_related("owner", "template", "ca", "mailbox")
        .filter(fingerprint_sha256=normalise_fingerprint(fingerprint))
        .first()
    )


def ca_chains() -> dict[int, list[CertificateAuthority]]:
    """Each CA's chain (itself up to the root), from one query over the few CAs there are."""
    authorities = {
        ca.pk: ca
        for ca in CertificateAuthority.objects.only(
            "name", "slug", "parent", "der", "fingerprint_sha256", "created_at"
        )
    }
    chains: dict[int, list[CertificateAuthority]] = {}
    for ca in authorities.values():
        chain, seen = [ca], {ca.pk}
        while chain[-1].parent_id is not None and chain[-1].parent_id not in seen:
            parent = authorities[chain[-1].parent_id]
            chain.append(parent)
            seen.add(parent.pk)
        chains[ca.pk] = chain
    return chains


# A CA certificate's PEM never changes for a given fingerprint, so each process keeps it.
_PEM_BY_FINGERPRINT: dict[str, str] = {}


def ca_chain_pems() -> dict[int, list[str]]:
    """Each CA's chain (itself up to the root) as PEM strings, by CA id."""
    if len(_PEM_BY_FINGERPRINT) > 256:  # bounded: CAs are few, but never grow forever
        _PEM_BY_FINGERPRINT.clear()
    pems: dict[int, list[str]] = {}
    for pk, chain in ca_chains().items():
        for ca in chain:
            if ca.fingerprint_sha256 not in _PEM_BY_FINGERPRINT:
                pem = pkcs7.certificate_pem(ca.certificate).decode("ascii")
                _PEM_BY_FINGERPRINT[ca.fingerprint_sha256] = pem
        pems[pk] = [_PEM_BY_FINGERPRINT[ca.fingerprint_sha256] for ca in chain]
    return pems
