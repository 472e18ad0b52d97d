"""The evaluation report: the JSON document and, on request, the HTML page.

Example:
    >>> doc = document({"pairs": 0}, [])
    >>> doc["kind"], doc["schema_version"]
    ('anonymize-evaluation', '1.1')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..records import EVALUATION_SCHEMA_VERSION, write_json_atomic

REPORT_NAME = "anonymize-evaluation.json"


def default_report_path(protected: Path) -> Path:
    """Where the JSON report goes without ``--report``: next to the protected files."""
    return (protected if protected.is_dir() else protected.parent) / REPORT_NAME


def document(summary: dict[str, Any], images: list[dict[str, Any]]) -> dict[str, Any]:
    """The report document (schema 1.1: 1.0 plus black-box, licences and provenance fields)."""
    return {"schema_version": EVALUATION_SCHEMA_VERSION, "kind": "anonymize-evaluation", "summary": summary, "images": images}


def write(doc: dict[str, Any], json_path: Path, html_path: Path | None = None) -> None:
    """Write the JSON report atomically, and the self-contained HTML page when asked."""
    write_json_atomic(json_path, doc)
    if html_path is not None:
        from .html_report import write_html

        write_html(html_path, doc)
