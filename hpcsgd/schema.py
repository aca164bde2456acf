"""The vocabulary of the configuration schema, shared by ``hpcsgd.config`` and the
method modules that declare their own keys (``hpcsgd.methods.registry``):

- ``Key``: one key's default, type, meaning and allowed values;
- reasons why a key is not read (``Reason``: config -> None if read, else why), built
  with ``only``, ``unless`` and ``all_of``.

It imports nothing of hpcsgd at load time, so both sides can import it first.  The
reasons read the schema itself (defaults of keys a stored config lacks, what a choice
does) when they are asked, through ``hpcsgd.config.SCHEMA``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

INT_LIMIT = 2**53  # integers travel in float64 message headers, exact only below 2**53

# The quantities check_layout bounds keys by (Key.at_most).
LAYOUT = {"M": "the number of workers M", "d": "the number of model parameters d",
          "n_min": "the rows of the smallest shard"}


@dataclass(frozen=True)
class Key:
    """One key: default, type, meaning and allowed values.  Numbers are always finite;
    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones
    (``zero_off``: 0, meaning off, is allowed below them), integers also stay below
    INT_LIMIT, and ``at_most`` names a LAYOUT quantity the value
    may not exceed (checked by ``check_layout``).  A list holds ``item``-typed elements,
    each within the bounds, none repeated (``increasing``: strictly ascending).
    ``does`` says what each choice does, for the warnings about keys it does not read."""

    default: Any
    type: type | tuple[type, ...]
    doc: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    at_most: str | None = None
    zero_off: bool = False
    item: type | None = None
    increasing: bool = False
    does: Mapping[Any, str] | None = field(default=None, compare=False)

    @property
    def numeric(self) -> bool:
        kinds = types_of(self.item if self.type is list else self.type)
        return int in kinds or float in kinds

    def upper(self) -> tuple[float, bool] | None:
        """(bound, inclusive) of the value known before the layout, if any."""
        if self.maximum is not None:
            return self.maximum, True
        if self.below is not None:
            return self.below, False
        kinds = self.item if self.type is list else self.type
        if kinds is int:
            return INT_LIMIT, False
        return None

    def interval(self) -> str:
        """The allowed range in interval notation, e.g. ``[0, 1)`` or ``[1, M]``."""
        if self.minimum is not None:
            low = f"[{_bound(self.minimum)}"
        elif self.above is not None:
            low = f"({_bound(self.above)}"
        else:
            low = "(-inf"
        if self.at_most is not None:
            high = f"{self.at_most}]"
        else:
            up = self.upper()
            high = "inf)" if up is None else f"{_bound(up[0])}{']' if up[1] else ')'}"
        return f"{low}, {high}" + (" (or 0)" if self.zero_off else "")

    def allowed(self) -> str:
        """What the README's key reference says is allowed."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        if self.type is str:
            return "text"
        if self.type is list:
            what = "strictly increasing" if self.increasing else "distinct"
            return f"list of {what} integers in {self.interval()}"
        if self.type is int:
            return f"integer in {self.interval()}"
        return f"number in {self.interval()}"


def types_of(t: type | tuple[type, ...] | None) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _bound(x: float) -> str:
    if x == INT_LIMIT:
        return "2^53"
    return str(x) if isinstance(x, int) else f"{x:g}"


def show(value: Any) -> str:
    """A value for a one-line message, spelled as in TOML where Python differs (true,
    false); huge numbers and long texts shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    if len(text) > 60:
        return f"{text[:40]}... ({len(text)} characters)"
    return text


# ---------------------------------------------------------------------- why a key is not read

Reason = Callable[[dict], "str | None"]


def _key(dotted: str) -> Key:
    from hpcsgd.config import SCHEMA
    table, name = dotted.split(".")
    return SCHEMA[table][name]


def get(cfg: dict, dotted: str) -> Any:
    """``cfg`` at ``table.key``, the default where a (stored, older) config lacks it."""
    table, name = dotted.split(".")
    body = cfg.get(table)
    if isinstance(body, dict) and name in body:
        return body[name]
    return _key(dotted).default


def only(dotted: str, *values: Any, why: str | None = None) -> Reason:
    """Read only while ``dotted`` has one of ``values``."""
    def reason(cfg: dict) -> str | None:
        v = get(cfg, dotted)
        if v in values:
            return None
        if why is not None:
            return f"{dotted} = {show(v)} {why}"
        # a stored config read by `hpcsgd inspect` may hold anything, even unhashable values
        does = (_key(dotted).does or {}).get(v, "does not read it") if isinstance(v, (str, bool)) \
            else "does not read it"
        return f"{dotted} = {show(v)} {does} (read with {dotted} = {' or '.join(map(repr, values))})"
    return reason


def unless(dotted: str, *values: Any, why: str) -> Reason:
    """Read except while ``dotted`` has one of ``values``."""
    def reason(cfg: dict) -> str | None:
        v = get(cfg, dotted)
        return f"{dotted} = {show(v)} {why}" if v in values else None
    return reason


def all_of(*reasons: Reason) -> Reason:
    """Read when every one of ``reasons`` says it is read; else the first one's why."""
    def reason(cfg: dict) -> str | None:
        return next((r for r in (f(cfg) for f in reasons) if r), None)
    return reason
