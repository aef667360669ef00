"""Device bundles: ``make`` writes a golden-I/O bundle per target; ``verify`` is the standalone verifier copied into
each bundle (standard library + numpy + the artifact's runtime only); ``merge`` brings a device's report back."""
