"""Position OPE (paper 001, Algorithm 2): encrypt every coordinate of an SVG.

Every numeric token of each ``<path d="...">`` and the root ``width``/``height``
is replaced by ``E(v) - offset`` with ``offset = E(0)``, where ``E`` is pyope's
Boldyreva order-preserving encryption. Replacement is token-wise (the paper's
``re.sub`` would also hit digits inside longer numbers). pyope works on
integers, so a fractional ``v`` is either rounded half-to-even (``interp="round"``,
the default) or mapped by linear interpolation between ``E(floor v)`` and
``E(ceil v)`` (``interp="linear"``, strictly monotone). Encryptions are memoised
per integer: coordinates take few distinct values, so an image costs only a
handful of pyope calls once the cache is warm.

With the paper's key, ``in_range=(-9999, 9999)`` and ``out_range=(-99999, 99999)``
the offset is exactly -796 (spec B.2.3).

Example:
    >>> from anonymize.privacy.ope_keys import PAPER_KEY
    >>> c = PositionCipher(PAPER_KEY)
    >>> c.offset, c.shift(50), c.shift(0)
    (-796, 455, 0)
    >>> c.encrypt_svg('<svg width="2" height="2"><path d="M 0 0 L 1 2 Z " /></svg>')
    '<svg width="12" height="12"><path d="M 0 0 L 4 12 Z " /></svg>'
"""
from __future__ import annotations

import math
import re
from typing import Any

_NUM = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_D_ATTR = re.compile(r'(\sd=")([^"]*)(")')
_SVG_OPEN = re.compile(r"<svg\b[^>]*>", re.S)
_WH_ATTR = re.compile(r'(\s(?:width|height)=")([^"]*)(")')


class PositionCipher:
    """Memoised ``v -> E(v) - E(0)`` over integers, with round/linear handling of fractions."""

    def __init__(
        self,
        key: bytes,
        in_range: tuple[int, int] = (-9999, 9999),
        out_range: tuple[int, int] = (-99999, 99999),
        interp: str = "round",
    ) -> None:
        from pyope.ope import OPE, ValueRange

        if interp not in ("round", "linear"):
            raise ValueError(f"interp must be 'round' or 'linear', not {interp!r}")
        if not (in_range[0] <= 0 <= in_range[1]):
            raise ValueError(f"in_range {in_range} must contain 0 (the offset is E(0))")
        self.in_range = (int(in_range[0]), int(in_range[1]))
        self.out_range = (int(out_range[0]), int(out_range[1]))
        self.interp = interp
        self._ope = OPE(bytes(key), in_range=ValueRange(*self.in_range), out_range=ValueRange(*self.out_range))
        self._cache: dict[int, int] = {}
        self._tok_cache: dict[str, str] = {}  # token text -> encrypted token text
        self.calls = 0  # pyope encryptions actually performed
        self.offset = self._enc(0)

    def _enc(self, v: int) -> int:
        hit = self._cache.get(v)
        if hit is not None:
            return hit
        if not (self.in_range[0] <= v <= self.in_range[1]):
            raise ValueError(
                f"coordinate {v} is outside the OPE in_range {self.in_range}; use a smaller --size or a wider range"
            )
        self.calls += 1
        c = int(self._ope.encrypt(v))
        self._cache[v] = c
        return c

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def shift(self, v: float) -> float | int:
        """Encrypted position ``E(v) - offset`` (an int, or a float for linear interpolation)."""
        if self.interp == "round" or v == int(v):
            return self._enc(int(round(v))) - self.offset
        lo = math.floor(v)
        a, b = self._enc(lo), self._enc(lo + 1)
        return a + (b - a) * (v - lo) - self.offset

    def _token(self, tok: str) -> str:
        hit = self._tok_cache.get(tok)
        if hit is not None:
            return hit
        if not _NUM.match(tok):
            return tok
        out = self.shift(float(tok))
        text = str(out) if isinstance(out, int) else f"{out:.2f}".rstrip("0").rstrip(".")
        if len(self._tok_cache) < 1_000_000:
            self._tok_cache[tok] = text
        return text

    def encrypt_d(self, d: str) -> str:
        """Encrypt every numeric token of a path ``d`` string, keeping command letters."""
        toks = d.split()
        out = " ".join(self._token(t) for t in toks)
        return out + (" " if d.endswith((" ", "\t", "\n")) else "")

    def encrypt_svg(self, svg: str) -> str:
        """Encrypt all path data and the root canvas size; everything else is untouched."""
        m = _SVG_OPEN.search(svg)
        if m is None:
            raise ValueError("not an SVG document: no <svg> element")
        head = _WH_ATTR.sub(lambda g: g.group(1) + self._token(g.group(2).strip()) + g.group(3), m.group(0))
        body = _D_ATTR.sub(lambda g: g.group(1) + self.encrypt_d(g.group(2)) + g.group(3), svg[m.end() :])
        return svg[: m.start()] + head + body

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for records: ranges, interpolation, offset, cache size."""
        return {
            "in_range": list(self.in_range),
            "out_range": list(self.out_range),
            "interp": self.interp,
            "offset": self.offset,
            "cache_size": self.cache_size,
        }
