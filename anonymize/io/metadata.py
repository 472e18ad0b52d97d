"""Metadata policy: what survives from the input's metadata into the output.

Default: nothing (EXIF, XMP, IPTC, ICC, comments, thumbnails all stripped).
``--keep-metadata`` takes an allow-list of groups. GPS, serial numbers,
owner names, maker notes and thumbnails are only kept with ``all``, which
the report flags.

Example:
    >>> sorted(parse_keep("icc,datetime"))
    ['datetime', 'icc']
    >>> sorted(GROUPS)[:3]
    ['all', 'camera', 'copyright']
"""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from ..errors import UsageError

EXIF_IFD = 0x8769
GPS_IFD = 0x8825
ORIENTATION = 0x0112

# Group name -> (IFD0 tags, Exif sub-IFD tags)
_TAGS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "orientation": ((ORIENTATION,), ()),
    "datetime": ((0x0132,), (0x9003, 0x9004, 0x9010, 0x9011, 0x9012, 0x9290, 0x9291, 0x9292)),
    "camera": (
        (0x010F, 0x0110),
        (0x829A, 0x829D, 0x8822, 0x8827, 0x9201, 0x9202, 0x9204, 0x9207, 0x9209, 0x920A, 0xA402, 0xA403, 0xA405, 0xA406, 0xA433, 0xA434),
    ),
    "copyright": ((0x8298, 0x013B), ()),
    "description": ((0x010E,), ()),
    "dpi": ((0x011A, 0x011B, 0x0128), ()),
}
GROUPS = frozenset(set(_TAGS) | {"icc", "all"})
# Documented as never kept without `all`: GPS IFD, serial numbers, owner, maker notes, unique id, thumbnails, XMP/IPTC.
NEVER_WITHOUT_ALL = ("gps", "serial-numbers", "owner", "maker-notes", "image-unique-id", "thumbnail", "xmp", "iptc", "comments")


def parse_keep(spec: str | None) -> frozenset[str]:
    """Parse a comma-separated allow-list; raises UsageError on unknown names."""
    if not spec:
        return frozenset()
    names = {s.strip().lower() for s in spec.split(",") if s.strip()}
    names.discard("none")
    unknown = names - GROUPS
    if unknown:
        raise UsageError(f"unknown --keep-metadata group(s): {', '.join(sorted(unknown))}; choose from {', '.join(sorted(GROUPS))}, none")
    return frozenset(names)


@dataclass
class MetadataPlan:
    """What to write: an EXIF blob or None, an ICC profile or None, and what was kept/removed."""

    exif: bytes | None = None
    icc_profile: bytes | None = None
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def plan_metadata(exif: Image.Exif | None, icc: bytes | None, keep: frozenset[str], xmp_present: bool = False) -> MetadataPlan:
    """Filter the source metadata through the allow-list ``keep``."""
    plan = MetadataPlan()
    present: set[str] = set()
    if exif is not None and len(exif):
        present.add("exif")
        if exif.get_ifd(GPS_IFD) or GPS_IFD in exif:
            present.add("gps")
    if icc:
        present.add("icc")

    if "all" in keep:
        if exif is not None and len(exif):
            new = Image.Exif()
            new.load(exif.tobytes())
            new[ORIENTATION] = 1  # pixels are written upright
            plan.exif = new.tobytes()
        plan.icc_profile = icc
        plan.kept = ["all"]
        return plan

    if icc and "icc" in keep:
        plan.icc_profile = icc
        plan.kept.append("icc")
    elif icc:
        plan.removed.append("icc")

    if exif is not None and len(exif):
        new = Image.Exif()
        src_sub = exif.get_ifd(EXIF_IFD)
        for group, (ifd0_tags, sub_tags) in _TAGS.items():
            if group not in keep:
                continue
            took = False
            for t in ifd0_tags:
                if t in exif:
                    new[t] = 1 if t == ORIENTATION else exif[t]
                    took = True
            if sub_tags and src_sub:
                dst_sub = new.get_ifd(EXIF_IFD)
                for t in sub_tags:
                    if t in src_sub:
                        dst_sub[t] = src_sub[t]
                        took = True
            if took:
                plan.kept.append(group)
        if len(new) or new.get_ifd(EXIF_IFD):
            plan.exif = new.tobytes()
        plan.removed.append("exif" if not plan.kept or plan.kept == ["icc"] else "exif (other tags)")
        if "gps" in present:
            plan.removed.append("gps")
    if xmp_present:
        plan.removed.append("xmp")
    return plan
