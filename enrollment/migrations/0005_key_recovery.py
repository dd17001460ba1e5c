"""Key recovery under dual control, expiry notices and the agent-expiry warning (issue 6)."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0004_crl_publishing"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="AgentExpiryWarning",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("sent_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "agent",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="expiry_warning",
                        to="enrollment.keyrecoveryagent",
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="KeyRecoveryRequest",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("reason", models.TextField()),
                (
                    "deliver_to",
                    models.CharField(
                        choices=[
                            ("owner", "The key owner"),
                            ("requester", "The requesting officer"),
                        ],
                        max_length=10,
                    ),
                ),
                (
                    "pkcs12_format",
                    models.CharField(
                        choices=[
                            ("modern", "Modern (AES-256)"),
                            ("compatible", "Compatible (3DES)"),
                        ],
                        default="modern",
                        max_length=12,
                    ),
                ),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("pending", "Waiting for approval"),
                            ("approved", "Approved: waiting for a key recovery agent"),
                            ("ready", "Recovered: waiting for download"),
                            ("downloaded", "Downloaded"),
                            ("expired", "Expired before download"),
                            ("rejected", "Rejected"),
                        ],
                        default="pending",
                        max_length=10,
                    ),
                ),
                ("decision_reason", models.TextField(blank=True)),
                ("performed_at", models.DateTimeField(blank=True, null=True)),
                (
                    "bundle",
                    models.BinaryField(
                        blank=True,
                        help_text="PKCS#12 under a one-time password that is never stored; wiped on download.",
                        null=True,
                    ),
                ),
                ("download_expires_at", models.DateTimeField(blank=True, null=True)),
                ("downloaded_at", models.DateTimeField(blank=True, null=True)),
                (
                    "created_at",
                    models.DateTimeField(db_index=True, default=django.utils.timezone.now),
                ),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "agent",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="enrollment.keyrecoveryagent",
                    ),
                ),
                (
                    "certificate",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="recovery_requests",
                        to="enrollment.certificate",
                    ),
                ),
                (
                    "decided_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "performed_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "requested_by",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at", "-id"],
            },
        ),
        migrations.CreateModel(
            name="KeyRecoveryApproval",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "officer",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "request",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="approvals",
                        to="enrollment.keyrecoveryrequest",
                    ),
                ),
            ],
            options={
                "ordering": ["created_at", "id"],
            },
        ),
        migrations.CreateModel(
            name="ExpiryNotice",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("threshold_days", models.PositiveSmallIntegerField()),
                ("sent_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "certificate",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="expiry_notices",
                        to="enrollment.certificate",
                    ),
                ),
            ],
            options={
                "ordering": ["-sent_at"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("certificate", "threshold_days"),
                        name="one_expiry_notice_per_threshold",
                    )
                ],
            },
        ),
        migrations.AddConstraint(
            model_name="keyrecoveryrequest",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("bundle__isnull", False),
                        ("download_expires_at__isnull", False),
                        ("state", "ready"),
                    ),
                    models.Q(models.Q(("state", "ready"), _negated=True), ("bundle__isnull", True)),
                    _connector="OR",
                ),
                name="recovery_bundle_only_while_ready",
            ),
        ),
        migrations.AddConstraint(
            model_name="keyrecoveryrequest",
            constraint=models.UniqueConstraint(
                condition=models.Q(("state__in", ["pending", "approved", "ready"])),
                fields=("certificate",),
                name="one_open_recovery_per_certificate",
            ),
        ),
        migrations.AddConstraint(
            model_name="keyrecoveryapproval",
            constraint=models.UniqueConstraint(
                fields=("request", "officer"), name="one_approval_per_officer"
            ),
        ),
    ]
