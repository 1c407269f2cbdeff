"""Typed, validated configuration: the one object every other module reads.

A YAML file is parsed once (:mod:`kdray.config_yaml`: a SafeLoader that refuses duplicate keys), validated by pydantic
with unknown keys forbidden, and turned into :class:`RunConfig` (one training
run, ``kdray train``) or :class:`SweepConfig` (a search space, ``kdray sweep``).
Every error names the file, the dotted key path and what is allowed, so users
never see a pydantic or KeyError traceback. Dotted paths (overrides, error
locations) are walked by :mod:`kdray.config_paths`; the ``search`` section's
models live in :mod:`kdray.config_search`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union, get_args

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from kdray.config_paths import ConfigError, StrictModel, apply_overrides, check_names, format_errors
from kdray.config_search import Distribution, LoggingConfig, SearchConfig, candidate_values

from kdray import registry
from kdray.config_selector import (  # noqa: F401  (re-exported: the selector's sections)
    BanditConfig,
    DynamicKDConfig,
    KindSchedule,
    RewardConfig,
    ScheduleConfig,
    SelectorConfig,
)
from kdray.config_yaml import read_yaml

# The name families are declared once in kdray.registry (a leaf: validation imports nothing heavy);
# these aliases keep the names config's validators (and older callers) have always read.
KNOWLEDGE_KINDS: tuple[str, ...] = registry.KNOWLEDGE_KINDS
SELECTOR_NAMES: tuple[str, ...] = registry.SELECTOR_NAMES
GLUE_TASKS: tuple[str, ...] = registry.TASK_NAMES


# Upper bounds that no real run reaches: a value past them is a typo (an extra zero, 1e30 for 1e-3), refused
# before Ray starts instead of failing every trial of a sweep. Floats are finite (StrictModel).
MAX_STEPS = 10**9
MAX_BATCH = 65536
MAX_EPOCHS = 10_000.0
MAX_SAMPLES = 10**9
Seed = Annotated[int, Field(ge=0)]  # numpy's generators refuse negative seeds
SWEEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class DataConfig(StrictModel):
    """Where GLUE comes from and how much of it a run uses."""

    source: Literal["auto", "hub", "local"] = "auto"
    dir: str | None = None  # official GLUE TSV layout; falls back to $KDRAY_GLUE_DIR
    max_train_samples: int | None = Field(default=None, ge=1, le=MAX_SAMPLES)
    max_eval_samples: int | None = Field(default=None, ge=1, le=MAX_SAMPLES)
    holdout_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)  # train slice kept for the reward set
    holdout_max: int = Field(default=1000, ge=1, le=MAX_SAMPLES)
    cache_dir: str | None = None  # tokenization cache; default $KDRAY_CACHE_DIR/tokenized
    # Seed of the train/dev subsample. Fixed by default so every method and seed of a comparison sees
    # the same rows; null = use the run's seed.
    subsample_seed: Seed | None = 0


class TeacherConfig(StrictModel):
    """The teacher: a model to fine-tune once per task, or already fine-tuned folders per task."""

    model: str = "minilm-l6"  # hub id, local folder, or a short name such as minilm-l6
    finetuned: dict[str, str] = Field(default_factory=dict)  # task -> folder of a fine-tuned teacher
    epochs: float = Field(default=3.0, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(default=32, ge=1, le=MAX_BATCH)
    lr: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    seed: Seed = 42
    cache_dir: str | None = None  # where fine-tuned teachers are cached; sweeps use the run storage

    @field_validator("finetuned")
    @classmethod
    def _known_tasks(cls, v: dict[str, str]) -> dict[str, str]:
        check_names(list(v), GLUE_TASKS, "task")
        return v


class StudentConfig(StrictModel):
    """The student: layers copied from the teacher, or a smaller pre-trained model."""

    init: Literal["teacher_layers", "pretrained"] = "teacher_layers"
    layers: Union[int, list[int]] = 6  # a count, or explicit 0-based teacher layer indices to copy
    layer_choice: Literal["every_other", "first"] = "every_other"  # how a count picks teacher layers
    model: str | None = None  # for init=pretrained

    @model_validator(mode="after")
    def _pretrained_needs_model(self) -> "StudentConfig":
        if self.init == "pretrained" and not self.model:
            raise ValueError("student.init=pretrained needs student.model (hub id or folder)")
        if isinstance(self.layers, int) and self.layers < 1:
            raise ValueError("student.layers must be >= 1")
        return self


# Evaluation batches are formed in length order, and small ones pad least: RTE dev (277 rows, MiniLM, CPU)
# scored in 0.43x the time of dataset-order batches of 128 and 0.65x that of length-ordered ones. Also the
# teacher stage's and the benchmark's evaluation batch.
EVAL_BATCH_SIZE = 32


class TrainConfig(StrictModel):
    """Optimisation budget and loop mechanics; identical for every method in a comparison."""

    epochs: float = Field(default=3.0, gt=0, le=MAX_EPOCHS)
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)  # overrides epochs when set
    batch_size: int = Field(default=32, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(default=EVAL_BATCH_SIZE, ge=1, le=MAX_BATCH)
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    max_seq_length: int = Field(default=128, ge=8, le=512)
    seeds: list[Seed] = Field(default_factory=lambda: [1], min_length=1)  # sweep expands one trial per seed
    seed: Seed = 1  # the seed of this run (set per trial by the sweep)
    eval_every: int | None = Field(default=None, ge=1, le=MAX_STEPS)  # steps; None = end of each epoch
    # steps; None = only at the end. 1000: a 3-layer MiniLM checkpoint took 0.8-2.5 s to write on 2 CPU cores
    # against 0.07-s steps (cpu_glue's median), so <= 5% of training, and a killed trial loses <= 1000 steps
    checkpoint_every: int | None = Field(default=1000, ge=1, le=MAX_STEPS)
    log_every: int = Field(default=20, ge=1, le=MAX_STEPS)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto = bf16 on GPUs that have it, else fp32;
    # bf16 also runs on CPUs (autocast), fp16 only on GPUs
    # the live teacher's forward: same = train.precision; bf16 halves a frozen teacher's forward on GPUs and on CPUs
    # with native bf16 while the student trains in fp32 (the teacher-output cache is built in fp32 either way);
    # int8 (CPUs only): the teacher's Linear layers run int8 GEMMs (torch's dynamic quantization), the one fast
    # reduced precision on CPUs without native bf16 (kdray.teacher_precision)
    teacher_precision: Literal["same", "fp32", "bf16", "fp16", "int8"] = "same"
    teacher_cache: bool = False  # precompute teacher outputs once and train without a teacher forward
    # the attention kind's maps join the cache when they take at most this many GiB on disk (heads x n² per row
    # and layer, fp16); beyond it, or at 0, that kind keeps a live teacher forward
    teacher_cache_attention_gib: float = Field(default=2.0, ge=0)
    length_bucketing: bool = True  # batches of similar lengths: less padding with dynamic padding
    progress: bool = True  # tqdm bar in the foreground
    compile: bool = False  # torch.compile the student's training forward (the first steps of each shape pay the compile)


class KnowledgeConfig(StrictModel):
    """The knowledge pool and the settings of its losses."""

    pool: list[str] = Field(default_factory=lambda: ["finetune", "response", "feature", "relation"], min_length=1)
    temperature: float = Field(default=4.0, gt=0)
    layer_map: Union[Literal["skip", "last"], list[int]] = "skip"  # or explicit teacher layer per student layer
    # feature loss: full = MSE over all tokens (TinyBERT); cls_normalized = normalised [CLS] distance, every mapped layer
    # pkd: PKD's reference patient loss (MSE of normalised [CLS], mean over width, top student layer excluded)
    feature_mode: Literal["full", "cls_normalized", "pkd"] = "full"
    # scale each kind's loss so a weight is its share of the update (kdray.knowledge.normalize)
    normalize: Literal["none", "initial-loss", "running-loss", "gradient-norm"] = "none"
    normalize_momentum: float = Field(default=0.9, ge=0, lt=1)  # running-loss: EMA momentum of each kind's loss
    normalize_every: int = Field(default=50, ge=1)  # gradient-norm: steps between per-kind gradient-norm probes

    @field_validator("pool")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        check_names(v, KNOWLEDGE_KINDS, "knowledge kind")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate knowledge kinds in pool {v}")
        return v


class ResourcesConfig(StrictModel):
    """What one trial asks of the Ray cluster."""

    workers_per_trial: int = Field(default=1, ge=1, le=4096)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0, le=4096)
    gpus_per_worker: float = Field(default=1.0, ge=0, le=64)
    # Who runs the loop in a sweep. auto: a one-worker trial runs it in the Tune trial's own process (Ray Train's
    # controller and worker processes add ~15 s per trial and nothing a single process needs); several workers
    # (DDP) always run as a Ray Train TorchTrainer. ray_train: always a TorchTrainer.
    trainer: Literal["auto", "ray_train"] = "auto"

    def in_trial(self) -> bool:
        """Whether a sweep trial runs the loop itself instead of launching a TorchTrainer."""
        return self.trainer == "auto" and self.workers_per_trial == 1


class _RunSections(StrictModel):
    """The sections a run file and a search-space file share."""

    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    selector: SelectorConfig = Field(default_factory=SelectorConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _precision_fits_device(self) -> "_RunSections":
        for key in ("precision", "teacher_precision"):
            if getattr(self.train, key) == "fp16" and not self.resources.use_gpu:
                allowed = ", ".join(get_args(TrainConfig.model_fields[key].annotation))
                raise ValueError(f"train.{key}: fp16 runs only on a GPU (resources.use_gpu: true); "
                                 f"on CPUs use bf16 or fp32 (allowed: {allowed})")
        if self.train.teacher_precision == "int8" and self.resources.use_gpu:
            allowed = ", ".join(get_args(TrainConfig.model_fields["teacher_precision"].annotation))
            raise ValueError("train.teacher_precision: int8 runs only on CPUs (resources.use_gpu: false; torch's "
                             f"dynamic int8 quantization); on GPUs use bf16 or fp16 (allowed: {allowed})")
        return self

    def with_paths_resolved(self, base: Path) -> Self:
        """A copy whose relative paths (``data.dir``, caches, ``teacher.finetuned.*``, ``selector.init_from``) are
        made absolute against ``base``; URIs and absolute paths are kept."""
        def fix(value: str | None) -> str | None:
            if not value or "://" in value or Path(value).is_absolute():
                return value
            return str((base / value).resolve())

        data = self.data.model_copy(update={"dir": fix(self.data.dir), "cache_dir": fix(self.data.cache_dir)})
        teacher = self.teacher.model_copy(update={
            "cache_dir": fix(self.teacher.cache_dir),
            "finetuned": {k: fix(v) or v for k, v in self.teacher.finetuned.items()}})
        selector = self.selector.model_copy(update={"init_from": fix(self.selector.init_from)})
        return self.model_copy(update={"data": data, "teacher": teacher, "selector": selector}, deep=True)


class RunConfig(_RunSections):
    """One distillation run of one task: what ``kdray train`` and every sweep trial execute."""

    task: str = "rte"
    output_dir: str = "runs/train"
    tensorboard_dir: str | None = None  # TensorBoard event files of this run (a sweep sets one per trial)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        check_names([v], GLUE_TASKS, "task")
        return v

    @model_validator(mode="after")
    def _selector_fits_pool(self) -> "RunConfig":
        if self.selector.name == "fixed":
            if not self.selector.weights:
                raise ValueError("selector.name=fixed needs selector.weights (kind -> weight)")
            outside = sorted(set(self.selector.weights) - set(self.knowledge.pool))
            if outside:
                raise ValueError(f"selector.weights names kinds {outside} that are not in knowledge.pool")
        if self.selector.reward.score == "pearson" and not registry.TASKS[self.task].is_regression:
            raise ValueError(f"selector.reward.score: pearson scores regression tasks only (stsb), not "
                             f"{self.task}; allowed here: ce, brier")
        return self

    def with_output(self, output_dir: str, progress: bool | None = None,
                    tensorboard_dir: str | None = None) -> "RunConfig":
        """A copy that writes under ``output_dir`` (with the progress bar on or off, and TensorBoard event files
        in ``tensorboard_dir`` when given); this one stays as it is."""
        update: dict[str, Any] = {"output_dir": output_dir}
        if tensorboard_dir is not None:
            update["tensorboard_dir"] = tensorboard_dir
        if progress is not None:
            update["train"] = self.train.model_copy(update={"progress": progress})
        return self.model_copy(update=update, deep=True)


# --------------------------------------------------------------------------- search spaces


class SweepConfig(_RunSections):
    """A search space file: the base run settings, the tasks, and what varies."""

    name: str = "sweep"  # a folder under --storage: see _safe_name
    tasks: list[str] = Field(default_factory=lambda: ["rte"], min_length=1)
    # Per-task settings over the shared ones, e.g. {sst2: {train.max_seq_length: 64, data.max_train_samples: 10000}}:
    # GLUE practice differs per task (length, subsample), and one sweep still holds the whole table.
    task_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: SearchConfig = Field(default_factory=SearchConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    # the space file's folder once its paths are resolved (kdray.sweep.resolve_paths): a path a trial's
    # overrides set (task_overrides, a searched value) resolves against it too, while trial keys keep it as written
    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # The name is one folder under --storage: no separators, and no leading dot (``.`` and ``..`` would
        # write into --storage itself or above it; ``.x`` would hide the folder) or dash (read as an option).
        if not SWEEP_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a sweep name: it names one folder under --storage, so it must match "
                             f"the pattern {SWEEP_NAME.pattern} (letters, digits, '_', '.', '-'; no leading '.' "
                             "or '-'; at most 100 characters)")
        return v

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        return check_names(v, GLUE_TASKS, "task")

    @model_validator(mode="after")
    def _overrides_name_listed_tasks(self) -> "SweepConfig":
        for task in self.task_overrides:
            if task not in self.tasks:
                raise ValueError(f"task_overrides.{task}: not one of this sweep's tasks ({', '.join(self.tasks)})")
        return self

    def base_run(self, task: str) -> dict[str, Any]:
        """The run-config dict every trial of ``task`` starts from (before searched overrides)."""
        run = {name: getattr(self, name).model_dump() for name in _RunSections.model_fields}
        run["task"] = task
        if self.task_overrides.get(task):
            run = apply_overrides(run, self.task_overrides[task], RunConfig, source=f"task_overrides.{task}")
        return run

    def trial_run(self, task: str, overrides: dict[str, Any], source: str) -> "RunConfig":
        """The validated run of one trial: ``task``'s base run with ``overrides`` (dotted keys) set over it."""
        run = validate(RunConfig, apply_overrides(self.base_run(task), overrides, RunConfig, source), source)
        return run if self._base_dir is None else run.with_paths_resolved(self._base_dir)

    def resolved_against(self, base: Path) -> "SweepConfig":
        """A copy with the file's relative paths made absolute against ``base`` (the YAML's folder), in the base
        settings now and in every trial's overrides when its run is built."""
        out = self.with_paths_resolved(base)
        out._base_dir = base
        return out


