"""Optional run trackers beside log.jsonl: TensorBoard and Weights & Biases, rank 0 only,
off by default (logging.tensorboard, logging.wandb).

log.jsonl stays the record; a tracker receives each of its records as it is written (the
train window's loss, lr, speed; each eval's top-1s and losses) under the trainer's step,
and the summary's figures at the end. Both libraries are imported only when their setting
is on, and a missing one is a configuration error that says what to install.

A resumed run continues the same axis: TensorBoard's writer purges what the last session
logged after its last checkpoint (as log.jsonl is cut back to it), and W&B resumes the run
whose id the first session wrote to logging.folder/wandb_run_id. W&B keeps a history that
only grows: steps an interrupted session logged after its last checkpoint stay, and the
resumed session skips its records for the steps W&B says it already holds (run.step, known
online; offline, each session is a file of its own that `wandb sync` sends to the one run).
The resume is exact, so the two agree but for the speed figures.
"""
import importlib.util
import json
import math
import secrets
from pathlib import Path

from vit_speedrun.cli import ConfigError
from vit_speedrun.train.report import write_atomic

WANDB_ID_FILE = "wandb_run_id"
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def check_installed(tensorboard, wandb):
    """ConfigError before any work when a tracker is on and its package is missing."""
    for on, module in ((tensorboard, "tensorboard"), (wandb, "wandb")):
        if on and importlib.util.find_spec(module) is None:
            raise ConfigError(f"logging.{module}=true needs the {module} package, which is not "
                              f"installed: {INSTALL[module]} (or set logging.{module}=false)")


def scalars(record):
    """The finite numbers of a log record, by name, without its step."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def tag(name):
    """TensorBoard groups: train/*, eval/* (top-1s, losses, eval time), progress/epoch."""
    if name == "epoch":
        return "progress/epoch"
    return ("eval/" if name.split("_")[0] in ("minival", "val", "real", "v2")
            or name == "eval_time_s" else "train/") + name


class TensorBoard:
    """Event files in logging.folder/tensorboard, the trainer's step as TensorBoard's."""

    def __init__(self, folder, config, step):
        from torch.utils.tensorboard import SummaryWriter
        # purge_step: events of steps after the checkpoint this session starts from are
        # dropped, as log.jsonl drops them (TensorBoard's reader honours it).
        self.writer = SummaryWriter(log_dir=str(Path(folder) / "tensorboard"),
                                    purge_step=step + 1)
        if step == 0:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in
                                                     sorted(config.items())), 0)

    def log(self, record):
        for name, value in scalars(record).items():
            self.writer.add_scalar(tag(name), value, record["step"])

    def finish(self, summary):
        self.writer.add_text("summary", "    " + json.dumps(summary, indent=2).replace(
            "\n", "\n    "), summary.get("steps", 0))
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandB:
    """One W&B run per logging.folder: its id kept in the folder, resumed with it. The
    project and name come from logging.wandb_project and wandb_name; WANDB_MODE=offline
    (and the rest of W&B's environment) is W&B's own."""

    def __init__(self, folder, config, step, project, name):
        import wandb
        Path(folder).mkdir(parents=True, exist_ok=True)
        id_file = Path(folder) / WANDB_ID_FILE
        if step > 0 and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:   # a fresh run (or one that never reached a checkpoint): a new W&B run
            run_id = secrets.token_hex(4)
            write_atomic(id_file, run_id + "\n")
        self.run = wandb.init(project=project, name=name or Path(folder).resolve().name,
                              id=run_id, resume="allow", dir=str(folder), config=config)
        self.logged_to = self.run.step   # W&B's next step: online, what it already holds

    def log(self, record):
        if record["step"] >= self.logged_to:
            self.run.log(scalars(record), step=record["step"])

    def finish(self, summary):
        flat = scalars(summary)
        flat.update({f"final/{k}": v for k, v in scalars(summary.get("final", {})).items()})
        self.run.summary.update(flat)

    def close(self):
        self.run.finish()


def open_trackers(folder, config, step, *, tensorboard, wandb, wandb_project, wandb_name):
    """The trackers a run's settings ask for (rank 0 calls this; the others log nothing)."""
    out = []
    if tensorboard:
        out.append(TensorBoard(folder, config, step))
    if wandb:
        out.append(WandB(folder, config, step, wandb_project, wandb_name))
    return out
