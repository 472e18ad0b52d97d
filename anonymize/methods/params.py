"""One parameter contract per method: typed ``Params`` dataclasses and the one parser.

Every method declares a frozen dataclass derived from :class:`Params` whose
fields are made with :func:`param` (default, help text, range or choices, and
optionally the condition under which the field applies). ``--param KEY=VALUE``
on the command line and the ``params`` dict of the Python API are parsed once,
by :func:`parse`, against that dataclass: unknown keys (with a close-match
suggestion), values of the wrong type, out-of-range numbers and keys that do
not apply to the chosen variant raise :class:`~anonymize.errors.UsageError`
(exit 2) before anything is written. ``protect --list-methods`` and the
README's parameter tables are rendered from the same fields.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``tuple[X, ...]``
of those (comma-separated on the command line), any of them ``| None``, and a
union with a class whose instances the Python API may pass as they are (e.g. a
test backend object). A field with its own syntax gives a ``convert`` function.

Convention: a field whose default depends on another one (a preset) has the
default ``None`` and says so with ``default_text``; for an optional field the
words ``none``, ``auto`` and the empty string mean ``None``.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class ToyParams(Params):
    ...     sigma: float = param(0.15, "blur strength", gt=0, le=1)
    ...     shape: str = param("ellipse", "mask shape", choices=("ellipse", "box"))
    ...     sizes: tuple[int, ...] = param((8, 16), "sizes to try", ge=1)
    >>> p = parse(ToyParams, {"sigma": "0.3", "sizes": "4,5"}, method="toy")
    >>> p.sigma, p.shape, p.sizes
    (0.3, 'ellipse', (4, 5))
    >>> p.to_dict(changed_only=True)
    {'sigma': 0.3, 'sizes': [4, 5]}
    >>> parse(ToyParams, {"sigam": "0.3"}, method="toy")
    Traceback (most recent call last):
    ...
    anonymize.errors.UsageError: method toy: unknown --param 'sigam' (did you mean 'sigma'?); valid keys: shape, sigma, sizes
    >>> parse(ToyParams, {"sigma": "2"}, method="toy")
    Traceback (most recent call last):
    ...
    anonymize.errors.UsageError: --param sigma must be in (0, 1], got 2.0
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar, Union, get_args, get_origin

from ..errors import UsageError

__all__ = [
    "Params",
    "ParamInfo",
    "param",
    "parse",
    "as_params",
    "parse_bool",
    "split_assignments",
    "params_info",
    "markdown_table",
]

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
NONE_WORDS = ("none", "auto", "")
_META = "anonymize.param"

P = TypeVar("P", bound="Params")


def parse_bool(value: Any, key: str = "value") -> bool:
    """The one true/false reader: bool, 0/1, or yes/no, true/false, on/off, 1/0 (any case).

    Example:
        >>> parse_bool("Yes"), parse_bool(0), parse_bool("off")
        (True, False, False)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in TRUE_WORDS:
            return True
        if v in FALSE_WORDS:
            return False
    raise UsageError(f"--param {key} expects true or false (also yes/no, on/off, 1/0), got {value!r}")


