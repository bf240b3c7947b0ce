"""Data handling: NIfTI IO, intensity scaling, label mapping, body envelope, datalists and dataset preparation.

Submodules are imported explicitly (``from maisi.data.nifti import load_nifti``); this package imports nothing
heavy on its own.
"""
