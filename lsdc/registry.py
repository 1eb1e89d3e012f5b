"""Registries: one place per extension (labelers, mixings, pretraining methods, heads).

Each family is a :class:`Registry` of :class:`Entry` objects. An entry is registered once,
next to the code it names, and carries everything the rest of lsdc needs to know about it:

- ``params``: the config fields it reads (:class:`Param`: type, range, default, search space);
- ``presets``: its parameters' values per dataset (supplement Table 1, '-' = no value);
- ``implies``: config values it sets unless the user gives them (MixUp: weight decay 1e-4);
- ``needs_images``: whether it only works on image datasets.

Validation (:mod:`lsdc.config`), the command lines' choices and ``--help``, the search
space, Table 1 and the labeler study all read these registries. Adding a labeler::

    from lsdc.registry import LABELERS, Param

    @LABELERS.register("spectral", params=[Param("spectral_sigma", float, lo=0, lo_open=True, default=1.0,
                                                 search=("float", 0.1, 10.0, True))],
                       presets={"cifar10": {"spectral_sigma": 1.0}})
    def spectral(feats, spectral_sigma):      # B x D features -> B x B 0/1 labels
        ...

A parameter that is not one of :class:`~lsdc.config.TrialConfig`'s fields lives in the
config's ``extra`` mapping; it is set like any field (``make_config(..., spectral_sigma=2)``,
``--set spectral_sigma=2``). The built-in entries register themselves when their module is
imported; a registry imports its built-in module on first use, and modules named by
``LSDC_PLUGINS`` (comma-separated) or by the ``lsdc.plugins`` entry-point group on first
use too (so Ray workers, which inherit the environment, see the same registrations).

This module imports neither torch nor ray.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


class RegistryError(ValueError):
    """An unknown or ill-declared registry entry; the message names it and the allowed ones."""


@dataclass(frozen=True)
class Param:
    """A config field that a registry entry reads.

    ``type`` is ``int``, ``float``, ``str`` or ``bool``; ``lo``/``hi`` bound numbers (open with
    ``lo_open``/``hi_open``), ``choices`` bounds strings. ``search`` is the Optuna space:
    ``("int"|"float", lo, hi, log)`` or a callable ``base_config_dict -> that tuple`` (for
    bounds that depend on other fields), or None (not searched). ``arg`` is the keyword the
    entry's function takes (default: the field name)."""
    name: str
    type: type = float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    default: Any = None
    search: Any = None
    arg: str | None = None
    help: str = ""

    @property
    def kwarg(self) -> str:
        return self.arg or self.name

    def check(self, value: Any) -> str | None:
        """None if ``value`` is allowed, else the reason (for a one-line error)."""
        if self.type is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.type is str:
            if not isinstance(value, str):
                return f"must be a string, got {value!r}"
            if self.choices and value not in self.choices:
                return f"unknown {value!r}; allowed: {', '.join(self.choices)}"
            return None
        integer = self.type is int
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
            return f"must be {'an integer' if integer else 'a finite number'}, got {value!r}"
        lo_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        hi_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if lo_bad or hi_bad:
            lo_s = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo}"
            hi_s = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {self.hi}"
            return f"must be {' and '.join(s for s in (lo_s, hi_s) if s)}, got {value!r}"
        return None

    def search_space(self, base: dict[str, Any]) -> tuple | None:
        return self.search(base) if callable(self.search) else self.search

    def describe(self) -> str:
        if self.type is str and self.choices:
            return f"{self.name} ({'|'.join(self.choices)})"
        rng = ""
        if self.lo is not None or self.hi is not None:
            lo = "" if self.lo is None else f"{self.lo:g}{'<' if self.lo_open else '<='}"
            hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='}{self.hi:g}"
            rng = f" {lo}x{hi}"
        return f"{self.name} ({self.type.__name__}{rng})"


@dataclass(frozen=True)
class Entry:
    """One registered choice of a family (e.g. the labeler ``knn``)."""
    family: str
    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...] = ()
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    implies: dict[str, Any] = field(default_factory=dict)
    needs_images: bool = False
    label: str = ""
    help: str = ""
    check: Callable[[Any], str | None] | None = None   # cross-field check on the whole config

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def display(self) -> str:
        return self.label or self.name