def split_assignments(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` -> ``{"a": "1", "b": "x,y"}``: the command line's ``--param`` list, untyped.

    A key given twice with different values is an error (it would silently drop one).

    Example:
        >>> split_assignments(["sigma=0.3", "shape = box"])
        {'sigma': '0.3', 'shape': 'box'}
    """
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise UsageError(f"--param expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        k, v = _key(k), v.strip()
        if k in out and out[k] != v:
            raise UsageError(f"--param {k} is given twice ({out[k]!r} and {v!r})")
        out[k] = v
    return out


def _key(k: Any) -> str:
    return str(k).strip().replace("-", "_")


# ----------------------------------------------------------------------------- declaring fields


@dataclass(frozen=True)
class _Meta:
    help: str
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    applies: Mapping[str, tuple[Any, ...]] | None = None
    aliases: Mapping[str, Any] | None = None
    convert: Callable[[Any], Any] | None = None
    type_text: str | None = None
    default_text: str | None = None


def param(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | list[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    applies: Mapping[str, tuple[Any, ...] | list[Any] | str] | None = None,
    aliases: Mapping[str, Any] | None = None,
    convert: Callable[[Any], Any] | None = None,
    type_text: str | None = None,
    default_text: str | None = None,
) -> Any:
    """A ``Params`` field: its default, one line of help, and its constraints.

    ``ge``/``gt``/``le``/``lt`` bound numbers (every element of a tuple);
    ``choices`` lists the allowed values (of every element of a tuple; matched
    case-insensitively); ``applies={"variant": ("pixel",)}`` makes the key an error
    unless that field has one of those values; ``aliases`` maps words to values
    (``{"all": (...)}``); ``convert`` replaces the type-driven conversion of a
    value (it raises ``ValueError`` or ``UsageError`` on bad input); ``type_text``
    and ``default_text`` override what listings print.
    """
    if isinstance(default, list):
        raise TypeError("param(): use a tuple, not a list, as a default (fields are immutable)")
    cond = None
    if applies:
        cond = {k: ((v,) if isinstance(v, str) else tuple(v)) for k, v in applies.items()}
    meta = _Meta(help=help, choices=tuple(choices) if choices is not None else None, ge=ge, gt=gt, le=le, lt=lt,
                 applies=cond, aliases=dict(aliases) if aliases else None, convert=convert, type_text=type_text,
                 default_text=default_text)
    return dataclasses.field(default=default, metadata={_META: meta})


# ----------------------------------------------------------------------------- field types


@dataclass(frozen=True)
class _Type:
    base: type | None  # bool, int, float, str; None when only objects are accepted
    many: bool = False  # tuple[base, ...]
    optional: bool = False
    objects: tuple[type, ...] = ()

    def text(self) -> str:
        names: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str", None: "object"}
        name = names[self.base]
        if self.many:
            name = f"list[{name}]"
        return f"{name}|none" if self.optional else name


_SCALARS = (bool, int, float, str)


def _field_type(tp: Any, where: str) -> _Type:
    optional = False
    members = [tp]
    if get_origin(tp) in (Union, types.UnionType):
        members = list(get_args(tp))
        optional = type(None) in members
        members = [m for m in members if m is not type(None)]
    bases = [m for m in members if m in _SCALARS or get_origin(m) is tuple]
    objects = tuple(m for m in members if m not in bases and isinstance(m, type))
    if len(bases) > 1 or len(bases) + len(objects) != len(members):
        raise TypeError(f"{where}: unsupported parameter type {tp!r}")
    if not bases:
        return _Type(None, optional=optional, objects=objects)
    b = bases[0]
    if get_origin(b) is tuple:
        args = get_args(b)
        if len(args) != 2 or args[1] is not Ellipsis or args[0] not in _SCALARS:
            raise TypeError(f"{where}: tuple parameters are declared tuple[X, ...] with X in bool/int/float/str")
        return _Type(args[0], many=True, optional=optional, objects=objects)
    return _Type(b, optional=optional, objects=objects)


@dataclass(frozen=True)
class ParamInfo:
    """What listings show about one parameter (and what the parser enforces)."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    range: str
    applies: str
    default_text: str
    bounds: Mapping[str, float] = dataclasses.field(default_factory=dict)  # ge/gt/le/lt that are set

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": _jsonable(self.default),
                "default_text": self.default_text, "choices": list(self.choices) if self.choices else None,
                "range": self.range or None, "bounds": dict(self.bounds) or None, "applies": self.applies or None,
                "help": self.help}


def _range_text(m: _Meta) -> str:
    lo = (f"{_num_text(m.ge)}", "[") if m.ge is not None else ((f"{_num_text(m.gt)}", "(") if m.gt is not None else None)
    hi = (f"{_num_text(m.le)}", "]") if m.le is not None else ((f"{_num_text(m.lt)}", ")") if m.lt is not None else None)
    if lo and hi:
        return f"{lo[1]}{lo[0]}, {hi[0]}{hi[1]}"
    if lo:
        return f"{'>=' if lo[1] == '[' else '>'} {lo[0]}"
    if hi:
        return f"{'<=' if hi[1] == ']' else '<'} {hi[0]}"
    return ""


def _num_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def _value_text(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return ",".join(_value_text(x) for x in v) if v else "none"
    if isinstance(v, float):
        return _num_text(v) if v.is_integer() else repr(v)
    return str(v)


@dataclass(frozen=True)
class Params:
    """Base of every method's parameter dataclass (declare subclasses ``@dataclass(frozen=True)``).

    Subclasses add fields with :func:`param` and may override :meth:`check` for
    rules that involve several fields.
    """

    def check(self) -> None:
        """Cross-field rules; raise :class:`UsageError`. Single-field rules belong in :func:`param`."""

    def to_dict(self, changed_only: bool = False) -> dict[str, Any]:
        """JSON-able values (tuples become lists, objects their ``name``); optionally only non-defaults."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if changed_only and v == f.default:
                continue
            out[f.name] = _jsonable(v)
        return out


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return str(getattr(v, "name", type(v).__name__))


_SPECS: dict[type, dict[str, tuple[dataclasses.Field[Any], _Type, _Meta]]] = {}


def _spec(cls: type[Params]) -> dict[str, tuple[dataclasses.Field[Any], _Type, _Meta]]:
    """Field -> (dataclass field, parsed type, metadata), resolved once per class."""
    if cls not in _SPECS:
        if not (isinstance(cls, type) and issubclass(cls, Params)):
            raise TypeError(f"{cls!r} is not a Params dataclass")
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata.get(_META)
            if meta is None:
                raise TypeError(f"{cls.__name__}.{f.name}: declare every parameter with param(...)")
            out[f.name] = (f, _field_type(hints[f.name], f"{cls.__name__}.{f.name}"), meta)
        _SPECS[cls] = out
    return _SPECS[cls]


def params_info(cls: type[Params]) -> list[ParamInfo]:
    """One :class:`ParamInfo` per field of ``cls``, in declaration order."""
    infos = []
    for name, (f, t, m) in _spec(cls).items():
        applies = "; ".join(f"{k}={'|'.join(_value_text(x) for x in v)}" for k, v in (m.applies or {}).items())
        choices = m.choices
        rng = _range_text(m)
        if t.many and choices:
            rng = f"any of {','.join(map(str, choices))}"
        elif choices:
            rng = "|".join(map(str, choices))
        bounds = {k: getattr(m, k) for k in ("ge", "gt", "le", "lt") if getattr(m, k) is not None}
        infos.append(ParamInfo(name=name, type=m.type_text or t.text(), default=f.default, help=m.help, choices=choices,
                               range=rng, applies=applies, default_text=m.default_text or _value_text(f.default),
                               bounds=bounds))
    return infos


# ----------------------------------------------------------------------------- parsing


def _scalar(base: type, value: Any, key: str, m: _Meta) -> Any:
    want = {int: "an integer", float: "a number", str: "text", bool: "true or false"}[base]
    if base is bool:
        return parse_bool(value, key)
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value).strip()
            if m.choices is not None and text not in m.choices:
                low = text.lower()
                match = [c for c in m.choices if str(c).lower() == low]
                if not match:
                    raise UsageError(f"--param {key} must be one of {', '.join(map(str, m.choices))}, got {text!r}")
                text = match[0]
            return text
        raise UsageError(f"--param {key} expects {want}, got {value!r}")
    if isinstance(value, bool):
        raise UsageError(f"--param {key} expects {want}, got {value!r}")
    num: int | float
    try:
        f = float(value.strip()) if isinstance(value, str) else float(value)
        if base is int:
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                num = int(value.strip())  # exact, however large
            elif f.is_integer():
                num = int(f)
            else:
                raise ValueError(value)
        else:
            num = f
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"--param {key} expects {want}, got {value!r}") from None
    if isinstance(num, float) and not math.isfinite(num):
        raise UsageError(f"--param {key} must be a finite number, got {value!r}")
    _check_range(num, key, m)
    return num


def _check_range(v: float, key: str, m: _Meta) -> None:
    ok = ((m.ge is None or v >= m.ge) and (m.gt is None or v > m.gt)
          and (m.le is None or v <= m.le) and (m.lt is None or v < m.lt))
    if not ok:
        rng = _range_text(m)
        what = f"in {rng}" if rng[:1] in "[(" else rng
        raise UsageError(f"--param {key} must be {what}, got {v}")


def _convert(key: str, value: Any, t: _Type, m: _Meta) -> Any:
    if isinstance(value, str) and m.aliases and value.strip().lower() in m.aliases:
        return m.aliases[value.strip().lower()]
    if isinstance(value, bool) and m.aliases and str(value).lower() in m.aliases and t.base is not bool:
        return m.aliases[str(value).lower()]
    if t.objects and isinstance(value, t.objects):
        return value
    if value is None or (t.optional and isinstance(value, str) and value.strip().lower() in NONE_WORDS):
        if t.optional:
            return None
        raise UsageError(f"--param {key} needs a value")
    if m.convert is not None:
        try:
            return m.convert(value)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--param {key}: {exc}") from None
    if t.base is None:
        names = ", ".join(o.__name__ for o in t.objects)
        raise UsageError(f"--param {key} expects a {names} object (Python API only), got {value!r}")
    if not t.many:
        return _scalar(t.base, value, key, m)
    if isinstance(value, str):
        items: list[Any] = [s for s in (x.strip() for x in value.split(",")) if s]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    return tuple(_scalar(t.base, x, key, m) for x in items)


def parse(cls: type[P], raw: Mapping[str, Any] | None, *, method: str = "") -> P:
    """Typed, checked ``cls`` from ``raw`` (strings from the command line, or Python values).

    Raises UsageError naming the valid keys for an unknown one, and the expected
    type, range or choices for a bad value.
    """
    spec = _spec(cls)
    given: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        given[_key(k)] = v
    unknown = [k for k in given if k not in spec]
    if unknown:
        valid = sorted(spec)
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        who = f"method {method}: " if method else ""
        raise UsageError(f"{who}unknown --param {', '.join(hints)}; valid keys: {', '.join(valid) or '(none)'}")
    values = {k: _convert(k, v, spec[k][1], spec[k][2]) for k, v in given.items()}
    obj = cls(**values)
    for k in given:
        cond = spec[k][2].applies
        for other, allowed in (cond or {}).items():
            actual = getattr(obj, other)
            if actual not in allowed:
                raise UsageError(f"--param {k} applies only with {other}={'|'.join(map(_value_text, allowed))} "
                                 f"(here {other}={_value_text(actual)})")
    obj.check()
    return obj


def as_params(cls: type[P], params: P | Mapping[str, Any] | None, *, method: str = "") -> P:
    """``params`` when it already is a ``cls``, else :func:`parse` of it (for direct construction of a method)."""
    if isinstance(params, cls):
        return params
    if params is not None and not isinstance(params, Mapping):
        raise UsageError(f"{method or cls.__name__}: params must be a {cls.__name__} or a mapping, got {type(params).__name__}")
    return parse(cls, params, method=method)


def markdown_table(cls: type[Params]) -> str:
    """The parameters of ``cls`` as a Markdown table (the README's method tables are these).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class ToyParams(Params):
        ...     blocks: int = param(8, "cells across the region", ge=1)
        >>> print(markdown_table(ToyParams))
        | parameter | type | default | range | applies | meaning |
        | --- | --- | --- | --- | --- | --- |
        | `blocks` | int | 8 | >= 1 |  | cells across the region |
    """
    def cell(v: str) -> str:
        return v.replace("|", "\\|")

    rows = ["| parameter | type | default | range | applies | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for i in params_info(cls):
        rows.append(f"| `{i.name}` | {cell(i.type)} | {cell(i.default_text)} | {cell(i.range)} | {cell(i.applies)} "
                    f"| {cell(i.help)} |")
    return "\n".join(rows)
