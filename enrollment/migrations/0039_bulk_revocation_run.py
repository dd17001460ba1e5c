"""The admin's bulk revocation runs, each a row the task reads (enrollment.bulk_revoke).

Runs started before this exist as audit events only: no row is made for them."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0038_api_token_second_factor_kind"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="BulkRevocationRun",
            fields=[
                (
                    "event",
                    models.OneToOneField(
                        help_text="Its .queued audit event, whose id is the run's number.",
                        on_delete=django.db.models.deletion.PROTECT,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="enrollment.auditevent",
                    ),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("source_address", models.GenericIPAddressField(blank=True, null=True)),
                (
                    "reason",
                    models.CharField(
                        choices=[
                            ("keyCompromise", "Key compromise"),
                            ("affiliationChanged", "Affiliation changed"),
                            ("superseded", "Superseded"),
                            ("cessationOfOperation", "Cessation of operation"),
                            ("privilegeWithdrawn", "Privilege withdrawn"),
                        ],
                        max_length=30,
                    ),
                ),
                ("invalidity_date", models.DateTimeField(blank=True, null=True)),
                (
                    "certificate_ids",
                    models.JSONField(
                        default=list,
                        help_text="The certificates to revoke, in id order, as confirmed.",
                    ),
                ),
                ("total", models.PositiveIntegerField(help_text="How many certificate_ids.")),
                (
                    "position",
                    models.PositiveIntegerField(
                        default=0,
                        help_text="How many of certificate_ids are done: the next batch starts there.",
                    ),
                ),
                (
                    "selected",
                    models.PositiveIntegerField(
                        help_text="The whole selection, those already revoked or expired when confirmed included."
                    ),
                ),
                ("revoked", models.PositiveIntegerField(default=0)),
                (
                    "skipped",
                    models.PositiveIntegerField(
                        default=0,
                        help_text="Already revoked or expired: when confirmed, and since.",
                    ),
                ),
                ("failed", models.PositiveIntegerField(default=0)),
                (
                    "imported",
                    models.PositiveIntegerField(
                        default=0, help_text="Of those revoked, another CA's: recorded here only."
                    ),
                ),
                ("batches", models.PositiveIntegerField(default=0)),
                (
                    "failures",
                    models.JSONField(
                        blank=True,
                        default=list,
                        help_text="The first few certificates refused, and why.",
                    ),
                ),
                (
                    "error",
                    models.CharField(blank=True, help_text="Why it stopped early.", max_length=500),
                ),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("queued", "Queued"),
                            ("running", "Running"),
                            ("done", "Finished"),
                            ("failed", "Finished with failures"),
                            ("stopped", "Stopped"),
                        ],
                        default="queued",
                        max_length=10,
                    ),
                ),
                (
                    "claim",
                    models.CharField(
                        blank=True,
                        help_text="The one task message (its id), or request, that may work on it now.",
                        max_length=64,
                    ),
                ),
                (
                    "heartbeat_at",
                    models.DateTimeField(
                        help_text="When it was queued or claimed, or its last batch committed."
                    ),
                ),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("resumes", models.PositiveIntegerField(default=0)),
                (
                    "actor",
                    models.ForeignKey(
                        help_text="Whose name the revocations are in: who started it, or last resumed it.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "started_by",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("position__lte", models.F("total"))),
                        name="bulk_run_position_within",
                    )
                ],
            },
        ),
    ]
