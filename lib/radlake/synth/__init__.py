"""A synthetic sagittal spine-MRI DICOM archive with ground truth, as hard as real scans.

No public spine MRI can be downloaded here, so :func:`radlake.synth.archive.generate_archive`
writes one: per study (one patient) a sagittal T2 series, an axial T2 block and a few coronal
slices as real DICOM files (mixed transfer syntaxes, MONOCHROME1 on some series, shuffled
InstanceNumbers, fake PHI, some studies zipped), plus ``labels.json`` with a box per visible
vertebral body (with its level) and per Schmorl's node in every sagittal image.

Modules, one job each:

* :mod:`~radlake.synth.params`: :class:`~radlake.synth.params.SynthConfig`, the settings.
* :mod:`~radlake.synth.codecs`: each codec's transfer syntax, and whether pydicom can write it here.
* :mod:`~radlake.synth.shapes`: signed-distance solids in local frames.
* :mod:`~radlake.synth.anatomy`: the per-study random spine, lesions and soft tissue.
* :mod:`~radlake.synth.protocol`: scanner and series planning (planes, timing, storage).
* :mod:`~radlake.synth.render`: rasterising a slice and measuring its boxes.
* :mod:`~radlake.synth.acquisition`: bias field, blur, ghosts, Rician noise, quantisation.
* :mod:`~radlake.synth.phi`: fake patient identities.
* :mod:`~radlake.synth.writer`: DICOM datasets and their bytes.
* :mod:`~radlake.synth.labels`: the ``labels.json`` schema and writer.
* :mod:`~radlake.synth.archive`: :func:`~radlake.synth.archive.generate_archive`, zips and worker processes.

May import: :mod:`radlake.dicom` and :mod:`radlake.errors` (it sits below the configuration,
which holds a :class:`~radlake.synth.params.SynthConfig`).

Examples
--------
>>> from radlake.synth.archive import generate_archive
>>> from radlake.synth.params import SynthConfig
>>> summary = generate_archive("/tmp/spine", SynthConfig(studies=4, seed=1), workers=2)  # doctest: +SKIP
>>> summary.n_files  # doctest: +SKIP
88

"""
