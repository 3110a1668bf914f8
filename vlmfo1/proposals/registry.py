"""Proposers by name: ``selective-search``, ``omdet:/path/to/weights``, or a class you register.

A spec is ``NAME`` or ``NAME:ARG``; it is split at the first ``:`` here and nowhere else, so
``omdet:C:/models/omdet`` and ``user:boxes.json`` both work. Built-in proposers are registered as
import strings and imported only when built, so listing names never imports torch models or OpenCV.

Third-party packages can register proposers through the ``vlmfo1.proposers`` entry-point group
(``name = "package.module:ProposerClass"``); they are loaded on first lookup.
"""
from __future__ import annotations

import importlib
from dataclasses import fields
from importlib.metadata import entry_points
from typing import Any, Mapping

from vlmfo1.proposals.base import PostProcessConfig, Proposer

ENTRY_POINT_GROUP = "vlmfo1.proposers"

# name -> a Proposer subclass, or "module:Class" imported on first use
_REGISTRY: dict[str, type[Proposer] | str] = {}
_ALIASES: dict[str, str] = {}
_entry_points_loaded = False


def register_proposer(
    name: str,
    proposer: type[Proposer] | str | None = None,
    *,
    aliases: tuple[str, ...] = (),
    overwrite: bool = False,
):
    """Register ``proposer`` (a `Proposer` subclass or ``"module:Class"``) under ``name``.

    Usable as a decorator: ``@register_proposer("mine")``. Re-registering a taken name is an
    error unless ``overwrite=True``.
    """

    def add(target: type[Proposer] | str) -> type[Proposer] | str:
        if not name or ":" in name:
            raise ValueError(f"proposer name must be non-empty and contain no ':', got {name!r}")
        for key in (name, *aliases):
            taken = key in _REGISTRY or key in _ALIASES
            if taken and not overwrite:
                raise ValueError(f"proposer name {key!r} is already registered (pass overwrite=True to replace it)")
        if isinstance(target, type) and not issubclass(target, Proposer):
            raise TypeError(f"{target!r} is not a subclass of vlmfo1.proposals.Proposer")
        _REGISTRY[name] = target
        _ALIASES.pop(name, None)
        for alias in aliases:
            _REGISTRY.pop(alias, None)
            _ALIASES[alias] = name
        return target

    if proposer is None:
        return add
    return add(proposer)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"omdet:/w"`` -> ``("omdet", "/w")``; ``"contours"`` -> ``("contours", None)``."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty proposer spec")
    name, sep, arg = spec.partition(":")
    if sep and not arg:
        raise ValueError(f"proposer spec {spec!r} has an empty argument after ':'")
    return name.strip(), (arg if sep else None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in _REGISTRY and entry.name not in _ALIASES:
            _REGISTRY[entry.name] = entry.value


def available_proposers() -> list[str]:
    """Registered names (aliases included), sorted."""
    _load_entry_points()
    return sorted([*_REGISTRY, *_ALIASES])


def get_proposer_class(name: str) -> type[Proposer]:
    _load_entry_points()
    canonical = _ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        raise KeyError(f"unknown proposer {name!r}; available: {', '.join(available_proposers())}")
    target = _REGISTRY[canonical]
    if isinstance(target, str):
        module_name, _, attribute = target.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        if not (isinstance(target, type) and issubclass(target, Proposer)):
            raise TypeError(f"{_REGISTRY[canonical]!r} registered as {canonical!r} is not a Proposer subclass")
        _REGISTRY[canonical] = target
    return target


def build_proposer(
    spec: str,
    *,
    postprocess: PostProcessConfig | Mapping[str, Any] | None = None,
    **options: Any,
) -> Proposer:
    """Build the proposer a spec names. ``options`` go to its constructor (e.g. ``prompts=``,
    ``device=``); ``postprocess`` overrides the proposer's default `PostProcessConfig` fields."""
    name, arg = parse_spec(spec)
    cls = get_proposer_class(name)
    if options.get("prompts") is not None and not cls.accepts_prompts:
        raise ValueError(f"proposer {name!r} is not text-prompted; drop the prompts")
    if postprocess is not None:
        if isinstance(postprocess, Mapping):
            known = {f.name for f in fields(PostProcessConfig)}
            unknown = set(postprocess) - known
            if unknown:
                raise ValueError(f"unknown post-processing option(s) {sorted(unknown)}; known: {sorted(known)}")
            base = cls.default_postprocess
            postprocess = PostProcessConfig(**{**{f.name: getattr(base, f.name) for f in fields(base)}, **postprocess})
        options["postprocess"] = postprocess
    return cls.from_spec(arg, **options)


def build_proposer_from_config(config: Mapping[str, Any] | str) -> Proposer:
    """From a config value: a spec string, or ``{"name": SPEC, "postprocess": {...}, **options}``."""
    if isinstance(config, str):
        return build_proposer(config)
    config = dict(config)
    if "name" not in config:
        raise KeyError("proposer config needs a 'name' (e.g. 'selective-search' or 'omdet:/path')")
    spec = config.pop("name")
    return build_proposer(spec, postprocess=config.pop("postprocess", None), **config)


register_proposer("user", "vlmfo1.proposals.user_boxes:UserBoxesProposer")
register_proposer("selective-search", "vlmfo1.proposals.classical:SelectiveSearchProposer", aliases=("classical",))
register_proposer("contours", "vlmfo1.proposals.classical:ContourProposer")
register_proposer("rapidocr", "vlmfo1.proposals.ocr:RapidOCRProposer")
register_proposer("omdet", "vlmfo1.proposals.transformers_detectors:OmDetTurboProposer")
register_proposer("grounding-dino", "vlmfo1.proposals.transformers_detectors:GroundingDinoProposer")
register_proposer("owlv2", "vlmfo1.proposals.transformers_detectors:Owlv2Proposer")
register_proposer("detr", "vlmfo1.proposals.transformers_detectors:DetrFamilyProposer")
register_proposer("sam3", "vlmfo1.proposals.sam3:Sam3Proposer")
register_proposer("yolo", "vlmfo1.proposals.yolo:YoloProposer")

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_proposers",
    "build_proposer",
    "build_proposer_from_config",
    "get_proposer_class",
    "parse_spec",
    "register_proposer",
]
