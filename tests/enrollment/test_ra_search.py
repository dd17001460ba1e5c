"""The RA console's certificate search: what it finds, and that it reads indexes only."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from django.db import connection
from django.utils import timezone

from enrollment import ra_selectors
from enrollment.models import Certificate
from enrollment.ra_selectors import certificate_search, search_matches
from enrollment.scopes import EVERYONE, Reach
from tests.enrollment.tools import issue
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def al(hierarchy, template, ec_p256_key):
    """A holder with a two-letter user name, and a certificate in her name."""
    holder = UserFactory(
        username="al", first_name="Alma", last_name="Lindqvist", email="alma.l@example.com"
    )
    return issue(holder, template("smime-signing"), ec_p256_key)


def found(query: str) -> list[Certificate]:
    return list(certificate_search(query))


def test_a_user_name_matches_exactly_in_any_case(al, employee, template, ec_p256_key):
    other = issue(employee, template("smime-signing"), ec_p256_key)

    assert found("al") == [al]
    assert found("AL") == [al]
    assert other not in found("al")


def test_names_and_addresses_match_from_three_characters(al):
    assert found("lin") == [al]
    assert found("LINDQ") == [al]
    assert found("alma.l@") == [al]
    assert found("li") == []  # too short for a substring: only exact user names
    assert found("ma") == []


def test_serials_and_fingerprints_still_match(al):
    assert found(al.serial) == [al]
    assert found(al.serial[:8].upper()) == [al]
    assert found(al.fingerprint_sha256.upper()) == [al]
    assert found(al.fingerprint_sha1) == [al]


def test_the_list_leaves_the_certificate_bytes_unread(al):
    (result,) = found("lindqvist")

    assert "der" in result.get_deferred_fields()
    assert result.serial == al.serial


def test_few_and_many_matches_come_newest_first_alike(al, hierarchy, template, monkeypatch):
    holder = UserFactory(username="lin", first_name="Lina", last_name="Lindgren")
    now = timezone.now()
    many_certificates(hierarchy, holder, template("smime-signing"), 6)  # "Person ... Example"
    Certificate.objects.filter(common_name__startswith="Person").update(
        not_before=now - timedelta(days=3)
    )
    expected = list(Certificate.objects.filter(common_name__startswith="Person"))
    expected.sort(key=lambda c: (c.not_before, c.pk), reverse=True)

    few = found("person")
    monkeypatch.setattr(ra_selectors, "SEARCH_CANDIDATES", 2)
    many = found("person")

    assert few == many == expected
    assert [c.pk for c in found("example")[:2]] == [al.pk, expected[0].pk]


@pytest.mark.parametrize("query", ["lindq", "AL", "serial", "sha1"])
def test_the_admin_finds_certificates_as_the_console_does(
    admin_client_, al, employee, template, ec_p256_key, query
):
    other = issue(employee, template("smime-signing"), ec_p256_key)
    query = {"serial": al.serial[:8], "sha1": al.fingerprint_sha1}.get(query, query)

    page = admin_client_.get("/admin/enrollment/certificate/", {"q": query})

    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == [al]
    assert other not in page.context["cl"].result_list


# --- on PostgreSQL, every alternative comes from an index -----------------------------


def many_certificates(hierarchy, holder, template, count: int) -> None:
    now = timezone.now()
    Certificate.objects.bulk_create(
        (
            Certificate(
                ca=hierarchy.issuing,
                owner=holder,
                template=template,
                purpose="signing",
                common_name=f"Person {i:05d} Example",
                email=f"person{i:05d}@example.com",
                emails=[f"person{i:05d}@example.com"],
                fingerprint_sha1=f"{i:040x}",
                key_algorithm="EC P-256",
                der=b"\x30\x00",
                serial=f"{i + 10**12:x}",
                fingerprint_sha256=f"{i:064x}",
                subject=f"CN=Person {i:05d} Example",
                not_before=now - timedelta(days=1),
                not_after=now + timedelta(days=365),
            )
            for i in range(count)
        ),
        batch_size=1000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE enrollment_certificate")


def plan_nodes(query: str, reach: Reach = EVERYONE) -> list[dict]:
    """The plan with only bitmap scans allowed: a query that PostgreSQL can then answer
    without reading the whole table has an index for every alternative it ORs (``reach``:
    an officer's scope, one more condition on the holder)."""
    ids = search_matches(query, reach=reach).order_by().values_list("pk", flat=True)[:2001]
    sql, params = ids.query.sql_with_params()
    with connection.cursor() as cursor:
        for scan in ("seqscan", "indexscan", "indexonlyscan"):
            cursor.execute(f"SET LOCAL enable_{scan} = off")
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plans are PostgreSQL's")
def test_every_alternative_of_the_search_has_an_index(al, hierarchy, template, employee):
    """Before, any search read every certificate: 1.4-3 s at a million. At that size the
    planner picks these indexes by itself (bench/directory.py, docs/benchmarks.md); here the
    table is small, so the plan is asked for with bitmap scans only."""
    many_certificates(hierarchy, employee, template("smime-signing"), 200)
    expected = {
        "lindqvist": {"cert_common_name_trgm_idx", "cert_email_trgm_idx"},
        "alma.l@example": {"cert_common_name_trgm_idx", "cert_email_trgm_idx"},
        "e8d4a51000": {"cert_serial_idx", "cert_fingerprint_sha1_idx", "cert_email_trgm_idx"},
        "a" * 40: {"cert_fingerprint_sha1_idx", "fingerprint_sha256"},
        "al": {"cert_owner_template_idx"},
    }

    for query, indexes in expected.items():
        nodes = plan_nodes(query)
        scans = [n for n in nodes if n.get("Relation Name") == "enrollment_certificate"]
        assert [n["Node Type"] for n in scans] == ["Bitmap Heap Scan"], (query, scans)
        used = {n["Index Name"] for n in nodes if "Index Name" in n}
        for index in indexes:
            assert any(index in name for name in used), (query, index, used)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's LIKE twin indexes")
def test_the_sha256_fingerprint_has_one_unique_index_and_no_pattern_twin():
    """unique=True built a varchar_pattern_ops twin that nothing reads (migration 0009)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'enrollment_certificate' AND indexdef LIKE '%%fingerprint_sha256%%'"
        )
        indexes = dict(cursor.fetchall())

    assert list(indexes) == ["cert_fingerprint_sha256_uniq"], indexes
    assert indexes["cert_fingerprint_sha256_uniq"].startswith("CREATE UNIQUE INDEX")
    assert "pattern_ops" not in indexes["cert_fingerprint_sha256_uniq"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plans are PostgreSQL's")
def test_newest_first_pages_read_the_index_instead_of_sorting(al, hierarchy, template, employee):
    """The officers' API list and a broad search: 0.9-1.9 s a page at a million before."""
    many_certificates(hierarchy, employee, template("smime-signing"), 200)
    pages = [
        Certificate.objects.all()[:50],  # the API list's default order
        Certificate.objects.filter(email__icontains="example").order_by("-not_before", "-id")[:50],
    ]

    for page in pages:
        sql, params = page.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_sort = off")
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        text = plan if isinstance(plan, str) else json.dumps(plan)
        assert '"Node Type": "Sort"' not in text, text
        assert "cert_newest_idx" in text, text
