"""Mail domains as RFC 5280 4.2.1.10 rfc822Name constraints: parsing, matching, and the
nameConstraints extension an issuing CA carries."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from enrollment.x509 import builder
from enrollment.x509.errors import PolicyError
from enrollment.x509.mail_domains import (
    address_domain,
    address_permitted,
    issuer_mail_domains,
    issuer_permits,
    name_constraints,
    parse_mail_domain,
    parse_mail_domains,
    uncovered_domains,
)
from tests.pki import CA, COUNTRY, ORGANIZATION

DOMAINS = parse_mail_domains(["example.com", ".corp.example.com", "bücher.example"])

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
LOCAL = st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~@\"-]{1,20}", fullmatch=True)


# --- parsing the setting ---------------------------------------------------------------


def test_entries_are_lower_cased_as_a_labels_deduplicated_in_order():
    assert parse_mail_domains(["Example.COM", " ", ".Bücher.Example", "example.com"]) == (
        "example.com",
        ".xn--bcher-kva.example",
    )


@pytest.mark.parametrize(
    ("entry", "a_label"),
    [
        ("straße.de", "xn--strae-oqa.de"),  # IDNA 2003 would give strasse.de, another domain
        ("faß.de", "xn--fa-hia.de"),
        ("βόλος.gr", "xn--nxasmm1c.gr"),  # final sigma kept
        (".Bücher.Example", ".xn--bcher-kva.example"),
    ],
)
def test_internationalised_domains_take_idna_2008_a_labels(entry, a_label):
    assert parse_mail_domain(entry) == a_label
    assert address_permitted(f"info@{a_label.lstrip('.')}", (a_label.lstrip("."),))


@pytest.mark.parametrize("entry", ["☃.example", "a\u200db.example", "xn--abc.de", "xn--.de"])
def test_names_idna_2008_refuses_are_no_domain(entry):
    with pytest.raises(PolicyError, match="not a domain name"):
        parse_mail_domain(entry)


def test_an_idna_2003_spelling_is_not_the_domain_it_was_mistaken_for():
    assert not address_permitted("u@strasse.de", parse_mail_domains(["straße.de"]))
    assert address_permitted("u@xn--strae-oqa.de", parse_mail_domains(["straße.de"]))


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("alice@example.com", "is a mailbox"),
        ("@example.com", "is a mailbox"),
        ("example.com.", "ends with a dot"),
        ("localhost", "not a domain name"),
        ("*.example.com", "not a domain name"),
        ("-bad.example.com", "not a domain name"),
        ("exa mple.com", "not a domain name"),
        (".", "not a domain name"),
        ("..example.com", "not a domain name"),
        ("a" * 64 + ".example.com", "not a domain name"),
    ],
)
def test_entries_that_are_no_domain_are_refused_saying_why(entry, problem):
    with pytest.raises(PolicyError, match=problem):
        parse_mail_domain(entry)


# --- matching: RFC 5280 4.2.1.10 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "permitted"),
    [
        ("alice@example.com", True),
        ("ALICE@Example.COM", True),  # the domain is compared without case
        ("bob@mail.corp.example.com", True),  # ".corp.example.com": any host below it
        ("bob@a.b.corp.example.com", True),
        ("bob@corp.example.com", False),  # ... but not that host itself
        ("carol@sub.example.com", False),  # "example.com": that host only
        ("eve@example.com.evil.org", False),
        ("eve@evilexample.com", False),
        ("eve@example.co", False),
        ("alice@example.com.", False),  # a trailing dot is another name in a certificate
        ('"eve@example.com"@evil.org', False),  # the part after the last @ decides
        ('"eve@evil.org"@example.com', True),
        ("dora@xn--bcher-kva.example", True),  # the same domain, as an A-label
        ("dora@BÜCHER.example", True),
        ("nobody", False),
        ("nobody@", False),
        ("eve@.example.com", False),
        ("eve@example..com", False),
    ],
)
def test_addresses_are_matched_as_rfc_5280_matches_rfc822_names(address, permitted):
    assert address_permitted(address, DOMAINS) is permitted


def test_no_domains_means_no_constraint():
    assert address_permitted("anyone@anywhere.example", ())


@settings(deadline=None)  # shared CI cores: no per-example deadline
@given(local=LOCAL, labels=st.lists(LABEL, min_size=0, max_size=3), upper=st.booleans())
def test_any_mailbox_at_a_permitted_host_or_below_a_permitted_subtree_matches(local, labels, upper):
    below = ".".join([*labels, "x", "corp.example.com"])
    for domain in ("example.com", below):
        address = f"{local}@{domain.upper() if upper else domain}"
        assert address_permitted(address, DOMAINS)


@settings(deadline=None)  # shared CI cores: no per-example deadline
@given(local=LOCAL, labels=st.lists(LABEL, min_size=1, max_size=3))
def test_hosts_below_an_exact_host_and_lookalike_suffixes_never_match(local, labels):
    prefix = ".".join(labels)
    assume(prefix not in ("corp",))  # prefix.example.com with "corp" would be the subtree root
    for domain in (f"{prefix}.example.com", f"{prefix}example.com", f"example.com.{prefix}"):
        if domain.endswith(".corp.example.com"):
            continue
        assert not address_permitted(f"{local}@{domain}", DOMAINS)


@settings(deadline=None)  # shared CI cores: no per-example deadline
@given(text=st.text(max_size=60))
def test_no_text_raises_and_only_a_real_domain_can_match(text):
    """Whatever an account's address holds, matching answers yes or no."""
    result = address_permitted(text, DOMAINS)
    if result:
        domain = address_domain(text)
        assert domain is not None
        assert domain == "example.com" or domain.endswith((".corp.example.com", "kva.example"))


