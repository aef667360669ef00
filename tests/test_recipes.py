"""Every recipe key of every built-in profile, misspelt, is refused before any work with the nearest valid key."""

from __future__ import annotations

import dataclasses

import pytest

from edgekit.backends import get_backend
from edgekit.errors import ProfileError
from edgekit.profiles import builtin_names, load_profile

CASES = [(name, key) for name in builtin_names() for key in load_profile(name).recipe if key != "mode"]


def test_every_builtin_profile_has_recipe_keys_to_check():
    assert {name for name, _ in CASES} == set(builtin_names()) - {"ort-fp32"}  # ort-fp32's recipe is only its mode


@pytest.mark.parametrize("name, key", CASES, ids=[f"{n}:{k}" for n, k in CASES])
def test_a_misspelt_recipe_key_names_the_key_meant(name, key):
    profile = load_profile(name)
    recipe = dict(profile.recipe)
    recipe[key[:-1] + key[-1] * 2] = recipe.pop(key)  # per_channel -> per_channell
    typo = dataclasses.replace(profile, recipe=recipe)
    with pytest.raises(ProfileError, match=f"did you mean '{key}'"):
        get_backend(profile.backend).parse_recipe(typo)


def test_a_key_of_another_mode_names_the_mode_it_belongs_to():
    profile = load_profile("ort-int8")
    wrong = dataclasses.replace(profile, recipe={**profile.recipe, "smooth_alpha": 0.5})
    with pytest.raises(ProfileError, match='smooth_alpha.*belongs to mode = "dynamic"'):
        get_backend("ort").parse_recipe(wrong)
    static_only = dataclasses.replace(load_profile("ort-int8-dynamic"), recipe={"mode": "dynamic", "fp32_input_layers": True})
    with pytest.raises(ProfileError, match='fp32_input_layers.*belongs to mode = "static"'):
        get_backend("ort").parse_recipe(static_only)


def test_the_parsed_recipe_is_the_backends_typed_recipe():
    for name in builtin_names():
        profile = load_profile(name)
        recipe = get_backend(profile.backend).parse_recipe(profile)
        assert dataclasses.is_dataclass(recipe), name


def test_the_manifest_records_the_versions_each_backend_reports():
    import onnxruntime
    import torch

    from edgekit import backends
    from edgekit.manifest import library_versions

    reported = backends.versions()
    assert reported["onnxruntime"] == onnxruntime.__version__ and reported["torch"] == torch.__version__
    assert set(reported) <= {"onnxruntime", "torch", "tensorrt"}
    recorded = library_versions()
    assert {k: recorded[k] for k in reported} == reported
    assert recorded["tensorrt"] == reported.get("tensorrt", "not installed")
