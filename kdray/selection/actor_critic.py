"""The actor-critic knowledge selection module (KSM) of Wang et al. 2022, DDPG-style.

One decision per phase: the state (teacher and student [CLS] summaries, optional
per-kind losses and progress) goes through the actor to one weight per kind;
``observe`` turns the reward-set loss drop into a shaped reward, stores the
transition and runs ``updates_per_phase`` critic (TD) and actor (deterministic
policy gradient) updates. Gaps the paper leaves open, and the choice made:

- state: batch mean of the [CLS] vectors, layer-normalised, each through its own
  2-layer MLP; losses enter as log1p(loss) with a present/absent mask;
- the encoders are trained by the critic's TD loss only (the actor reads a
  detached encoding), as in SAC-AE-style shared encoders;
- soft exploration: Gaussian noise added to the post-sigmoid weights and clipped
  to [0, 1] (so a kind can be switched off and not computed); hard exploration:
  each bit flipped with ``flip_prob``; both scaled by ``noise_decay ** phases``;
- hard mode: the critic learns Q on the executed {0,1} action and the TD target
  uses the thresholded target-actor action; the actor is trained through the
  critic with its soft (pre-threshold) output;
- the replay stores the raw reward components and the critic learns from the reward
  composed with the statistics at sampling time (``kdray.selection.reward``);
  ``PhaseRecord.reward`` holds the reward composed with the statistics from before the
  phase (NaN during the ``normalize_warmup``, when the agent stores transitions but does
  not learn yet); the raw loss drop is kept in ``PhaseRecord.extra["reward_raw"]``;
- a partial last phase (``PhaseOutcome.steps`` < ``phase_steps``) has its loss drop
  scaled to a full phase's.

Checkpoints: :meth:`state_dict` holds only tensors, numbers, strings and
containers of them, so ``torch.load(path, weights_only=True)`` reads what
:meth:`save` (or ``torch.save(selector.state_dict(), path)``) wrote, and
:meth:`load_state_dict` resumes bit-exactly (networks, targets, optimisers,
replay, normaliser, exploration scale, generator). ``selector.init_from`` loads
only the networks of a selector trained elsewhere (:meth:`init_from`, applied by
``build_selector`` once, never by the constructor).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kdray.config import SelectorConfig
from kdray.io import atomic_torch_save
from kdray.selection.base import PhaseOutcome, PhaseRecord, PhaseState, Selector, read_state, register_selector
from kdray.selection.networks import Actor, Critic, StateEncoder, polyak
from kdray.selection.replay import ReplayBuffer
from kdray.selection.reward import (
    RunningNorm,
    compose,
    cost_penalty,
    exploration_bonus_hard,
    exploration_bonus_soft,
    next_repeat_count,
    shape_reward,
)

FORMAT = "kdray.actor_critic/1"
_NETWORKS = ("encoder", "actor", "critic", "target_encoder", "target_actor", "target_critic")
_GRAD_CLIP = 10.0  # keeps a few huge early TD errors from wrecking the small networks


@register_selector("actor_critic")
class ActorCriticSelector(Selector):
    """DDPG knowledge selector: soft weights in [0, 1] or hard {0, 1} choices per kind.

    Attributes:
        kind_costs: relative compute of each kind for the cost penalty (1.0 each until the loop measures
            them before its first step, which it does when ``reward.cost > 0``: :mod:`kdray.kind_costs`).
    """

    needs_state = True
    learns = True

    def __init__(self, pool: list[str], config: SelectorConfig, seed: int = 0) -> None:
        super().__init__(pool, config, seed)
        self.hard = config.action == "hard"
        self.kind_costs: dict[str, float] = {k: 1.0 for k in self.pool}
        self.norm = RunningNorm()  # of the phases' loss drops
        self.explore_norm = RunningNorm()  # of the exploration bonuses (exploration_scale: spread)
        self.explore_scale = 1.0  # multiplies noise_std / flip_prob; decays per learning phase
        self.widths: tuple[int, int] | None = None  # teacher, student [CLS] widths once built
        self._prev_action: list[float] | None = None
        self._repeats = 0
        self._pending: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ building

    @property
    def extra_width(self) -> int:
        """Width of the appended features: loss + mask per kind, then progress."""
        return 2 * len(self.pool) * int(self.config.state_losses) + int(self.config.state_progress)

    def _build(self, teacher_width: int, student_width: int) -> None:
        """Create networks, targets, optimisers and replay for these [CLS] widths (seeded from the generator)."""
        cfg, k, h = self.config, len(self.pool), self.config.hidden_size
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = StateEncoder(teacher_width, student_width, self.extra_width, h)
            self.actor = Actor(self.encoder.out_width, k, h)
            self.critic = Critic(self.encoder.out_width, k, h)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_actor = copy.deepcopy(self.actor)
        self.target_critic = copy.deepcopy(self.critic)
        for net in (self.target_encoder, self.target_actor, self.target_critic):
            net.requires_grad_(False)
        self.critic_opt = torch.optim.Adam(
            list(self.encoder.parameters()) + list(self.critic.parameters()), lr=cfg.critic_lr
        )
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.replay = ReplayBuffer(cfg.replay_size, teacher_width, student_width, self.extra_width, k)
        self.widths = (teacher_width, student_width)

    def _check_widths(self, teacher_width: int, student_width: int, source: str) -> None:
        if self.widths is not None and self.widths != (teacher_width, student_width):
            raise ValueError(
                f"{source}: the selector's networks take teacher/student [CLS] widths {self.widths}, "
                f"but this run gives {(teacher_width, student_width)}; reuse a selector only between runs "
                "with the same teacher and student hidden sizes"
            )

    # ------------------------------------------------------------------ state and actions

    def _inputs(self, state: PhaseState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch-mean [CLS] vectors and the extra features; builds the networks on first use."""
        if state.teacher_cls is None or state.student_cls is None:
            if self.widths is None:
                raise ValueError("actor_critic needs teacher_cls and student_cls in its first PhaseState")
            teacher = torch.zeros(self.widths[0]) if state.teacher_cls is None else _summary(state.teacher_cls)
            student = torch.zeros(self.widths[1]) if state.student_cls is None else _summary(state.student_cls)
        else:
            teacher, student = _summary(state.teacher_cls), _summary(state.student_cls)
        source = f"selector.init_from={self.config.init_from}" if self.config.init_from else "actor_critic"
        self._check_widths(teacher.numel(), student.numel(), source)
        if self.widths is None:
            self._build(teacher.numel(), student.numel())
        features: list[float] = []
        if self.config.state_losses:
            values = [state.losses.get(k) for k in self.pool]
            present = [v is not None and math.isfinite(v) for v in values]
            features += [math.log1p(max(float(v), 0.0)) if ok else 0.0 for v, ok in zip(values, present)]
            features += [float(ok) for ok in present]
        if self.config.state_progress:
            features.append(float(min(max(state.progress, 0.0), 1.0)))
        return teacher, student, torch.tensor(features, dtype=torch.float32)

    def _harden(self, soft: torch.Tensor) -> torch.Tensor:
        """Threshold [N, K] soft actions; rows with nothing selected fall back to finetune (else the top kind)."""
        hard = (soft > self.config.threshold).float()
        return self._fallback(hard, soft)

    def _fallback(self, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        empty = hard.sum(dim=-1) == 0
        if empty.any():
            if "finetune" in self.pool:
                idx = torch.full((int(empty.sum()),), self.pool.index("finetune"), dtype=torch.long)
            else:
                idx = soft[empty].argmax(dim=-1)
            hard[empty] = F.one_hot(idx, len(self.pool)).float()
        return hard

    def decide(self, state: PhaseState) -> dict[str, float]:
        """Actor's weights for the coming phase, with exploration while training."""
        teacher, student, extra = self._inputs(state)
        with torch.no_grad():
            z = self.encoder(teacher[None], student[None], extra[None])
            soft = self.actor(z)
            if self.hard:
                action = (soft > self.config.threshold).float()
                if self.training:
                    flip = self.config.flip_prob * self.explore_scale
                    flips = torch.rand(soft.shape, generator=self.generator) < flip
                    action = torch.where(flips, 1.0 - action, action)
                action = self._fallback(action, soft)
            else:
                action = soft
                if self.training:
                    noise = torch.randn(soft.shape, generator=self.generator) * self.config.noise_std
                    action = (soft + noise * self.explore_scale).clamp(0.0, 1.0)
                # an all-zero soft action (saturated sigmoid or clamped noise) would train on nothing
                # and the loop rejects it: fall back as hard actions do
                action = self._fallback(action.clone(), soft)
            q_value = self.critic(z, action)
        action = action[0]
        self._pending = {"teacher": teacher, "student": student, "extra": extra, "action": action,
                         "q_value": q_value[0]}
        weights = {k: float(action[i]) for i, k in enumerate(self.pool)}
        self.last_weights = weights
        return weights

    # ------------------------------------------------------------------ learning

    def observe(self, outcome: PhaseOutcome) -> PhaseRecord:
        """Shape the reward, store the transition and learn (when training); return the trace record."""
        if self._pending is None:
            raise RuntimeError("actor_critic: observe() called without a decide() for this phase")
        pending, self._pending = self._pending, None
        action = pending["action"].tolist()
        bonus = self._exploration(action)
        cost = cost_penalty(self.last_weights, self.kind_costs, self.config.reward.cost)
        before, after = outcome.reward_set_loss_before, outcome.reward_set_loss_after
        extra: dict[str, float] = {"exploration_scale": self.explore_scale}
        reward = math.nan
        shaped = None
        if self.training or not (math.isnan(before) or math.isnan(after)):
            shaped = shape_reward(self.config.reward, before, after, bonus, cost, self.norm, update_norm=self.training,
                                  explore_norm=self.explore_norm, steps=outcome.steps,
                                  phase_steps=self.config.phase_steps)
            reward = shaped.shaped
            extra.update(shaped.as_extra())
        if self.training and shaped is not None:
            nxt_teacher, nxt_student, nxt_extra = self._inputs(outcome.next_state)
            self.replay.add(
                teacher=pending["teacher"], student=pending["student"], extra=pending["extra"],
                action=pending["action"], drop=shaped.raw, exploration=bonus, cost=cost,
                next_teacher=nxt_teacher, next_student=nxt_student, next_extra=nxt_extra, done=float(outcome.done),
            )
            if self._warmed_up():
                losses = [self._update() for _ in range(self.config.updates_per_phase)]
                extra["critic_loss"] = sum(c for c, _ in losses) / len(losses)
                extra["actor_loss"] = sum(a for _, a in losses) / len(losses)
            self.explore_scale *= self.config.noise_decay
        record = PhaseRecord(
            step=outcome.next_state.step,
            phase=self.phase,
            weights=dict(self.last_weights),
            reward=reward,
            q_value=float(pending["q_value"]),
            reward_set_loss=after,
            extra=extra,
        )
        self.phase += 1
        return record

    def _exploration(self, action: list[float]) -> float:
        """This phase's unweighted exploration bonus (NaN for a soft action with no previous one to compare)."""
        previous, self._prev_action = self._prev_action, action
        if self.hard:
            self._repeats = next_repeat_count(action, previous, self._repeats)
            return exploration_bonus_hard(self._repeats)
        return math.nan if previous is None else exploration_bonus_soft(action, previous)

    def _warmed_up(self) -> bool:
        """Learning starts once the reward normaliser has its warm-up of loss drops (at once without one)."""
        reward = self.config.reward
        return not reward.normalize or self.norm.count >= reward.normalize_warmup

    def _update(self) -> tuple[float, float]:
        """One TD step for critic+encoder, one deterministic policy-gradient step for the actor."""
        cfg = self.config
        batch = self.replay.sample(cfg.replay_batch, self.generator)
        targets = (
            (self.target_encoder, self.target_actor, self.target_critic)
            if cfg.target_networks
            else (self.encoder, self.actor, self.critic)
        )
        with torch.no_grad():
            z_next = targets[0](batch.next_teacher, batch.next_student, batch.next_extra)
            a_next = targets[1](z_next)
            if self.hard:
                a_next = self._harden(a_next)
            reward = compose(cfg.reward, batch.drop, batch.exploration, batch.cost, self.norm, self.explore_norm)
            target = reward + cfg.gamma * (1.0 - batch.done) * targets[2](z_next, a_next)
        z = self.encoder(batch.teacher, batch.student, batch.extra)
        critic_loss = F.mse_loss(self.critic(z, batch.action), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(list(self.encoder.parameters()) + list(self.critic.parameters()), _GRAD_CLIP)
        self.critic_opt.step()

        # The actor maximises Q(s, mu(s)) with the soft action, also in hard mode.
        with torch.no_grad():
            z = self.encoder(batch.teacher, batch.student, batch.extra)
        self.critic.requires_grad_(False)
        logits = self.actor.logits(z)
        # A saturated sigmoid has no gradient left: without the penalty an early, noisy critic can push a weight
        # to 0 or 1 where the policy gradient can no longer move it back (DDPG's pre-activation penalty).
        actor_loss = -self.critic(z, torch.sigmoid(logits)).mean() + cfg.actor_saturation_penalty * logits.pow(2).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), _GRAD_CLIP)
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        if cfg.target_networks:
            polyak(self.target_encoder, self.encoder, cfg.tau)
            polyak(self.target_actor, self.actor, cfg.tau)
            polyak(self.target_critic, self.critic, cfg.tau)
        return critic_loss.item(), actor_loss.item()

    def start_episode(self, episode: int) -> None:
        """Learning carries over; only per-episode bookkeeping (previous action, repeats) restarts."""
        self._prev_action = None
        self._repeats = 0
        self._pending = None

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; only tensors, numbers, strings, None and containers."""
        state = super().state_dict()
        state.update(
            format=FORMAT,
            pool=list(self.pool),
            action=self.config.action,
            extra_width=self.extra_width,
            widths=list(self.widths) if self.widths is not None else None,
            kind_costs=dict(self.kind_costs),
            norm=self.norm.state_dict(),
            explore_norm=self.explore_norm.state_dict(),
            explore_scale=self.explore_scale,
            prev_action=self._prev_action,
            repeats=self._repeats,
            pending=dict(self._pending) if self._pending is not None else None,
        )
        if self.widths is not None:
            state["networks"] = {name: getattr(self, name).state_dict() for name in _NETWORKS}
            state["critic_opt"] = self.critic_opt.state_dict()
            state["actor_opt"] = self.actor_opt.state_dict()
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (same pool, action mode and state options)."""
        self._check_compatible(state, "checkpoint", check_action=True)
        if "explore_norm" not in state:
            raise ValueError("checkpoint: saved by an earlier kdray, whose replay held normalised rewards; restart "
                             "the run (selector.init_from still reuses its networks)")
        if state["widths"] is not None:
            self._load_networks(state)
            self.critic_opt.load_state_dict(state["critic_opt"])
            self.actor_opt.load_state_dict(state["actor_opt"])
            self.replay.load_state_dict(state["replay"])
        super().load_state_dict(state)
        self.kind_costs = {k: float(v) for k, v in state["kind_costs"].items()}
        self.norm.load_state_dict(state["norm"])
        self.explore_norm.load_state_dict(state["explore_norm"])
        self.explore_scale = float(state["explore_scale"])
        self._prev_action = None if state["prev_action"] is None else [float(a) for a in state["prev_action"]]
        self._repeats = int(state["repeats"])
        self._pending = None if state["pending"] is None else dict(state["pending"])

    def init_from(self, path: str | Path, task: str | None = None) -> None:
        """``selector.init_from``: the networks of a selector trained elsewhere, not its learning state."""
        self.load_networks(path)

    def load_networks(self, source: str | Path | dict[str, Any]) -> None:
        """Start from the networks of a selector trained elsewhere (``selector.init_from``).

        Only the networks (and their targets) are taken; optimisers, replay, reward
        normaliser and exploration restart, since the new task's rewards differ.
        The pool and state options must match; [CLS] widths are checked here and
        again against the first state of this run.
        """
        where = f"selector.init_from={source}" if not isinstance(source, dict) else "selector state"
        state = read_state(source, where) if not isinstance(source, dict) else source
        self._check_compatible(state, where, check_action=False)
        if state["widths"] is None:
            raise ValueError(f"{where}: that selector never saw a state, so it has no trained networks")
        self._load_networks(state)

    def _load_networks(self, state: dict[str, Any]) -> None:
        widths = (int(state["widths"][0]), int(state["widths"][1]))
        if self.widths is None:
            self._build(*widths)
        self._check_widths(*widths, source="checkpoint")
        for name in _NETWORKS:
            getattr(self, name).load_state_dict(state["networks"][name])

    def _check_compatible(self, state: dict[str, Any], where: str, check_action: bool) -> None:
        if state.get("format") != FORMAT:
            raise ValueError(f"{where}: not an actor_critic selector state (format {state.get('format')!r})")
        if list(state["pool"]) != self.pool:
            raise ValueError(f"{where}: trained on knowledge pool {state['pool']}, this run's pool is {self.pool}")
        if int(state["extra_width"]) != self.extra_width:
            raise ValueError(
                f"{where}: state features differ (width {state['extra_width']} vs {self.extra_width}); "
                "use the same selector.state_losses and selector.state_progress"
            )
        if check_action and state["action"] != self.config.action:
            raise ValueError(f"{where}: saved with action={state['action']}, this run uses {self.config.action}")

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` atomically and durably; read it back with :meth:`load`."""
        atomic_torch_save(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Resume from a file written by :meth:`save` (``weights_only=True``: no pickled code runs)."""
        self.load_state_dict(read_state(path, str(path)))


def _summary(cls: torch.Tensor) -> torch.Tensor:
    """Batch mean of [B, H] (or an already-pooled [H]) [CLS] vectors, as float32 on the CPU."""
    cls = cls.detach().float().cpu()
    return cls.mean(dim=0) if cls.dim() == 2 else cls.reshape(-1)
