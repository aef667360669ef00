"""The fleet's step cache on its own: entries verified by sha256 before use; partial or corrupt ones rebuilt."""

from __future__ import annotations

from edgekit.fleet.cache import Cache, changed, step_key


def test_a_stored_entry_comes_back_verified(tmp_path):
    cache = Cache(tmp_path / "c")
    key = step_key("artifact", {"weights": "a", "profile": "b"})
    cache.put(key, "artifact", {"t/model.onnx": b"onnx bytes", "t/extra.bin": b"\x00" * 10}, {"n": 1})
    entry, why = cache.check(key)
    assert why == "" and entry.meta == {"n": 1} and entry.read() == {"t/extra.bin": b"\x00" * 10, "t/model.onnx": b"onnx bytes"}
    assert not list((tmp_path / "c" / "tmp").iterdir())  # built aside, renamed into place whole
    assert step_key("artifact", {"profile": "b", "weights": "a"}) == key != step_key("artifact", {"weights": "A", "profile": "b"})


def test_corrupt_or_partial_entries_are_never_used(tmp_path):
    cache = Cache(tmp_path / "c")
    a, b, c = (step_key("x", {"i": str(i)}) for i in range(3))
    for key in (a, b, c):
        cache.put(key, "x", {"f.bin": b"payload"}, {})
    (cache.root / "objects" / a[:2] / a / "files" / "f.bin").write_bytes(b"paylaod")  # same size, other bytes
    (cache.root / "objects" / b[:2] / b / "entry.json").unlink()  # an entry whose writer died before the end
    (cache.root / "objects" / c[:2] / c / "files" / "f.bin").unlink()
    assert cache.check(a) == (None, "its cached f.bin was corrupt (sha256 mismatch)")
    assert cache.check(b) == (None, "its cache entry was incomplete")
    assert cache.check(c)[0] is None
    assert not any((cache.root / "objects" / k[:2] / k).exists() for k in (a, b, c))  # removed, to be rebuilt
    cache.put(a, "x", {"f.bin": b"payload"}, {})
    assert cache.get(a).read() == {"f.bin": b"payload"}


def test_a_dry_run_cache_reports_without_repairing(tmp_path):
    key = step_key("x", {})
    Cache(tmp_path / "c").put(key, "x", {"f.bin": b"payload"}, {})
    entry_json = tmp_path / "c" / "objects" / key[:2] / key / "entry.json"
    entry_json.write_text("{not json")
    assert Cache(tmp_path / "c", repair=False).check(key)[0] is None and entry_json.exists()


def test_changed_names_the_inputs_that_differ():
    assert changed(None, {"weights": "a"}) == "never built"
    assert changed({"weights": "a", "profile": "p"}, {"weights": "b", "profile": "p"}) == "weights changed"
    assert changed({"weights": "a"}, {"weights": "a"}) == ""
