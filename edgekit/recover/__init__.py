"""Recovery inside ``edgekit build``: an INT8 target that misses a gate is rebuilt with other calibration, recipe
repairs and FP32 layers, within a time budget, and the best candidate replaces it (docs/recovery.md).

    build.py       recover_build(): which targets, the search per target, the artifact written, re-validation
    search.py      the search order, the budget, the best-so-far rule
    candidates.py  the static QDQ candidates (Spec) and how each is built
    dynamic.py     the dynamic ONNX Runtime candidates (ort-int8-dynamic): DynamicSpec, DynamicBuilder
    torch_ao.py    the torch.ao candidates (torch-fbgemm, torch-qnnpack): TorchSpec, TorchAoBuilder
    graphs.py      the FP32 graph repairs: cross-layer equalization, bias correction (smoothing: backends/ort/passes)
    rank.py        rank_layers(): which layers to keep FP32 first
    meter.py       one candidate measured like the validator measures a target
"""
