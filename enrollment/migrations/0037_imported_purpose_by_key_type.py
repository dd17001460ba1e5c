"""Imported certificates' purpose from their key type as well as their keyUsage.

The importer took keyUsage alone: an EC certificate with keyEncipherment (which EC cannot
do) was stored as encryption or dual-use, and the directory would offer it to encrypt to.
Only certificates without a template (imported ones) are read again; the logic is
enrollment.x509.importing.key_uses as it stood when this was written, kept here so the
migration stays what it was.
"""

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from django.db import migrations

SIGNING_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    dsa.DSAPublicKey,
)
AGREEMENT_KEYS = (ec.EllipticCurvePublicKey, x25519.X25519PublicKey, x448.X448PublicKey)
BATCH = 2000


def purpose_of(der: bytes) -> str | None:
    """signing, encryption or dual_use; None when the certificate cannot be read."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        key = certificate.public_key()
    except Exception:  # noqa: BLE001  # whatever the stored bytes are, leave the row be
        return None
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    except Exception:  # noqa: BLE001  # a malformed extension: leave the row be
        return None
    signs = isinstance(key, SIGNING_KEYS) and (
        usage is None or usage.digital_signature or usage.content_commitment
    )
    if isinstance(key, rsa.RSAPublicKey):
        encrypts = usage is None or usage.key_encipherment
    elif isinstance(key, AGREEMENT_KEYS):
        encrypts = usage is None or usage.key_agreement
    else:
        encrypts = False
    if encrypts:
        return "dual_use" if signs else "encryption"
    return "signing"


def forwards(apps, schema_editor):
    Certificate = apps.get_model("enrollment", "Certificate")
    rows = (
        Certificate.objects.filter(template__isnull=True)
        .exclude(purpose="signing")  # from keyUsage alone, signing stays signing
        .only("pk", "der", "purpose")
        .order_by("pk")
    )
    changed = []
    for row in rows.iterator(chunk_size=BATCH):
        found = purpose_of(bytes(row.der))
        if found is not None and found != row.purpose:
            row.purpose = found
            changed.append(row)
        if len(changed) >= BATCH:
            Certificate.objects.bulk_update(changed, ["purpose"])
            changed = []
    if changed:
        Certificate.objects.bulk_update(changed, ["purpose"])


class Migration(migrations.Migration):
    dependencies = [("enrollment", "0036_digest")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop, elidable=True)]
