"""The organisation's mail domains: which mailbox addresses a CA may certify.

Domains are written as RFC 5280 4.2.1.10 writes rfc822Name constraints: ``example.com``
is every mailbox at exactly that host, ``.example.com`` every mailbox at any host below
it (not at example.com itself). S/MIME BR 7.1.5 allows these two forms only (an FQDN, or
a full stop and an FQDN; never a mailbox), so a single mailbox is refused here too.

The same list decides whether the portal issues for an address (``address_permitted``)
and what an issuing CA's nameConstraints extension permits (``name_constraints``), so a
relying party checking the CA's constraint and the portal refusing an address agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import idna

from cryptography import x509

from .errors import PolicyError, gettext_noop
from .kept import PerCertificate

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
UB_DOMAIN = 253  # RFC 1035 2.3.4, without the root's dot


def _a_label(domain: str) -> str | None:
    """The domain lower-cased, internationalised labels as A-labels (punycode), or None.

    Certificates carry only A-labels (RFC 5280 7.5, RFC 9598 for the local part), so a
    Unicode domain is compared in that form: IDNA 2008 with UTS #46 mapping and no
    transitional processing, as registries and browsers do. Python's own "idna" codec is
    IDNA 2003, which turns straße.de into strasse.de, another domain. A name IDNA 2008
    refuses (a snowman, a stray joiner, a bogus xn-- label) never matches.
    """
    domain = domain.lower()
    if domain.isascii() and "xn--" not in domain:
        return domain
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def _is_fqdn(domain: str) -> bool:
    labels = domain.split(".")
    return (
        len(labels) >= 2
        and len(domain) <= UB_DOMAIN
        and all(_LABEL.fullmatch(label) for label in labels)
    )


def parse_mail_domain(entry: str) -> str:
    """One configured domain in canonical form (lower case, A-labels, leading dot kept)."""
    text = entry.strip()
    subdomains = text.startswith(".")
    name = text[1:] if subdomains else text
    if "@" in name:
        raise PolicyError(
            gettext_noop(
                "%(entry)s is a mailbox: give the domain (example.com) or its subdomains "
                "(.example.com), as S/MIME BR 7.1.5 allows in a CA's name constraints."
            ),
            entry=repr(entry),
        )
    if name.endswith("."):
        raise PolicyError(
            gettext_noop("%(entry)s ends with a dot: write the domain without it."),
            entry=repr(entry),
        )
    domain = _a_label(name)
    if domain is None or not _is_fqdn(domain):
        raise PolicyError(
            gettext_noop(
                "%(entry)s is not a domain name such as example.com or .example.com (a fully "
                "qualified name of at least two labels)."
            ),
            entry=repr(entry),
        )
    return f".{domain}" if subdomains else domain


def parse_mail_domains(entries: Iterable[str]) -> tuple[str, ...]:
    """Configured domains, canonical, duplicates dropped, order kept; blanks ignored."""
    seen: dict[str, None] = {}
    for entry in entries:
        if entry.strip():
            seen.setdefault(parse_mail_domain(entry), None)
    return tuple(seen)


def address_domain(address: str) -> str | None:
    """The domain of a mailbox address as a constraint compares it: the part after the
    last ``@`` (a quoted local part may hold one), lower-cased, as A-labels; None when
    there is no domain a CA could be constrained to."""
    _local, at, domain = address.strip().rpartition("@")
    if not at:
        return None
    canonical = _a_label(domain)
    if canonical is None or not _is_fqdn(canonical):
        return None
    return canonical


def address_permitted(address: str, domains: Sequence[str]) -> bool:
    """Whether an rfc822Name constraint permitting ``domains`` permits ``address``
    (RFC 5280 4.2.1.10). No domains: no constraint, every address is permitted.

    ``domains`` must be canonical (``parse_mail_domains``).
    """
    if not domains:
        return True
    domain = address_domain(address)
    if domain is None:
        return False
    return any(
        domain.endswith(allowed) if allowed.startswith(".") else domain == allowed
        for allowed in domains
    )


def name_constraints(domains: Sequence[str]) -> x509.NameConstraints:
    """A nameConstraints value permitting mailboxes in ``domains`` only (RFC 5280 4.2.1.10).

    permittedSubtrees alone: a subscriber certificate's rfc822Name must then fall within
    one of them, and names of other types (the subject DN) stay unconstrained. Nothing is
    excluded, since nothing inside the permitted domains needs carving out.
    """
    canonical = parse_mail_domains(domains)
    if not canonical:
        raise PolicyError(gettext_noop("Name constraints need at least one mail domain."))
    return x509.NameConstraints(
        permitted_subtrees=[x509.RFC822Name(domain) for domain in canonical],
        excluded_subtrees=None,
    )


def _read_rfc822_subtrees(
    issuer: x509.Certificate,
) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The issuer's permitted and excluded rfc822Name subtrees, lower-cased; None without
    nameConstraints. Kept per certificate object (_rfc822_subtrees): every enrolment asks
    twice of the same issuing CA, and a miss costs an exception."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return (
        tuple(
            n.value.lower()
            for n in constraints.permitted_subtrees or ()
            if isinstance(n, x509.RFC822Name)
        ),
        tuple(
            n.value.lower()
            for n in constraints.excluded_subtrees or ()
            if isinstance(n, x509.RFC822Name)
        ),
    )


_rfc822_subtrees = PerCertificate(_read_rfc822_subtrees)


def issuer_mail_domains(issuer: x509.Certificate) -> tuple[str, ...] | None:
    """The rfc822Name subtrees an issuer's nameConstraints permit, lower-cased, or None
    when it puts no such limit on what it issues."""
    subtrees = _rfc822_subtrees(issuer)
    return subtrees[0] or None if subtrees is not None else None


def _within(address: str, subtree: str) -> bool:
    """RFC 5280 4.2.1.10: a mailbox, a host, or (leading dot) every host below a domain."""
    if "@" in subtree:
        local, _, host = subtree.rpartition("@")
        mine, _, my_host = address.rpartition("@")
        return mine == local and my_host.lower() == host
    return address_permitted(address, (subtree,))


def issuer_permits(issuer: x509.Certificate, address: str) -> bool:
    """Whether a relying party would accept ``address`` in a certificate from ``issuer``:
    inside a permitted rfc822Name subtree, if there are any, and outside every excluded one.

    Only the issuer's own constraint is looked at: the portal's roots carry none.
    """
    subtrees = _rfc822_subtrees(issuer)
    if subtrees is None:
        return True
    permitted, excluded = subtrees
    if permitted and not any(_within(address, subtree) for subtree in permitted):
        return False
    return not any(_within(address, subtree) for subtree in excluded)


def uncovered_domains(domains: Sequence[str], subtrees: Sequence[str]) -> list[str]:
    """The configured ``domains`` that no rfc822Name subtree in ``subtrees`` wholly
    permits: addresses there would be refused by relying parties (both canonical)."""

    def covered(domain: str) -> bool:
        return any(
            domain == subtree or (subtree.startswith(".") and domain.endswith(subtree))
            for subtree in subtrees
        )

    return [domain for domain in domains if not covered(domain)]
