"""OfficerScope: whom the RA officers and key recovery agents of a group act for. A new
table and its many-to-many to groups; no row exists, so every officer acts for everyone,
as before.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("enrollment", "0041_template_approver_group"),
    ]

    operations = [
        migrations.CreateModel(
            name="OfficerScope",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=100, unique=True)),
                (
                    "organizational_units",
                    models.TextField(
                        blank=True,
                        help_text="One organisational unit per line, as accounts spell it (any case).",
                        verbose_name="organisational units",
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "officers",
                    models.ForeignKey(
                        help_text="The group whose RA officers and key recovery agents this scope limits. They then decide requests, revoke, find certificates and recover keys only of the people below; superusers are never limited.",
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="officer_scopes",
                        to="auth.group",
                        verbose_name="officers",
                    ),
                ),
                (
                    "people_groups",
                    models.ManyToManyField(
                        blank=True,
                        help_text="Members of these groups are in the scope too, whatever their unit.",
                        related_name="+",
                        to="auth.group",
                        verbose_name="groups of people",
                    ),
                ),
            ],
            options={
                "verbose_name": "officer scope",
                "ordering": ["name"],
            },
        ),
    ]