class Registry:
    """Name -> :class:`Entry` for one family; ``builtin`` is the module that registers the
    built-in entries (imported on first use, so that this module needs no torch)."""

    def __init__(self, family: str, builtin: str):
        self.family = family
        self._builtin = builtin
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._builtin)
            load_plugins()

    def register(self, name: str, *, params=(), presets: dict | None = None, implies: dict | None = None,
                 needs_images: bool = False, label: str = "", help: str = "", check=None, replace: bool = False):
        """Decorator: register the decorated function (or class) under ``name``."""
        def deco(fn):
            self.add(Entry(self.family, name, fn, tuple(params), dict(presets or {}), dict(implies or {}),
                           needs_images, label, help or (fn.__doc__ or "").strip().split("\n")[0], check),
                     replace=replace)
            return fn
        return deco

    def add(self, entry: Entry, replace: bool = False) -> None:
        if not entry.name or not isinstance(entry.name, str):
            raise RegistryError(f"{self.family}: an entry needs a non-empty name")
        if entry.name in self._entries and not replace and self._entries[entry.name].fn is not entry.fn:
            raise RegistryError(f"{self.family}: {entry.name!r} is already registered")
        for p in entry.params:
            owner = param_owner(p.name, exclude=(self.family, entry.name))
            if owner is not None and owner != p:
                raise RegistryError(f"{self.family} {entry.name!r}: parameter {p.name!r} is already declared "
                                    f"differently by another entry")
        self._entries[entry.name] = entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, fn, **kw) -> Iterator[Entry]:
        """Register for the duration of a ``with`` block (tests, notebooks)."""
        self.register(name, **kw)(fn)
        try:
            yield self._entries[name]
        finally:
            self.remove(name)

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def entries(self) -> tuple[Entry, ...]:
        self._load()
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> Entry:
        """The entry, or a :class:`RegistryError` naming the family and the allowed names."""
        self._load()
        if name not in self._entries:
            raise RegistryError(f"{self.family}: unknown {name!r}; allowed: {', '.join(self._entries)}")
        return self._entries[name]


LABELERS = Registry("labeler", "lsdc.labelers")
MIXINGS = Registry("mixing", "lsdc.mixing")
PRETRAINS = Registry("pretrain", "lsdc.pretrain")
HEADS = Registry("head", "lsdc.models")
FAMILIES: dict[str, Registry] = {r.family: r for r in (LABELERS, MIXINGS, PRETRAINS, HEADS)}


def param_owner(name: str, exclude: tuple[str, str] | None = None) -> Param | None:
    """The :class:`Param` declared under ``name`` by any registered entry (without loading)."""
    for reg in FAMILIES.values():
        for e in reg._entries.values():
            if exclude and (reg.family, e.name) == exclude:
                continue
            for p in e.params:
                if p.name == name:
                    return p
    return None


def all_params() -> dict[str, Param]:
    """Every parameter declared by any registered entry, by name."""
    out: dict[str, Param] = {}
    for reg in FAMILIES.values():
        for e in reg.entries():
            for p in e.params:
                out.setdefault(p.name, p)
    return out


def chosen(cfg_values: dict[str, Any]) -> list[Entry]:
    """The entries a config chooses (its labeler, mixing, pretraining method and head)."""
    return [reg.get(cfg_values[fam]) for fam, reg in FAMILIES.items() if fam in cfg_values]


_PLUGINS_LOADED: set[str] = set()


def load_plugins(names: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Import plugin modules that register entries: ``names``, ``$LSDC_PLUGINS``
    (comma-separated module names) and the ``lsdc.plugins`` entry points. Returns those
    imported now. An unimportable plugin is a one-line :class:`RegistryError`."""
    wanted = list(names or [])
    wanted += [n.strip() for n in os.environ.get("LSDC_PLUGINS", "").split(",") if n.strip()]
    try:
        from importlib.metadata import entry_points
        wanted += [ep.value.split(":")[0] for ep in entry_points(group="lsdc.plugins")]
    except Exception:  # a broken installation's metadata must not break lsdc
        pass
    done = []
    for mod in dict.fromkeys(wanted):
        if mod in _PLUGINS_LOADED:
            continue
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise RegistryError(f"plugin: cannot import {mod!r} ({e}); check --plugin / LSDC_PLUGINS") from None
        _PLUGINS_LOADED.add(mod)
        done.append(mod)
    return done
