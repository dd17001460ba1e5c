"""cACompromise is no longer a reason a subscriber certificate can be revoked for.

Choices only: no column changes. A row revoked for it before keeps its reason.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0009_certificate_fingerprint_without_like_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="certificate",
            name="revocation_reason",
            field=models.CharField(
                blank=True,
                choices=[
                    ("keyCompromise", "Key compromise"),
                    ("affiliationChanged", "Affiliation changed"),
                    ("superseded", "Superseded"),
                    ("cessationOfOperation", "Cessation of operation"),
                    ("privilegeWithdrawn", "Privilege withdrawn"),
                ],
                help_text="Empty: no reason code (RFC 5280 'unspecified' is never encoded).",
                max_length=30,
            ),
        ),
    ]
