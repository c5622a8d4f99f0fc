"""The JVM class archive that makes Spark sessions start faster on this machine (``make setup``).

A class archive (``-XX:ArchiveClassesAtExit``, Java's AppCDS) holds the classes a JVM
loaded, already parsed; a JVM started with ``-XX:SharedArchiveFile`` maps them instead of
loading them again. radlake builds it from a small ingest, the classes a session needs
(:func:`build_class_archive`); :func:`radlake.spark.get_spark` uses it when it exists
(:func:`radlake.spark.class_archive_path`). It lives here, above ingest, because its
workload is an ingest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from radlake.config import RadlakeConfig, load_config
from radlake.errors import SetupError
from radlake.ingest.job import run_ingest
from radlake.spark import _delta_jars, class_archive_path, get_spark, jvm_process
from radlake.synth.archive import generate_archive
from radlake.synth.params import SynthConfig


def build_class_archive(config: RadlakeConfig, *, timeout_s: float = 900.0) -> Path | None:
    """Build the class archive for this machine (done by ``make setup``); return its path, or None.

    Runs ``python -m radlake.workflow.class_archive <staging file> <jars dir> <java options>`` (:func:`_class_archive_workload`: a
    small ingest of a synthetic archive, then its no-op rerun) in a JVM started with
    ``-XX:ArchiveClassesAtExit``, and moves the file into place only once that JVM has
    exited cleanly: a truncated archive would crash every JVM that maps it (SIGBUS).
    Older archives in the folder are removed. Idempotent: returns at once if the archive
    for the current fingerprint exists.

    Returns None if there is no Java or the option is off (``spark.class_archive: false``).

    Raises
    ------
    SetupError
        If the JVM wrote no archive (the workload failed, or this Java cannot dump one),
        naming why. Nothing is changed: sessions start without an archive, as before.
    """
    sc = config.spark
    jars = _delta_jars(sc.resolved_jars_dir)
    target = class_archive_path(sc.resolved_jars_dir, jars) if sc.class_archive else None
    if target is None or target.is_file():
        return target
    staged = target.with_name(f"{target.stem}.{os.getpid()}.part")
    try:
        command = [
            sys.executable,
            "-m",
            "radlake.workflow.class_archive",
            str(staged),
            str(sc.resolved_jars_dir),
            sc.driver_java_options,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SetupError(f"the JVM wrote no class archive (its build took over {timeout_s:g} s)") from None
        if done.returncode != 0 or not staged.is_file() or staged.stat().st_size == 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if "Traceback" not in line]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise SetupError(f"the JVM wrote no class archive ({reason})")
        for old in target.parent.glob("classes-*.jsa"):
            old.unlink()
        os.replace(staged, target)
        return target
    finally:
        staged.unlink(missing_ok=True)


def _class_archive_workload(staged: Path, jars_dir: str, java_options: str) -> None:
    """What the archive-building JVM runs: a small ingest (tables created, headers, pixels, stacks) and its rerun.

    The JVM writes ``staged`` when it exits, so this waits for the JVM process itself,
    not only for the session to stop.
    """
    with tempfile.TemporaryDirectory(prefix="radlake-class-archive-") as tmp:
        archive = Path(tmp) / "archive"
        generate_archive(archive, SynthConfig(studies=1, image_size=128, seed=1))
        config = load_config(
            overrides=[
                f"storage.root={Path(tmp) / 'root'}",
                "spark.class_archive=false",
                f"spark.jars_dir={jars_dir}",
                f"spark.driver_java_options={java_options} -XX:ArchiveClassesAtExit={staged}",
            ]
        )
        os.environ.setdefault("RADLAKE_DEID_KEY", "class-archive-build")
        spark = get_spark(config)
        run_ingest(spark, config, archive=str(archive))
        run_ingest(spark, config, archive=str(archive))
        jvm = jvm_process(spark)  # the JVM writes the archive as it exits
        spark.stop()
        jvm.stdin.close()  # pyspark's JVM exits when its standard input closes
        jvm.wait()


if __name__ == "__main__":
    _class_archive_workload(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
