"""Reference data files shipped with maisi (see README.md in this folder)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


def path(name: str):
    """Path (a Traversable) of a resource file shipped with the package."""
    return resources.files(__name__).joinpath(name)


@cache
def load_json(name: str) -> Any:
    """Load a JSON resource shipped with the package (cached; do not mutate the result)."""
    with path(name).open("r", encoding="utf-8") as f:
        return json.load(f)
