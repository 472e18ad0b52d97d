"""Raster <-> vector helpers for the ``ope`` method (seed paper 001).

- :mod:`.imagetracer`: a clean-room Python port of the imagetracer.js 1.2.x
  tracing algorithm with its ``'default'`` preset (the paper's vectoriser).
- :mod:`.vtracer_backend`: the faster, non-faithful alternative (``vtracer``).
- :mod:`.ope_svg`: keyed order-preserving encryption of every position in an SVG.
- :mod:`.raster`: SVG -> uint8 RGB rasterisation (resvg) on a white background.
"""
