"""Synthetic archive benchmark: DICOM files written per second, 1 and 2 worker processes.

Run: ``python -m bench synth [--studies 40]``.
"""

from __future__ import annotations

import argparse
import shutil

from bench.common import SINGLE_SITE, WORK, Timer, write_result


def main(argv: list[str] | None = None) -> dict:
    from radlake.synth.archive import generate_archive
    from radlake.synth.params import SynthConfig

    parser = argparse.ArgumentParser(prog="bench synth")
    parser.add_argument("--studies", type=int, default=40)
    args = parser.parse_args(argv)
    config = SynthConfig(studies=args.studies, seed=11, image_size=384, **SINGLE_SITE)
    runs = {}
    for workers in (1, 2):
        out = WORK / f"synth-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        with Timer() as timer:
            summary = generate_archive(out, config, workers=workers)
        runs[f"workers_{workers}"] = {
            "files": summary.n_files,
            "seconds": round(timer.seconds, 2),
            "files_per_s": round(summary.n_files / timer.seconds, 1),
        }
        shutil.rmtree(out, ignore_errors=True)
    return write_result("synth", {"studies": args.studies, "image_size": 384, **runs})
