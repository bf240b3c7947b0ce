"""Where the label map that conditions generation comes from, behind one interface.

A mask source is a callable ``source(index, attempt=0) -> MaskSample`` (:mod:`.base`). Four sources exist:

- :class:`~.file.FileMaskSource` — the user's own mask, translated to MAISI ids, body 200 added when missing,
  fitted to the nearest valid grid (or to the requested one);
- :class:`~.database.DatabaseMaskSource` — retrieval from an indexed folder of masks with tumour augmentation;
- :class:`~.model.ModelMaskSource` — the mask-generation diffusion model driven by the organ size vector;
- :class:`~.phantom.PhantomMaskSource` — the procedural phantoms of :mod:`maisi.data.phantom`.

:func:`~.choice.make_mask_source` builds the one a plan names.
"""

from __future__ import annotations

from maisi.generation.masks.base import MaskSample, MaskSource
from maisi.generation.masks.choice import choose_source_kind, make_mask_source
from maisi.generation.masks.file import FileMaskSource, LabelReading
from maisi.generation.masks.phantom import PhantomMaskSource

__all__ = [
    "FileMaskSource",
    "MaskSample",
    "LabelReading",
    "MaskSource",
    "PhantomMaskSource",
    "choose_source_kind",
    "make_mask_source",
]
