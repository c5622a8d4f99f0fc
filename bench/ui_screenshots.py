"""The MLflow UI in a real browser: screenshots of radlake's runs and a model version, each page checked.

``python -m bench.ui_screenshots [--store DIR] [--out DIR] [--port N]`` (``make ui-screenshots``):

1. **A store with real runs.** ``--store`` is a radlake storage root that already holds a
   pipeline run (``.radlake`` after ``make demo``); by default the script builds a small one
   once, in ``.radlake/ui-store``, with radlake's own command line: ``radlake synth`` (6
   studies of 128 px) then ``radlake pipeline`` with short trainings (ingest, labels, both
   trainings and promotions, crops, score), and reuses it later.
2. **The MLflow server** of that store (``mlflow server``, the same command as
   :func:`radlake.tracking.ui_command`), on 127.0.0.1 and a free port, one worker, no job runner.
3. **Headless Chromium** (Debian's ``chromium``: ``apt-get install -y chromium``), a fresh
   profile per page, ``--screenshot`` and ``--dump-dom`` of each page, links from
   :func:`radlake.tracking.ui_link` (they open on the model-training view):

   - ``run.png``: the pipeline's score run (description, metrics, parameters, tags);
   - ``run_artifacts.png``: the same run's artifacts, with one of its review PNGs open;
   - ``model_version.png``: the version of the vertebra model the run scored with;
   - ``pipeline_run.png``: the pipeline run the score run belongs to (its description);
   - ``experiment.png``: the experiment's runs.

4. **Checks** per page: the DOM holds what the page is about (the run's name and
   description, the artifact's file name, the model's name and version, the run list) and
   no error page; the PNG is not blank (many distinct colours, and not one colour over 97 %
   of it). The result (URLs, checks, files) goes to ``bench/results/ui_screenshots.json``;
   the exit status is 1 if a check failed.

The PNGs go to ``--out`` (default ``bench/results/ui``, not kept in git).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import RESULTS, Timer, write_result

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO / ".radlake" / "ui-store"
DEFAULT_OUT = RESULTS / "ui"
#: Browser window (CSS pixels): wide enough for MLflow's side panels and the page between them.
WINDOW = (1800, 1200)
#: Milliseconds of virtual time Chromium gives the page's scripts before it captures it.
VIRTUAL_TIME_MS = 20000
#: Seconds to wait for ``mlflow server`` to answer /health (about 10 to 50 s on 2 cores).
SERVER_START_S = 180
#: Words of MLflow's error pages: none may be on a page.
ERROR_WORDS = ("Page not found", "Run not found", "does not exist", "Something went wrong")

#: The small archive and the short trainings of the store this script builds (what is shown is the
#: tracking, not model quality: the models are barely trained, and promoted without floors).
SYNTH_SETTINGS = (
    "synth.sagittal_slices=5",
    "synth.axial_slices=1",
    "synth.coronal_slices=1",
    "synth.zip_fraction=0.25",
    "synth.node_fraction=0.7",
)
#: The pipeline's settings (``--set``): the vertebra detector gets enough epochs for some boxes in the review
#: PNGs (at 2 it finds none); the Schmorl detector 3; no promotion floors.
PIPELINE_SETTINGS = (
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.driver_memory=2g",
    "loader.num_workers=0",
    "train.vertebra.epochs=12",
    "train.vertebra.image_size=128",
    "train.vertebra.batch_size=4",
    "train.vertebra.score_threshold=0.05",
    "train.schmorl.epochs=3",
    "train.schmorl.image_size=64",
    "train.schmorl.batch_size=8",
    *(f"train.{d}.{key}" for d in ("vertebra", "schmorl") for key in ("max_train_minutes=4", "val_images_logged=1")),
    *(f"train.{d}.promotion_floors={{}}" for d in ("vertebra", "schmorl")),
    "crops.size=64",
    "crops.source=both",
    "crops.min_score=0.05",
    "score.vertebra_threshold=0.05",
    "score.schmorl_threshold=0.3",
)


@dataclass
class Page:
    """One page of the UI: where it is, what it must show, and what the browser made of it."""

    name: str
    url: str
    #: Strings the page's DOM must hold.
    expect: list[str]
    png: str = ""
    seconds: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    colours: int = 0
    top_colour_share: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ui_screenshots",
        description="Screenshots of radlake's runs and models in the MLflow UI (headless Chromium), checked.",
        add_help=add_help,
    )
    parser.add_argument(
        "--store",
        type=Path,
        help=f"radlake storage root holding a pipeline run, e.g. .radlake after make demo (default: build "
        f"a small one once in {DEFAULT_STORE.relative_to(REPO)})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNGs (default bench/results/ui)")
    parser.add_argument("--port", type=int, help="port of the MLflow server on 127.0.0.1 (default: a free one)")
    parser.add_argument("--chromium", default="chromium", help="the browser's command (default chromium)")
    return parser


def _radlake(*args: str) -> None:
    """Run radlake's command line in a child process (its own Spark session); raise if it fails."""
    command = [sys.executable, "-m", "radlake", *args]
    print("[ui] " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def build_store(store: Path) -> None:
    """A synthetic archive and one tiny pipeline run in ``store`` (skipped when its marker says it is done)."""

    marker = store / "ui-store.json"
    if marker.is_file():
        return
    if store.exists():
        shutil.rmtree(store)
    store.mkdir(parents=True)
    archive = store / "archive"
    overrides = [f"storage.root={store}"]
    _radlake("synth", "--out", str(archive), "--studies", "6", "--seed", "3", "--image-size", "128",
             *(a for s in SYNTH_SETTINGS for a in ("--set", s)), *(a for s in overrides for a in ("--set", s)))  # fmt: skip
    settings = [*overrides, *PIPELINE_SETTINGS]
    _radlake("pipeline", "--archive", str(archive), "--labels", str(archive / "labels.json"),
             *(a for s in settings for a in ("--set", s)))  # fmt: skip
    marker.write_text(json.dumps({"archive": str(archive), "settings": settings}))


@dataclass(frozen=True)
class Shown:
    """What the pages show: the experiment, the score run and the model version it scored with."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    run_name: str
    description: str
    #: The score run's parent (the pipeline run): the row the experiment's run list shows.
    parent_id: str
    parent_name: str
    parent_description: str
    artifact: str
    model: str
    version: str


def find_runs(store: Path) -> Shown:
    """The latest score run in the store's radlake experiment, and the vertebra model version it used.

    Raises
    ------
    SystemExit
        If the store has no score run (run the pipeline first, or leave out --store).
    """
    import mlflow

    from radlake.config import load_config
    from radlake.models.resolve import resolve_model_uri

    config = load_config("local", overrides=[f"storage.root={store}"])
    tracking_uri = config.mlflow.resolved_tracking_uri(config.storage)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    runs = (
        client.search_runs(
            [experiment.experiment_id], "tags.`radlake.step` = 'score'", order_by=["start_time DESC"], max_results=1
        )
        if experiment
        else []
    )
    if not runs:
        raise SystemExit(f"[ui] no score run in experiment {config.mlflow.experiment!r} of {tracking_uri}")
    run = runs[0]
    pngs = [a for a in json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/score/summary.json")).get(
        "artifacts", []) if a.endswith(".png")]  # fmt: skip
    if not pngs:
        raise SystemExit(f"[ui] score run {run.info.run_id} holds no review PNG")
    model = resolve_model_uri(run.data.params["vertebra_model"])
    parent = client.get_run(run.data.tags.get("mlflow.parentRunId") or run.info.run_id)
    return Shown(
        tracking_uri=tracking_uri,
        experiment_id=experiment.experiment_id,
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        description=run.data.tags.get("mlflow.note.content", ""),
        parent_id=parent.info.run_id,
        parent_name=parent.info.run_name,
        parent_description=parent.data.tags.get("mlflow.note.content", ""),
        artifact=pngs[len(pngs) // 2],
        model=model.name,
        version=str(model.version),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` over ``tracking_uri`` on 127.0.0.1:``port`` (one worker, no job runner), once it answers."""
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", tracking_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"[ui] mlflow server ended with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    stop_server(server)
    raise SystemExit(f"[ui] mlflow server did not answer on port {port} within {SERVER_START_S} s")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its uvicorn workers), SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _chromium(binary: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="radlake-chromium-") as profile:
        command = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            *extra,
            url,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=180)


