"""edgekit: one trained torch model -> verified deployment artifacts per device target."""

from edgekit.config import BuildConfig, load_config
from edgekit.errors import (
    ConfigError,
    DataError,
    EdgekitError,
    ModelError,
    OutputDirError,
    ProfileError,
    TamperError,
    TargetUnavailableError,
    UsageError,
    WeightsError,
)
from edgekit.manifest import Manifest
from edgekit.pipeline import BuildOptions, build, revalidate
from edgekit.types import Artifact, Reference, SourceModel, TargetProfile, TargetResult, TensorSpec

__version__ = "0.1.0"

__all__ = sorted([
    "Artifact",
    "BuildConfig",
    "BuildOptions",
    "ConfigError",
    "DataError",
    "EdgekitError",
    "Manifest",
    "ModelError",
    "OutputDirError",
    "ProfileError",
    "Reference",
    "SourceModel",
    "TamperError",
    "TargetProfile",
    "TargetResult",
    "TargetUnavailableError",
    "TensorSpec",
    "UsageError",
    "WeightsError",
    "build",
    "load_config",
    "revalidate",
])
