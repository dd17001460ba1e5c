"""A row per certified key, where issuance and a keyCompromise revocation meet (KeyIdentity).

Filled from the certificates' key identities (migration 0011), a key compromised if any
of its certificates was revoked for keyCompromise. Replaces the partial index that
issuance asked before: a read of committed rows could not see a compromise being
committed at that moment.
"""

from django.db import migrations, models
from django.db.models import Q

BATCH = 5000


def keys_from_certificates(apps, schema_editor):
    Certificate = apps.get_model("enrollment", "Certificate")
    KeyIdentity = apps.get_model("enrollment", "KeyIdentity")
    rows = (
        Certificate.objects.exclude(spki_sha256="")
        .values("spki_sha256")
        .annotate(compromised=models.Count("pk", filter=Q(revocation_reason="keyCompromise")))
        .order_by()
    )
    batch = []
    for row in rows.iterator(chunk_size=BATCH):
        batch.append(KeyIdentity(row["spki_sha256"], row["compromised"] > 0))
        if len(batch) == BATCH:
            KeyIdentity.objects.bulk_create(batch)
            batch = []
    KeyIdentity.objects.bulk_create(batch)


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0012_template_key_algorithms_optional"),
    ]

    operations = [
        migrations.CreateModel(
            name="KeyIdentity",
            fields=[
                (
                    "spki_sha256",
                    models.CharField(max_length=64, primary_key=True, serialize=False),
                ),
                ("compromised", models.BooleanField(default=False)),
            ],
        ),
        migrations.RunPython(keys_from_certificates, migrations.RunPython.noop, elidable=True),
        migrations.RemoveIndex(
            model_name="certificate",
            name="cert_compromised_key_idx",
        ),
    ]