def not_blank(png: Path) -> tuple[int, float]:
    """(distinct colours, share of the commonest colour) of ``png``."""
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24) or []
        total = image.size[0] * image.size[1]
    return len(colours), (max(n for n, _ in colours) / total if colours else 1.0)


def capture(page: Page, binary: str, out: Path) -> Page:
    """Screenshot ``page`` into ``out`` and check its DOM and pixels."""
    png = out / f"{page.name}.png"
    png.unlink(missing_ok=True)
    with Timer() as timer:
        shot = _chromium(binary, page.url, f"--screenshot={png}")
        dom = _chromium(binary, page.url, "--dump-dom").stdout
    page.png, page.seconds = str(png), round(timer.seconds, 1)
    page.missing = [text for text in page.expect if text not in dom]
    page.colours, page.top_colour_share = not_blank(png) if png.is_file() else (0, 1.0)
    page.checks = {
        "screenshot_written": png.is_file() and shot.returncode == 0,
        "dom_holds_the_page": not page.missing,
        "no_error_page": not any(word in dom for word in ERROR_WORDS),
        "not_blank": page.colours >= 64 and page.top_colour_share < 0.97,
    }
    return page


def pages(shown: Shown, base_url: str) -> list[Page]:
    """The pages to capture, with what each must show."""
    from radlake.tracking import ui_link

    run = ui_link(experiment_id=shown.experiment_id, run_id=shown.run_id, base_url=base_url)
    artifact = run.replace(f"/runs/{shown.run_id}?", f"/runs/{shown.run_id}/artifacts/{shown.artifact}?")
    pipeline = ui_link(experiment_id=shown.experiment_id, run_id=shown.parent_id, base_url=base_url)
    return [
        Page("run", run, [shown.run_name, _head(shown.description), "Description"]),
        Page("run_artifacts", artifact, [Path(shown.artifact).name, "review"]),
        Page(
            "model_version",
            ui_link(model=shown.model, version=shown.version, base_url=base_url),
            [shown.model, f"Version {shown.version}"],
        ),
        Page("pipeline_run", pipeline, [shown.parent_name, _head(shown.parent_description), "Description"]),
        Page("experiment", ui_link(experiment_id=shown.experiment_id, base_url=base_url), [shown.parent_name, "Runs"]),
    ]


