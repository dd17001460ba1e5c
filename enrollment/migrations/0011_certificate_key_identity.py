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
    """Read id and DER in batches and write the identities back with executemany (psycopg
    pipelines it): Django's bulk_update builds a CASE per batch and took ~1 ms a row."""
    Certificate = apps.get_model("enrollment", "Certificate")
    connection = schema_editor.connection
    quote = connection.ops.quote_name
    table = quote(Certificate._meta.db_table)
    select = (
        f"SELECT {quote('id')}, {quote('der')} FROM {table} "
        f"WHERE {quote('spki_sha256')} = '' AND {quote('id')} > %s ORDER BY {quote('id')} LIMIT %s"
    )
    update = f"UPDATE {table} SET {quote('spki_sha256')} = %s WHERE {quote('id')} = %s"
    last = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(select, [last, BATCH])
            rows = cursor.fetchall()
        if not rows:
            return
        identities = []
        for pk, der in rows:
            public_key = x509.load_der_x509_certificate(bytes(der)).public_key()
            spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            identities.append((hashlib.sha256(spki).hexdigest(), pk))  # = keys.spki_sha256()
        with connection.cursor() as cursor:
            cursor.executemany(update, identities)
        last = rows[-1][0]


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
