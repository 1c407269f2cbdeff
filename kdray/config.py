"""Typed, validated configuration: the one object every other module reads.

A YAML file is parsed once here (``yaml.safe_load`` only), validated by pydantic
with unknown keys forbidden, and turned into :class:`RunConfig` (one training
run, ``kdray train``) or :class:`SweepConfig` (a search space, ``kdray sweep``).
Every error names the file, the dotted key path and what is allowed, so users
never see a pydantic or KeyError traceback.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

KNOWLEDGE_KINDS: tuple[str, ...] = ("finetune", "response", "feature", "relation", "attention", "embedding")
SELECTOR_NAMES: tuple[str, ...] = (
    "finetune",
    "vanilla_kd",
    "pkd",
    "all",
    "fixed",
    "random_hard",
    "random_soft",
    "actor_critic",
)
GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


class ConfigError(ValueError):
    """A bad configuration value; the message names the file, key path and allowed values."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_names(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; allowed: {', '.join(allowed)}")
    return values


class DataConfig(_Strict):
    """Where GLUE comes from and how much of it a run uses."""

    source: Literal["auto", "hub", "local"] = "auto"
    dir: str | None = None  # official GLUE TSV layout; falls back to $KDRAY_GLUE_DIR
    max_train_samples: int | None = Field(default=None, ge=1)
    max_eval_samples: int | None = Field(default=None, ge=1)
    holdout_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)  # train slice kept for the reward set
    holdout_max: int = Field(default=1000, ge=1)
    cache_dir: str | None = None  # tokenization cache; default $KDRAY_CACHE_DIR/tokenized
    # Seed of the train/dev subsample. Fixed by default so every method and seed of a comparison sees
    # the same rows; null = use the run's seed.
    subsample_seed: int | None = 0


class TeacherConfig(_Strict):
    """The teacher: a model to fine-tune once per task, or already fine-tuned folders per task."""

    model: str = "minilm-l6"  # hub id, local folder, or a short name such as minilm-l6
    finetuned: dict[str, str] = Field(default_factory=dict)  # task -> folder of a fine-tuned teacher
    epochs: float = Field(default=3.0, gt=0)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    seed: int = 42
    cache_dir: str | None = None  # where fine-tuned teachers are cached; sweeps use the run storage

    @field_validator("finetuned")
    @classmethod
    def _known_tasks(cls, v: dict[str, str]) -> dict[str, str]:
        _check_names(list(v), GLUE_TASKS, "task")
        return v


class StudentConfig(_Strict):
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


