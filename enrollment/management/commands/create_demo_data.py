"""Demo data for a person trying pkiportal: a PKI, accounts, a key recovery agent.

Idempotent: a second run keeps what exists and prints the logins again. For the embedded
default only: the demo root key and its passphrase sit under var/offline/, which a real
installation must never do (README.md, "Keeping the root offline").
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts import mfa
from accounts.models import TotpDevice
from enrollment import services
from enrollment.exceptions import EnrollmentError
from enrollment.models import (
    Certificate,
    CertificateAuthority,
    CertificateTemplate,
    KeyRecoveryAgent,
)
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.mail_domains import address_permitted
from enrollment.x509.pkcs12 import Pkcs12Format

# The demo CAs' countryName when PKIPORTAL_COUNTRY_NAME is empty: S/MIME BR 7.1.4.3.1
# wants one in every CA certificate, and create_pki refuses without it. A demo value that
# matches the placeholder organisation identifier (NTRUS-0000000), not a real default.
DEMO_COUNTRY_NAME = "US"

# (user name, password, first name, last name, groups, staff, superuser)
DEMO_ACCOUNTS = [
    ("alice", "alice-demo-2026", "Alice", "Andersson", [], False, False),
    ("bob", "bob-demo-2026", "Bob", "Brown", [], False, False),
    ("olivia", "olivia-demo-2026", "Olivia", "Officer", ["RA officers"], False, False),
    ("karl", "karl-demo-2026", "Karl", "Keeper", ["Key recovery agents"], False, False),
    ("admin", "admin-demo-2026", "Ada", "Admin", [], True, True),
]
ORGANIZATIONAL_UNITS = {
    "alice": "Finance",
    "bob": "Engineering",
    "olivia": "Security",
    "karl": "Security",
    "admin": "IT",
}


def _default_domain(domains: tuple[str, ...]) -> str:
    """example.com unless the mail domains leave it out: then the first of them (a host
    below it for a ".corp.example" entry), so `PKIPORTAL_MAIL_DOMAINS=corp.example make run`
    works without knowing about --domain."""
    if not domains or address_permitted("demo@example.com", domains):
        return "example.com"
    first = domains[0]
    return f"demo{first}" if first.startswith(".") else first


class Command(BaseCommand):
    help = "Create a demo PKI, demo accounts and a key recovery agent (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--domain",
            help="E-mail domain of demo users (default: example.com, or the first of "
            "PKIPORTAL_MAIL_DOMAINS when that does not cover it).",
        )
        parser.add_argument(
            "--key-algorithm",
            choices=[a.value for a in KeyAlgorithm],
            default="rsa-3072",
            help="Key type of the demo CAs.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        domains = settings.PKIPORTAL_MAIL_DOMAINS
        options["domain"] = options["domain"] or _default_domain(domains)
        if not address_permitted(f"demo@{options['domain']}", domains):
            # Refused before anything is made: every demo certificate would be refused.
            raise CommandError(
                f"The demo accounts' domain {options['domain']} is outside "
                f"PKIPORTAL_MAIL_DOMAINS ({', '.join(domains)}): give --domain within it."
            )
        demo_dir = Path(settings.VAR_DIR)
        offline = demo_dir / "offline"
        root_key, root_pass = offline / "root-key.pem", offline / "root-passphrase"
        if not CertificateAuthority.objects.ours().exists():
            call_command(
                "create_pki",
                root_key_out=str(root_key),
                root_passphrase_file=str(root_pass),
                root_key_algorithm=options["key_algorithm"],
                issuing_key_algorithm=options["key_algorithm"],
                embedded_passphrase=True,
                country=settings.PKIPORTAL_COUNTRY_NAME or DEMO_COUNTRY_NAME,
                stdout=self.stdout,
            )
        root = CertificateAuthority.objects.roots().first()
        if root is not None and not root.revocation_lists.exists() and root_key.exists():
            call_command(
                "sign_root_crl",
                key_file=str(root_key),
                passphrase_file=str(root_pass),
                stdout=self.stdout,
            )
        users = self._accounts(options["domain"])
        kra_password = self._key_recovery_agent(users["karl"], demo_dir / "demo")
        self._certificates(users)
        self._print_summary(kra_password, demo_dir / "demo" / "kra.p12")
        self._print_second_factors(users)

    @transaction.atomic
    def _accounts(self, domain: str) -> dict[str, Any]:
        users: dict[str, Any] = {}
        User = get_user_model()
        for username, password, first, last, groups, staff, superuser in DEMO_ACCOUNTS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={
                    "first_name": first,
                    "last_name": last,
                    "email": f"{username}@{domain}",
                    "organizational_unit": ORGANIZATIONAL_UNITS[username],
                    "is_staff": staff,
                    "is_superuser": superuser,
                },
            )
            if created:
                user.set_password(password)
                user.save()
            for name in groups:
                user.groups.add(Group.objects.get_or_create(name=name)[0])
            users[username] = user
        return users

    def _key_recovery_agent(self, agent_user: Any, out_dir: Path) -> str | None:
        """Issue the agent an RSA dual-use certificate; its PKCS#12 goes to var/demo/."""
        if KeyRecoveryAgent.objects.filter(is_active=True).exists():
            return None
        template = CertificateTemplate.objects.get(slug="smime-dual-use")
        password = secrets.token_urlsafe(12)
        try:
            certificate, bundle = services.certificate_issue_with_server_key(
                template=template,
                owner=agent_user,
                key_algorithm=KeyAlgorithm.RSA_3072,
                pkcs12_password=password,
                pkcs12_format=Pkcs12Format.MODERN,
            )
            services.kra_register(
                certificate=certificate.certificate, name="Demo key recovery agent", user=agent_user
            )
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "kra.p12"
        path.write_bytes(bundle)
        path.chmod(0o600)
        return password

    def _certificates(self, users: dict[str, Any]) -> None:
        """Alice gets a signing and an encryption certificate so the portal has content."""
        alice = users["alice"]
        if Certificate.objects.filter(owner=alice).exists():
            return
        for slug in ("smime-signing", "smime-encryption"):
            services.certificate_issue_with_server_key(
                template=CertificateTemplate.objects.get(slug=slug),
                owner=alice,
                key_algorithm=KeyAlgorithm.EC_P256,
                pkcs12_password=secrets.token_urlsafe(12),  # demo only: nobody needs this key
            )

    def _print_second_factors(self, users: dict[str, Any]) -> None:
        """The demo officers must confirm a code after their password (PKIPORTAL_MFA_REQUIRED_FOR):
        each gets an authenticator once, and its key is printed at every run, like the
        passwords, so a person trying the portal adds it to a phone app (or oathtool)."""
        asked = [user for user in users.values() if mfa.state_for(user).required]
        if not asked:
            return
        out = self.stdout
        out.write(
            self.style.SUCCESS("Second factor of the demo officers (add to an authenticator app):")
        )
        for user in asked:
            device = mfa.confirmed_totp(user)
            if device is None:
                device = TotpDevice.objects.create(
                    user=user,
                    name="Demo authenticator",
                    sealed_key=mfa.seal(secrets.token_bytes(mfa.SEED_BYTES)),
                )
            key = mfa.base32_secret(device).replace(" ", "")
            out.write(f"  {user.get_username():<8} key {key}")
            out.write(f"           {mfa.otpauth_url(device)}")
        out.write("  A code now, without a phone: oathtool --totp -b KEY")

    def _print_summary(self, kra_password: str | None, kra_path: Path) -> None:
        out = self.stdout
        out.write("")
        out.write(self.style.SUCCESS("Demo accounts (user / password):"))
        for username, password, _first, _last, groups, _staff, superuser in DEMO_ACCOUNTS:
            role = "admin" if superuser else (", ".join(groups) or "employee")
            out.write(f"  {username:<8} {password:<18} {role}")
        if kra_password:
            out.write(self.style.SUCCESS(f"Key recovery agent PKCS#12: {kra_path}"))
            out.write(f"  password: {kra_password}  (shown once; keep it with the file)")
        else:
            out.write(f"Key recovery agent PKCS#12: {kra_path} (password shown when it was made)")
        ca = CertificateAuthority.objects.filter(is_default=True).first()
        if ca is not None:
            base = settings.PKIPORTAL_BASE_URL
            out.write(f"Issuing CA CRL: {base}/pki/{ca.slug}.crl")
