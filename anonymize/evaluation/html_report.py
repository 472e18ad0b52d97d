"""The human-readable evaluation report: one self-contained HTML file.

The headline is black-box protection (SPR under the recognizers the protect run
did not attack); then the recognizer table with white-box rows marked (and
"unknown" ones), the summary, an SSIM-vs-identity-distance scatter (inline SVG,
one point per face), gates, and before/after thumbnails of the worst cases
(faces still matched, lowest SSIM). No external assets, so it opens offline.

Example:
    >>> html = render_html({"summary": {"pairs": 0}, "images": []})
    >>> html.startswith("<!DOCTYPE html>")
    True
"""
from __future__ import annotations

import base64
import html as _html
import io
from pathlib import Path
from typing import Any

from ..io.encode import atomic_write

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.pass{color:#087f23;font-weight:bold}.fail{color:#b00020;font-weight:bold}
.pair{display:inline-block;margin:6px;border:1px solid #ddd;padding:4px;font-size:12px;vertical-align:top}
.pair img{width:160px;height:auto;display:inline-block}.note{color:#555;font-size:13px}
.headline{font-size:18px;padding:10px 14px;border:2px solid #333;display:inline-block;margin:8px 0}
tr.whitebox td{background:#fff4e5}tr.unknown td{background:#f0f0f0;font-style:italic}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return _html.escape(str(v))


def _thumb(path: str | None, size: int = 160) -> str:
    if not path:
        return ""
    try:
        from PIL import Image, ImageOps

        im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:
        return ""


def _scatter(images: list[dict[str, Any]], recognizer: str | None, threshold: float | None) -> str:
    pts = []
    for r in images:
        for f in r.get("faces", []):
            idn = (f.get("identity") or {}).get(recognizer or "", {})
            d = idn.get("distance")
            s = f.get("face_ssim", r.get("ssim"))
            if d is not None and s is not None:
                pts.append((float(s), float(d), bool(idn.get("protected"))))
    if not pts:
        return "<p class='note'>No face-level identity distances to plot.</p>"
    w, h, m = 520, 320, 40
    dmax = max(max(p[1] for p in pts), threshold or 0) * 1.1 or 1.0
    smin = min(min(p[0] for p in pts), 0.0)

    def xy(s: float, d: float) -> tuple[float, float]:
        return m + (s - smin) / (1.0 - smin or 1.0) * (w - 2 * m), h - m - d / dmax * (h - 2 * m)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' role='img' aria-label='SSIM vs identity distance'>",
             f"<rect x='0' y='0' width='{w}' height='{h}' fill='white' stroke='#ccc'/>",
             f"<line x1='{m}' y1='{h - m}' x2='{w - m}' y2='{h - m}' stroke='#333'/><line x1='{m}' y1='{m}' x2='{m}' y2='{h - m}' stroke='#333'/>",
             f"<text x='{w / 2}' y='{h - 8}' text-anchor='middle' font-size='12'>face SSIM</text>",
             f"<text x='12' y='{h / 2}' font-size='12' transform='rotate(-90 12 {h / 2})' text-anchor='middle'>identity distance ({_html.escape(recognizer or '')})</text>"]
    parts.append(f"<text x='{m}' y='{h - m + 14}' font-size='10' text-anchor='middle'>{smin:.2f}</text>"
                 f"<text x='{w - m}' y='{h - m + 14}' font-size='10' text-anchor='middle'>1.00</text>"
                 f"<text x='{m - 4}' y='{h - m}' font-size='10' text-anchor='end'>0</text>"
                 f"<text x='{m - 4}' y='{m + 4}' font-size='10' text-anchor='end'>{dmax:.2f}</text>")
    if threshold:
        _, ty = xy(smin, threshold)
        parts.append(f"<line x1='{m}' y1='{ty:.1f}' x2='{w - m}' y2='{ty:.1f}' stroke='#b00020' stroke-dasharray='4'/>"
                     f"<text x='{w - m}' y='{ty - 4:.1f}' text-anchor='end' font-size='11' fill='#b00020'>match threshold {threshold}</text>")
    for s, d, prot in pts:
        x, y = xy(s, d)
        parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3.5' fill='{'#087f23' if prot else '#b00020'}' fill-opacity='0.7'/>")
    parts.append("</svg>")
    return "".join(parts)


def render_html(doc: dict[str, Any], worst: int = 12) -> str:
    s = doc.get("summary", {})
    images = doc.get("images", [])
    rows = "".join(f"<tr><th>{_html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in s.items() if not isinstance(v, (dict, list)))
    gates = "".join(
        f"<tr><td>{_html.escape(n)}</td><td>{_fmt(g['value'])}</td><td>{g['direction']} {g['threshold']}</td>"
        f"<td class='{'pass' if g['passed'] else 'fail'}'>{'pass' if g['passed'] else 'FAIL'}</td></tr>"
        for n, g in (s.get("gates") or {}).items()
    )
    per_rec = s.get("recognizers") or {}

    def wb_label(v: Any) -> str:
        return "white-box" if v is True else ("black-box" if v is False else "unknown")

    rec_rows = "".join(
        f"<tr class='{'whitebox' if r.get('white_box') is True else ('unknown' if r.get('white_box') not in (True, False) else 'blackbox')}'>"
        f"<td>{_html.escape(n)}</td><td>{wb_label(r.get('white_box'))}</td><td>{_fmt(r.get('spr'))}</td><td>{_fmt(r.get('distance_mean'))}</td><td>{_fmt(r.get('threshold'))}</td>"
        f"<td>{_fmt(r.get('spr_aligned'))}</td><td>{_fmt(r.get('gallery_rank1'))}</td>"
        f"<td>{_html.escape(str(r.get('licence') or ''))}{' <b>(non-commercial)</b>' if r.get('non_commercial') else ''}</td></tr>"
        for n, r in per_rec.items()
        if isinstance(r, dict)
    )
    bb = s.get("black_box") if isinstance(s.get("black_box"), dict) else None
    if bb is None:
        headline = ""
    elif bb.get("spr_min") is None:
        headline = ("<div class='headline' id='black-box'>Black-box protection: <b>unknown</b> — "
                    f"{_html.escape(str(bb.get('note') or 'no recognizer counts as black-box'))}</div>")
    else:
        headline = (f"<div class='headline' id='black-box'>Black-box protection (recognizers not attacked: "
                    f"{_html.escape(', '.join(bb.get('recognizers') or []))}): worst SPR <b>{_fmt(bb.get('spr_min'))}</b> "
                    f"({_html.escape(str(bb.get('spr_min_recognizer')))}), mean {_fmt(bb.get('spr_mean'))}</div>")
    # plot the recognizer that matters most: the worst black-box one, else the summary's primary
    first_rec = (bb or {}).get("spr_min_recognizer") or s.get("spr_recognizer") or next(iter(per_rec), None)
    thr = per_rec.get(first_rec, {}).get("threshold") if first_rec else None

    def badness(r: dict[str, Any]) -> tuple[int, float]:
        matched = sum(1 for f in r.get("faces", []) for v in (f.get("identity") or {}).values() if v.get("protected") is False)
        return (-matched, r.get("ssim") if r.get("ssim") is not None else 1.0)

    ok = [r for r in images if r.get("status") == "ok"]
    cases = "".join(
        f"<div class='pair'><img alt='original' src='{_thumb(r.get('original'))}'><img alt='protected' src='{_thumb(r.get('protected'))}'>"
        f"<br>{_html.escape(str(r.get('relative_path')))}<br>SSIM {_fmt(r.get('ssim'))} · PSNR {_fmt(r.get('psnr'))}</div>"
        for r in sorted(ok, key=badness)[:worst]
    )
    failed = "".join(
        f"<tr><td>{_html.escape(str(r.get('relative_path')))}</td><td>{_html.escape((r.get('error') or {}).get('code', ''))}</td>"
        f"<td>{_html.escape((r.get('error') or {}).get('message', ''))}</td></tr>"
        for r in images if r.get("status") != "ok"
    )
    notes = "".join(f"<li>{_html.escape(str(n))}</li>" for n in s.get("notes", []))
    transforms = _transforms_table(s.get("transforms"))
    attack = _attack_block(s.get("attack_itn"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>anonymize evaluation</title><style>{_CSS}</style></head>
<body>
<h1>anonymize evaluation</h1>
<p class="note">Originals: {_fmt(s.get('originals'))} · Protected: {_fmt(s.get('protected'))}</p>
{headline}
{'<h2>Recognizers</h2><p class="note">White-box rows: the protection was optimised against these weights, so their SPR shows the attack working, not protection against others.</p><table id="recognizers"><tr><th>recognizer</th><th>status</th><th>SPR</th><th>mean distance</th><th>threshold</th><th>SPR if located</th><th>gallery rank-1</th><th>licence</th></tr>' + rec_rows + '</table>' if rec_rows else ''}
{transforms}
{attack}
<h2>Summary</h2><table id="summary">{rows}</table>
{'<h2>Gates</h2><table id="gates"><tr><th>gate</th><th>value</th><th>required</th><th>result</th></tr>' + gates + '</table>' if gates else ''}
{'<h2>Notes</h2><ul>' + notes + '</ul>' if notes else ''}
<h2>SSIM vs identity distance</h2>{_scatter(images, first_rec, thr)}
<h2>Worst cases</h2><p class="note">Original (left) and protected (right): faces still matched first, then lowest SSIM.</p>
<div id="worst">{cases or '<p class="note">none</p>'}</div>
{'<h2>Failed files</h2><table id="failed"><tr><th>file</th><th>code</th><th>reason</th></tr>' + failed + '</table>' if failed else ''}
</body></html>
"""


def _transforms_table(trs: Any) -> str:
    """``--transforms``: one row per transform (each applied once to the protected images)."""
    if not isinstance(trs, dict) or not trs:
        return ""
    rows = "".join(
        f"<tr><td>{_html.escape(n)}</td><td>{_fmt(t.get('applied'))}</td><td>{_fmt(t.get('ssim_mean'))}</td>"
        f"<td>{_fmt(t.get('sdr'))}</td><td>{_fmt(t.get('spr'))}</td>"
        f"<td>{_fmt((t.get('black_box') or {}).get('spr_min'))}</td><td>{_fmt((t.get('black_box') or {}).get('spr_aligned_min'))}</td></tr>"
        for n, t in trs.items() if isinstance(t, dict))
    return ("<h2>After everyday transforms</h2><p class='note'>Each transform applied once to each protected image; "
            "a protection these undo is undone by ordinary re-publishing.</p><table id='transforms'><tr><th>transform</th>"
            "<th>images</th><th>SSIM</th><th>SDR</th><th>SPR</th><th>black-box SPR (worst)</th>"
            f"<th>black-box SPR if located (worst)</th></tr>{rows}</table>")


def _attack_block(at: Any) -> str:
    """``--attack itn``: reconstruction quality against the no-information baseline, SPR before/after inversion."""
    if not isinstance(at, dict) or "reconstruction" not in at:
        return ""
    rec, base, prot = at["reconstruction"], at["baseline"]["mean_image"], at.get("protected") or {}
    v = at.get("verdict") or {}
    word = {True: "<span class='pass'>robust</span>", False: "<span class='fail'>NOT robust</span>"}.get(v.get("robust"), "unknown")
    rows = "".join(
        f"<tr><td>{label}</td><td>{_fmt((blk.get('psnr') or {}).get('median'))}</td><td>{_fmt((blk.get('psnr') or {}).get('q1'))}"
        f" – {_fmt((blk.get('psnr') or {}).get('q3'))}</td><td>{_fmt((blk.get('ssim') or {}).get('median'))}</td></tr>"
        for label, blk in (("reconstruction (attack)", rec), ("no-information baseline (mean image)", base),
                           ("protected as published", prot)))
    idn = at.get("identity") or {}
    id_rows = "".join(
        f"<tr><td>{_html.escape(n)}</td><td>{_fmt(idn['before']['recognizers'].get(n, {}).get('spr_aligned'))}</td>"
        f"<td>{_fmt(r.get('spr_aligned'))}</td><td>{_fmt(idn['resolution_ceiling']['recognizers'].get(n, {}).get('spr_aligned'))}</td></tr>"
        for n, r in (idn.get("after_inversion", {}).get("recognizers") or {}).items())
    notes = "".join(f"<li>{_html.escape(str(n))}</li>" for n in at.get("notes", []))
    return (f"<h2>ITN-Attack (inverse network)</h2><p>Verdict: {word} — {_html.escape(str(v.get('criterion', '')))}; "
            f"gain over baseline {_fmt(v.get('gain_db'))} dB. {at.get('train_samples')} attacker samples, "
            f"{at.get('evaluated_samples')} evaluated ({_html.escape(str(at.get('region')))} crops).</p>"
            f"<table id='attack'><tr><th>crops</th><th>PSNR median (dB)</th><th>PSNR Q1 – Q3</th><th>SSIM median</th></tr>{rows}</table>"
            + (f"<table id='attack-identity'><tr><th>recognizer</th><th>SPR if located, published</th><th>after inversion</th>"
               f"<th>resolution ceiling</th></tr>{id_rows}</table>" if id_rows else "")
            + (f"<ul>{notes}</ul>" if notes else ""))


def write_html(path: Path, doc: dict[str, Any]) -> None:
    atomic_write(Path(path), render_html(doc).encode("utf-8"))
