"""What every page carries, from templates/base.html."""

from __future__ import annotations

import re

import pytest

from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


def test_every_page_names_an_icon_that_exists(anonymous_client):
    """Without one the browser asks for /favicon.ico, a 404 on every first visit."""
    page = anonymous_client.get("/").content.decode()

    (href,) = re.findall(r'<link rel="icon" href="/static/([^"]+)"', page)
    assert finders.find(href) is not None


def test_the_navigation_says_get_a_certificate_in_plain_words(employee_client):
    """Not "Enrol": the PKI word for it; the page it leads to says "Get a certificate"."""
    page = employee_client.get("/certificates/").content.decode()

    assert '<a href="/enroll/">Get a certificate</a>' in page
    assert ">Enrol<" not in page
