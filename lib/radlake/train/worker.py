"""What every training process runs (launched by ``TorchDistributor``; rank 0 also evaluates and logs).

The driver hands one picklable ``settings`` dict to :func:`train_worker`. Each rank
reads its own shard of the Parquet cache through
:func:`radlake.data.loader.make_torch_dataloader` (equal steps per rank), trains a
DDP replica (``gloo`` on CPU, ``nccl`` on GPU) and stops with the others: every rank
takes the same number of steps, the learning rate follows the step count (cosine with
warm-up), and the optional wall-time budget is agreed by all ranks every step, so no
rank waits forever on a collective. Rank 0 evaluates on the validation
cache after each epoch and on the frozen test cache at the end, and logs metrics,
figures and the pyfunc model to the driver's MLflow run (``TorchDistributor``'s return
value is not used: in local mode it is whichever rank finished last).

A sweep trial (:mod:`radlake.train.sweep`) calls :func:`train_worker` in one process
(world size 1) with ``on_epoch``: it receives each epoch's validation metrics and may
raise (``optuna.TrialPruned``) to stop the trial; its MLflow run is then left RUNNING
for the caller (settings ``end_run=False``), whose Optuna storage owns the run's status.

A process started by ``torchrun`` dies with it (:func:`radlake.stops.die_with_parent`):
when the driver is stopped, ``TorchDistributor`` kills ``torchrun`` after half a second,
and a worker left behind would train on and could end the run the driver ended KILLED.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Fraction of the schedule spent warming the learning rate up linearly.
WARMUP = 0.05


def _cosine(progress: float) -> float:
    if progress < WARMUP:
        return max(0.02, progress / WARMUP)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP) / (1 - WARMUP))))


def train_worker(settings: dict[str, Any], *, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> None:
    """Train one detector; see the module docstring. Keys of ``settings`` are set by :mod:`radlake.train.run`.

    Parameters
    ----------
    settings
        From :func:`radlake.train.run.worker_settings`; optional extras: ``threads`` (torch
        CPU threads of this process) and ``end_run`` (default True: ``False`` leaves the
        MLflow run RUNNING after the model is logged).
    on_epoch
        Called on rank 0 after each validated epoch's metrics are logged (every
        ``val_every_epochs`` epochs and the last), with the epoch (0-based) and its row
        (``train_*`` losses, ``val_*`` metrics). Only for world size 1: an
        exception it raises stops training there, before the test evaluation and the model.
    """
    from radlake.stops import die_with_parent

    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: SIGKILL, no last writes to the run
        die_with_parent(signal.SIGKILL)

    import torch
    import torch.distributed as dist

    from radlake.models.detector import DetectorSpec, build_detector
    from radlake.train.engine import train_one_epoch

    process = _Process.start(settings, on_epoch)
    spec = DetectorSpec.from_dict(settings["spec"])
    torch.manual_seed(settings["seed"])  # the same initial weights on every rank
    model = build_detector(spec, settings.get("weights")).to(process.device)
    torch.manual_seed(settings["seed"] * 1000 + process.rank)  # different augmentations per rank
    ddp = torch.nn.parallel.DistributedDataParallel(model) if process.distributed else model
    train_loader = _train_loader(settings, spec, process)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"])
    schedule = _Schedule(
        optimizer,
        learning_rate=settings["learning_rate"],
        total_steps=max(1, settings["epochs"] * train_loader.dataset.steps_per_epoch),
        budget_s=settings.get("max_train_seconds") or float("inf"),
        distributed=process.distributed,
    )
    logger = _RankZeroLogger(settings) if process.rank == 0 else None
    history: list[dict[str, float]] = []
    for epoch in range(settings["epochs"]):
        train_loader.dataset.set_epoch(epoch)
        losses = train_one_epoch(
            ddp,
            optimizer,
            train_loader,
            process.device,
            should_stop=schedule.should_stop,
            all_reduce=process.all_reduce,
        )
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in losses.items()}}
        last = schedule.progress >= 1.0 or epoch == settings["epochs"] - 1
        validate = last or (epoch + 1) % max(1, int(settings.get("val_every_epochs", 1))) == 0
        if logger is not None:
            if validate:
                row.update(logger.validate(model, spec, process.device, epoch))
            logger.log_epoch(row, epoch)
            if on_epoch is not None and validate:
                on_epoch(epoch, row)
        history.append(row)
        if schedule.progress >= 1.0:
            break
    if logger is not None:
        logger.finish(
            model,
            spec,
            process.device,
            history,
            elapsed_s=time.perf_counter() - schedule.started,
            timed_out=schedule.timed_out,
        )
    if process.distributed:
        dist.barrier()
        dist.destroy_process_group()


@dataclass
class _Process:
    """This training process: its rank in the world, its device, and the process group if there is one."""

    world: int
    rank: int
    distributed: bool
    device: Any

    @classmethod
    def start(cls, settings: dict[str, Any], on_epoch) -> _Process:
        """Read the rank from torchrun's environment, join the process group, pick the device and threads."""
        import torch
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        use_gpu = bool(settings["use_gpu"]) and torch.cuda.is_available()
        distributed = world > 1
        if distributed and on_epoch is not None:
            raise ValueError(f"Argument 'on_epoch' is only supported at world size 1, got WORLD_SIZE={world}.")
        if distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if use_gpu else "gloo")
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_gpu else "cpu")
        if settings.get("threads"):
            torch.set_num_threads(int(settings["threads"]))
        elif not use_gpu:
            local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        return cls(world=world, rank=rank, distributed=distributed, device=device)

    def all_reduce(self, t):
        """``t`` summed over the ranks, in place (itself at world size 1)."""
        import torch.distributed as dist

        if self.distributed:
            dist.all_reduce(t)
        return t


