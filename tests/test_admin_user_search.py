"""The admin's account search: folded words of the directory's search text, or the user name."""

from __future__ import annotations

import json

import pytest

from django.db import connection

from accounts.admin import PortalUserAdmin
from accounts.models import User
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(db):
    return {
        "bjorn": UserFactory(
            username="b.astrom",
            first_name="Björn",
            last_name="Åström",
            email="bjorn.astrom@example.com",
            organizational_unit="Treasury",
        ),
        "jo": UserFactory(username="jo", first_name="Jo", last_name="Lee", email="jl@example.com"),
        "joanna": UserFactory(
            username="jnowak", first_name="Joanna", last_name="Nowak", email="jn@example.com"
        ),
    }


def found(admin_client_, query: str) -> set[str]:
    page = admin_client_.get("/admin/accounts/user/", {"q": query})
    assert page.status_code == 200
    return {user.username for user in page.context["cl"].result_list}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("astrom", {"b.astrom"}),  # accents folded
        ("ÅSTRÖM björn", {"b.astrom"}),  # every word, any order and case
        ("treasury", {"b.astrom"}),
        ("nowak@", set()),  # the address is jn@..., not nowak@
        ("B.ASTROM", {"b.astrom"}),  # the user name, exactly, in any case
        ("JNOWAK", {"jnowak"}),
        ("jo", {"jo", "jnowak"}),  # a short word matches where a word starts
        ("oanna", {"jnowak"}),
    ],
)
def test_the_admin_finds_accounts_by_folded_words_or_user_name(
    admin_client_, people, query, expected
):
    assert found(admin_client_, query) - {"admin"} == expected


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plan is PostgreSQL's")
def test_the_account_search_can_be_answered_from_indexes(people, rf, admin_user):
    request = rf.get("/admin/accounts/user/")
    request.user = admin_user
    model_admin = PortalUserAdmin(User, None)
    queryset, _ = model_admin.get_search_results(request, User.objects.all(), "nowak jo")
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        for scan in ("seqscan", "indexscan", "indexonlyscan"):
            cursor.execute(f"SET LOCAL enable_{scan} = off")
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    text = plan if isinstance(plan, str) else json.dumps(plan)

    assert '"Seq Scan"' not in text, text
    assert "user_directory_trgm_idx" in text
    assert "user_username_upper_idx" in text
