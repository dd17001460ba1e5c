"""Search semantics: prefix, substring, case, accents, valid-only default, pagination."""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.utils import timezone

from accounts.search import directory_search_text, fold
from directory import selectors
from enrollment import services

pytestmark = pytest.mark.django_db


def names(page: selectors.SearchPage) -> list[str]:
    return [person.get_full_name() for person in page.people]


def search(query: str, **options) -> list[str]:
    return names(selectors.certificate_search(query=query, **options))


@pytest.fixture
def staff(person, issue):
    """Five people with a valid certificate each, one with an accented name."""
    people = {
        "jose": person("José", "García", "Finance", email="jose.garcia@example.com"),
        "josefine": person("Josefine", "Berg", "Engineering"),
        "anna": person("Anna", "Ångström", "Research"),
        "lukasz": person("Łukasz", "Nowak", "Finance"),
        "ng": person("Li", "Ng", "Sales"),
    }
    for user in people.values():
        issue(user)
    return people


def test_fold_lowercases_strips_accents_and_collapses_space():
    assert fold("  José\tÅNGSTRÖM  Straße Łukasz ") == "jose angstrom strasse lukasz"


def test_the_search_column_starts_with_the_shown_name():
    text = directory_search_text(
        username="jg",
        first_name="José",
        last_name="García",
        display_name="",
        email="Jose.Garcia@Example.com",
        organizational_unit="Finance",
    )

    assert text == " jose garcia jose.garcia@example.com finance"


def test_saving_a_user_keeps_the_search_column_current(person):
    user = person("Zoë", "Quist", "Legal", email="zq@example.com")
    user.last_name = "Quiñones"
    user.save(update_fields=["last_name"])
    user.refresh_from_db()

    assert "quinones" in user.directory_search
    assert "quist" not in user.directory_search


def test_a_prefix_finds_the_person(staff):
    assert search("Jos") == ["José García", "Josefine Berg"]


def test_a_substring_in_the_middle_of_a_name_finds_the_person(staff):
    assert search("arcí") == ["José García"]
    assert search("ngstr") == ["Anna Ångström"]


def test_case_does_not_matter(staff):
    assert search("GARCIA") == search("garcia") == ["José García"]


def test_accents_are_folded_both_ways(staff):
    assert search("Jose Garcia") == ["José García"]
    assert search("josé") == ["José García", "Josefine Berg"]
    assert search("lukasz") == ["Łukasz Nowak"]
    assert search("angstrom") == ["Anna Ångström"]


def test_every_term_must_match_in_any_order(staff):
    assert search("garcia jose") == ["José García"]
    assert search("jose engineering") == ["Josefine Berg"]


def test_it_searches_e_mail_addresses_and_units(staff):
    assert search("jose.garcia@") == ["José García"]
    assert search("finance") == ["José García", "Łukasz Nowak"]


def test_two_letter_terms_match_the_start_of_a_word(staff):
    assert search("ng") == ["Li Ng"]  # not Ångström, Engineering, ...
    assert search("li") == ["Li Ng"]


def test_one_letter_alone_searches_nothing(staff):
    assert selectors.search_terms("j") == []
    assert search("j") == []


def test_sql_and_like_metacharacters_are_literal(staff):
    for query in ["%", "_%_", "' OR 1=1 --", "\\", "jo%e", "g_rcia", ".*", "[a-z]+"]:
        assert search(query) == [], query


def test_only_people_with_a_valid_certificate_are_listed_by_default(staff, person, issue):
    revoked = person("Jonas", "Revoked")
    services.certificate_revoke(certificate=issue(revoked), reason="keyCompromise")
    person("Joanna", "Nocert")

    assert search("jo") == ["José García", "Josefine Berg"]


def test_a_revocation_removes_the_certificate_at_once(staff, issue):
    certificate = issue(staff["lukasz"])

    services.certificate_revoke(certificate=certificate, reason="superseded")

    (lukasz,) = selectors.certificate_search(query="nowak").people
    assert [c.pk for c in lukasz.directory_certificates] != [certificate.pk]
    assert certificate.pk not in [c.pk for c in lukasz.directory_certificates]


def test_the_inactive_filter_shows_expired_and_revoked_certificates(staff, person, issue):
    jonas = person("Jonas", "Revoked")
    revoked = issue(jonas)
    services.certificate_revoke(certificate=revoked, reason="keyCompromise")
    later = timezone.now() + timedelta(days=400)  # every certificate above has expired

    assert selectors.certificate_search(query="jonas").people == []
    (found,) = selectors.certificate_search(query="jonas", include_inactive=True).people
    assert [c.state for c in found.directory_certificates] == ["revoked"]
    assert selectors.certificate_search(query="jose", now=later).people == []
    expired = selectors.certificate_search(query="jose", include_inactive=True, now=later)
    assert names(expired) == ["José García", "Josefine Berg"]


def test_pages_follow_each_other_without_gaps_or_repeats(person, issue):
    for n in range(7):
        issue(person("Pat", f"Page{n}", username=f"pat{n}"))

    seen, after = [], None
    for _ in range(5):
        page = selectors.certificate_search(query="pat", after=after, limit=3)
        seen += names(page)
        after = page.next_after
        if after is None:
            break

    assert seen == [f"Pat Page{n}" for n in range(7)]


def test_a_cursor_the_portal_did_not_make_asks_to_search_again(person, issue):
    with pytest.raises(selectors.PageGone):
        selectors.certificate_search(query="pat", after="999999")


@pytest.mark.parametrize("sample", [2, 4, 2000])
def test_pages_are_the_same_whatever_plan_the_match_sample_picks(
    person, issue, monkeypatch, sample
):
    """PostgreSQL samples the matches to bound its plan; the pages never depend on it."""
    monkeypatch.setattr(selectors, "SAMPLE", sample)
    for n in range(9):
        user = person("Sam", f"Sample{n}", username=f"sam{n}")
        if n % 3 != 1:  # every third Sam has no certificate and is never listed
            issue(user)

    seen, after = [], None
    for _ in range(10):
        page = selectors.certificate_search(query="sam", after=after, limit=2)
        seen += names(page)
        after = page.next_after
        if after is None:
            break

    assert seen == [f"Sam Sample{n}" for n in range(9) if n % 3 != 1]


def test_a_deactivated_account_is_not_found(staff):
    staff["jose"].is_active = False
    staff["jose"].save()

    assert search("jos") == ["Josefine Berg"]
    assert search("jos", include_inactive=True) == ["Josefine Berg"]
