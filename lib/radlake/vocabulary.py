"""The words several stages share, as enums: one name and one spelling per concept.

Their values are what the tables, labels files and DICOM SR store (``str`` enums, so a
member compares equal to its value and a table column holds the plain string).

May import: nothing of radlake (every stage may import it).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Endplate", "LabelClass", "LevelStatus", "QuarantineStage", "Split"]


class QuarantineStage(str, Enum):
    """Where ingestion of a file, member, instance or frame failed (the ``quarantine.stage`` column)."""

    SOURCE = "source"
    """The stored file or archive member could not be read (I/O error, corrupt or unsafe archive)."""

    HEADER = "header"
    """The bytes are not a DICOM instance, or its header cannot be parsed."""

    PIXELS = "pixels"
    """The pixel data cannot be decoded, or its decoded size is over the limit."""

    CONFLICT = "conflict"
    """The SOPInstanceUID is already stored with other content."""

    SKIPPED = "skipped"
    """Not an instance: a DICOMDIR (an index of the files beside it)."""


class Endplate(str, Enum):
    """Which endplate of a vertebral body a Schmorl's node (or another lesion) sits on."""

    SUPERIOR = "superior"
    """The cranial endplate (top of the body in a head-up sagittal image)."""

    INFERIOR = "inferior"
    """The caudal endplate (bottom of the body in a head-up sagittal image)."""


class LevelStatus(str, Enum):
    """What the level decoding says of one detected body's level (``predictions`` and findings)."""

    IDENTIFIED = "identified"
    """The level is named: its posterior is at least the configured minimum."""

    UNCERTAIN = "uncertain"
    """A vertebra whose level is not named: nothing in view anchors the count well enough."""

    OUTSIDE = "outside"
    """Not one of the labelled vertebrae: a sacral segment below S1 or a false detection."""

    @classmethod
    def of(cls, level: int, uncertain: bool) -> LevelStatus:
        """The status of a decoded label (``level`` -1: outside)."""
        if level < 0:
            return cls.OUTSIDE
        return cls.UNCERTAIN if uncertain else cls.IDENTIFIED


class LabelClass(str, Enum):
    """What a labelled box outlines (``annotations.label_class``)."""

    VERTEBRA = "vertebra"
    """A vertebral body; ``level`` names it (e.g. ``L3``)."""
    SCHMORL_NODE = "schmorl_node"
    """A Schmorl's node; ``parent_level`` names its vertebra and ``endplate`` the endplate it sits on."""


class Split(str, Enum):
    """The split a study belongs to (the ``splits`` table)."""

    TRAIN = "train"
    """Fitting the model."""
    VAL = "val"
    """Model selection and early stopping."""
    TEST = "test"
    """Frozen final evaluation; never used to choose anything."""
