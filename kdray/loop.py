"""The segments of a distillation run: phases of selected knowledge, steps, evaluation and checkpoints.

A run is segments of training (stage-1 episodes for learning selectors, then the final run), each
restarting the student from its initialisation. Every ``selector.phase_steps`` steps the selector picks
the knowledge weights; kinds with weight 0 are not computed. :class:`Loop` drives one
:class:`~kdray.state.TrainingState` over a :class:`~kdray.run_setup.RunSetup`; :func:`train_steps` runs
a given weighting on given batches from the current state, which with ``state.snapshot()`` /
``state.restore()`` forks a run at a phase boundary.

Per phase, for a selector with ``branch_weights`` (the bandit) in a stage-1 episode: the selector decides;
``selector.bandit.branches`` - 1 side weightings (exploration branches and the reference, last) are
trained for the phase's batches from a fork of the state and scored on the reward set
(:func:`kdray.branches.side_branches`); the fork is put back and the loop trains the decided weighting
over the same batches with the same dropout masks, which is the decided branch itself, so training
continues from the decided branch's end state without recomputing it: the policy's own trajectory,
whose states are the ones the selector will decide on in the final run (a reference trajectory would
train the selector on states it never meets). At the phase end each branch's advantage over the
reference (reference loss after - branch loss after) goes to ``observe_branches``. The final run is
unpaired: the selector decides and ``observe`` records.

Every phase end checks the phase's mean per-kind losses and the reward-set loss, and raises
FloatingPointError naming the steps and the kind when one went non-finite, before the selector sees it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as torch_dist

from kdray import checkpoint
from kdray.branches import (
    BranchResult,
    check_finite,
    optimise,
    reward_set_loss,
    side_branches,
    train_steps,
)
from kdray.kind_costs import kind_seconds, relative_costs
from kdray.knowledge import LossNormalizer
from kdray.run_setup import RunSetup
from kdray.selection.bandit import BanditSelector, BanditState
from kdray.selection.base import PhaseOutcome, PhaseState
from kdray.state import EvalWindow, LastEval, Phase, TrainingState
from kdray.state_features import bandit_features
from kdray.tblog import PhaseLog
from kdray.step import StepResult, phase_state
from kdray.training import adamw, evaluate, linear_schedule

__all__ = ["BranchResult", "Loop", "Report", "optimise", "train_steps"]

Report = Callable[[dict[str, Any]], None]


class Loop:
    """Runs the segments of one run over ``setup``, on the training state it owns (``self.state``)."""

    def __init__(self, setup: RunSetup, report: Report | None = None) -> None:
        self.setup, self.report = setup, report
        m, dtype = setup.models, setup.amp_dtype
        optimizer, scheduler = self._optimiser(0)
        self.state = TrainingState(
            student=m.student, knowledge=m.knowledge, selector=setup.selector,
            scaler=torch.amp.GradScaler(setup.device.type, enabled=dtype == torch.float16),
            optimizer=optimizer, scheduler=scheduler, device=setup.device,
            normalizer=LossNormalizer.from_config(setup.config.knowledge))
        self._bar: Any = None
        logdir = setup.config.tensorboard_dir
        self.tensorboard = PhaseLog(logdir) if logdir and setup.rank == 0 else None  # every phase end, every eval

    def _optimiser(self, segment: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        tc, m = self.setup.config.train, self.setup.models
        optimizer = adamw([m.student, m.knowledge], tc.lr, tc.weight_decay)
        return optimizer, linear_schedule(optimizer, self.setup.segments[segment], tc.warmup_ratio)

    # ------------------------------------------------------------------ segments

    def start_segment(self, segment: int) -> None:
        """Restart the student and projections from their initialisation, with a fresh optimiser and phase."""
        st, m, sc = self.state, self.setup.models, self.setup.config.selector
        st.student.load_state_dict(m.init_student)
        st.knowledge.load_state_dict(m.init_knowledge)
        st.selector.start_episode(segment)
        if segment == self.setup.final_segment and st.selector.learns:
            st.selector.training = sc.stage2 == "learning"
        st.optimizer, st.scheduler = self._optimiser(segment)
        st.normalizer = LossNormalizer.from_config(self.setup.config.knowledge)
        st.segment, st.step, st.phase = segment, 0, Phase()
        st.window = EvalWindow(torch.zeros((), device=self.setup.device))

    def measure_kind_costs(self) -> None:
        """Before the first step, when the compute-aware reward is on (``selector.reward.cost > 0``): the
        selector's ``kind_costs`` measured on the run's first batch (:mod:`kdray.kind_costs`); a resume
        restores them with the selector instead."""
        st, setup = self.state, self.setup
        if setup.config.selector.reward.cost <= 0 or not hasattr(st.selector, "kind_costs"):
            return
        start = time.perf_counter()
        rows = setup.order.rows(st.segment, st.step)
        seconds = kind_seconds(st.student, st.knowledge, st.selector.pool, setup.batch(rows), rows, setup.teacher_fn,
                               setup.autocast)
        st.selector.kind_costs = relative_costs(seconds, setup.world)
        st.counters.selector_seconds += time.perf_counter() - start
        if setup.rank == 0:
            shown = ", ".join(f"{k} {v:.2f}" for k, v in st.selector.kind_costs.items())
            print(f"[kdray] kind costs (measured: what each adds to a plain fine-tuning step): {shown}", flush=True)

    def resume(self, path: str) -> None:
        """Continue from a checkpoint: the optimiser is built for its segment, then the whole state is loaded."""
        saved = checkpoint.load(path)
        self.start_segment(int(saved["segment"]))
        self.state.load_state_dict(saved)

    @property
    def final(self) -> bool:
        return self.state.segment == self.setup.final_segment

    def run_segment(self, until: int | None = None) -> None:
        """Train the current segment to its end (or to step ``until``); at a stage-1 episode's end the next
        segment starts and is checkpointed, so a resume there starts it afresh."""
        st, setup = self.state, self.setup
        steps = setup.segments[st.segment]
        stop = steps if until is None else min(until, steps)
        st.student.train()
        n_episodes = setup.final_segment
        desc = "final" if self.final else f"episode {st.segment + 1}/{n_episodes}"
        self._bar = _progress(setup.config.train.progress and setup.rank == 0, steps, st.step, desc)
        while st.step < stop:
            self._train_step(steps)
        if self._bar is not None:
            self._bar.close()
        if st.step == steps and not self.final:
            self.start_segment(st.segment + 1)
            if setup.rank == 0:
                checkpoint.save(st.state_dict(), setup.config.output_dir)

    def _train_step(self, steps: int) -> None:
        st, setup, tc = self.state, self.setup, self.setup.config.train
        t_step = time.perf_counter()
        step = st.step
        rows = setup.order.rows(st.segment, step)
        batch = setup.batch(rows)
        if step % setup.config.selector.phase_steps == 0 or st.phase.weights is None:
            self._decide(batch, rows, steps)
        weights = st.phase.weights
        assert weights is not None
        if not any(weights.get(k, 0.0) > 0 for k in st.selector.pool):
            raise ValueError(f"selector {setup.config.selector.name!r} gave every kind weight 0 at step {step}: {weights}")
        done = step + 1 == steps
        phase_end = (step + 1) % setup.config.selector.phase_steps == 0 or done
        result = optimise(setup, st, weights, batch, rows, step, with_state=phase_end and st.selector.needs_state,
                          with_logits=phase_end and st.selector.needs_logits)
        st.phase.add(result.losses)
        st.window.add(result.loss)
        st.counters.steps += 1
        st.counters.samples += len(rows) * setup.world
        st.counters.step_seconds += time.perf_counter() - t_step
        if self._bar is not None:
            self._bar.update(1)
            if (step + 1) % tc.log_every == 0:
                self._bar.set_postfix(loss=f"{result.loss.item():.4f}")  # the only sync inside the loop
        if phase_end:
            self._end_phase(result, weights, steps, done)
        st.counters.train_seconds += time.perf_counter() - t_step
        st.step += 1
        metrics = self._evaluate(done) if self.final else None
        due = done or (tc.checkpoint_every and st.counters.steps % tc.checkpoint_every == 0)
        episode_end = done and not self.final  # saved by run_segment once the next segment has started
        if setup.rank == 0 and due and not episode_end:
            checkpoint.save(st.state_dict(), setup.config.output_dir)
        if metrics is not None and self.tensorboard is not None:
            self.tensorboard.log_eval(st.counters.steps, metrics)
        if metrics is not None and self.report is not None:
            self.report(metrics)

    # ------------------------------------------------------------------ phases

    @property
    def paired(self) -> bool:
        """Whether this segment's phases run paired branches: stage 1 of a learning selector that proposes them."""
        return not self.final and self.state.selector.training and hasattr(self.state.selector, "branch_weights")

    def _where(self) -> str:
        return "final run" if self.final else f"episode {self.state.segment + 1}"

    def _decide(self, batch: dict[str, torch.Tensor], rows: list[int], steps: int) -> None:
        """Phase start: the selector decides the weights until the next decision (paired: and side branches run)."""
        st, setup = self.state, self.setup
        t0 = time.perf_counter()
        # the previous phase's last step gave the state; a segment's first decision builds its own
        decision_state, st.phase.next_state = st.phase.next_state, None
        if decision_state is None:
            decision_state = phase_state(st.student, setup.teacher_fn, st.selector.needs_state, batch, rows,
                                         *setup.models.layers, st.step, steps, st.phase.losses, setup.autocast,
                                         needs_logits=st.selector.needs_logits)
        if setup.reward_set is not None and math.isnan(st.phase.reward):
            st.phase.reward = self._reward_set_loss()
        if isinstance(st.selector, BanditSelector):
            features = bandit_features(setup, st, st.selector.groups, batch, rows)
            decision_state = BanditState(**vars(decision_state), features=features)
        weights = st.selector.decide(decision_state)
        st.phase.weights, st.phase.sums, st.phase.count = _agree(weights, setup.world), {}, 0
        if self.paired:
            side = st.selector.branch_weights(setup.config.selector.bandit.branches)[1:]  # type: ignore[attr-defined]
            st.phase.branches = side_branches(setup, st, side, steps, self._where())
        st.counters.selector_seconds += time.perf_counter() - t0

    def _end_phase(self, result: StepResult, weights: dict[str, float], steps: int, done: bool) -> None:
        """Phase end: non-finite check, reward-set loss, then the selector observes and the trace grows."""
        st = self.state
        t0 = time.perf_counter()
        mean_losses = st.phase.mean_losses()
        first = st.step + 2 - st.phase.count
        check_finite(mean_losses, self._where(), first, st.step + 1)
        after = self._reward_set_loss()
        if self._scores_reward_set():
            check_finite({"reward-set": after}, self._where(), first, st.step + 1)
        # the state at the next decision: this phase's last batch, from the step's own forward
        nxt = PhaseState(teacher_cls=result.teacher_cls, student_cls=result.student_cls, losses=mean_losses,
                         progress=(st.step + 1) / steps, step=st.step + 1, student_logits=result.student_logits,
                         teacher_logits=result.teacher_logits)
        outcome = PhaseOutcome(st.phase.reward, after, mean_losses, nxt, done, steps=st.phase.count)
        if st.phase.branches:
            # advantage over the reference (the last side branch): reference loss after - branch loss after
            ref_weights, ref_after = st.phase.branches[-1]
            paired = [(weights, ref_after - after)] + [(w, ref_after - a) for w, a in st.phase.branches]
            record = st.selector.observe_branches(nxt, paired, reference=ref_weights,  # type: ignore[attr-defined]
                                                  outcome=outcome)
        else:
            record = st.selector.observe(outcome)
        for kind in st.selector.pool:
            st.traces.append({
                "step": st.counters.steps, "phase": record.phase, "episode": -1 if self.final else st.segment,
                "knowledge": kind, "weight": float(weights.get(kind, 0.0)), "reward": float(record.reward),
                "q_value": float(record.q_value), "reward_set_loss": float(record.reward_set_loss),
            })
        if self.tensorboard is not None:
            self.tensorboard.log_phase(st.counters.steps, weights, record.reward, record.q_value, record.reward_set_loss,
                                       mean_losses, st.counters.steps / max(st.counters.step_seconds, 1e-9))
        st.phase = Phase(reward=after, losses=mean_losses, next_state=None if done else replace(nxt),
                         reward_delta=after - st.phase.reward)
        st.counters.selector_seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Flush what the run logs (TensorBoard events)."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _scores_reward_set(self) -> bool:
        """Whether this phase scores the reward set: traces ask for it (``selector.trace_reward_set``), the
        selector learns from it now, or its decisions read it; a frozen final run otherwise skips the work."""
        selector = self.state.selector
        return self.setup.reward_set is not None and (
            self.setup.config.selector.trace_reward_set or selector.training or selector.reads_reward_set)

    def _reward_set_loss(self) -> float:
        return reward_set_loss(self.setup, self.state) if self._scores_reward_set() else math.nan

    def _evaluate(self, done: bool) -> dict[str, Any] | None:
        """Dev evaluation of the final run when due (its end, ``eval_every`` steps, or each epoch); the metrics."""
        st, setup, tc = self.state, self.setup, self.setup.config.train
        step, per_epoch = st.step, setup.order.per_epoch
        due = done or (tc.eval_every and step % tc.eval_every == 0) or (tc.eval_every is None and step % per_epoch == 0)
        if not due:
            return None
        ev = evaluate(setup.config.task, st.student, setup.data.dev, setup.collate, tc.eval_batch_size, setup.device,
                      setup.rank, setup.world)
        train_loss = st.window.take()
        if setup.world > 1:
            t = torch.tensor([train_loss], device=setup.device)
            torch_dist.all_reduce(t)
            train_loss = float(t) / setup.world
        holdout = self._holdout_score() if done else None
        st.last_eval = LastEval(step, ev.score, ev.metrics, holdout)
        return {"step": step, "epoch": step / per_epoch, "dev_score": ev.score, **ev.metrics, "train_loss": train_loss,
                # in every report, as Tune checks each result for the search's metrics (multi-objective Optuna
                # also minimises train_seconds): the holdout is scored at the end only, training time so far
                "holdout_score": math.nan if holdout is None else holdout, "train_seconds": st.counters.train_seconds}

    def _holdout_score(self) -> float | None:
        """The task's main score on the reward-set holdout (train rows the student never trains on), once, at the
        final run's end: an objective a search can select on without selecting on the dev set. The same
        :func:`evaluate` as dev, in eval mode (no dropout), so it draws no random numbers; None without a holdout."""
        st, setup = self.state, self.setup
        holdout = setup.data.holdout
        if holdout is None or len(holdout) == 0:
            return None
        ev = evaluate(setup.config.task, st.student, {"holdout": holdout}, setup.collate,
                      setup.config.train.eval_batch_size, setup.device, setup.rank, setup.world)
        return float(ev.score)


def _agree(weights: dict[str, float], world: int) -> dict[str, float]:
    """All ranks use rank 0's decision (selectors see rank-local batches)."""
    if world == 1:
        return dict(weights)
    box = [weights]
    torch_dist.broadcast_object_list(box, src=0)
    return dict(box[0])


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
