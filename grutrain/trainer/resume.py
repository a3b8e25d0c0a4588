"""The checkpoint a run resumes from, once it is known to fit the config and processes it is given now."""

from __future__ import annotations

from pathlib import Path

from grutrain.config.schema import Config, config_to_dict, flatten_config
from grutrain.errors import GrutrainError
from grutrain.files.checkpoint import check_training_state
from grutrain.tasks import validate_config
from grutrain.tasks.checkpoints import load_checkpoint
from grutrain.trainer.rundir import LAST_CHECKPOINT

# Keys that may differ between a run and its resumption: how long, where, on what hardware (model.kernel:
# which implementation computes the same GRU, e.g. a machine without a compiler), and the explicit
# permission to continue on changed data.
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "run.dir", "train.threads", "train.device", "train.dist_timeout_s",
                     "model.kernel", "train.allow_data_change"}


def resumable_checkpoint(run_dir: Path, config: Config, device, world_size: int) -> dict:
    """The run's last.pt, loaded onto `device`, after checking it may resume under `config`."""
    path = run_dir / LAST_CHECKPOINT
    saved = load_checkpoint(path, map_location=device)
    check_resumable(saved, config, world_size, path)
    return saved


def check_resumable(saved: dict, config: Config, world_size: int, path: Path) -> None:
    """A run resumes only under its own config, but may be given more steps or another dir.

    The per-process batch may change with the number of processes, as long as the global batch
    (batch_size x accumulate x processes) stays the same: then the data order is the same too.
    """
    check_training_state(saved, path)
    try:  # the run's config with today's defaults for keys added since it was written
        before = flatten_config(config_to_dict(validate_config(saved["config"])))
    except GrutrainError as exc:
        raise GrutrainError(f"cannot resume {str(path)!r}: its config is no longer valid ({exc})") from None
    now = flatten_config(config_to_dict(config))
    changed = sorted(k for k in before.keys() | now.keys()
                     if k not in RESUMABLE_CHANGES | {"train.batch_size"} and before.get(k) != now.get(k))
    if changed:
        raise GrutrainError(f"cannot resume {str(path)!r}: the config differs from the run's in {', '.join(changed)}; "
                            "resume with the run's own config (its config.yaml)")
    saved_global = saved["trainer"].get("global_batch") or before["train.batch_size"]
    accumulate = config.train.accumulate
    if config.train.batch_size * accumulate * world_size != saved_global:
        raise GrutrainError(f"cannot resume {str(path)!r}: it was trained with a global batch of {saved_global}, "
                            f"now train.batch_size={config.train.batch_size} x {accumulate} accumulated x "
                            f"{world_size} processes; set train.batch_size={saved_global // world_size // accumulate}")
