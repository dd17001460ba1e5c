"""Deployment checks (`manage.py check --deploy`) for what certificates carry for life.

The CRL distribution point and caIssuers URL are built from PKIPORTAL_BASE_URL and written
into every certificate the CAs issue. Mail clients of other organisations must reach them,
so a loopback, private-address or single-label host - the embedded default is
http://127.0.0.1:8000 - is fine for trying the portal and wrong for production (S/MIME BR
7.1.2.3 (b), (c); pkilint reports cabf.internal_domain_name).

An empty PKIPORTAL_MAIL_DOMAINS lets the CA certify any address an account has: fine for a
trial, not for an Enterprise RA (S/MIME BR 3.2.2.1).
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register
from django.db import DatabaseError
from django.utils import timezone

from pkiportal.origins import https_origin

# Suffixes that never resolve on the public internet (RFC 2606, 6761, 6762, 8375; and
# names commonly used for intranets).
INTERNAL_SUFFIXES = (
    ".localhost", ".local", ".internal", ".intranet", ".lan", ".home", ".home.arpa",
    ".corp", ".private", ".test", ".invalid", ".example",
)  # fmt: skip


def internal_host_problem(url: str) -> str | None:
    """Why other organisations' mail clients could not reach this URL's host, or None."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if not host:
        return "it has no host"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if "." not in host or host == "localhost":
            return f"{host!r} is a single-label name"
        if host.endswith(INTERNAL_SUFFIXES):
            return f"{host!r} is an internal name"
        return None
    return f"{host} is an IP address" + (" (not a public one)" if not address.is_global else "")


