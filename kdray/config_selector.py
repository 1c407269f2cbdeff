"""The selector's configuration sections: which selector decides, and how each one learns or schedules.

Split from :mod:`kdray.config` (which re-exports every name here) so each module stays one screenful of
fields; the loading, validation and error messages are config's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kdray import registry
from kdray.config_paths import StrictModel, check_names

# state feature groups the bandit selector can use (kdray.selection.bandit builds them)
FeatureGroup = Literal["progress", "lr", "losses", "grad_norms", "cosines", "holdout", "prev_action"]


class BanditConfig(StrictModel):
    """Options of the bandit selector (to hang under ``selector.bandit``)."""

    # state feature groups; [] gives a context-free bandit (one best weighting for the whole run)
    # Default: the features normalised per segment. Raw loss levels and holdout CE reach values in the
    # final run that 1/3-length stage-1 episodes never saw; on the planted env adding them raised the
    # regret from 0.74e-3 to 2.2e-3 (tuning seeds 100-119, python -m kdray.selection.synthetic). On real MRPC and
    # STS-B the full set predicted the paired advantage on unseen phases no better (results/bandit_full_state).
    features: list[FeatureGroup] = Field(default_factory=lambda: ["progress", "lr"])
    # ridge on every coefficient (standardised units); 10 beat 1 and 3 on the planted env, also with its
    # optimum shifted off the centre by +-0.25 (tuning seeds 200-239)
    prior_precision: float = Field(default=10.0, gt=0)
    explore_scale: float = Field(default=1.0, ge=0)  # widens/narrows Thompson draws; 0 = greedy
    explore: Literal["thompson", "variance"] = "thompson"  # stage-1 decided branch: Thompson, or most uncertain
    explore_branches: Literal["thompson", "variance"] = "variance"  # the k-2 extra branches
    levels: int = Field(default=5, ge=2, le=11)  # soft actions: grid points per kind in [0, 1]
    pairwise: bool = False  # model interactions between kinds (u_k * u_l); 36 transitions cannot carry them
    # Prior mean -concavity on each u_k**2 ("too much of a kind hurts"): the untrained choice is every weight
    # 0.5 (equal shares, the ratios of `all`), and weakly identified kinds stay inside [0, 1], not at a corner.
    concavity: float = Field(default=0.25, ge=0)
    warmup: int = Field(default=3, ge=0)  # observed phases before memory statistics standardise state and reward
    init_reward_scale: float = Field(default=0.01, gt=0)  # reward unit during warm-up (issue #15: effects ~0.01)
    reference: Literal["all", "mean"] = "all"  # paired reference: every kind at 1, or the posterior-mean choice
    memory: int = Field(default=1024, ge=1)  # transitions kept (oldest dropped)
    # stage-1 paired branches per phase: the decided weighting, branches - 2 exploration branches and the
    # reference, each trained for the phase from one fork of the training state (same batches and dropout);
    # stage 1 costs about `branches` times the unpaired compute (counted in train_seconds, branch_steps)
    branches: int = Field(default=3, ge=2)


class RewardConfig(StrictModel):
    """Reward shaping for the actor-critic selector (DESIGN.md section 1)."""

    reward_set: Literal["train_holdout", "dev"] = "train_holdout"
    # Fixed subset of the reward set scored at every phase end. 96 is the largest set whose forward fits 2% of a
    # 50-step phase at batch 32 (a forward costs about a third of a training step per row); more rows give a less
    # noisy reward at a proportional cost (results/reward_noise: kdray reward-noise).
    eval_examples: int = Field(default=96, ge=1)
    # what the reward set is scored with: ce = the task loss (cross-entropy; MSE on STS-B); brier = the Brier
    # score on classification tasks, a bounded proper score that does not punish late overconfidence the way
    # cross-entropy does (issue 15); regression tasks score their squared error with either; pearson = 1 - Pearson's r
    # over the reward set, regression tasks only (STS-B's metric: blind to the head's offset and scale)
    score: Literal["ce", "brier", "pearson"] = "ce"
    exploration: float = Field(default=0.0, ge=0)  # beta: weight of the exploration bonus
    cost: float = Field(default=0.0, ge=0)  # penalty per unit of selected relative compute
    normalize: bool = True  # running mean/std normalisation of the reward
    # phases whose loss drop the normaliser has seen before it normalises, and before the critic learns
    # (its std needs two values; the statistics used are those from before each phase's own drop)
    normalize_warmup: int = Field(default=3, ge=2)
    # spread: the exploration term is standardised by its own running statistics and scaled to the loss drop's
    # spread, so `exploration` (beta) is its share of the reward's spread; raw: the paper's -cos / -repeats as is
    exploration_scale: Literal["spread", "raw"] = "spread"
    clip: float | None = Field(default=5.0, gt=0)
    scale: float = Field(default=1.0, gt=0)  # multiplies the raw loss drop before shaping


class KindSchedule(StrictModel):
    """One kind's weight over training progress p in [0, 1] (``selector.schedule.<kind>``).

    Sigmoid form (default): ``start`` at p=0, ``end`` at p=1, switching around ``mid`` with ``sharpness``
    (the logistic curve rescaled to hit both ends exactly; large sharpness is a two-piece step at ``mid``).
    Piecewise form: ``knots`` [[p, weight], ...] with increasing p, linear between knots and flat outside;
    it replaces start/end/mid/sharpness, which must then keep their defaults. The default is weight 1 always.
    """

    start: float = Field(default=1.0, ge=0)
    end: float = Field(default=1.0, ge=0)
    mid: float = Field(default=0.5, ge=0, le=1)
    sharpness: float = Field(default=10.0, gt=0)
    knots: list[tuple[float, float]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_form(self) -> "KindSchedule":
        if not self.knots:
            return self
        defaults = {k: KindSchedule.model_fields[k].default for k in ("start", "end", "mid", "sharpness")}
        changed = sorted(k for k, v in defaults.items() if getattr(self, k) != v)
        if changed:
            raise ValueError(f"give knots or start/end/mid/sharpness, not both (also set: {', '.join(changed)})")
        ps = [p for p, _ in self.knots]
        if any(not 0 <= p <= 1 for p in ps) or any(b <= a for a, b in zip(ps, ps[1:])):
            raise ValueError(f"knots need progress values in [0, 1], strictly increasing; got {ps}")
        if any(w < 0 for _, w in self.knots):
            raise ValueError("knot weights must be >= 0")
        return self


class ScheduleConfig(StrictModel):
    """``selector.schedule``: one :class:`KindSchedule` per knowledge kind (a field each, so Optuna can
    search ``selector.schedule.response.end`` as a dotted key); kinds not written keep weight 1."""

    finetune: KindSchedule = Field(default_factory=KindSchedule)
    response: KindSchedule = Field(default_factory=KindSchedule)
    feature: KindSchedule = Field(default_factory=KindSchedule)
    relation: KindSchedule = Field(default_factory=KindSchedule)
    attention: KindSchedule = Field(default_factory=KindSchedule)
    embedding: KindSchedule = Field(default_factory=KindSchedule)


class DynamicKDConfig(StrictModel):
    """``selector.dynamic_kd``: the Dynamic-KD heuristic (Li et al. 2021), see kdray.selection.dynamic_kd."""

    # entropy: the student's normalised prediction entropy; disagreement: share of rows where the student's
    # and the teacher's predicted classes differ
    signal: Literal["entropy", "disagreement"] = "entropy"
    reverse: bool = False  # Li et al.'s "uncertainty-r": an uncertain student leans on the predictions instead
    fallback: float = Field(default=0.5, ge=0, le=1)  # the signal used when the loop gives no logits (regression too)


class SelectorConfig(StrictModel):
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
    # a saved selector (selector.pt) to start from: the actor-critic takes its networks, other selectors its whole
    # state; the bandit learns its stage-1 memory, and also takes a sweep folder (or its results/ copy), whose
    # saved learners of the run's task from other seeds it learns first (one run's 24-72 transitions are too
    # few to predict from; results/bandit_prior)
    init_from: str | None = None
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
    # score the reward set every phase for all selectors (traces, plots); false: only where a selector learns from
    # it or its decisions read it (a learner's frozen final run otherwise skips it)
    trace_reward_set: bool = True
    reward: RewardConfig = Field(default_factory=RewardConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)  # for name=schedule
    dynamic_kd: DynamicKDConfig = Field(default_factory=DynamicKDConfig)  # for name=dynamic_kd
    # PKD's beta on the patient loss (Sun et al. 2019 search {10, 100, 500, 1000}; the reference code's default)
    pkd_beta: float = Field(default=100.0, gt=0)
    bandit: BanditConfig = Field(default_factory=BanditConfig)  # for name=bandit

    @field_validator("name")
    @classmethod
    def _known_selector(cls, v: str) -> str:
        check_names([v], registry.SELECTOR_NAMES, "selector")
        return v

    @field_validator("weights")
    @classmethod
    def _known_weight_kinds(cls, v: dict[str, float]) -> dict[str, float]:
        check_names(list(v), registry.KNOWLEDGE_KINDS, "knowledge kind")
        if any(w < 0 for w in v.values()):
            raise ValueError("selector.weights must be >= 0")
        return v