class TrainConfig(_Strict):
    """Optimisation budget and loop mechanics; identical for every method in a comparison."""

    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)  # overrides epochs when set
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int = Field(default=EVAL_BATCH_SIZE, ge=1)
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    max_seq_length: int = Field(default=128, ge=8, le=512)
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)  # sweep expands one trial per seed
    seed: int = 1  # the seed of this run (set per trial by the sweep)
    eval_every: int | None = Field(default=None, ge=1)  # steps; None = end of each epoch
    checkpoint_every: int | None = Field(default=None, ge=1)  # steps; None = only at the end
    log_every: int = Field(default=20, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto = bf16 on GPUs that have it, else fp32
    teacher_cache: bool = False  # precompute teacher outputs once and train without a teacher forward
    length_bucketing: bool = True  # batches of similar lengths: less padding with dynamic padding
    progress: bool = True  # tqdm bar in the foreground
    compile: bool = False  # torch.compile the student's training forward (the first steps of each shape pay the compile)


class RewardConfig(_Strict):
    """Reward shaping for the actor-critic selector (DESIGN.md section 1)."""

    reward_set: Literal["train_holdout", "dev"] = "train_holdout"
    # Fixed subset of the reward set scored at every phase end. 96 is the largest set whose forward fits 2% of a
    # 50-step phase at batch 32 (a forward costs about a third of a training step per row); more rows give a less
    # noisy reward at a proportional cost (results/reward_noise: kdray reward-noise).
    eval_examples: int = Field(default=96, ge=1)
    exploration: float = Field(default=0.0, ge=0)  # beta: weight of the exploration bonus
    cost: float = Field(default=0.0, ge=0)  # penalty per unit of selected relative compute
    normalize: bool = True  # running mean/std normalisation of the reward
    clip: float | None = Field(default=5.0, gt=0)
    scale: float = Field(default=1.0, gt=0)  # multiplies the raw loss drop before shaping


class SelectorConfig(_Strict):
    """Which selector decides the knowledge weights, and how the actor-critic one learns."""

    name: str = "actor_critic"
    action: Literal["soft", "hard"] = "soft"
    phase_steps: int = Field(default=50, ge=1)  # selection frequency
    weights: dict[str, float] = Field(default_factory=dict)  # for name=fixed
    threshold: float = Field(default=0.5, gt=0, lt=1)  # lambda for hard actions
    # two stages
    episodes: int = Field(default=3, ge=0)  # stage-1 episodes (each restarts the student)
    episode_steps: int | None = Field(default=None, ge=1)  # steps per stage-1 episode; None = 1/3 of a run
    stage2: Literal["frozen", "learning"] = "frozen"
    init_from: str | None = None  # a saved selector (selector.pt) to start from
    # actor-critic
    hidden_size: int = Field(default=64, ge=4)
    actor_lr: float = Field(default=1e-3, gt=0)
    critic_lr: float = Field(default=1e-3, gt=0)
    gamma: float = Field(default=0.9, ge=0, le=1)
    target_networks: bool = True
    tau: float = Field(default=0.05, gt=0, le=1)
    replay_size: int = Field(default=256, ge=1)
    replay_batch: int = Field(default=16, ge=1)
    updates_per_phase: int = Field(default=4, ge=1)
    noise_std: float = Field(default=0.3, ge=0)  # Gaussian exploration on soft actions
    noise_decay: float = Field(default=0.97, gt=0, le=1)  # per phase
    actor_saturation_penalty: float = Field(default=0.01, ge=0)  # on the actor's pre-sigmoid scores, squared
    flip_prob: float = Field(default=0.2, ge=0, le=1)  # epsilon flips on hard actions (decays like noise)
    state_losses: bool = True  # append normalised per-kind losses to the state
    state_progress: bool = True  # append training progress to the state
    trace_reward_set: bool = True  # score the reward set every phase for all selectors (traces, plots)
    reward: RewardConfig = Field(default_factory=RewardConfig)

    @field_validator("name")
    @classmethod
    def _known_selector(cls, v: str) -> str:
        _check_names([v], SELECTOR_NAMES, "selector")
        return v

    @field_validator("weights")
    @classmethod
    def _known_weight_kinds(cls, v: dict[str, float]) -> dict[str, float]:
        _check_names(list(v), KNOWLEDGE_KINDS, "knowledge kind")
        if any(w < 0 for w in v.values()):
            raise ValueError("selector.weights must be >= 0")
        return v


class KnowledgeConfig(_Strict):
    """The knowledge pool and the settings of its losses."""

    pool: list[str] = Field(default_factory=lambda: ["finetune", "response", "feature", "relation"], min_length=1)
    temperature: float = Field(default=4.0, gt=0)
    layer_map: Union[Literal["skip", "last"], list[int]] = "skip"  # or explicit teacher layer per student layer
    # feature loss: full = MSE over all tokens (TinyBERT); cls_normalized = PKD's normalised [CLS] (pkd forces it)
    feature_mode: Literal["full", "cls_normalized"] = "full"

    @field_validator("pool")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        _check_names(v, KNOWLEDGE_KINDS, "knowledge kind")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate knowledge kinds in pool {v}")
        return v


class ResourcesConfig(_Strict):
    """What one trial asks of the Ray cluster."""

    workers_per_trial: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0)
    # Who runs the loop in a sweep. auto: a one-worker trial runs it in the Tune trial's own process (Ray Train's
    # controller and worker processes add ~15 s per trial and nothing a single process needs); several workers
    # (DDP) always run as a Ray Train TorchTrainer. ray_train: always a TorchTrainer.
    trainer: Literal["auto", "ray_train"] = "auto"

    def in_trial(self) -> bool:
        """Whether a sweep trial runs the loop itself instead of launching a TorchTrainer."""
        return self.trainer == "auto" and self.workers_per_trial == 1


