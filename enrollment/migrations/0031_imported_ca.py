"""CertificateAuthority.is_imported: another CA whose certificates manage.py
import_certificates brought in; never online, the portal never signs or revokes for it.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0030_leaver_run_mailbox_counts"),
    ]

    operations = [
        migrations.AddField(
            model_name="certificateauthority",
            name="is_imported",
            field=models.BooleanField(
                default=False,
                help_text="Another CA whose certificates were imported; the portal never acts for it.",
            ),
        ),
        migrations.AddConstraint(
            model_name="certificateauthority",
            constraint=models.CheckConstraint(
                condition=models.Q(("is_imported", False))
                | models.Q(("is_online", False), ("key_reference", "")),
                name="imported_ca_is_never_online",
            ),
        ),
    ]
