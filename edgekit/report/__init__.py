"""Render a manifest for people: the target table (terminal and report.md) and report.html with charts."""

from edgekit.report.html import render_html
from edgekit.report.markdown import render_markdown, summary_rows, text_table, undecided_notes

__all__ = ["render_html", "render_markdown", "summary_rows", "text_table", "undecided_notes"]
