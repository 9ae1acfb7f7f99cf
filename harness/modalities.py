"""BraTS modality names and parsing of `--modalities` style lists."""

from __future__ import annotations

from typing import Iterable

from harness.errors import UserError

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")


def parse_modalities(value: str | Iterable[str]) -> tuple[str, ...]:
    """Parse 'flair,t1ce' (or a list) into a validated, de-duplicated tuple, order kept."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip().lower() for item in items if item.strip()]
    if not names:
        raise UserError("modalities: empty list; choose from " + ",".join(MODALITIES))
    for name in names:
        if name not in MODALITIES:
            raise UserError(f"unknown modality '{name}'; choose from " + ",".join(MODALITIES))
    if len(set(names)) != len(names):
        raise UserError(f"modalities: '{','.join(names)}' names a modality twice")
    return tuple(names)
