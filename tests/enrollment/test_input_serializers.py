"""enrollment.api.serializers.InputSerializer: each instance's fields, made as DRF makes them."""

from __future__ import annotations

import copy

import pytest

from rest_framework import serializers

from enrollment.api import serializers as s


def _shapes(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_shapes(sub)]
    return found


INPUTS = [shape for shape in _shapes(s.InputSerializer) if shape.__module__ == s.__name__]


def test_the_enrolment_inputs_are_input_serializers():
    assert {s.CsrEnrollmentIn, s.ServerKeyEnrollmentIn, s.CsrIn, s.ServerKeyIn} <= set(INPUTS)


@pytest.mark.parametrize("shape", INPUTS, ids=lambda shape: shape.__name__)
def test_each_instance_gets_its_own_fields_made_from_the_declared_arguments(shape):
    first, second = shape().fields, shape().fields
    drf = copy.deepcopy(shape._declared_fields)

    assert list(first) == list(shape._declared_fields)
    for name, declared in shape._declared_fields.items():
        assert first[name] is not second[name]
        assert type(first[name]) is type(declared)
        assert first[name]._kwargs == drf[name]._kwargs == declared._kwargs
        assert repr(first[name]) == repr(drf[name])
        for key, value in declared._kwargs.items():
            if isinstance(value, (list, dict)) and key != "validators":
                assert first[name]._kwargs[key] is not value
                assert first[name]._kwargs[key] is not second[name]._kwargs[key]


def test_a_change_to_one_instances_field_reaches_no_other():
    first = s.ServerKeyIn()
    first.fields["pkcs12_password"].style["input_type"] = "text"
    first.fields["key_algorithm"]._kwargs["choices"].append(("x", "X"))

    second = s.ServerKeyIn()
    assert second.fields["pkcs12_password"].style == {"input_type": "password"}
    assert ("x", "X") not in second.fields["key_algorithm"]._kwargs["choices"]


class Nested(s.InputSerializer):
    """Arguments that are not plain values: these fields are deep-copied, as DRF does."""

    tags = serializers.ListField(child=serializers.CharField())
    grouped = serializers.ChoiceField(choices=[("Group", [("a", "A"), ("b", "B")])])
    named = serializers.CharField(default=["a list default"])


def test_a_field_with_other_arguments_is_deep_copied():
    first, second = Nested().fields, Nested().fields

    assert first["tags"].child is not second["tags"].child
    assert first["tags"].child is not Nested._declared_fields["tags"].child
    assert (
        first["grouped"]._kwargs["choices"][0][1]
        is not (Nested._declared_fields["grouped"]._kwargs["choices"][0][1])
    )
    assert first["grouped"].choices == {"a": "A", "b": "B"}
    assert first["named"].default == ["a list default"]
    assert first["named"].default is not second["named"].default