class _RunSections(_Strict):
    """The sections a run file and a search-space file share."""

    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    selector: SelectorConfig = Field(default_factory=SelectorConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)


class RunConfig(_RunSections):
    """One distillation run of one task: what ``kdray train`` and every sweep trial execute."""

    task: str = "rte"
    output_dir: str = "runs/train"

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        _check_names([v], GLUE_TASKS, "task")
        return v

    @model_validator(mode="after")
    def _selector_fits_pool(self) -> "RunConfig":
        if self.selector.name == "fixed":
            if not self.selector.weights:
                raise ValueError("selector.name=fixed needs selector.weights (kind -> weight)")
            outside = sorted(set(self.selector.weights) - set(self.knowledge.pool))
            if outside:
                raise ValueError(f"selector.weights names kinds {outside} that are not in knowledge.pool")
        return self


# --------------------------------------------------------------------------- search spaces


class Distribution(_Strict):
    """One searched parameter: exactly one of the distribution keys."""

    choice: list[Any] | None = None
    grid: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Distribution":
        given = [k for k in ("choice", "grid", "uniform", "loguniform", "int") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, grid, uniform, loguniform, int")
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "int") and not value[0] < value[1]:
            raise ValueError(f"{kind} needs [low, high] with low < high, got {list(value)}")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "grid", "uniform", "loguniform", "int") if getattr(self, k) is not None)


class SchedulerConfig(_Strict):
    type: Literal["none", "asha"] = "none"
    grace_period: int = Field(default=1, ge=1)  # in evaluations
    reduction_factor: float = Field(default=3.0, gt=1)


class SearchConfig(_Strict):
    """How trials are generated and which metric they are judged by."""

    mode: Literal["grid", "optuna"] = "grid"
    metric: str = "dev_score"
    mode_direction: Literal["max", "min"] = "max"
    num_samples: int = Field(default=1, ge=1)  # optuna: trials; grid: repeats of the whole grid
    seed: int = 0  # sampler seed
    multi_objective: bool = False  # optuna: also minimise train_seconds
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    space: dict[str, Distribution] = Field(default_factory=dict)
    max_failures: int = Field(default=0, ge=0)  # Ray Train worker restarts per trial


class SweepConfig(_RunSections):
    """A search space file: the base run settings, the tasks, and what varies."""

    name: str = Field(default="sweep", pattern=r"^[A-Za-z0-9_.-]+$")
    tasks: list[str] = Field(default_factory=lambda: ["rte"], min_length=1)
    # Per-task settings over the shared ones, e.g. {sst2: {train.max_seq_length: 64, data.max_train_samples: 10000}}:
    # GLUE practice differs per task (length, subsample), and one sweep still holds the whole table.
    task_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: SearchConfig = Field(default_factory=SearchConfig)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        return _check_names(v, GLUE_TASKS, "task")

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
            run = apply_overrides(run, self.task_overrides[task], source=f"task_overrides.{task}")
        return run


# --------------------------------------------------------------------------- loading


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = e["loc"][:-1]
            allowed = _allowed_keys(err.title, parent)
            if allowed:
                msg += f"; allowed keys: {', '.join(allowed)}"
        lines.append(f"{source}: {path or '<top>'}: {msg}")
    return "\n".join(lines)


_MODELS: dict[str, type[BaseModel]] = {"RunConfig": RunConfig, "SweepConfig": SweepConfig}


def _allowed_keys(title: str, parent: tuple[Any, ...]) -> list[str]:
    model: Any = _MODELS.get(title)
    mapping_value = False  # the previous field was dict[str, Model]: this part is a free key
    for part in parent:
        if mapping_value:
            mapping_value = False
            continue
        field = getattr(model, "model_fields", {}).get(str(part))
        if field is None:
            return []
        model = field.annotation
        args = getattr(model, "__args__", ())
        if getattr(model, "__origin__", None) is dict and len(args) == 2:
            model, mapping_value = args[1], True
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(getattr(model, "model_fields", {}))


