"""Create the CA hierarchy: an offline root whose key goes to a file you choose, and an
online issuing CA whose key goes to the key store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import keystore, services
from enrollment.checks import internal_host_problem
from enrollment.exceptions import EnrollmentError
from enrollment.management.commands._helpers import (
    add_hsm_key_arguments,
    add_name_constraint_arguments,
    constraint_domains,
    describe_constraints,
    describe_key,
    hsm_key,
    new_passphrase_file,
    read_passphrase,
)
from enrollment.models import CertificateAuthority
from enrollment.x509.builder import check_ca_subject
from enrollment.x509.errors import PolicyError
from enrollment.x509.keys import KeyAlgorithm

ALGORITHMS = [algorithm.value for algorithm in KeyAlgorithm]


class Command(BaseCommand):
    help = "Create the offline root CA and the online issuing CA (refuses if a CA exists)."

    def add_arguments(self, parser: CommandParser) -> None:
        org = settings.PKIPORTAL_ORGANIZATION_NAME
        parser.add_argument("--root-name", default=f"{org} Root CA")
        parser.add_argument("--root-slug", default="root")
        parser.add_argument("--root-key-algorithm", choices=ALGORITHMS, default="rsa-4096")
        parser.add_argument("--root-validity-days", type=int, default=7300)
        parser.add_argument("--issuing-name", default=f"{org} S/MIME Issuing CA")
        parser.add_argument("--issuing-slug", default="issuing")
        parser.add_argument("--issuing-key-algorithm", choices=ALGORITHMS, default="rsa-3072")
        parser.add_argument("--issuing-validity-days", type=int, default=1825)
        parser.add_argument(
            "--organization",
            default=org,
            help="organizationName of both CAs (default: PKIPORTAL_ORGANIZATION_NAME).",
        )
        parser.add_argument(
            "--country",
            default=settings.PKIPORTAL_COUNTRY_NAME,
            help="Two-letter countryName of both CAs, required by S/MIME BR 7.1.4.3.1 "
            "(default: PKIPORTAL_COUNTRY_NAME).",
        )
        parser.add_argument(
            "--base-url",
            default=settings.PKIPORTAL_BASE_URL,
            help="Public http:// URL embedded as CDP and AIA in every certificate.",
        )
        parser.add_argument(
            "--root-key-out",
            required=True,
            help="Where to write the root key (encrypted PKCS#8). Move it offline afterwards.",
        )
        parser.add_argument(
            "--root-passphrase-file",
            help="Passphrase for the root key; created with a random value if missing. "
            "Without it you are asked at the terminal.",
        )
        parser.add_argument(
            "--embedded-passphrase",
            action="store_true",
            help="Embedded default: if no CA key passphrase is configured, create one under "
            "the key directory.",
        )
        add_name_constraint_arguments(parser)
        add_hsm_key_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if CertificateAuthority.objects.ours().exists():
            raise CommandError("A CA hierarchy already exists; refusing to create another.")
        _check_ca_subject(options["organization"], options["country"])
        domains = constraint_domains(options)
        existing_key = hsm_key(options)
        if options["embedded_passphrase"] and keystore.ensure_embedded_passphrase():
            self.stdout.write("Created a CA key passphrase for the embedded default.")
        path = options["root_passphrase_file"]
        if path and not Path(path).exists():
            passphrase = new_passphrase_file(path)
            self.stdout.write(f"Wrote a new root key passphrase to {path}.")
        else:
            passphrase = read_passphrase(path, prompt="Root key passphrase: ")
        if len(passphrase) < 12:
            raise CommandError("The root key passphrase must be at least 12 characters.")
        try:
            root, issuing = services.pki_create(
                root=services.CaSpec(
                    name=options["root_name"],
                    slug=options["root_slug"],
                    algorithm=KeyAlgorithm(options["root_key_algorithm"]),
                    validity_days=options["root_validity_days"],
                ),
                issuing=services.CaSpec(
                    name=options["issuing_name"],
                    slug=options["issuing_slug"],
                    algorithm=KeyAlgorithm(options["issuing_key_algorithm"]),
                    validity_days=options["issuing_validity_days"],
                    existing_key=existing_key,
                    allow_extractable_key=options["allow_extractable_key"],
                ),
                base_url=options["base_url"],
                root_key_path=Path(options["root_key_out"]),
                root_passphrase=passphrase,
                organization_name=options["organization"],
                country_name=options["country"],
                mail_domains=domains,
            )
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"Created {root.name} (offline) and {issuing.name}."))
        self.stdout.write(describe_constraints(domains))
        where, warning = describe_key(issuing)
        self.stdout.write(where)
        if warning:
            self.stdout.write(self.style.WARNING(warning))
        problem = internal_host_problem(options["base_url"])
        if problem is not None:
            self.stdout.write(
                self.style.WARNING(
                    f"The CRL and CA URLs in these certificates use {options['base_url']}, "
                    f"which mail clients elsewhere cannot reach ({problem}): fine for a "
                    "trial, not for production (see `manage.py check --deploy`)."
                )
            )
        self.stdout.write(
            f"Root key: {options['root_key_out']} — move it to offline storage. "
            f"Sign the root's CRL with `manage.py sign_root_crl --key-file ...`."
        )


def _check_ca_subject(organization: str, country: str) -> None:
    """Refuse before any file is written: which flag or setting to fix, and why."""
    try:
        check_ca_subject(organization, country)
    except PolicyError as exc:
        if not country.strip():
            hint = "Give --country XX or set PKIPORTAL_COUNTRY_NAME."
        elif "country" in exc.message:
            hint = f"Fix --country {country!r} (default: PKIPORTAL_COUNTRY_NAME)."
        else:
            hint = "Give --organization or set PKIPORTAL_ORGANIZATION_NAME."
        raise CommandError(f"{exc.message} {hint}") from exc
