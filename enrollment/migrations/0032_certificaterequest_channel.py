"""CertificateRequest.channel: how a request came (web, api, est, rollout), stored instead
of read from EST's "est:" Idempotency-Key prefix; and the index EST's repeat lookup needs.

The request table is one of the portal's largest and this runs while the portal serves,
so the migration is not atomic and no step holds a lock for long:

- the column is added NOT NULL with the constant default 'unknown', kept as the
  database's default (``db_default``): a catalogue change on PostgreSQL 11+ (no rewrite),
  under a brief lock with ``lock_timeout`` set, and rows the old code still writes until
  the restart say 'unknown' instead of failing;
- the backfill updates the existing rows in batches of ``BATCH`` ids, each its own short
  transaction, only rows still 'unknown' (so a run interrupted half-way can be repeated);
- on PostgreSQL, request_est_csr_idx is built ``CONCURRENTLY``: (requester_id, md5(csr))
  WHERE channel = 'est', what est._waiting_with looks a repeated CSR up by. Outside the
  model state (as 0007's trigram indexes): SQLite cannot index an md5 of bytes, and scans.

What the backfill can tell, and what it cannot:

- an Idempotency-Key starting "est:" was made by EST (the API has refused client keys
  with that prefix since EST came): 'est';
- a request a roll-out invitation points to was made by the roll-out: 'rollout';
- any other Idempotency-Key was an API client's (the web never sets one): 'api';
- the rest were made by the web or by an API client that sent no key, and nothing stored
  tells them apart (the audit events of neither named a channel): 'unknown', rather than
  a guess that would then read as fact.

A request an old process makes after its batch was backfilled and before the restart
stays 'unknown' too; an EST one among them is still found again by its key (est._made_with),
only the lookup across templates (est._waiting_with) and the audit's "channel" miss it.
"""

from django.db import migrations, models, transaction

TABLE = "enrollment_certificaterequest"
INDEX = "request_est_csr_idx"
BATCH = 10_000


def _postgresql(schema_editor):
    return schema_editor.connection.vendor == "postgresql"


def set_lock_timeout(apps, schema_editor):
    """For the session: a catalogue change waiting behind a long transaction would queue
    every request of the portal behind it; give up after 10 s instead (run it again)."""
    if _postgresql(schema_editor):
        schema_editor.execute("SET lock_timeout = '10s'")


def reset_lock_timeout(apps, schema_editor):
    if _postgresql(schema_editor):
        schema_editor.execute("RESET lock_timeout")


def backfill(apps, schema_editor):
    """Each existing row's channel, as far as its stored columns tell (module docstring)."""
    alias = schema_editor.connection.alias
    Request = apps.get_model("enrollment", "CertificateRequest")
    Invitation = apps.get_model("enrollment", "RolloutInvitation")
    requests = Request.objects.using(alias)
    first = requests.aggregate(first=models.Min("pk"))["first"]
    if first is None:
        return
    low = first
    # The newest id is read again after each batch: rows written meanwhile are included.
    while low <= (requests.aggregate(last=models.Max("pk"))["last"] or 0):
        with transaction.atomic(using=alias):
            batch = requests.filter(pk__gte=low, pk__lt=low + BATCH, channel="unknown")
            batch.filter(idempotency_key__startswith="est:").update(channel="est")
            batch.filter(
                pk__in=Invitation.objects.using(alias)
                .filter(request_id__gte=low, request_id__lt=low + BATCH)
                .values("request_id")
            ).update(channel="rollout")
            batch.exclude(idempotency_key="").update(channel="api")  # "est:" ones are done
        low += BATCH


def create_index(apps, schema_editor):
    if not _postgresql(schema_editor):
        return
    with schema_editor.connection.cursor() as cursor:
        # A build that failed half-way leaves an INVALID index of that name: drop it.
        cursor.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND NOT i.indisvalid",
            [INDEX],
        )
        if cursor.fetchone() is not None:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        cursor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON {TABLE} "
            "(requester_id, md5(csr)) WHERE channel = 'est'"
        )


def drop_index(apps, schema_editor):
    if _postgresql(schema_editor):
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY; the backfill commits batch by batch

    dependencies = [
        ("enrollment", "0031_imported_ca"),
    ]

    operations = [
        migrations.RunPython(set_lock_timeout, reset_lock_timeout),
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
        migrations.RunPython(reset_lock_timeout, set_lock_timeout),
        # Reversed, the column goes and the channels with it: EST's code before this
        # migration reads its requests by their "est:" keys again, which are kept.
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.RunPython(create_index, drop_index),
    ]
