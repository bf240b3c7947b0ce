"""Identifiers of a synthetic DICOM study, derived from the sample so that a rerun writes the same UIDs.

Every UID is pydicom's ``generate_uid`` over a hashed entropy source (the sample's request digest, index and
seed, plus what the UID names), so two runs of the same request give identical files and two different samples
never share a UID. The patient is a pseudonym made the same way: no identity of a real person exists to carry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from maisi.export.samples import Sample

#: content date and time of every exported object: fixed, so reruns are byte-identical (a synthetic volume has no
#: acquisition date)
CONTENT_DATE = "20000101"
CONTENT_TIME = "000000"


@dataclass(frozen=True)
class SyntheticIdentity:
    """The UIDs and the pseudonymous patient of one exported sample."""

    entropy: tuple[str, ...]

    def uid(self, *what: object) -> str:
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=[*self.entropy, *(str(w) for w in what)]))

    @property
    def patient_id(self) -> str:
        digest = hashlib.sha256("\0".join(self.entropy).encode()).hexdigest()
        return f"MAISI-{digest[:12].upper()}"

    @property
    def patient_name(self) -> str:
        return f"SYNTHETIC^{self.patient_id}"

    @property
    def study_uid(self) -> str:
        return self.uid("study")

    @property
    def frame_of_reference_uid(self) -> str:
        return self.uid("frame-of-reference")

    @property
    def ct_series_uid(self) -> str:
        return self.uid("ct-series")

    def ct_instance_uid(self, number: int) -> str:
        return self.uid("ct-instance", number)

    @property
    def seg_series_uid(self) -> str:
        return self.uid("seg-series")

    @property
    def seg_instance_uid(self) -> str:
        return self.uid("seg-instance")


def identity_of(sample: Sample) -> SyntheticIdentity:
    """The identity of a sample: from its request digest (or sidecar hash), index and seed."""
    return SyntheticIdentity(("maisi", sample.key, str(sample.index), str(sample.sidecar.get("seed"))))
