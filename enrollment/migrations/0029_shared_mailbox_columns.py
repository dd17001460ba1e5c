"""Shared mailboxes: a nullable mailbox on certificates and on requests (0027 made the table).

The certificate and request tables are the portal's largest (a million certificates), and
this runs while the portal serves. On PostgreSQL, so that neither is locked for longer than
a catalogue change, the migration is not atomic and each step commits on its own:

- ``ADD COLUMN ... NULL`` without a default changes the catalogue only (no rewrite), under
  a brief ACCESS EXCLUSIVE lock; the foreign key and the CHECK constraints are added
  ``NOT VALID`` in the same short transaction (no scan: new rows are checked at once);
- ``VALIDATE CONSTRAINT`` then scans each table under SHARE UPDATE EXCLUSIVE, which lets
  reads and writes go on (at a million certificates: a few seconds each);
- the indexes are partial (``WHERE mailbox_id IS NOT NULL``: the few shared-mailbox rows,
  all their queries need) and built ``CONCURRENTLY``, again without blocking writes.

Interrupted half-way, run it again: every step is written to be repeated (``IF NOT
EXISTS``, constraints looked up first). Other databases (SQLite in development) take
Django's ordinary operations. The model state is the same either way.

Reversing it while any certificate or request is a shared mailbox's is refused: dropping
the column would turn each into its delegate's personal one.
"""

import django.db.models.deletion
from django.db import migrations, models, transaction

CERTIFICATE = "enrollment_certificate"
REQUEST = "enrollment_certificaterequest"
MAILBOX = "enrollment_sharedmailbox"


def _constraint_exists(cursor, name):
    cursor.execute("SELECT 1 FROM pg_constraint WHERE conname = %s", [name])
    return cursor.fetchone() is not None


def _add_mailbox_column(table, fk_name, check_name, check_sql):
    """Column, foreign key and CHECK in one short transaction, neither constraint scanning
    the table yet (NOT VALID); then each validated without blocking writes."""

    def forwards(schema_editor):
        connection = schema_editor.connection
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '10s'")  # never queue the portal long
            cursor.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS mailbox_id bigint NULL")
            if not _constraint_exists(cursor, fk_name):
                cursor.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT {fk_name} FOREIGN KEY (mailbox_id) "
                    f"REFERENCES {MAILBOX} (id) DEFERRABLE INITIALLY DEFERRED NOT VALID"
                )
            if not _constraint_exists(cursor, check_name):
                cursor.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT {check_name} CHECK ({check_sql}) NOT VALID"
                )
        for name in (fk_name, check_name):
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")

    def backwards(schema_editor):
        connection = schema_editor.connection
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS mailbox_id CASCADE")

    return forwards, backwards


def _add_index_concurrently(table, name):
    def forwards(schema_editor):
        with schema_editor.connection.cursor() as cursor:
            # A build that failed half-way leaves an INVALID index of that name: drop it.
            cursor.execute(
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s AND NOT i.indisvalid",
                [name],
            )
            if cursor.fetchone() is not None:
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            cursor.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} (mailbox_id) "
                "WHERE mailbox_id IS NOT NULL"
            )

    def backwards(schema_editor):
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")

    return forwards, backwards


class OnPostgreSQL(migrations.operations.base.Operation):
    """``operation``'s state change everywhere; its schema change on other databases, in a
    transaction; on PostgreSQL ``forwards``/``backwards`` (schema_editor) instead, which
    manage their own transactions (the migration is not atomic)."""

    reduces_to_sql = False
    reversible = True

    def __init__(self, operation, forwards, backwards):
        self.operation = operation
        self.forwards = forwards
        self.backwards = backwards

    def deconstruct(self):
        return (self.__class__.__name__, [self.operation, self.forwards, self.backwards], {})

    def state_forwards(self, app_label, state):
        self.operation.state_forwards(app_label, state)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            self.forwards(schema_editor)
            return
        with transaction.atomic(using=schema_editor.connection.alias):
            self.operation.database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            self.backwards(schema_editor)
            return
        with transaction.atomic(using=schema_editor.connection.alias):
            self.operation.database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self):
        return f"{self.operation.describe()} (on PostgreSQL without blocking writes)"


