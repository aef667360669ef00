"""The validator: error metrics against references, latency on the artifact's own backend, gates."""
