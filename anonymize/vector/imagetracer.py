"""Clean-room Python port of the imagetracer.js 1.2.x tracer, ``'default'`` preset.

Written from the published algorithm description (paper 001, spec B.2.2), not
from the JavaScript source. The stages:

1. colour quantisation: a 16-colour palette sampled on a regular grid
   (``colorsampling=2``), refined by 3 cycles of nearest-colour assignment
   (L1 distance in RGBA) and integer averaging;
2. layering: for every palette colour, each pixel corner ("node") gets a
   4-bit code of which of its 4 neighbouring pixels hold that colour
   (1 top-left, 2 top-right, 4 bottom-right, 8 bottom-left);
3. path scan: closed boundaries are followed node by node (saddle nodes keep
   same-colour diagonal pixels connected); paths shorter than ``pathomit``
   nodes are dropped; holes are attached to their innermost enclosing path;
4. internodes: points at edge midpoints, plus right-angle corners kept;
5. fitting: runs of at most two directions are fitted with straight lines
   (squared error <= ltres) or quadratic splines (<= qtres), splitting at the
   worst point otherwise;
6. SVG: one ``<path>`` per non-hole path in palette order, holes appended in
   reverse order in the same ``d``; coordinates rounded to 1 decimal (hole
   sub-paths to whole numbers, as imagetracer.js 1.2.6 itself does).

The output is deterministic. ``benchmarks/ope_cifar.py --parity`` compares it
with the npm ``imagetracerjs`` package when Node is available.

Example:
    >>> import numpy as np
    >>> img = np.zeros((6, 6, 3), np.uint8); img[1:5, 1:5] = 255
    >>> svg = trace_to_svg(img)
    >>> svg.startswith('<svg width="6" height="6"')
    True
"""
from __future__ import annotations

from ..errors import UsageError

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

VERSION_TAG = "imagetracer.js 1.2.6 algorithm, Python port"

DEFAULT_OPTIONS: dict[str, float | int | bool] = {
    "ltres": 1.0,
    "qtres": 1.0,
    "pathomit": 8,
    "rightangleenhance": True,
    "colorsampling": 2,
    "numberofcolors": 16,
    "mincolorratio": 0.0,
    "colorquantcycles": 3,
    "strokewidth": 1,
    "roundcoords": 1,
}

# Directions: 0 right, 1 up, 2 left, 3 down (image y grows downwards).
_STEP = {0: (1, 0), 1: (0, -1), 2: (-1, 0), 3: (0, 1)}
# Arriving while moving in direction d means we came through this edge of the node.
_ENTRY_EDGE = {0: "L", 1: "D", 2: "R", 3: "U"}
_EXIT_DIR = {"U": 1, "R": 0, "D": 3, "L": 2}
# Which pixel bits each edge separates (TL=1, TR=2, BR=4, BL=8).
_EDGE_BITS = {"U": (1, 2), "R": (2, 4), "D": (8, 4), "L": (1, 8)}


def _build_lookup() -> dict[tuple[int, int], tuple[int, int]]:
    """(node code, arrival direction) -> (code left behind, departure direction)."""
    table: dict[tuple[int, int], tuple[int, int]] = {}
    # Saddles: pair edges so that the two boundaries each cut off one
    # non-layer corner (layer pixels that touch diagonally stay connected).
    saddle_pairs = {5: [({"L", "D"}, 8), ({"U", "R"}, 2)], 10: [({"L", "U"}, 1), ({"D", "R"}, 4)]}
    for code in range(1, 15):
        boundary = [e for e, (a, b) in _EDGE_BITS.items() if bool(code & a) != bool(code & b)]
        for d in range(4):
            entry = _ENTRY_EDGE[d]
            if entry not in boundary:
                continue
            if code in saddle_pairs:
                (p0, _c0), (p1, _c1) = saddle_pairs[code]
                used, rest_corner = (p0, _c1) if entry in p0 else (p1, _c0)
                out = next(iter(used - {entry}))
                table[(code, d)] = (15 - rest_corner, _EXIT_DIR[out])
            else:
                out = next(e for e in boundary if e != entry)
                table[(code, d)] = (0, _EXIT_DIR[out])
    return table


_LOOKUP = _build_lookup()


@dataclass
class _Path:
    points: list[tuple[float, float]]
    bbox: list[float]
    is_hole: bool
    holes: list[int] = field(default_factory=list)
    segdir: list[int] = field(default_factory=list)  # per internode: direction of the following segment
    segments: list[tuple] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# 1. colour quantisation