def _train_loader(settings: dict[str, Any], spec, process: _Process):
    """This rank's shard of the training cache, shuffled per epoch, augmented."""
    from radlake.config import AugmentConfig
    from radlake.data.loader import make_torch_dataloader
    from radlake.data.transforms import DetectionTransform, collate_detection

    augment = AugmentConfig(**settings["augment"])
    return make_torch_dataloader(
        settings["caches"]["train"],
        batch_size=settings["batch_size"],
        num_workers=settings["num_workers"],
        rank=process.rank,
        world_size=process.world,
        shuffle=True,
        seed=settings["seed"],
        transform=DetectionTransform(
            spec.image_size, augment, input_spacing_mm=spec.input_spacing_mm, class_of_label=spec.class_of_label()
        ),
        collate_fn=collate_detection,
        drop_last=True,
    )


class _Schedule:
    """The learning rate by step (cosine) and when training stops: all steps done, or the time budget spent.

    The learning rate follows the step count only, so a run is repeatable; the time budget
    is a hard stop on top (a run that hits it says so: tag radlake.stopped_by).
    """

    def __init__(self, optimizer, *, learning_rate: float, total_steps: int, budget_s: float, distributed: bool):
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.budget_s = budget_s
        self.distributed = distributed
        self.started = time.perf_counter()
        self.step = 0
        self.progress = 0.0
        self.timed_out = False

    def out_of_time(self) -> bool:
        """True on every rank once any rank has used the wall-time budget (one tiny all-reduce per step)."""
        import torch
        import torch.distributed as dist

        over = torch.tensor([float(time.perf_counter() - self.started >= self.budget_s)], dtype=torch.float64)
        if self.distributed:
            dist.all_reduce(over, op=dist.ReduceOp.MAX)
        return bool(over[0] > 0)

    def should_stop(self) -> bool:
        """Before each step: stop, or set this step's learning rate and count it."""
        self.progress = self.step / self.total_steps
        if self.progress >= 1.0:
            return True
        if self.out_of_time():
            self.progress, self.timed_out = 1.0, True
            return True
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate * _cosine(self.progress)
        self.step += 1
        return False


