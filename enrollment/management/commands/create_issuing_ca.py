"""Create a new online issuing CA under the offline root: the successor of one that nears
its end. The root key is read from its file for this command only and never stored."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Max
from django.utils import timezone

from enrollment import keystore, services
from enrollment.checks import internal_host_problem
from enrollment.exceptions import EnrollmentError
from enrollment.management.commands._helpers import (
    add_hsm_key_arguments,
    add_name_constraint_arguments,
    constraint_domains,
    describe_constraints,
    describe_key,
    get_ca,
    hsm_key,
    read_passphrase,
    switched,
)
from enrollment.models import CertificateAuthority, CertificateTemplate
from enrollment.x509.keys import KeyAlgorithm

ALGORITHMS = [algorithm.value for algorithm in KeyAlgorithm]


class Command(BaseCommand):
    help = (
        "Create a new online issuing CA signed by the offline root (its key file is needed). "
        "Templates keep their CA unless --make-default is given; see switch_issuing_ca."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        year = timezone.now().year
        parser.add_argument(
            "--root-key-file", required=True, help="The offline root's encrypted key file."
        )
        parser.add_argument(
            "--root-passphrase-file", help="The root key's passphrase; default: asked."
        )
        parser.add_argument("--root", help="Root CA slug (default: the only root).")
        parser.add_argument(
            "--name",
            help="Common name of the new CA, different from every other CA's "
            f'(default: "<organisation> S/MIME Issuing CA {year}").',
        )
        parser.add_argument(
            "--slug",
            default=f"issuing-{year}",
            help="Names /pki/<slug>.crt, .crl, -chain.p7b and the key file (default: %(default)s).",
        )
        parser.add_argument("--key-algorithm", choices=ALGORITHMS, default="ec-p256")
        parser.add_argument(
            "--validity-days",
            type=int,
            default=1825,
            help="Cut to the root's own end if it ends sooner (default: %(default)s).",
        )
        parser.add_argument("--organization", help="organizationName (default: the root's).")
        parser.add_argument("--country", help="Two-letter countryName (default: the root's).")
        parser.add_argument(
            "--base-url",
            default=settings.PKIPORTAL_BASE_URL,
            help="Public http:// URL of /pki/, embedded in every certificate it issues.",
        )
        parser.add_argument(
            "--make-default",
            action="store_true",
            help="Also move the templates of the current default issuing CA to the new one "
            "at once (otherwise run switch_issuing_ca when clients are ready).",
        )
        add_name_constraint_arguments(parser)
        add_hsm_key_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        root = _root(options["root"])
        organization = options["organization"] or _attribute(root, NameOID.ORGANIZATION_NAME)
        country = options["country"] or _attribute(root, NameOID.COUNTRY_NAME)
        name = options["name"] or f"{organization} S/MIME Issuing CA {timezone.now().year}"
        domains = constraint_domains(options)
        existing_key = hsm_key(options)
        key_file = Path(options["root_key_file"])
        if not key_file.is_file():
            raise CommandError(f"The root key file {key_file} does not exist.")
        passphrase = read_passphrase(
            options["root_passphrase_file"], prompt="Root key passphrase: "
        )
        try:
            ca = services.issuing_ca_create(
                spec=services.CaSpec(
                    name=name,
                    slug=options["slug"],
                    algorithm=KeyAlgorithm(options["key_algorithm"]),
                    validity_days=options["validity_days"],
                    existing_key=existing_key,
                    allow_extractable_key=options["allow_extractable_key"],
                ),
                root=root,
                root_key=keystore.OfflineKey(key_file, passphrase),
                base_url=options["base_url"],
                organization_name=organization,
                country_name=country,
                mail_domains=domains,
            )
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Created {ca.name} ({ca.slug}), valid {ca.not_before:%Y-%m-%d} to "
                f"{ca.not_after:%Y-%m-%d}, with its first CRL: /pki/{ca.slug}.crt, "
                f"/pki/{ca.slug}.crl, /pki/{ca.slug}-chain.p7b."
            )
        )
        self.stdout.write(describe_constraints(domains))
        where, warning = describe_key(ca)
        self.stdout.write(where)
        if warning:
            self.stdout.write(self.style.WARNING(warning))
        self._say_what_limits_it(ca, root, options["validity_days"], options["base_url"])
        if options["make_default"]:
            try:
                switch = services.issuing_ca_switch(to=ca)
            except EnrollmentError as exc:
                raise CommandError(
                    f"{ca.name} was created but templates were not moved to it: {exc.message}"
                ) from exc
            self.stdout.write(switched(switch))
        else:
            self.stdout.write(
                "Templates still issue from their current CA. When clients know the new CA, "
                f"run `manage.py switch_issuing_ca {ca.slug}`."
            )

    def _say_what_limits_it(
        self, ca: CertificateAuthority, root: CertificateAuthority, days: int, base_url: str
    ) -> None:
        if ca.not_after - ca.not_before < timedelta(days=days) - timedelta(seconds=1):
            self.stdout.write(
                self.style.WARNING(
                    f"Its validity was cut to the root's end, {root.not_after:%Y-%m-%d}: the "
                    "root needs replacing before then (root rollover is not automated)."
                )
            )
        longest = CertificateTemplate.objects.filter(is_active=True).aggregate(
            days=Max("validity_days")
        )["days"]
        if longest and ca.not_after - timezone.now() < timedelta(days=longest):
            self.stdout.write(
                self.style.WARNING(
                    f"It ends before a {longest}-day certificate issued today would: "
                    "certificates from it are cut short from the start."
                )
            )
        problem = internal_host_problem(base_url)
        if problem is not None:
            self.stdout.write(
                self.style.WARNING(
                    f"Its certificates will carry {base_url}, which mail clients elsewhere "
                    f"cannot reach ({problem})."
                )
            )


def _root(slug: str | None) -> CertificateAuthority:
    if not CertificateAuthority.objects.roots().exists():
        raise CommandError("There is no root CA: create the hierarchy with `manage.py create_pki`.")
    return get_ca(slug, root=True)


def _attribute(ca: CertificateAuthority, oid: Any) -> str:
    values = ca.certificate.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""
