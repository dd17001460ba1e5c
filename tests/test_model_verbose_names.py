"""Every model and field of ours is named for translation, in the English Django derived.

The admin, form labels, filters and "X with this Y already exists" read these names: a
name Django derives from the class or attribute is English in every language, so each
must be given, lazily translated. The English must stay what Django derived (pages in
English do not change), but for plurals Django got wrong ("key identitys").
"""

from __future__ import annotations

import pytest

from django.apps import apps
from django.db import models
from django.utils import translation
from django.utils.functional import Promise
from django.utils.text import camel_case_to_spaces

OUR_APPS = ("accounts", "enrollment")

# Names chosen rather than derived: a better English word, or a plural Django got wrong.
CHOSEN_FIELD_NAMES = {
    ("certificatetemplate", "approver_group"): "approvers",
    ("officerscope", "organizational_units"): "organisational units",
    ("officerscope", "people_groups"): "groups of people",
}


def our_models() -> list[type[models.Model]]:
    return [model for app in OUR_APPS for model in apps.get_app_config(app).get_models()]


def inherited_from_elsewhere(model: type[models.Model]) -> set[str]:
    """Fields a third-party abstract base declares (Django's user, django-otp's device,
    Django's session): theirs to name, not ours."""
    names: set[str] = set()
    for base in model.__mro__[1:]:
        meta = getattr(base, "_meta", None)
        if meta is None or base.__module__.split(".")[0] in OUR_APPS:
            continue
        names.update(field.name for field in meta.local_fields + meta.local_many_to_many)
    return names


def our_fields(model: type[models.Model]) -> list[models.Field]:  # type: ignore[type-arg]
    foreign = inherited_from_elsewhere(model)
    return [
        field
        for field in model._meta.local_fields + model._meta.local_many_to_many
        if not field.auto_created and field.name not in foreign
    ]


@pytest.mark.parametrize("model", our_models(), ids=lambda model: model.__name__)
def test_every_model_names_itself_for_translation(model: type[models.Model]) -> None:
    options = model._meta
    # Given in Meta, not derived (a derived plural is a lazy "{}s" of the singular).
    assert {"verbose_name", "verbose_name_plural"} <= set(options.original_attrs)
    assert isinstance(options.verbose_name, Promise)
    assert isinstance(options.verbose_name_plural, Promise)


@pytest.mark.parametrize("model", our_models(), ids=lambda model: model.__name__)
def test_every_field_of_ours_names_itself_for_translation(model: type[models.Model]) -> None:
    untranslated = [
        field.name for field in our_fields(model) if not isinstance(field.verbose_name, Promise)
    ]
    assert untranslated == []


@translation.override("en")
def test_the_english_names_are_those_django_derived() -> None:
    changed = []
    for model in our_models():
        for field in our_fields(model):
            derived = field.name.replace("_", " ")
            expected = CHOSEN_FIELD_NAMES.get((model._meta.model_name, field.name), derived)
            if str(field.verbose_name) != expected:
                changed.append((model.__name__, field.name, str(field.verbose_name)))
    assert changed == []


@translation.override("en")
def test_the_model_names_are_those_django_derived_with_plurals_spelt_right() -> None:
    chosen = {
        "CertificateAuthority": "certificate authority",
        "CrlEntry": "CRL entry",
        "ApiToken": "API token",
        "TotpDevice": "authenticator app",
        "BackupCodeDevice": "backup codes",
        "FidoMetadataImport": "FIDO metadata import",
        "FidoModel": "FIDO key model",
        "WebAuthnDevice": "security key",
        "AccountSession": "browser session",
        "User": "user",
    }
    plurals = {
        "certificate authority": "certificate authorities",
        "key identity": "key identities",
        "shared mailbox": "shared mailboxes",
        "CRL entry": "CRL entries",
        "ldap missing entry": "ldap missing entries",
        "backup codes": "backup codes",
    }
    for model in our_models():
        options = model._meta
        singular = chosen.get(model.__name__, camel_case_to_spaces(model.__name__))
        assert str(options.verbose_name) == singular
        assert str(options.verbose_name_plural) == plurals.get(singular, f"{singular}s")


def test_the_apps_name_themselves_for_translation() -> None:
    for app in ("accounts", "enrollment", "directory"):
        assert isinstance(apps.get_app_config(app).verbose_name, Promise)
