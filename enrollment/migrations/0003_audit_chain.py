"""Hash-chain the audit trail (issue 6): each event carries its hash and its predecessor's."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("enrollment", "0002_seed_templates")]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="previous_hash",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(
                blank=True,
                help_text="SHA-256 over this event and previous_hash.",
                max_length=64,
            ),
        ),
        migrations.CreateModel(
            name="AuditChainHead",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("last_hash", models.CharField(blank=True, max_length=64)),
                ("last_event_id", models.BigIntegerField(blank=True, null=True)),
            ],
        ),
    ]
