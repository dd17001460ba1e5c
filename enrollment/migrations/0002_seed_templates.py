"""Seed the three S/MIME templates every organisation starts with."""

from django.db import migrations

TEMPLATES = [
    {
        "slug": "smime-signing",
        "name": "S/MIME Signing",
        "description": "Sign your e-mail. The key is never archived: only you hold it.",
        "purpose": "signing",
        "archive_key": False,
        "allow_csr": True,
    },
    {
        "slug": "smime-encryption",
        "name": "S/MIME Encryption",
        "description": (
            "Receive encrypted e-mail. The portal generates the key and archives a copy "
            "encrypted to the key recovery agents, so mail stays readable if the key is lost."
        ),
        "purpose": "encryption",
        "archive_key": True,
        "allow_csr": False,
    },
    {
        "slug": "smime-dual-use",
        "name": "S/MIME Dual-use",
        "description": (
            "Sign and receive encrypted e-mail with one key (the classic 'User' template). "
            "The key is not archived."
        ),
        "purpose": "dual_use",
        "archive_key": False,
        "allow_csr": True,
    },
]


def seed(apps, schema_editor):
    CertificateTemplate = apps.get_model("enrollment", "CertificateTemplate")
    for values in TEMPLATES:
        CertificateTemplate.objects.update_or_create(
            slug=values["slug"],
            defaults={
                **values,
                "generation": "strict",
                "validity_days": 365,
                "allowed_key_algorithms": [],
                "allow_server_key": True,
                "requires_approval": False,
                "is_active": True,
            },
        )


def unseed(apps, schema_editor):
    CertificateTemplate = apps.get_model("enrollment", "CertificateTemplate")
    CertificateTemplate.objects.filter(slug__in=[t["slug"] for t in TEMPLATES]).delete()


class Migration(migrations.Migration):
    dependencies = [("enrollment", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
