"""kdray: Ray-distributed sweeps for knowledge distillation with actor-critic knowledge selection."""

__version__ = "0.1.0"
