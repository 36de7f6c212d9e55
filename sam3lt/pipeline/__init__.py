"""Segmenting a whole dataset: ``sam3lt.segment_dataset`` and the ``sam3lt segment`` command.

Modules: :mod:`.inputs` (files, folders, globs, manifests), :mod:`.decode` (robust decoding, preprocessing),
:mod:`.runner` (the model on one device), :mod:`.local` (DataLoader engine), :mod:`.ray_engine` (Ray Data
engine, imported only when asked for), :mod:`.output` (record, resume, background writer), :mod:`.results`
(COCO / PNG / errors files), :mod:`.overlay` (overlay PNGs), :mod:`.api` (:func:`segment_dataset`).
"""
from .api import Summary, segment_dataset
from .inputs import UsageError

__all__ = ["segment_dataset", "Summary", "UsageError"]
