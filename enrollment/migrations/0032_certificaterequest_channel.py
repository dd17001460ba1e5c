"""CertificateRequest.channel: how a request came (web, api, est, rollout), stored instead
of read from EST's "est:" Idempotency-Key prefix. 0033 then sets the existing rows' channel
and builds the index EST's repeat lookup needs.

The request table is one of the portal's largest and this runs while the portal serves.
This migration is the column alone, atomic, so that an interrupted run leaves either
nothing or the whole column (the slow, non-atomic steps are 0033's, which can be repeated):

- the column is added NOT NULL with the constant default 'unknown', kept as the
  database's default (``db_default``): a catalogue change on PostgreSQL 11+ (no rewrite),
  under a brief lock with ``lock_timeout`` set (``SET LOCAL``: for this transaction only),
  and rows the old code still writes until the restart say 'unknown' instead of failing.
"""

from django.db import migrations, models


def set_lock_timeout(apps, schema_editor):
    """A catalogue change waiting behind a long transaction would queue every request of
    the portal behind it; give up after 10 s instead (nothing is changed: run it again)."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET LOCAL lock_timeout = '10s'")


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0031_imported_ca"),
    ]

    operations = [
        migrations.RunPython(set_lock_timeout, set_lock_timeout),
        migrations.AddField(
            model_name="certificaterequest",
            name="channel",
            field=models.CharField(
                choices=[
                    ("web", "Web (/enroll/)"),
                    ("api", "REST API"),
                    ("est", "EST (RFC 7030)"),
                    ("rollout", "Roll-out invitation"),
                    ("unknown", "Not recorded"),
                ],
                db_default="unknown",
                default="unknown",
                editable=False,
                max_length=10,
            ),
        ),
    ]
