"""When each revoked certificate's CRL entry was queued, for the CRL lag /health/ and the
watchdog measure (a keyCompromise upgrade queues an old revocation again).

The certificate table is the portal's largest and this runs while the portal serves, so
the migration is not atomic and no step holds a lock for long. Interrupted anywhere, run
it again: each step is written to be repeated.

- the column is added, empty, unless a run before added it (a nullable column without a
  default: no table rewrite on PostgreSQL or SQLite);
- revoked certificates get revoked_at as the time their entry was queued, in batches of
  ``BATCH`` ids, each its own short transaction, only rows still empty (a repeated run
  skips what is done). Valid certificates keep it empty; an imported certificate revoked
  here gets it too, harmlessly: it has no CRL entry, so nothing reads it.

A revocation an old process makes after its batch was backfilled and before the restart
stays empty: the lag checks then read revoked_at, what they read before
(models.CRL_QUEUED_AT).
"""

from django.db import migrations, models, transaction

TABLE = "enrollment_certificate"
COLUMN = "queued_for_crl_at"
BATCH = 10_000


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


def backfill(apps, schema_editor):
    """revoked_at into the empty column of every revoked certificate, batch by batch."""
    alias = schema_editor.connection.alias
    certificates = apps.get_model("enrollment", "Certificate").objects.using(alias)
    first = certificates.aggregate(first=models.Min("pk"))["first"]
    if first is None:
        return
    low = first
    # The newest id is read again after each batch: rows written meanwhile are included.
    while low <= (certificates.aggregate(last=models.Max("pk"))["last"] or 0):
        with transaction.atomic(using=alias):
            certificates.filter(
                pk__gte=low,
                pk__lt=low + BATCH,
                revoked_at__isnull=False,
                queued_for_crl_at__isnull=True,
            ).update(queued_for_crl_at=models.F("revoked_at"))
        low += BATCH


class Migration(migrations.Migration):
    atomic = False  # the backfill commits batch by batch

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
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