# --- the CA extension ---------------------------------------------------------------------


def test_the_extension_permits_the_canonical_domains_and_excludes_nothing():
    constraints = name_constraints(["Example.com", ".corp.example.com"])

    assert constraints.permitted_subtrees == [
        x509.RFC822Name("example.com"),
        x509.RFC822Name(".corp.example.com"),
    ]
    assert constraints.excluded_subtrees is None


def test_an_empty_list_makes_no_extension():
    with pytest.raises(PolicyError):
        name_constraints([])


def _issuing(root_ca: CA, **options: object) -> x509.Certificate:
    return builder.build_issuing_ca(
        public_key=root_ca.key.public_key(),  # any key will do: only the extension matters
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        common_name="Constrained Issuing CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        crl_url=root_ca.crl_url,
        ca_issuers_url=root_ca.certificate_url,
        not_before=root_ca.certificate.not_valid_before_utc,
        **options,
    )


def test_an_issuing_ca_with_domains_carries_a_critical_name_constraint(root_ca):
    certificate = _issuing(root_ca, mail_domains=("example.com",))

    extension = certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical  # RFC 5280 4.2.1.10: conforming CAs MUST mark it critical
    assert extension.value.permitted_subtrees == [x509.RFC822Name("example.com")]


def test_an_issuing_ca_without_domains_has_none(root_ca):
    certificate = _issuing(root_ca)

    with pytest.raises(x509.ExtensionNotFound):
        certificate.extensions.get_extension_for_class(x509.NameConstraints)


def test_a_bad_domain_is_refused_by_the_builder(root_ca):
    with pytest.raises(PolicyError, match="is a mailbox"):
        _issuing(root_ca, mail_domains=("alice@example.com",))


# --- what an issuer's constraint permits --------------------------------------------------


def _with_constraints(root_ca: CA, constraints: x509.NameConstraints) -> x509.Certificate:
    """Any certificate carrying the extension will do: only the extension is read."""
    builder_ = (
        x509.CertificateBuilder()
        .subject_name(root_ca.certificate.subject)
        .issuer_name(root_ca.certificate.subject)
        .public_key(root_ca.key.public_key())
        .serial_number(1)
        .not_valid_before(root_ca.certificate.not_valid_before_utc)
        .not_valid_after(root_ca.certificate.not_valid_after_utc)
        .add_extension(constraints, critical=True)
    )
    return builder_.sign(root_ca.key, hashes.SHA384())


@pytest.mark.parametrize(
    ("address", "permitted"),
    [
        ("alice@example.com", True),
        ("root@mail.example.org", True),  # a single permitted mailbox
        ("Root@mail.example.org", False),  # ... whose local part is compared exactly
        ("bob@x.corp.example.com", True),
        ("bob@bad.corp.example.com", False),  # excluded below a permitted subtree
        ("eve@elsewhere.example", False),
    ],
)
def test_an_issuers_permitted_and_excluded_subtrees_decide(root_ca, address, permitted):
    issuer = _with_constraints(
        root_ca,
        x509.NameConstraints(
            permitted_subtrees=[
                x509.RFC822Name("example.com"),
                x509.RFC822Name(".corp.example.com"),
                x509.RFC822Name("root@mail.example.org"),
            ],
            excluded_subtrees=[x509.RFC822Name("bad.corp.example.com")],
        ),
    )

    assert issuer_permits(issuer, address) is permitted
    assert issuer_mail_domains(issuer) == (
        "example.com",
        ".corp.example.com",
        "root@mail.example.org",
    )


def test_an_issuer_without_constraints_permits_everything(root_ca):
    assert issuer_permits(root_ca.certificate, "anyone@anywhere.example")
    assert issuer_mail_domains(root_ca.certificate) is None


def test_constraints_on_other_name_types_leave_mailboxes_alone(root_ca):
    issuer = _with_constraints(
        root_ca,
        x509.NameConstraints(
            permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
        ),
    )

    assert issuer_permits(issuer, "anyone@anywhere.example")
    assert issuer_mail_domains(issuer) is None


@pytest.mark.parametrize(
    ("domains", "subtrees", "uncovered"),
    [
        (("example.com",), ("example.com",), []),
        (("example.com", ".example.com"), ("example.com",), [".example.com"]),
        ((".a.example.com", "b.example.com"), (".example.com",), []),
        (("example.com",), (".example.com",), ["example.com"]),
        (("example.org",), ("example.com",), ["example.org"]),
    ],
)
def test_uncovered_domains_are_those_no_subtree_wholly_permits(domains, subtrees, uncovered):
    assert uncovered_domains(domains, subtrees) == uncovered