def _head(description: str) -> str:
    """The start of a description that the page shows as plain text (before any URI, which may become a link)."""
    return description.split("models:/")[0].split(":")[0].strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    binary = shutil.which(args.chromium)
    if binary is None:
        raise SystemExit(
            f"[ui] {args.chromium!r} is not on PATH: install Debian's package (apt-get install -y chromium)"
        )
    store = (args.store or DEFAULT_STORE).resolve()
    with Timer() as built:
        if args.store is None:
            build_store(store)
    shown = find_runs(store)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    port = args.port or _free_port()
    with Timer() as started:
        server = start_server(shown.tracking_uri, port, out / "mlflow-server.log")
    try:
        captured = [capture(p, binary, out) for p in pages(shown, f"http://127.0.0.1:{port}")]
    finally:
        stop_server(server)
    for page in captured:
        state = "ok" if page.ok else f"FAILED {[k for k, v in page.checks.items() if not v]} missing {page.missing}"
        print(f"[ui] {page.name:<14} {state}  {page.png}  ({page.colours} colours, {page.seconds} s)", flush=True)
    write_result(
        "ui_screenshots",
        {
            "store": str(store),
            "store_seconds": round(built.seconds, 1),
            "server_start_seconds": round(started.seconds, 1),
            "chromium": subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip(),
            "shown": asdict(shown),
            "pages": [{**asdict(p), "ok": p.ok} for p in captured],
            "ok": all(p.ok for p in captured),
        },
    )
    return 0 if all(p.ok for p in captured) else 1


if __name__ == "__main__":
    sys.exit(main())
