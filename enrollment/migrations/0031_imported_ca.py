"""CertificateAuthority.is_imported: another CA whose certificates manage.py
import_certificates brought in; never online, the portal never signs or revokes for it.
"""

from typing import Any

from django.db import migrations, models

IMPORTED_ROWS = (
    "Cannot reverse enrollment 0031: {count} imported CA(s) exist ({names}). Without "
    "is_imported they would become roots of the portal's own hierarchy, with their "
    "certificates revocable on its CRLs. Delete the imported certificates and CAs first "
    "(they can be imported again after a forward migration)."
)


def refuse_while_imported(apps: Any, schema_editor: Any) -> None:
    """Reversing drops is_imported: refuse while a row needs it."""
    authority = apps.get_model("enrollment", "CertificateAuthority")
    imported = list(
        authority.objects.using(schema_editor.connection.alias)
        .filter(is_imported=True)
        .values_list("name", flat=True)[:5]
    )
    if imported:
        count = (
            authority.objects.using(schema_editor.connection.alias).filter(is_imported=True).count()
        )
        raise RuntimeError(IMPORTED_ROWS.format(count=count, names=", ".join(imported)))


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
        # Last, so that reversing runs it first, while is_imported is still there.
        migrations.RunPython(migrations.RunPython.noop, refuse_while_imported),
    ]
