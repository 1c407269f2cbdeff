"""Ray Tune + Ray Train wiring: one search-space YAML -> typed trials -> Parquet rows.

One module per job: :mod:`~kdray.sweep.expansion` (trials and their keys, no Ray), :mod:`~kdray.sweep.resources`
(what a trial asks of the cluster), :mod:`~kdray.sweep.teachers` (the teacher stage), :mod:`~kdray.sweep.trial`
(the Tune trainable and the Ray Train worker), :mod:`~kdray.sweep.recorder` (the Parquet recorder) and
:mod:`~kdray.sweep.run` (:func:`run_sweep`). Importing the package does not import Ray.
"""

from kdray.sweep.expansion import Trial, describe, expand_grid, resolve_paths, trial_key
from kdray.sweep.resources import (
    QUIET_ENV,
    TRIAL_DRIVER_CPU,
    local_num_cpus,
    max_concurrent_trials,
    reuse_actors,
    trial_resources,
    tune_resources,
)
from kdray.sweep.run import load_sweep, run_sweep

__all__ = [
    "QUIET_ENV", "TRIAL_DRIVER_CPU", "Trial", "describe", "expand_grid", "load_sweep", "local_num_cpus",
    "max_concurrent_trials", "resolve_paths", "reuse_actors", "run_sweep", "trial_key", "trial_resources", "tune_resources",
]
