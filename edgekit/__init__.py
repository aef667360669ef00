"""edgekit: one trained torch model -> verified deployment artifacts, one per device target.

Build from Python as ``edgekit build`` does from the shell; the config is a TOML path, a dict of the same
tables, or a BuildConfig (``load_config``):

    import edgekit

    manifest = edgekit.build(
        {
            "model": {"source": "example:digits", "task": "classification",
                      "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "dynamic": {"0": "batch"}}]},
            "calibration": {"data": "calibration/digits/calib.npz"},
            "validation": {"data": "calibration/digits/val.npz", "labels": "labels"},
        },
        out="dist",
        targets=["ort-fp32", "ort-int8"],               # replaces [targets] use
        gates={"ort-int8": {"min_cosine": 0.995}},      # merged over the profile's [gates]
    )
    manifest.exit_code                                  # 0 every gate passed, 1 one failed (as the CLI)
    result = manifest.results["ort-int8"]               # a TargetResult
    result.status, result.metrics.accuracy, result.latency.stats.p50_ms, result.size.ratio_to_fp32

    edgekit.revalidate("dist")                          # sha256 of every artifact, then measure again

Bad input raises an EdgekitError subclass (ConfigError, ProfileError, ModelError, DataError, ...) whose
message names the culprit; ``edgekit.errors`` draws the tree. Target profiles: ``edgekit targets`` on the
command line, ``edgekit.profiles.load_profile(name)`` in code.
"""

from edgekit.api import build, revalidate
from edgekit.config import BuildConfig, load_config
from edgekit.errors import EdgekitError
from edgekit.manifest import Manifest
from edgekit.types import TargetResult

__version__ = "0.1.0"

__all__ = ["BuildConfig", "EdgekitError", "Manifest", "TargetResult", "build", "load_config", "revalidate"]
