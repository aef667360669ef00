"""torch CPU INT8 targets (fbgemm for x86, qnnpack for ARM): torch.ao post-training quantization, frozen TorchScript.

One module per job: ``recipe`` (the profile's [recipe]), ``backend`` (every torch.ao call: prepare/convert, dynamic
quantization, the Backend), ``islands`` (what torch.fx can trace), ``integer`` (integer tensors stay float),
``rewrite`` (transformer layers for dynamic mode), ``census`` (what stayed float), ``artifact`` (the TorchScript file
and its runner), ``common`` (scopes and helpers they share).
"""

from edgekit.backends.torch_ao.backend import TorchAoBackend

__all__ = ["TorchAoBackend"]