@register(Tags.security, deploy=True)
def base_url_is_public(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    problem = internal_host_problem(settings.PKIPORTAL_BASE_URL)
    if problem is None:
        return []
    return [
        Warning(
            f"PKIPORTAL_BASE_URL ({settings.PKIPORTAL_BASE_URL}) cannot be reached from other "
            f"organisations: {problem}.",
            hint="Certificates carry their CRL and CA URLs for life: set it to a public "
            "http:// name before create_pki (e.g. http://pki.example.com).",
            id="pkiportal.W001",
        )
    ]


@register(Tags.security, deploy=True)
def mail_domains_are_set(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Unrestricted issuance is for trying the portal: S/MIME BR 3.2.2.1 expects an
    Enterprise RA to certify only mailboxes in domains the organisation controls."""
    if settings.PKIPORTAL_MAIL_DOMAINS:
        return []
    return [
        Warning(
            "PKIPORTAL_MAIL_DOMAINS is empty: the CA issues certificates for whatever "
            "e-mail address an account has, in any domain.",
            hint="Set it to the mail domains your organisation controls (example.com, "
            ".example.com for its subdomains) before create_pki, so enrolment refuses other "
            "addresses and the issuing CA is name-constrained to them.",
            id="pkiportal.W002",
        )
    ]


@register(Tags.security, deploy=True)
def ldap_publish_is_encrypted(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Publishing to LDAP binds with the service account's password: never in clear."""
    uri = settings.PKIPORTAL_LDAP_PUBLISH_URI
    if not uri.lower().startswith("ldap://") or settings.PKIPORTAL_LDAP_PUBLISH_START_TLS:
        return []
    return [
        Warning(
            f"PKIPORTAL_LDAP_PUBLISH_URI ({uri}) is plain LDAP without StartTLS: the service "
            "account's password and what it writes cross the network unencrypted.",
            hint="Use ldaps:// or set PKIPORTAL_LDAP_PUBLISH_START_TLS=true.",
            id="pkiportal.W003",
        )
    ]


@register(Tags.security, deploy=True)
def sign_in_directory_is_encrypted(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The directory people sign in with takes their passwords, and the leavers' sync
    binds with the service account's: never in clear."""
    uris = getattr(settings, "AUTH_LDAP_SERVER_URI", "")
    if not isinstance(uris, str) or getattr(settings, "AUTH_LDAP_START_TLS", False):
        return []
    plain = [uri for uri in uris.split() if uri.lower().startswith("ldap://")]
    if not plain:
        return []
    return [
        Warning(
            f"AUTH_LDAP_SERVER_URI ({' '.join(plain)}) is plain LDAP without StartTLS: "
            "people's passwords at sign-in, and the service account's password "
            "(AUTH_LDAP_BIND_DN, which the directory leavers' sync binds with too), cross the "
            "network unencrypted.",
            hint="Use ldaps:// or set AUTH_LDAP_START_TLS=true.",
            id="pkiportal.W012",
        )
    ]


@register(Tags.security, deploy=True)
def hsm_pin_is_in_a_file(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """An environment variable is inherited by every child process (the tools the portal
    runs among them) and readable in /proc/<pid>/environ; a 0400 file is not."""
    if not settings.PKIPORTAL_PKCS11_PIN_IN_ENVIRONMENT:
        return []
    return [
        Warning(
            "The HSM user PIN is in the PKIPORTAL_PKCS11_PIN environment variable, which "
            "every process the portal starts inherits (even where PKIPORTAL_PKCS11_PIN_FILE "
            "is set as well, and wins).",
            hint="Put it in a file only the portal's user can read, set "
            "PKIPORTAL_PKCS11_PIN_FILE to its path (systemd credentials, Docker secrets) and "
            "unset PKIPORTAL_PKCS11_PIN.",
            id="pkiportal.W004",
        )
    ]


@register(Tags.security, deploy=True)
def hsm_is_not_softhsm(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """SoftHSM keeps its keys in files on this server: a PKCS#11 interface, not an HSM."""
    module = settings.PKIPORTAL_PKCS11_MODULE
    if settings.PKIPORTAL_KEY_BACKEND != "pkcs11" or "softhsm" not in module.lower():
        return []
    return [
        Warning(
            f"PKIPORTAL_PKCS11_MODULE is SoftHSM ({module}): the CA key is in files on this "
            "server's disk, protected by the PIN, not by hardware.",
            hint="Fine for trying the PKCS#11 backend; use your HSM vendor's module for "
            "production CA keys.",
            id="pkiportal.W005",
        )
    ]


@register(Tags.security, deploy=True)
def second_factor_key_is_its_own(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Seeds sealed under a key derived from SECRET_KEY are lost with it: a SECRET_KEY
    rotated without SECRET_KEY_FALLBACKS would lock every officer out of the portal."""
    if settings.PKIPORTAL_MFA_KEYS:
        return []
    return [
        Warning(
            "PKIPORTAL_MFA_KEY is not set: second-factor seeds are sealed under a key derived "
            "from SECRET_KEY.",
            hint="Set PKIPORTAL_MFA_KEY (or _FILE) to a secret of its own and run "
            "`manage.py mfa_reseal`; or, when you rotate SECRET_KEY, keep the old one in "
            "SECRET_KEY_FALLBACKS until mfa_reseal has run.",
            id="pkiportal.W006",
        )
    ]


def _passphrase_file_problems(path: Path, *, embedded: bool) -> list[CheckMessage]:
    """Whether a CA key passphrase file sits in the key directory or others can read it."""
    hint = (
        "Keep the passphrase in a file only the portal's user can read (mode 0400 or 0600: "
        "a systemd credential, or a mounted secret with that mode), outside "
        "PKIPORTAL_KEY_DIR and backed up apart from it, and set "
        "PKIPORTAL_CA_KEY_PASSPHRASE_FILE to its path"
        + (f"; then delete {path}." if embedded else ".")
    )
    what = (
        f"{path} (the embedded default's CA key passphrase)"
        if embedded
        else f"The CA key passphrase file {path}"
    )
    problems: list[CheckMessage] = []
    key_dir = Path(settings.PKIPORTAL_KEY_DIR).resolve()
    if path.resolve().is_relative_to(key_dir):
        problems.append(
            Warning(
                f"{what} is in PKIPORTAL_KEY_DIR ({key_dir}), beside the CA keys it "
                "decrypts: whoever copies that directory (a backup, a snapshot) has both.",
                hint=hint,
                id="pkiportal.W010",
            )
        )
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return problems  # read at start-up; gone since, nothing to judge
    readers = [who for who, bit in (("its group", 0o040), ("other users", 0o004)) if mode & bit]
    if readers:
        problems.append(
            Warning(
                f"{what} is readable by {' and '.join(readers)} (mode {mode:04o}).",
                hint=hint,
                id="pkiportal.W010",
            )
        )
    return problems


@register(Tags.security, deploy=True)
def ca_key_passphrase_is_kept_apart(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The file key store's CA keys are only as safe as their passphrase. In the
    environment, every process the portal starts inherits it and /proc/<pid>/environ shows
    it; beside the keys or readable by other users, it protects them from nobody who can
    read them."""
    problems: list[CheckMessage] = []
    in_clear_hint = (
        "Put it in a file only the portal's user can read (mode 0400 or 0600: a systemd "
        "credential or a mounted secret), outside PKIPORTAL_KEY_DIR, set "
        "PKIPORTAL_CA_KEY_PASSPHRASE_FILE to its path and unset PKIPORTAL_CA_KEY_PASSPHRASE."
    )
    if settings.PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT:
        problems.append(
            Warning(
                "The CA key passphrase is in the PKIPORTAL_CA_KEY_PASSPHRASE environment "
                "variable, which every process the portal starts inherits (even where "
                "PKIPORTAL_CA_KEY_PASSPHRASE_FILE is set as well, and wins).",
                hint=in_clear_hint,
                id="pkiportal.W010",
            )
        )
    elif settings.PKIPORTAL_CA_KEY_PASSPHRASE and not settings.PKIPORTAL_CA_KEY_PASSPHRASE_FILE:
        problems.append(
            Warning(
                "PKIPORTAL_CA_KEY_PASSPHRASE is given in the settings in clear, not read "
                "from a file.",
                hint=in_clear_hint,
                id="pkiportal.W010",
            )
        )
    configured = settings.PKIPORTAL_CA_KEY_PASSPHRASE_FILE
    if configured:
        problems += _passphrase_file_problems(Path(configured), embedded=False)
    # The embedded default's (create_pki --embedded-passphrase): used while no passphrase
    # is configured, and a copy of it when it was moved out and this one left behind.
    embedded = Path(settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE)
    if embedded.exists() and not (configured and Path(configured).resolve() == embedded.resolve()):
        problems += _passphrase_file_problems(embedded, embedded=True)
    return problems


def _within(host: str, rp_id: str) -> bool:
    return host == rp_id or host.endswith("." + rp_id)


def _security_key_problems() -> list[str]:
    """Why browsers would refuse security keys at this portal (W008, W018), or nothing."""
    rp_id = settings.PKIPORTAL_WEBAUTHN_RP_ID
    site_host = (urlsplit(settings.PKIPORTAL_SITE_URL).hostname or "").lower()
    problems = []
    if site_host and not _within(site_host, rp_id) and site_host not in ("127.0.0.1", "::1"):
        problems.append(f"the host of PKIPORTAL_SITE_URL ({site_host}) is not under it")
    site_origin = https_origin(settings.PKIPORTAL_SITE_URL)
    if (
        site_host not in ("", "localhost", "127.0.0.1", "::1")
        and site_origin
        and site_origin
        not in {https_origin(origin) for origin in settings.PKIPORTAL_WEBAUTHN_ORIGINS}
    ):
        problems.append(
            f"the portal's origin {site_origin} (PKIPORTAL_SITE_URL's host and port, over "
            "https) is not one of PKIPORTAL_WEBAUTHN_ORIGINS"
        )
    for origin in settings.PKIPORTAL_WEBAUTHN_ORIGINS:
        parts = urlsplit(origin)
        host = (parts.hostname or "").lower()
        if not _within(host, rp_id):
            problems.append(f"the origin {origin} is not under it")
        elif parts.scheme != "https" and host != "localhost":
            problems.append(f"the origin {origin} is not https (browsers refuse it)")
    try:
        ipaddress.ip_address(rp_id)
        problems.append("it is an IP address, which browsers refuse")
    except ValueError:
        pass
    return problems


@register(Tags.security, deploy=True)
def security_keys_fit_the_portal(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Browsers sign a security key's assertion only for an origin under the relying party
    id: a mismatch means nobody can register or use one."""
    rp_id = settings.PKIPORTAL_WEBAUTHN_RP_ID
    problems = _security_key_problems()
    if not problems:
        return []
    return [
        Warning(
            f"PKIPORTAL_WEBAUTHN_RP_ID ({rp_id}) does not fit the portal: "
            + "; ".join(problems)
            + ".",
            hint="Set PKIPORTAL_WEBAUTHN_RP_ID to the portal's host name (or a parent domain "
            "of it) and PKIPORTAL_WEBAUTHN_ORIGINS to the https:// origins people sign in at.",
            id="pkiportal.W008",
        )
    ]


@register(Tags.security, deploy=True)
def keys_only_can_be_met(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Whom PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR covers reach only their account page
    until they confirm a security key: where browsers refuse keys here (W008's reasons), or
    only a browser on the server itself can use one (the relying party is localhost), none
    of them can ever act in their role."""
    keys_only_for = settings.PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR
    if not keys_only_for:
        return []
    rp_id = settings.PKIPORTAL_WEBAUTHN_RP_ID
    reasons = []
    if problems := _security_key_problems():
        reasons.append(
            f"PKIPORTAL_WEBAUTHN_RP_ID ({rp_id}) does not fit the portal ("
            + "; ".join(problems)
            + ": pkiportal.W008)"
        )
    if rp_id == "localhost":
        reasons.append(
            "the relying party id is localhost: only a browser on this machine can use one"
        )
    if not reasons:
        return []
    covered = (
        "everyone"
        if keys_only_for == "everyone"
        else "RA officers, key recovery agents, staff and superusers"
    )
    return [
        Warning(
            f"PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR={keys_only_for} lets {covered} act only "
            "after confirming a security key, but browsers cannot use one here: "
            + "; ".join(reasons)
            + ". Signed in with a code, they reach only their account page.",
            hint="Serve the portal over https at its own name (PKIPORTAL_SITE_URL) with "
            "PKIPORTAL_WEBAUTHN_RP_ID and PKIPORTAL_WEBAUTHN_ORIGINS to match, or leave "
            "PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR empty until then.",
            id="pkiportal.W018",
        )
    ]


# How early a security-key attestation root's end is announced (pkiportal.W017).
ATTESTATION_ROOT_WARNING_DAYS = 30


@register(Tags.security, deploy=True)
def attestation_roots_are_current(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Keys whose attestation must chain to PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS: past a
    root's notAfter every key of its vendor is refused (py_webauthn's chain check), which
    the start-up, reading the file once, cannot foresee."""
    now = timezone.now()
    ending = []
    for pem in settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS:
        root = x509.load_pem_x509_certificate(pem)
        end = root.not_valid_after_utc
        if end <= now + timedelta(days=ATTESTATION_ROOT_WARNING_DAYS):
            verb = "expired" if end <= now else "expires"
            ending.append(f"{root.subject.rfc4514_string()} {verb} on {end:%Y-%m-%d}")
    if not ending:
        return []
    return [
        Warning(
            "A security-key attestation root in PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS "
            "ends: " + "; ".join(ending) + ". Keys whose attestation chains to it are "
            "refused to the people the attestation policy covers.",
            hint="Put the vendor's current attestation root in the file and restart the "
            "portal; keys added before keep counting.",
            id="pkiportal.W017",
        )
    ]


@register(Tags.security, deploy=True)
def audit_syslog_is_not_udp(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Over UDP a datagram lost on the way (a full queue, a receiver restarting) is an
    audit event the SIEM never gets, and nothing tells: fine for trying, not for a
    production trail that must arrive whole."""
    target = settings.PKIPORTAL_AUDIT_SYSLOG
    if settings.DEBUG or not target.lower().startswith("udp://"):
        return []
    return [
        Warning(
            f"PKIPORTAL_AUDIT_SYSLOG ({target}) forwards the audit trail over UDP: an event "
            "lost on the way is never sent again, and the SIEM's copy has a gap.",
            hint="Use tls://host:port (or tcp:// inside a trusted network): the portal then "
            "knows when a send failed and sends again from the same event.",
            id="pkiportal.W019",
        )
    ]


@register(Tags.security, deploy=True)
def site_url_is_https(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every link the portal mails people (sign-in, key download, key recovery) starts with
    PKIPORTAL_SITE_URL: over http:// whoever is on the path sees and can change those pages."""
    site_url = settings.PKIPORTAL_SITE_URL
    if site_url.startswith("https://"):
        return []
    return [
        Warning(
            f"PKIPORTAL_SITE_URL ({site_url}; where it is not set, PKIPORTAL_BASE_URL) is "
            "not https://: the links in the portal's mail to its sign-in, key download and "
            "key recovery pages are plain HTTP.",
            hint="Set PKIPORTAL_SITE_URL to the https:// address people open the portal at "
            "(e.g. https://pki.example.com). PKIPORTAL_BASE_URL stays http:// for the CRL, "
            "CA certificate and OCSP URLs in certificates.",
            id="pkiportal.W014",
        )
    ]


@register(Tags.security, deploy=True)
def est_is_behind_https(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """EST (RFC 7030 3.3) runs over TLS only: it takes portal passwords by HTTP basic and
    API tokens, and answers with certificates a device will trust. W007: plain HTTP is
    allowed; W009: it is refused, but nothing sends http:// clients to https:// first."""
    if not settings.PKIPORTAL_EST_ENABLED:
        return []
    if settings.PKIPORTAL_EST_ALLOW_HTTP:
        return [
            Warning(
                "PKIPORTAL_EST_ALLOW_HTTP is on: EST takes passwords and API tokens over "
                "plain HTTP.",
                hint="Switch it off outside a test lab and serve EST over HTTPS.",
                id="pkiportal.W007",
            )
        ]
    if settings.SECURE_SSL_REDIRECT:
        return []
    # Only a hint: the EST views refuse signed-in calls that are not HTTPS whatever this
    # says, but a client pointed at http:// has sent its password by the time it learns.
    return [
        Warning(
            "PKIPORTAL_EST_ENABLED is on while SECURE_SSL_REDIRECT is off: EST refuses "
            "signed-in calls over plain HTTP, but a client pointed at an http:// URL has "
            "sent its password or token before it is refused.",
            hint="Serve the portal over HTTPS and set SECURE_SSL_REDIRECT=true (and point "
            "EST clients at the https:// URL), or leave EST off. Behind a proxy that ends "
            "TLS, set USE_X_FORWARDED_PROTO=true so Django sees HTTPS.",
            id="pkiportal.W009",
        )
    ]


@register(Tags.security, deploy=True)
def monitoring_token_is_behind_https(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The monitoring token opens every /health/ detail and the metrics: over plain HTTP
    anyone on the path can read it and replay it."""
    if not settings.PKIPORTAL_MONITORING_ALLOW_HTTP:
        return []
    return [
        Warning(
            "PKIPORTAL_MONITORING_ALLOW_HTTP is on: /health/ and /metrics take the "
            "monitoring token (PKIPORTAL_HEALTH_TOKEN) over plain HTTP, where anyone on "
            "the path can read and replay it.",
            hint="Have the scraper use the https:// URL (Prometheus: scheme: https) and "
            "switch it off. Behind a proxy that ends TLS, set USE_X_FORWARDED_PROTO=true so "
            "Django sees HTTPS.",
            id="pkiportal.W011",
        )
    ]


ROLE_GROUP_SETTINGS = ("PKIPORTAL_RA_OFFICER_GROUP", "PKIPORTAL_KRA_GROUP")
MEMBERS_NAMED = 20


@register(Tags.security, Tags.database)
def role_group_members_were_granted(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """A role group setting pointed at a group that already had members makes them that
    role with nothing recorded and nobody started afresh: a plain group anyone who manages
    groups may fill (a help desk) becomes the recovery agents. Run by ``migrate`` and by
    ``check --database default``; reads the database, so not without them."""
    from accounts.privilege import members_never_granted

    settings_of: dict[str, list[str]] = {}
    for setting in ROLE_GROUP_SETTINGS:
        settings_of.setdefault(getattr(settings, setting), []).append(setting)
    problems: list[CheckMessage] = []
    for alias in databases or ():
        for name, names_it in settings_of.items():
            try:
                members = members_never_granted(name, using=alias)
            except DatabaseError:
                return []  # not migrated yet: no groups to judge
            if not members:
                continue
            named = ", ".join(member.get_username() for member in members[:MEMBERS_NAMED])
            more = len(members) - MEMBERS_NAMED
            problems.append(
                Warning(
                    f"{' and '.join(names_it)} name{'s' if len(names_it) == 1 else ''} the "
                    f"group {name!r}, and {len(members)} of its members "
                    f"hold{'s' if len(members) == 1 else ''} that role with no grant of it "
                    f"recorded: {named}"
                    + (f" and {more} more" if more > 0 else "")
                    + ". They joined the group while it was not the role (no role.grant since "
                    "their last role.revoke, if any), so nothing recorded them gaining it or "
                    "started them afresh.",
                    hint="Whoever could manage the group while it was plain (a help desk, "
                    "say) chose them and may know their passwords. As a superuser, remove "
                    "from the group everyone who should not hold the role, and remove and "
                    "add back the others: that is recorded (role.grant) and starts them "
                    "afresh. See README, Company directory and single sign-on.",
                    id="pkiportal.W013",
                )
            )
    return problems
