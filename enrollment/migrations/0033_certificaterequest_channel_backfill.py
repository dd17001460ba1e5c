"""The channel of the requests made before 0032 added the column, and the index EST's
repeat lookup needs.

The request table is one of the portal's largest and this runs while the portal serves,
so the migration is not atomic and no step holds a lock for long. Interrupted anywhere
(a batch, the index build), run it again: each step is written to be repeated.

- the backfill updates the existing rows in batches of ``BATCH`` ids, each its own short
  transaction, only rows still 'unknown' (a repeated run skips what is done);
- on PostgreSQL, request_est_csr_idx is built ``CONCURRENTLY``: (requester_id,
  sha256(csr)) WHERE channel = 'est', what est._waiting_with looks a repeated CSR up by
  (sha256, built into PostgreSQL 11+, not md5: a FIPS-mode server refuses md5). A build
  that failed half-way leaves an INVALID index of that name, dropped first. Outside the
  model state (as 0007's trigram indexes): SQLite cannot index a digest of bytes, and scans.

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


def backfill_batch(requests, invitations, low, high):
    """Rows low <= id < high still 'unknown', in the caller's transaction."""
    batch = requests.filter(pk__gte=low, pk__lt=high, channel="unknown")
    batch.filter(idempotency_key__startswith="est:").update(channel="est")
    batch.filter(
        pk__in=invitations.filter(request_id__gte=low, request_id__lt=high).values("request_id")
    ).update(channel="rollout")
    batch.exclude(idempotency_key="").update(channel="api")  # "est:" ones are done


def backfill(apps, schema_editor):
    """Each existing row's channel, as far as its stored columns tell (module docstring)."""
    alias = schema_editor.connection.alias
    requests = apps.get_model("enrollment", "CertificateRequest").objects.using(alias)
    invitations = apps.get_model("enrollment", "RolloutInvitation").objects.using(alias)
    first = requests.aggregate(first=models.Min("pk"))["first"]
    if first is None:
        return
    low = first
    # The newest id is read again after each batch: rows written meanwhile are included.
    while low <= (requests.aggregate(last=models.Max("pk"))["last"] or 0):
        with transaction.atomic(using=alias):
            backfill_batch(requests, invitations, low, low + BATCH)
        low += BATCH


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
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
            "(requester_id, sha256(csr)) WHERE channel = 'est'"
        )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY; the backfill commits batch by batch

    dependencies = [
        ("enrollment", "0032_certificaterequest_channel"),
    ]

    operations = [
        # Reversed, 0032 drops the column and the channels with it: EST's code before
        # these migrations reads its requests by their "est:" keys again, which are kept.
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.RunPython(create_index, drop_index),
    ]