class _RankZeroLogger:
    """Evaluation and MLflow logging, on rank 0 only."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import mlflow

        self.settings = settings
        mlflow.set_tracking_uri(settings["tracking_uri"])
        mlflow.set_registry_uri(settings["registry_uri"])
        self.client = mlflow.MlflowClient()
        self.run_id = settings["run_id"]

    def _loader(self, split: str):
        from radlake.data.loader import make_torch_dataloader
        from radlake.data.transforms import DetectionTransform, collate_detection

        return make_torch_dataloader(
            self.settings["caches"][split],
            batch_size=self.settings["batch_size"],
            num_workers=0,
            rank=0,
            world_size=1,
            shuffle=False,
            transform=DetectionTransform(
                self.settings["spec"]["image_size"],
                None,
                input_spacing_mm=self.settings["spec"].get("input_spacing_mm"),
            ),
            collate_fn=collate_detection,
            drop_last=False,
        )

    def evaluate(self, model, spec, device, split: str):
        from radlake.train.engine import predict
        from radlake.train.metrics import evaluate_results

        results = predict(model, spec, self._loader(split), device)
        metrics = evaluate_results(results, score_threshold=spec.score_threshold, kind=spec.kind)
        return results, metrics

    def validate(self, model, spec, device, epoch: int) -> dict[str, float]:
        _, metrics = self.evaluate(model, spec, device, "val")
        return {f"val_{k}": v for k, v in metrics.items() if not k.startswith("n_")}

    def log_epoch(self, row: dict[str, float], epoch: int) -> None:
        import mlflow.entities

        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(k, float(v), now, epoch) for k, v in row.items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, model, spec, device, history, *, elapsed_s: float, timed_out: bool) -> None:
        import mlflow
        import pyarrow.parquet as pq

        from radlake.dicom.pixels import TRANSFORM_COLUMNS
        from radlake.models.model_input import model_input_rows
        from radlake.models.pyfunc import INPUT_COLUMNS, log_detector
        from radlake.train import plots
        from radlake.train.metrics import coco_ap

        # A sweep's Optuna storage sets its trial runs' final status itself: end_run=False leaves them RUNNING.
        end = bool(self.settings.get("end_run", True))
        mlflow.start_run(run_id=self.run_id)
        try:
            results, metrics = self.evaluate(model, spec, device, "test")
            mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
            mlflow.log_metrics({"train_seconds_total": elapsed_s, "epochs_completed": float(len(history))})
            mlflow.set_tag("radlake.stopped_by", "time budget" if timed_out else "epochs")
            mlflow.log_figure(plots.training_curves(history), "plots/training_curves.png")
            ap = coco_ap(results)
            mlflow.log_figure(
                plots.precision_recall(
                    ap["pr_recall"], ap["pr_precision"], f"test PR @ IoU 0.5 (AP {ap['map_50']:.3f})"
                ),
                "plots/precision_recall_test.png",
            )
            self._log_examples(model, spec, device)
            val = pq.ParquetDataset(self.settings["caches"]["val"])
            columns = [c for c in (*INPUT_COLUMNS, *TRANSFORM_COLUMNS) if c in val.schema.names]
            example = val.read(columns=columns).slice(0, 1)
            log_detector(model, spec, input_example=model_input_rows(example.to_pandas()))
            mlflow.log_dict({"history": history, "test": metrics}, "metrics/history.json")
        except BaseException:
            mlflow.end_run("FAILED" if end else "RUNNING")
            raise
        mlflow.end_run("FINISHED" if end else "RUNNING")

    def _log_examples(self, model, spec, device) -> None:
        import matplotlib.pyplot as plt
        import mlflow

        from radlake.models.levels import LEVELS
        from radlake.train.engine import predict
        from radlake.train.plots import draw_detections

        n = int(self.settings["val_images_logged"])
        if n <= 0:
            return
        shown = 0
        for images, targets in self._loader("val"):
            results = predict(model, spec, [(images, targets)], device)
            for image, target, result in zip(images, targets, results, strict=True):
                if shown >= n or not len(result.true_boxes):
                    continue
                geometry = target["geometry"]
                result.pred_boxes = geometry.boxes_to_input(result.pred_boxes)
                result.true_boxes = geometry.boxes_to_input(result.true_boxes)
                names = LEVELS if spec.kind == "level" else spec.classes  # level detectors report levels
                fig = draw_detections(image[0].numpy(), result, names, spec.score_threshold)
                mlflow.log_figure(fig, f"plots/val_examples/{shown:02d}.png")
                plt.close(fig)
                shown += 1
            if shown >= n:
                break
