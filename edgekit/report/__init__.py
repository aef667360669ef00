"""Render a manifest for people: the target table (terminal and report.md)."""

from edgekit.report.markdown import render_markdown, summary_rows, text_table

__all__ = ["render_markdown", "summary_rows", "text_table"]