# --------------------------------------------------------------------------- loading


def validate(model: type[BaseModel], raw: Any, source: str = "<config>") -> Any:
    """Validate ``raw`` into ``model``; raise :class:`ConfigError` naming ``source`` and key paths."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source, model)) from None


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load ``kdray train``'s config file, applying dotted-key overrides first."""
    raw = read_yaml(path)
    if overrides:
        raw = apply_overrides(raw, overrides, RunConfig, source=str(path))
    return validate(RunConfig, raw, str(path))


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Load and validate a search-space file, including every dotted key in ``search.space``.

    ``overrides`` (``kdray sweep --set``) set dotted run settings over the file's before validation.
    """
    raw = read_yaml(path)
    for key in overrides or {}:
        if key.split(".")[0] not in _RunSections.model_fields:
            raise ConfigError(f"--set {key}: only run settings can be set on a sweep; allowed sections: "
                              f"{', '.join(_RunSections.model_fields)}")
    if overrides:
        raw = apply_overrides(raw, overrides, RunConfig, source=f"{path}: --set")
    sweep: SweepConfig = validate(SweepConfig, raw, str(path))
    # Cross-field rules of a run (e.g. selector.name=fixed needs weights) apply to the unsearched base of every
    # task too (task_overrides may change it per task).
    for task in sweep.tasks:
        try:
            base = sweep.base_run(task)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        validate(RunConfig, base, f"{path}: task {task}")
    # Each searched key must address a real run field, and each of its values must validate there.
    for key, dist in sweep.search.space.items():
        if key == "task" or key.startswith("output_dir"):
            raise ConfigError(f"{path}: search.space.{key}: not searchable; list tasks under 'tasks'")
        for value in candidate_values(dist):
            run = apply_overrides(sweep.base_run(sweep.tasks[0]), {key: value}, RunConfig, f"{path}: search.space")
            validate(RunConfig, run, f"{path}: search.space.{key}={value!r}")
    return sweep


__all__ = [
    "ConfigError", "DataConfig", "Distribution", "EVAL_BATCH_SIZE", "GLUE_TASKS", "KNOWLEDGE_KINDS",
    "KnowledgeConfig", "ResourcesConfig", "RewardConfig", "RunConfig", "SELECTOR_NAMES", "SearchConfig",
    "SelectorConfig", "StudentConfig", "SweepConfig", "TeacherConfig", "TrainConfig", "candidate_values",
    "load_run_config", "load_sweep_config", "read_yaml", "validate",
]


