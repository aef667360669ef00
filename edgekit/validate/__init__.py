"""The validator: error metrics against references, latency on the artifact's own backend, gates, the verdicts.

    measure.py  measure(): every artifact and the references on the same data, timed together -> Measured
    run.py      the validation data and the streamed comparison (observe), the reference runners
    metrics.py  error metrics (pure numpy)      latency.py  the one (interleaved) latency method
    gates.py    gate verdicts                   verdict.py  a target's status, the build's exit code
    stats.py    confidence intervals (Wilson, Newcombe paired) and the samples a gate needs to be decided
"""
