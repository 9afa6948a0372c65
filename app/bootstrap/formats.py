"""The file formats and report renderers the CLI writes, handed out by the composition root.

They are adapters (app/adapters/export_formats.py: JSON Lines, CSV and Parquet writers, the
HTML report, rich tables); entrypoints reach adapters only through app.bootstrap. pyarrow is
imported by the Parquet writer alone, when one is opened.
"""

from __future__ import annotations

from app.adapters.export_formats import failure_tables, html_report, open_writer, whatif_tables

__all__ = ["failure_tables", "html_report", "open_writer", "whatif_tables"]
