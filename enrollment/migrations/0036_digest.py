"""Each RA officer's notices of requests awaiting approval: when the last went, and the
requests collected since for one summary (enrollment.ra_notifications). A new table."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0035_ldap_sync_run"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ApprovalNoticeDigest",
            fields=[
                (
                    "officer",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                ("last_sent_at", models.DateTimeField(blank=True, null=True)),
                (
                    "waiting",
                    models.JSONField(
                        blank=True,
                        default=list,
                        help_text="Requests collected for the next summary.",
                    ),
                ),
                (
                    "due_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="When the summary goes; empty while none is collected.",
                        null=True,
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(
                        condition=models.Q(("due_at__isnull", False)),
                        fields=["due_at"],
                        name="notice_digest_due_idx",
                    )
                ],
            },
        ),
    ]
