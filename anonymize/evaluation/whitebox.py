"""White-box knowledge: which networks the protect run attacked, and what the method itself measured.

A recognizer's numbers are *white-box* when the protection was optimised against
a network of the same weight family (``RecognizerSpec.family``): they show the
attack working, not protection against an unknown recognizer. What was attacked
is read from what the protect run recorded (:func:`anonymize.records.resolve_protect_report`),
matched to each protected file (by content hash, then path, then relative path).

The flag is ``True``, ``False`` or ``"unknown"``: a file no protect record
accounts for (no provenance file, a report elsewhere that was not passed with
``--protect-report``, outputs from another tool) makes every recognizer
"unknown" for it; never false.

Example:
    >>> white_box("dlib-native", {"dlib-resnet"})
    True
    >>> white_box("facenet-casia", {"dlib-resnet"})
    False
    >>> white_box("dlib-resnet", None)
    'unknown'
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..faces.recognize import family_of
from ..records import ProtectSources, resolve_protect_report, safe_path

UNKNOWN = "unknown"
WhiteBoxFlag = Union[bool, str]  # True, False or "unknown"

# The method's own privacy metrics (ap: ICP/ICE of seed 003, hide/keep ratio of thesis ch. 3)
PRIVACY_FIELDS = ("icp_before", "icp_after", "ice_before", "ice_after", "ice_after_normalised", "p_target",
                  "hide_ratio", "keep_ratio")


def white_box(recognizer: str, attacked: set[str] | None) -> WhiteBoxFlag:
    """Tri-state white-box flag of ``recognizer`` given the attacked models (None: not known)."""
    if attacked is None:
        return UNKNOWN
    return family_of(recognizer) in {family_of(m) for m in attacked}


def _norm(p: str | Path) -> str:
    return os.path.normcase(os.path.abspath(os.fspath(p)))


@dataclass
class Provenance:
    """What protect runs recorded about the protected files, indexed for lookup per file."""

    sources: ProtectSources
    by_sha: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_path: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_relative: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    run_level: set[str] | None = None  # attacked models of all runs, when no records could be read

    @classmethod
    def load(cls, protected: Path, protect_report: Path | None = None) -> "Provenance":
        src = resolve_protect_report(protected, protect_report)
        prov = cls(src)
        cwds = {r.get("run_id"): r.get("cwd") for r in src.runs}
        n = 0
        for rec in src.iter_records():
            n += 1
            if rec.get("status") not in (None, "ok"):
                continue  # skipped/failed lines must not hide the record that wrote the file
            if rec.get("output_sha256"):
                prov.by_sha[str(rec["output_sha256"])] = rec
            out = rec.get("output")
            if out:
                p = Path(out)
                cwd = cwds.get(rec.get("run_id"))
                prov.by_path[_norm(p if p.is_absolute() or not cwd else Path(cwd) / p)] = rec
            if rec.get("relative_path"):
                prov.by_relative.setdefault(str(rec["relative_path"]), []).append(rec)
        if n == 0 and src.runs:  # records are gone: fall back to what the runs say as a whole
            written = [r for r in src.runs if r.get("outputs_written")]
            if written:
                prov.run_level = {str(m) for r in written for m in r.get("attacked_models") or []}
        return prov

    @property
    def found(self) -> bool:
        return self.sources.source is not None

    def record_for(self, protected_file: Path | None, relative: str, sha256: str | None = None) -> dict[str, Any] | None:
        """The protect record of one protected file, or None when no record accounts for it."""
        if sha256 and sha256 in self.by_sha:
            return self.by_sha[sha256]
        if protected_file is not None and _norm(protected_file) in self.by_path:
            return self.by_path[_norm(protected_file)]
        # same relative path: only for records that name no output, or whose output has moved away
        name = protected_file.name if protected_file is not None else None
        for rec in reversed(self.by_relative.get(relative, [])):
            out = rec.get("output")
            if not out or (name is not None and Path(out).name == name and not Path(out).exists()):
                return rec
        return None

    def attacked_for(self, record: dict[str, Any] | None) -> set[str] | None:
        """Models attacked for a file (empty: none), None when it cannot be known."""
        if record is not None:
            return {str(m) for m in (record.get("method_info") or {}).get("attacked_models") or []}
        return None if self.run_level is None else set(self.run_level)

    def describe(self) -> dict[str, Any]:
        return {
            "source": safe_path(self.sources.source),
            "records": [safe_path(p) for p in self.sources.records],
            "runs": [{k: r.get(k) for k in ("run_id", "method", "params", "attacked_models", "report", "tool_version")}
                     for r in self.sources.runs],
        }


def image_provenance(prov: Provenance, protected_file: Path | None, relative: str, sha256: str | None) -> dict[str, Any]:
    """Per-image provenance fields for the report: the record's run, method and attacked models."""
    rec = prov.record_for(protected_file, relative, sha256)
    attacked = prov.attacked_for(rec)
    return {
        "found": rec is not None or attacked is not None,
        "run_id": rec.get("run_id") if rec else None,
        "method": rec.get("method") if rec else None,
        "attacked_models": None if attacked is None else sorted(attacked),
        "method_privacy": method_privacy(rec),
    }


def method_privacy(record: dict[str, Any] | None) -> dict[str, float]:
    """The method's own privacy metrics for one file, as the protect run recorded them."""
    info = (record or {}).get("method_info") or {}
    return {k: float(info[k]) for k in PRIVACY_FIELDS if isinstance(info.get(k), (int, float)) and not isinstance(info.get(k), bool)}


def summarise(prov: Provenance, images: list[dict[str, Any]], recognizers: list[str]) -> dict[str, Any]:
    """Run-level white-box view: per recognizer True/False/"unknown", and what was attacked."""
    ok = [r for r in images if r.get("status") == "ok"]
    known = [r for r in ok if (r.get("provenance") or {}).get("attacked_models") is not None]
    unknown = len(ok) - len(known)
    attacked = sorted({m for r in known for m in r["provenance"]["attacked_models"]})
    flags: dict[str, WhiteBoxFlag] = {}
    for name in recognizers:
        wb = white_box(name, set(attacked))
        flags[name] = True if wb is True else (UNKNOWN if unknown or not ok and not prov.found else False)
    notes = []
    if unknown:
        where = "no provenance file or protect report was found" if not prov.found else \
            f"the protect records found ({safe_path(prov.sources.source)}) do not account for them"
        notes.append(f"white-box status unknown for {unknown} of {len(ok)} images: {where}. Pass the protect "
                     "report with --protect-report PATH; until then no recognizer counts as black-box.")
    return {
        "flags": flags,
        "known": unknown == 0 and (prov.found or not ok),
        "attacked_models": attacked,
        "images_without_provenance": unknown,
        "notes": notes,
        "provenance": prov.describe(),
    }
