"""Templates may leave their key algorithms empty (all we support), and the admin says so."""

from django.db import migrations, models

import enrollment.models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0011_certificate_key_identity"),
    ]

    operations = [
        migrations.AlterField(
            model_name="certificatetemplate",
            name="allowed_key_algorithms",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text='A list of key algorithms, e.g. ["ec-p256", "rsa-3072"]; empty means all we support (rsa-2048, rsa-3072, rsa-4096, ec-p256, ec-p384).',
                validators=[enrollment.models.validate_key_algorithms],
            ),
        ),
    ]
