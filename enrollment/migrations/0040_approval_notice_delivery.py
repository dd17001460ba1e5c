"""ApprovalNoticeDigest.delivery: how each RA officer hears of requests waiting for their
approval (summaries, every request at once, or none by mail). Existing rows and officers
without one keep summaries, as before. The column keeps the database default, so rows the
code before this migration inserts until it restarts get summaries too. A small table
(one row per officer who was ever notified): the column is added in one short step.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enrollment", "0039_bulk_revocation_run"),
    ]

    operations = [
        migrations.AddField(
            model_name="approvalnoticedigest",
            name="delivery",
            field=models.CharField(
                choices=[
                    ("summaries", "Summaries"),
                    ("immediate", "Every request at once"),
                    ("none", "None by mail"),
                ],
                db_default="summaries",
                default="summaries",
                help_text="How the officer hears of requests waiting for their approval.",
                max_length=10,
            ),
        ),
    ]
