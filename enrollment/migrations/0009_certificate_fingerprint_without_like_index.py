"""The certificate fingerprint stays unique, without PostgreSQL's unused LIKE twin index.

``unique=True`` on a CharField makes PostgreSQL's schema editor build a second,
varchar_pattern_ops index for LIKE queries; fingerprints are only ever looked up whole.
The constraint is added before the field loses ``unique``, so uniqueness never lapses.
At a million certificates the new unique index takes a few seconds to build, during
which writes to the certificate table wait.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0008_certificate_newest_index"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="certificate",
            constraint=models.UniqueConstraint(
                fields=("fingerprint_sha256",), name="cert_fingerprint_sha256_uniq"
            ),
        ),
        migrations.AlterField(
            model_name="certificate",
            name="fingerprint_sha256",
            field=models.CharField(max_length=64),
        ),
    ]
