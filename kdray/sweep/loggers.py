"""The sweep's ``logging:`` section as Ray Tune logger callbacks (W&B, MLflow), checked before Ray starts.

TensorBoard needs no callback: each trial's loop writes its own event files at every phase
(:class:`kdray.tblog.PhaseLog`), which Tune's per-result callbacks could not (they see evaluations only).

Where the callbacks write by default is inside the sweep's folder, like everything else a sweep writes:
MLflow to ``<sweep>/mlflow.db`` (a SQLite store: MLflow 3 refuses the old ``file:`` store unless
``MLFLOW_ALLOW_FILE_STORE=true``), W&B's local run files to ``<sweep>/wandb``. What Ray's callbacks would
refuse late (after the teacher stage, with a traceback) is refused here: a missing package, W&B without any
API key (offline runs need one too: ``WANDB_MODE=offline`` with any key), an MLflow ``file:`` store.
"""

from __future__ import annotations

import importlib
import importlib.util
import netrc
import os
from pathlib import Path
from typing import Any

from kdray.config import ConfigError, SweepConfig

# logging key -> (package that must be importable, Ray callback module, class name)
CALLBACKS = {
    "wandb": ("wandb", "ray.air.integrations.wandb", "WandbLoggerCallback"),
    "mlflow": ("mlflow", "ray.air.integrations.mlflow", "MLflowLoggerCallback"),
}


def check_logging(sweep: SweepConfig) -> None:
    """Refuse a ``logging:`` entry Ray's callback would fail on, with what to do, before Ray starts."""
    for key, (package, _, _) in CALLBACKS.items():
        if getattr(sweep.logging, key) is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"logging.{key}: the {package!r} package is not installed; `pip install {package}` "
                              f"or remove logging.{key} from the space file")
    if sweep.logging.wandb is not None and not _wandb_key_available(sweep.logging.wandb):
        raise ConfigError("logging.wandb: no W&B API key (api_key, api_key_file, $WANDB_API_KEY or `wandb login`); "
                          "offline logging needs one too: set WANDB_MODE=offline and any key")
    uri = str((sweep.logging.mlflow or {}).get("tracking_uri") or "")
    if uri.startswith("file:") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ConfigError(f"logging.mlflow.tracking_uri {uri!r}: MLflow 3 refuses the file store; use "
                          "sqlite:///PATH/mlflow.db, a server URL, or leave it out (<sweep>/mlflow.db)")


def _wandb_key_available(kwargs: dict[str, Any]) -> bool:
    """Whether Ray's W&B callback will find a key (its own order: arguments, environment, netrc)."""
    if kwargs.get("api_key") or kwargs.get("api_key_file") or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def with_default_places(key: str, kwargs: dict[str, Any], sweep_dir: str) -> dict[str, Any]:
    """The callback's arguments with its local files placed inside the sweep folder unless the space says where."""
    if "://" in sweep_dir:  # a bucket sweep: the callbacks' own defaults (a server, the working folder)
        return dict(kwargs)
    if key == "mlflow" and not kwargs.get("tracking_uri"):
        return {**kwargs, "tracking_uri": f"sqlite:///{Path(sweep_dir).resolve() / 'mlflow.db'}"}
    if key == "wandb" and not kwargs.get("dir"):
        folder = Path(sweep_dir) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        return {**kwargs, "dir": str(folder.resolve())}
    return dict(kwargs)


def logger_callbacks(sweep: SweepConfig, sweep_dir: str) -> list[Any]:
    """Ray Tune's W&B / MLflow logger callbacks for the sweep's ``logging:`` entries (empty when none); the
    entries were checked by :func:`check_logging` before Ray started (``run_sweep``)."""
    out = []
    for key, (_, module, name) in CALLBACKS.items():
        kwargs = getattr(sweep.logging, key)
        if kwargs is not None:
            cls = getattr(importlib.import_module(module), name)
            try:
                out.append(cls(**with_default_places(key, kwargs, sweep_dir)))
            except TypeError as err:
                raise ConfigError(f"logging.{key}: {err}") from None
    return out
