"""Bundled example models (``example:NAME`` sources), each with weights shipped in the package."""
