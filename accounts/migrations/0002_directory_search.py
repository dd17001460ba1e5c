"""The directory's search column: folded text, a sort index and, on PostgreSQL, pg_trgm GIN."""

from django.db import migrations, models

from accounts.search import directory_search_text

TRIGRAM_INDEX = "user_directory_trgm_idx"


def fill_search_text(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    for user in User.objects.only(
        "username", "first_name", "last_name", "display_name", "email", "organizational_unit"
    ).iterator(chunk_size=2000):
        user.directory_search = directory_search_text(
            username=user.username,
            first_name=user.first_name,
            last_name=user.last_name,
            display_name=user.display_name,
            email=user.email,
            organizational_unit=user.organizational_unit,
        )
        user.save(update_fields=["directory_search"])


def create_trigram_index(apps, schema_editor):
    # Substring and word-prefix LIKE '%term%' searches; SQLite scans its small table instead.
    # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
    # Not dropped on the way back: other objects may use it.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {TRIGRAM_INDEX} "
            "ON accounts_user USING gin (directory_search gin_trgm_ops)"
        )


def drop_trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {TRIGRAM_INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="directory_search",
            field=models.TextField(
                blank=True,
                default="",
                editable=False,
                help_text="Folded name, e-mail and unit the directory matches and sorts by (derived).",
            ),
        ),
        migrations.RunPython(fill_search_text, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="user",
            index=models.Index(fields=["directory_search", "id"], name="user_directory_sort_idx"),
        ),
        migrations.RunPython(create_trigram_index, drop_trigram_index),
    ]