def _sample_palette_grid(rgba: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid-sampled palette and a validity mask.

    On tiny images the grid index can run past the last pixel; the original then
    holds an undefined colour that never wins a comparison (and so stays unused).
    """
    h, w = rgba.shape[:2]
    flat = rgba.reshape(-1, 4)
    valid: list[bool] = []
    ni = math.ceil(math.sqrt(n))
    nj = math.ceil(n / ni)
    vx = w / (ni + 1)
    vy = h / (nj + 1)
    pal = []
    for j in range(nj):
        for i in range(ni):
            if len(pal) == n:
                break
            idx = math.floor(((j + 1) * vy) * w + ((i + 1) * vx))
            ok = idx < flat.shape[0]
            pal.append(flat[idx].astype(np.int64) if ok else np.zeros(4, np.int64))
            valid.append(ok)
    return np.stack(pal), np.array(valid, bool)


def quantize(rgba: np.ndarray, opts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Return (index map HxW int, palette Kx4 int) after the refinement cycles."""
    n = int(opts["numberofcolors"])
    pal, valid = _sample_palette_grid(rgba, n)
    px = rgba.reshape(-1, 4).astype(np.int64)
    npx = px.shape[0]
    idx = np.zeros(npx, np.int64)
    acc = np.zeros((n, 4), np.int64)
    cnt = np.zeros(n, np.int64)
    for cycle in range(int(opts["colorquantcycles"])):
        if cycle > 0:
            nz = cnt > 0
            pal[nz] = acc[nz] // cnt[nz, None]
            valid = valid | nz
            if float(opts["mincolorratio"]) > 0:
                raise UsageError("mincolorratio > 0 randomises colours and is not supported; the default preset uses 0")
        dist = np.abs(px[:, None, :] - pal[None, :, :]).sum(-1)
        dist[:, ~valid] = 1 << 30  # undefined colours never win
        idx = dist.argmin(1)  # first minimum, like a strict '<' scan
        cnt = np.bincount(idx, minlength=n)
        acc = np.zeros((n, 4), np.int64)
        np.add.at(acc, idx, px)
    h, w = rgba.shape[:2]
    return idx.reshape(h, w), pal


# ----------------------------------------------------------------------------------------------
# 2. layering


def node_codes(mask: np.ndarray) -> np.ndarray:
    """(H+2)x(W+2) node codes for a boolean pixel mask; node (y, x) is the corner at image (x-1, y-1)."""
    h, w = mask.shape
    p = np.zeros((h + 4, w + 4), np.int8)
    p[2 : h + 2, 2 : w + 2] = mask
    # node (y, x): TL = p[y][x], TR = p[y][x+1], BR = p[y+1][x+1], BL = p[y+1][x]
    tl = p[0 : h + 2, 0 : w + 2]
    tr = p[0 : h + 2, 1 : w + 3]
    br = p[1 : h + 3, 1 : w + 3]
    bl = p[1 : h + 3, 0 : w + 2]
    return (tl * 1 + tr * 2 + br * 4 + bl * 8).astype(np.int8)


# ----------------------------------------------------------------------------------------------
# 3. path scan


def _bbox_includes(parent: list[float], child: list[float]) -> bool:
    return parent[0] < child[0] and parent[1] < child[1] and parent[2] > child[2] and parent[3] > child[3]


def _point_in_poly(p: tuple[float, float], poly: list[tuple[float, float]]) -> bool:
    inside = False
    x, y = p
    j = len(poly) - 1
    for i in range(len(poly)):
        xi, yi = poly[i]
        xj, yj = poly[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def scan_paths(codes: np.ndarray, pathomit: int) -> list[_Path]:
    """Follow every closed boundary in a node-code grid (modified in place)."""
    grid = codes.tolist()
    h = len(grid)
    w = len(grid[0])
    paths: list[_Path] = []
    ys, xs = np.nonzero(codes)
    for sy, sx in zip(ys.tolist(), xs.tolist()):
        start = grid[sy][sx]
        if start != 4 and start != 11:
            continue
        is_hole = start == 11
        px, py, d = sx, sy, 1
        pts: list[tuple[float, float]] = []
        bbox = [px, py, px, py]
        while True:
            pts.append((px - 1, py - 1))
            if px - 1 < bbox[0]:
                bbox[0] = px - 1
            if px - 1 > bbox[2]:
                bbox[2] = px - 1
            if py - 1 < bbox[1]:
                bbox[1] = py - 1
            if py - 1 > bbox[3]:
                bbox[3] = py - 1
            try:
                new, d = _LOOKUP[(grid[py][px], d)]
            except KeyError:  # pragma: no cover - would mean an inconsistent code grid
                raise RuntimeError(f"tracer: invalid node {grid[py][px]} at ({px},{py}) arriving {d}") from None
            grid[py][px] = new
            dx, dy = _STEP[d]
            px += dx
            py += dy
            if px == sx and py == sy:
                break
        if len(pts) < pathomit:
            continue
        path = _Path(points=pts, bbox=bbox, is_hole=is_hole)
        if is_hole:
            parent, parent_bbox = 0, [-1, -1, w + 1, h + 1]
            for k, cand in enumerate(paths):
                if (
                    not cand.is_hole
                    and _bbox_includes(cand.bbox, bbox)
                    and _bbox_includes(parent_bbox, cand.bbox)
                    and _point_in_poly(pts[0], cand.points)
                ):
                    parent, parent_bbox = k, cand.bbox
            paths.append(path)
            paths[parent].holes.append(len(paths) - 1)
        else:
            paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# 4. internodes


def _direction(x1: float, y1: float, x2: float, y2: float) -> int:
    if x1 < x2:
        return 1 if y1 < y2 else (7 if y1 > y2 else 0)
    if x1 > x2:
        return 3 if y1 < y2 else (5 if y1 > y2 else 4)
    return 2 if y1 < y2 else (6 if y1 > y2 else 8)


def _right_angle(p: list[tuple[float, float]], i1: int, i2: int, i3: int, i4: int, i5: int) -> bool:
    return (p[i3][0] == p[i1][0] and p[i3][0] == p[i2][0] and p[i3][1] == p[i4][1] and p[i3][1] == p[i5][1]) or (
        p[i3][1] == p[i1][1] and p[i3][1] == p[i2][1] and p[i3][0] == p[i4][0] and p[i3][0] == p[i5][0]
    )


def internodes(path: _Path, rightangle: bool) -> tuple[list[tuple[float, float]], list[int]]:
    """Midpoints of the node path (and kept right-angle corners), each with its outgoing direction."""
    p = path.points
    n = len(p)
    out: list[tuple[float, float]] = []
    dirs: list[int] = []
    for i in range(n):
        i1, i2, i4, i5 = (i - 2) % n, (i - 1) % n, (i + 1) % n, (i + 2) % n
        mx, my = (p[i][0] + p[i4][0]) / 2, (p[i][1] + p[i4][1]) / 2
        if rightangle and _right_angle(p, i1, i2, i, i4, i5):
            if out:
                dirs[-1] = _direction(out[-1][0], out[-1][1], p[i][0], p[i][1])
            out.append((p[i][0], p[i][1]))
            dirs.append(_direction(p[i][0], p[i][1], mx, my))
        nx, ny = (p[i4][0] + p[i5][0]) / 2, (p[i4][1] + p[i5][1]) / 2
        out.append((mx, my))
        dirs.append(_direction(mx, my, nx, ny))
    return out, dirs


# ----------------------------------------------------------------------------------------------
# 5. line / spline fitting


def _fit(pts: list[tuple[float, float]], ltres: float, qtres: float, s: int, e: int) -> list[tuple]:
    n = len(pts)
    if e > n or e < 0:
        return []
    tl = e - s
    if tl < 0:
        tl += n
    sx, sy = pts[s]
    ex, ey = pts[e]
    vx, vy = (ex - sx) / tl, (ey - sy) / tl
    ok = True
    errpt, errval = s, 0.0
    k = (s + 1) % n
    while k != e:
        pl = k - s
        if pl < 0:
            pl += n
        dx, dy = pts[k][0] - (sx + vx * pl), pts[k][1] - (sy + vy * pl)
        d2 = dx * dx + dy * dy
        if d2 > ltres:
            ok = False
        if d2 > errval:
            errpt, errval = k, d2
        k = (k + 1) % n
    if ok:
        return [("L", sx, sy, ex, ey)]
    fit = errpt
    ok = True
    errval = 0.0
    t = (fit - s) / tl
    t1, t2, t3 = (1 - t) * (1 - t), 2 * (1 - t) * t, t * t
    cpx = (t1 * sx + t3 * ex - pts[fit][0]) / -t2
    cpy = (t1 * sy + t3 * ey - pts[fit][1]) / -t2
    k = s + 1
    while k != e:
        t = (k - s) / tl
        t1, t2, t3 = (1 - t) * (1 - t), 2 * (1 - t) * t, t * t
        qx = t1 * sx + t2 * cpx + t3 * ex
        qy = t1 * sy + t2 * cpy + t3 * ey
        dx, dy = pts[k][0] - qx, pts[k][1] - qy
        d2 = dx * dx + dy * dy
        if d2 > qtres:
            ok = False
        if d2 > errval:
            errpt, errval = k, d2
        k = (k + 1) % n
    if ok:
        return [("Q", sx, sy, cpx, cpy, ex, ey)]
    return _fit(pts, ltres, qtres, s, fit) + _fit(pts, ltres, qtres, fit, e)


def fit_path(pts: list[tuple[float, float]], dirs: list[int], ltres: float, qtres: float) -> list[tuple]:
    """Split the internode cycle into runs of <= 2 directions and fit each run."""
    n = len(pts)
    segs: list[tuple] = []
    i = 0
    while i < n:
        t1, t2 = dirs[i], -1
        e = i + 1
        while (dirs[e] == t1 or dirs[e] == t2 or t2 == -1) and e < n - 1:
            if dirs[e] != t1 and t2 == -1:
                t2 = dirs[e]
            e += 1
        if e == n - 1:
            e = 0
        segs.extend(_fit(pts, ltres, qtres, i, e))
        i = e if e > 0 else n
    return segs


# ----------------------------------------------------------------------------------------------
# 6. SVG


def fmt(v: float, places: int = 1) -> str:
    """Round half away from zero on the exact binary value (like JS toFixed) and print minimally."""
    if v == int(v):
        return str(int(v))
    scaled = v * 10**places
    if scaled == int(scaled):  # already on the grid (midpoints): no rounding needed
        q = int(scaled) / 10**places
        return str(int(q)) if q == int(q) else repr(q)
    q = float(Decimal(v).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
    if q == int(q):
        return str(int(q))
    return repr(q)


def _path_d(layer: list[_Path], idx: int, places: int) -> str:
    path = layer[idx]
    segs = path.segments
    parts = ["M", fmt(segs[0][1], places), fmt(segs[0][2], places)]
    for sg in segs:
        parts.append(sg[0])
        parts.extend(fmt(v, places) for v in sg[3:])
    parts.append("Z")
    # imagetracer.js 1.2.6 writes hole sub-paths with whole-number coordinates
    # (its rounding call omits the decimal places there); reproduced on purpose.
    hp = 0
    for hidx in path.holes:
        hs = layer[hidx].segments
        last = hs[-1]
        parts.extend(["M", fmt(last[-2], hp), fmt(last[-1], hp)])
        for sg in reversed(hs):
            parts.append(sg[0])
            if sg[0] == "Q":
                parts.extend([fmt(sg[3], hp), fmt(sg[4], hp)])
            parts.extend([fmt(sg[1], hp), fmt(sg[2], hp)])
        parts.append("Z")
    return " ".join(parts) + " "


def _opacity(a: int) -> str:
    v = a / 255.0
    return str(int(v)) if v == int(v) else repr(v)


@dataclass
class Trace:
    width: int
    height: int
    palette: np.ndarray
    layers: list[list[_Path]]

    @property
    def n_paths(self) -> int:
        return sum(1 for layer in self.layers for p in layer if not p.is_hole)

    def to_svg(self, strokewidth: float = 1, places: int = 1) -> str:
        out = [
            f'<svg width="{self.width}" height="{self.height}" version="1.1" '
            f'xmlns="http://www.w3.org/2000/svg" desc="Created with {VERSION_TAG}" >'
        ]
        for k, layer in enumerate(self.layers):
            r, g, b, a = (int(v) for v in self.palette[k])
            col = f"rgb({r},{g},{b})"
            for i, path in enumerate(layer):
                if path.is_hole:
                    continue
                out.append(
                    f'<path fill="{col}" stroke="{col}" stroke-width="{strokewidth}" opacity="{_opacity(a)}" '
                    f'd="{_path_d(layer, i, places)}" />'
                )
        out.append("</svg>")
        return "".join(out)


def trace(image: np.ndarray, options: dict | None = None) -> Trace:
    """Trace an HxWx3 (RGB) or HxWx4 (RGBA) uint8 image with the given options (default preset)."""
    opts = dict(DEFAULT_OPTIONS)
    opts.update(options or {})
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise ValueError(f"trace expects a uint8 HxWx3 or HxWx4 image, got {img.dtype} {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError("trace needs a non-empty image")
    if img.shape[2] == 3:
        img = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if int(opts["colorsampling"]) != 2:
        raise UsageError("only colorsampling=2 (the 'default' preset) is supported")
    index, palette = quantize(img, opts)
    layers: list[list[_Path]] = []
    for k in range(len(palette)):
        mask = index == k
        if not mask.any():
            layers.append([])
            continue
        paths = scan_paths(node_codes(mask), int(opts["pathomit"]))
        for p in paths:
            pts, dirs = internodes(p, bool(opts["rightangleenhance"]))
            p.segments = fit_path(pts, dirs, float(opts["ltres"]), float(opts["qtres"]))
        layers.append(paths)
    return Trace(width=img.shape[1], height=img.shape[0], palette=palette, layers=layers)


def trace_to_svg(image: np.ndarray, options: dict | None = None) -> str:
    """Convenience: trace and serialise (see module example)."""
    opts = dict(DEFAULT_OPTIONS)
    opts.update(options or {})
    return trace(image, opts).to_svg(opts["strokewidth"], int(opts["roundcoords"]))
