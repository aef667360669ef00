"""Render a manifest for people: the target table (terminal and report.md) and report.html with its plots."""

from edgekit.report.data import ReportData, read_report_data
from edgekit.report.html import render_html
from edgekit.report.markdown import render_markdown, summary_rows, text_table, undecided_notes

__all__ = ["ReportData", "read_report_data", "render_html", "render_markdown", "summary_rows", "text_table",
           "undecided_notes"]
