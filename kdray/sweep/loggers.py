"""The sweep's ``logging:`` section as Ray Tune logger callbacks (W&B, MLflow), checked before Ray starts.

TensorBoard needs no callback: each trial's loop writes its own event files at every phase
(:class:`kdray.tblog.PhaseLog`), which Tune's per-result callbacks could not (they see evaluations only).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from kdray.config import ConfigError, SweepConfig

# logging key -> (package that must be importable, Ray callback module, class name)
CALLBACKS = {
    "wandb": ("wandb", "ray.air.integrations.wandb", "WandbLoggerCallback"),
    "mlflow": ("mlflow", "ray.air.integrations.mlflow", "MLflowLoggerCallback"),
}


def check_logging(sweep: SweepConfig) -> None:
    """Refuse a ``logging:`` entry whose package is missing, with the install line, before Ray starts."""
    for key, (package, _, _) in CALLBACKS.items():
        if getattr(sweep.logging, key) is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"logging.{key}: the {package!r} package is not installed; `pip install {package}` "
                              f"or remove logging.{key} from the space file")


def logger_callbacks(sweep: SweepConfig) -> list[Any]:
    """Ray Tune's W&B / MLflow logger callbacks for the sweep's ``logging:`` entries (empty when none)."""
    check_logging(sweep)
    out = []
    for key, (_, module, name) in CALLBACKS.items():
        kwargs = getattr(sweep.logging, key)
        if kwargs is not None:
            cls = getattr(importlib.import_module(module), name)
            try:
                out.append(cls(**kwargs))
            except TypeError as err:
                raise ConfigError(f"logging.{key}: {err}") from None
    return out
