"""When each revoked certificate's CRL entry was queued, for the CRL lag /health/ and the
watchdog measure (a keyCompromise upgrade queues an old revocation again).

Only the column: it is added, empty, unless a run before added it (a nullable column
without a default: no table rewrite on PostgreSQL or SQLite, and a repeated run skips it).

No backfill. Every reader takes revoked_at where the column is empty
(models.CRL_QUEUED_AT), which is what a backfill would have written, and it must do so
anyway for revocations an older process makes until it restarts. The first version of
this migration copied revoked_at into every revoked row in batches: on 1,000,011 revoked
certificates that took 218 s here, each batch holding 10,000 row locks for ~2 s while the
portal served, and left a new version of each row and of its index entries behind.
Installations that ran it hold the same values, so the two versions read alike.
"""

from django.db import migrations, models

TABLE = "enrollment_certificate"
COLUMN = "queued_for_crl_at"


def _field():
    field = models.DateTimeField(null=True, blank=True, editable=False)
    field.set_attributes_from_name(COLUMN)
    return field


def _has_column(schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        return COLUMN in {
            column.name for column in connection.introspection.get_table_description(cursor, TABLE)
        }


def add_column(apps, schema_editor):
    if not _has_column(schema_editor):
        schema_editor.add_field(apps.get_model("enrollment", "Certificate"), _field())


def drop_column(apps, schema_editor):
    if _has_column(schema_editor):
        schema_editor.remove_field(apps.get_model("enrollment", "Certificate"), _field())


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0033_certificaterequest_channel_backfill"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="certificate",
                    name=COLUMN,
                    field=models.DateTimeField(blank=True, editable=False, null=True),
                ),
            ],
            database_operations=[migrations.RunPython(add_column, drop_column)],
        ),
    ]
