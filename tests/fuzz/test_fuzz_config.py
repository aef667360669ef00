"""Fuzz the config parser and the profile/recipe checks: every mutated config is a BuildConfig or an exit-2
EdgekitError naming a key, never another exception."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from conftest import GOOD_CONFIG
from edgekit.backends import get_backend
from edgekit.config import load_config, parse_config
from edgekit.errors import EdgekitError
from edgekit.profiles import load_profile
from edgekit.tables import check_field_types
from fuzzing import outcome, scaled, toml_values

BASE = tomllib.loads(GOOD_CONFIG + '\n[targets.ort-int8]\ngates = { min_cosine = 0.99 }\nrecipe = { per_channel = true }\n'
                     "runtime = { threads = 2 }\n")


def _paths(obj, prefix=()):
    """Every (path, value) of a nested dict/list document."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p, _ in _paths(BASE) if p]


def _set(doc, path, value):
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


edits = st.lists(st.tuples(st.sampled_from(PATHS), toml_values, st.booleans(), st.text(max_size=10)), min_size=1, max_size=3)


@scaled(60)
@given(edits=edits)
def test_mutated_config_tables(edits, tmp_path_factory):
    doc = copy.deepcopy(BASE)
    for path, value, new_key, key in edits:
        try:
            if new_key and isinstance(value, (dict, list)) is False and len(path) > 1:
                _set(doc, (*path[:-1], key or "x"), value)  # a key nobody defined
            else:
                _set(doc, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the table this path goes through
    base = Path(__file__).resolve().parent
    cfg = outcome(parse_config, doc, base)
    if isinstance(cfg, EdgekitError):
        return
    for name in cfg.targets:  # what plan() does next with the targets: profiles, overrides, typed recipes
        profile = outcome(load_profile, name, cfg.overrides.get(name))
        if isinstance(profile, EdgekitError):
            continue
        recipe = outcome(get_backend(profile.backend).parse_recipe, profile)
        if not isinstance(recipe, EdgekitError):
            outcome(check_field_types, recipe, f"target '{name}' [recipe]")


text_edits = st.lists(st.tuples(st.integers(0, len(GOOD_CONFIG)), st.integers(0, 8),
                                st.sampled_from(["", "=", "[", "]", "\"", "\n", "{", "}", ",", "1e999", "[[x]]", "\x00",
                                                 "\ud7ff", "=[", "#", "'''", "inf", "nan", "9" * 30])),
                      min_size=1, max_size=4)


@scaled(60)
@given(edits=text_edits)
def test_mutated_config_text(edits, tmp_path_factory):
    text = GOOD_CONFIG
    for at, cut, insert in edits:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut:]
    path = tmp_path_factory.mktemp("cfg") / "cfg.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    outcome(load_config, path)