def validate(model: type[BaseModel], raw: Any, source: str = "<config>") -> Any:
    """Validate ``raw`` into ``model``; raise :class:`ConfigError` naming ``source`` and key paths."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file safely; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raise ConfigError(f"{path}: file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    return raw


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load ``kdray train``'s config file, applying dotted-key overrides first."""
    raw = read_yaml(path)
    if overrides:
        raw = apply_overrides(raw, overrides, source=str(path))
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
        raw = apply_overrides(raw, overrides, source=f"{path}: --set")
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
            run = apply_overrides(sweep.base_run(sweep.tasks[0]), {key: value}, source=f"{path}: search.space")
            validate(RunConfig, run, f"{path}: search.space.{key}={value!r}")
    return sweep


def candidate_values(dist: Distribution) -> list[Any]:
    """Representative values of a distribution, used to validate it against the run schema."""
    if dist.choice is not None:
        return list(dist.choice)
    if dist.grid is not None:
        return list(dist.grid)
    bounds = dist.uniform or dist.loguniform or dist.int
    return list(bounds)  # type: ignore[arg-type]


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str = "<overrides>") -> dict[str, Any]:
    """Return a copy of ``raw`` with ``{"a.b.c": value}`` overrides set; unknown paths are errors."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        model: Any = RunConfig
        node = out
        for i, part in enumerate(parts):
            fields = getattr(model, "model_fields", None)
            if fields is None or part not in fields:
                allowed = ", ".join(fields) if fields else "(a plain value has no sub-keys)"
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"{source}: {dotted}: unknown key '{where}'; allowed keys: {allowed}")
            if i == len(parts) - 1:
                section = fields[part].annotation
                if isinstance(value, dict) and isinstance(section, type) and issubclass(section, BaseModel):
                    # A mapping over a section sets its keys one by one: selector={name: actor_critic,
                    # action: hard} changes those two and keeps the section's other settings.
                    node[part] = apply_overrides_in(section, node.get(part) or {}, value, f"{source}: {dotted}")
                else:
                    node[part] = copy.deepcopy(value)
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{source}: {dotted}: '{'.'.join(parts[: i + 1])}' is not a mapping")
                model = fields[part].annotation
    return out


def flatten_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Mapping values over a section become dotted keys: ``{"selector": {"name": "pkd"}}`` -> ``{"selector.name":
    "pkd"}``, so each searched setting lands in its own trials.parquet column however the space file grouped it.
    Mappings that are values themselves (``selector.weights``) stay whole."""
    out: dict[str, Any] = {}
    for dotted, value in overrides.items():
        model: Any = RunConfig
        for part in dotted.split("."):
            field = getattr(model, "model_fields", {}).get(part)
            model = field.annotation if field is not None else None
        if isinstance(value, dict) and value and isinstance(model, type) and issubclass(model, BaseModel):
            out.update(flatten_overrides({f"{dotted}.{k}": v for k, v in value.items()}))
        else:
            out[dotted] = value
    return out


def apply_overrides_in(model: type[BaseModel], raw: dict[str, Any], overrides: dict[str, Any],
                       source: str) -> dict[str, Any]:
    """:func:`apply_overrides` inside one section (``model``) of a run config; keys name that section's fields."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        fields = model.model_fields
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{key}'; allowed keys: {', '.join(fields)}")
        section = fields[key].annotation
        if isinstance(value, dict) and isinstance(section, type) and issubclass(section, BaseModel):
            out[key] = apply_overrides_in(section, out.get(key) or {}, value, f"{source}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_config_from_dict(raw: dict[str, Any], source: str = "<trial config>") -> RunConfig:
    """Rebuild a RunConfig from its ``model_dump()`` (how trials receive it through Ray)."""
    return validate(RunConfig, raw, source)
