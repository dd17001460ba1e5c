"""The `after` cursor of directory pages: signed, so it probes no account.

An id used to be the cursor: an unknown one was a 400, while the id of an account outside
the directory (a superuser without a certificate) continued after that person's name,
telling that the account exists and where it sorts. The cursor now carries the last
person's sort key and id, signed; nothing else is accepted, and the same way.
"""

from __future__ import annotations

import pytest

from django.core import signing

from directory import selectors
from enrollment import services
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

API = "/api/v1/directory/"
WEB = "/directory/"


@pytest.fixture
def pats(person, issue):
    """Seven published Pats, and two accounts between them with no certificate."""
    people = [person("Pat", f"Page{n}", username=f"pat{n}") for n in range(7)]
    for user in people:
        issue(user)
    return people


@pytest.fixture
def unpublished(person, pats):
    """A superuser named to sort among the Pats, with no certificate: not in the directory."""
    return person("Pat", "Page3a", username="root", is_superuser=True, is_staff=True)


def names(page: selectors.SearchPage) -> list[str]:
    return [p.get_full_name() for p in page.people]


def every_page(**options) -> list[str]:
    seen, after = [], None
    for _ in range(20):
        page = selectors.certificate_search(after=after, **options)
        seen += names(page)
        after = page.next_after
        if after is None:
            return seen
    raise AssertionError("the pages never ended")


def tampered(cursor: str) -> str:
    payload, stamp, signature = cursor.rsplit(":", 2)
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    return f"{flipped}:{stamp}:{signature}"


def test_an_unpublished_account_and_no_account_get_the_same_answer(
    employee_client, pats, unpublished
):
    missing = str(UserFactory(username="gone").pk)
    UserFactory._meta.model.objects.filter(username="gone").delete()

    api = [employee_client.get(API, {"q": "pat", "after": a}) for a in (unpublished.pk, missing)]
    web = [employee_client.get(WEB, {"q": "pat", "after": a}) for a in (unpublished.pk, missing)]

    assert [r.status_code for r in api + web] == [400, 400, 400, 400]
    assert (
        api[0].json() == api[1].json() == {"after": ["That page link is not valid; search again."]}
    )
    assert "That page link is not valid" in web[0].content.decode()
    assert web[0].content.decode().count("Pat Page") == web[1].content.decode().count("Pat Page")


@pytest.mark.parametrize("where", [API, WEB])
def test_a_tampered_or_foreign_cursor_is_a_400(employee_client, pats, unpublished, where):
    first = selectors.certificate_search(query="pat", limit=2)
    forged = [
        tampered(first.next_after),
        signing.dumps([unpublished.directory_search, unpublished.pk]),  # no salt
        signing.dumps(
            [unpublished.directory_search, unpublished.pk],
            key="another portal's secret key",
            salt=selectors.CURSOR_SALT,
        ),
        "x" * (selectors.MAX_CURSOR_LENGTH + 1),
        "a:b:c",
    ]

    for cursor in forged:
        response = employee_client.get(where, {"q": "pat", "after": cursor, "limit": 2})
        assert response.status_code == 400, cursor
    # An empty one (the web form's hidden field) is no cursor: the first page.
    assert employee_client.get(where, {"q": "pat", "after": ""}).status_code == 200


def test_paging_returns_every_published_person_exactly_once(pats, unpublished):
    expected = [f"Pat Page{n}" for n in range(7)]

    for limit in (1, 2, 3, 7, 8):
        assert every_page(query="pat", limit=limit) == expected


def test_people_with_the_same_sort_key_are_paged_by_id(person, issue):
    """Same name, address and unit: one sort key, so the cursor's id settles the order.
    (Certified while their addresses differed: no certificate names an address two
    accounts share, services.address_taken.)"""
    twins = [
        person("Sam", "Same", email=f"sam{n}@example.com", username=f"sam{n}") for n in range(5)
    ]
    for twin in twins[::2]:
        issue(twin)
    for twin in twins:
        twin.email = "team@example.com"
        twin.save()
    assert len({t.directory_search for t in twins}) == 1

    seen, after = [], None
    while True:
        page = selectors.certificate_search(query="sam", after=after, limit=1)
        seen += [p.pk for p in page.people]
        if (after := page.next_after) is None:
            break

    assert seen == [t.pk for t in twins[::2]]


def test_a_cursor_outlives_the_person_it_names_leaving_the_directory(pats):
    first = selectors.certificate_search(query="pat", limit=3)
    for certificate in pats[2].certificates.all():  # the last person of the first page
        services.certificate_revoke(certificate=certificate, reason="superseded")

    second = selectors.certificate_search(query="pat", after=first.next_after, limit=3)

    assert names(second) == ["Pat Page3", "Pat Page4", "Pat Page5"]


def test_the_api_and_the_page_follow_their_own_cursors(employee_client, pats, unpublished):
    seen, url, params = [], API, {"q": "pat", "limit": 3}
    while url:
        body = employee_client.get(url, params).json()
        seen += [item["owner"]["name"] for item in body["results"]]
        url, params = body["next"], None

    assert seen == [f"Pat Page{n}" for n in range(7)]
    page = employee_client.get(WEB, {"q": "pat"}).content.decode()
    assert "Pat Page3a" not in page
