"""A synthetic sagittal spine-MRI DICOM archive with ground truth, as hard as real scans.

No public spine MRI can be downloaded here, so :func:`generate_archive` writes one: per
study (one patient) a sagittal T2 series, an axial T2 block and a few coronal slices as
real DICOM files (mixed transfer syntaxes, MONOCHROME1 on some series, shuffled
InstanceNumbers, fake PHI, some studies zipped), plus ``labels.json`` with a box per
visible vertebral body (with its level) and per Schmorl's node in every sagittal image.

Modules, one job each:

* :mod:`~radlake.synth.params`: :class:`SynthConfig`, the settings.
* :mod:`~radlake.synth.shapes`: signed-distance solids in local frames.
* :mod:`~radlake.synth.anatomy`: the per-study random spine, lesions and soft tissue.
* :mod:`~radlake.synth.protocol`: scanner and series planning (planes, timing, storage).
* :mod:`~radlake.synth.render`: rasterising a slice and measuring its boxes.
* :mod:`~radlake.synth.acquisition`: bias field, blur, ghosts, Rician noise, quantisation.
* :mod:`~radlake.synth.phi`: fake patient identities.
* :mod:`~radlake.synth.writer`: DICOM datasets and transfer syntaxes.
* :mod:`~radlake.synth.labels`: the ``labels.json`` schema and writer.
* :mod:`~radlake.synth.archive`: :func:`generate_archive`, zips and worker processes.

Examples
--------
>>> from radlake.synth import SynthConfig, generate_archive
>>> summary = generate_archive("/tmp/spine", SynthConfig(studies=4, seed=1), workers=2)  # doctest: +SKIP
>>> summary.n_files  # doctest: +SKIP
88

"""

from typing import TYPE_CHECKING, Any

from radlake.synth.params import Codec, SynthConfig

if TYPE_CHECKING:
    from radlake.synth.anatomy import LABELLED_LEVELS, Endplate
    from radlake.synth.archive import ArchiveExistsError, SynthSummary, generate_archive, study_spine

__all__ = [
    "LABELLED_LEVELS",
    "ArchiveExistsError",
    "Codec",
    "Endplate",
    "SynthConfig",
    "SynthSummary",
    "generate_archive",
    "study_spine",
]

# numpy, scipy and pydicom load on first use: radlake.config imports SynthConfig at start-up.
_LAZY = {
    "LABELLED_LEVELS": "radlake.synth.anatomy",
    "Endplate": "radlake.synth.anatomy",
    "ArchiveExistsError": "radlake.synth.archive",
    "SynthSummary": "radlake.synth.archive",
    "generate_archive": "radlake.synth.archive",
    "study_spine": "radlake.synth.archive",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'radlake.synth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
