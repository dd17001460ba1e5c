"""Each certificate's key identity (SHA-256 of its SubjectPublicKeyInfo), for existing rows too.

A key revoked for keyCompromise must never be certified again, and every other
certificate of that key must be revoked with it (S/MIME BR 6.1.1.3, 4.9.1.1): both need
to find certificates by key. Existing rows get the value from their DER, in batches; at a
million certificates that reads and rewrites every row once (minutes), while writes to
the certificate table wait.
"""

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from django.db import migrations, models

BATCH = 2000


def key_identities(apps, schema_editor):
    Certificate = apps.get_model("enrollment", "Certificate")
    pending = Certificate.objects.filter(spki_sha256="").order_by("pk")
    last = 0
    while True:
        batch = list(pending.filter(pk__gt=last).only("pk", "der")[:BATCH])
        if not batch:
            return
        for row in batch:
            public_key = x509.load_der_x509_certificate(bytes(row.der)).public_key()
            spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            row.spki_sha256 = hashlib.sha256(spki).hexdigest()  # = keys.spki_sha256()
        Certificate.objects.bulk_update(batch, ["spki_sha256"])
        last = batch[-1].pk


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0010_subscriber_revocation_reasons"),
    ]

    operations = [
        migrations.AddField(
            model_name="certificate",
            name="spki_sha256",
            field=models.CharField(default="", editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.RunPython(key_identities, migrations.RunPython.noop, elidable=True),
        migrations.AddIndex(
            model_name="certificate",
            index=models.Index(
                condition=models.Q(("revocation_reason", "keyCompromise")),
                fields=["spki_sha256"],
                name="cert_compromised_key_idx",
            ),
        ),
    ]