def _nothing(schema_editor):
    """Dropping the column (above) dropped its constraint too."""


def refuse_reverse_with_mailboxes(apps, schema_editor):
    """Reversed, the mailbox columns go: a mailbox's requests would become its delegate's
    personal ones and its certificates lose their holders. Only an unused feature goes."""
    Certificate = apps.get_model("enrollment", "Certificate")
    CertificateRequest = apps.get_model("enrollment", "CertificateRequest")
    certificates = Certificate.objects.filter(mailbox__isnull=False).count()
    requests = CertificateRequest.objects.filter(mailbox__isnull=False).count()
    if certificates or requests:
        raise RuntimeError(
            f"Refusing to reverse the shared mailboxes: {certificates} certificate(s) and "
            f"{requests} request(s) are a shared mailbox's, and reversing would turn them "
            "into their delegates' personal ones. Nothing was changed."
        )


OWNER_OR_MAILBOX = models.CheckConstraint(
    condition=models.Q(("owner__isnull", True), ("mailbox__isnull", True), _connector="OR"),
    name="certificate_owner_or_mailbox",
)
SERVER_KEY = models.CheckConstraint(
    condition=models.Q(("mailbox__isnull", True), ("key_source", "server"), _connector="OR"),
    name="mailbox_request_has_server_key",
)
CERT_INDEX = models.Index(
    condition=models.Q(("mailbox__isnull", False)), fields=["mailbox"], name="cert_mailbox_idx"
)
REQUEST_INDEX = models.Index(
    condition=models.Q(("mailbox__isnull", False)), fields=["mailbox"], name="request_mailbox_idx"
)


def _mailbox_field(related_name):
    return models.ForeignKey(
        blank=True,
        db_index=False,
        null=True,
        on_delete=django.db.models.deletion.PROTECT,
        related_name=related_name,
        to="enrollment.sharedmailbox",
    )


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY; each step below commits on its own

    dependencies = [
        ("enrollment", "0028_api_token_second_factor"),
    ]

    operations = [
        OnPostgreSQL(
            migrations.AddField(
                model_name="certificate", name="mailbox", field=_mailbox_field("certificates")
            ),
            *_add_mailbox_column(
                CERTIFICATE,
                "certificate_mailbox_id_fk",
                "certificate_owner_or_mailbox",
                "owner_id IS NULL OR mailbox_id IS NULL",
            ),
        ),
        OnPostgreSQL(
            migrations.AddConstraint(model_name="certificate", constraint=OWNER_OR_MAILBOX),
            _nothing,
            _nothing,
        ),
        OnPostgreSQL(
            migrations.AddIndex(model_name="certificate", index=CERT_INDEX),
            *_add_index_concurrently(CERTIFICATE, "cert_mailbox_idx"),
        ),
        # Requests: the same.
        OnPostgreSQL(
            migrations.AddField(
                model_name="certificaterequest", name="mailbox", field=_mailbox_field("requests")
            ),
            *_add_mailbox_column(
                REQUEST,
                "request_mailbox_id_fk",
                "mailbox_request_has_server_key",
                "mailbox_id IS NULL OR key_source = 'server'",
            ),
        ),
        OnPostgreSQL(
            migrations.AddConstraint(model_name="certificaterequest", constraint=SERVER_KEY),
            _nothing,
            _nothing,
        ),
        OnPostgreSQL(
            migrations.AddIndex(model_name="certificaterequest", index=REQUEST_INDEX),
            *_add_index_concurrently(REQUEST, "request_mailbox_idx"),
        ),
        # Last, so that reversing runs it first, before anything is dropped.
        migrations.RunPython(migrations.RunPython.noop, refuse_reverse_with_mailboxes),
    ]
