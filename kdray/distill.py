"""The one distillation loop: ``train(config)`` runs the same in ``kdray train`` and in a Ray Train worker.

Reads top to bottom: data, models, knowledge pool, selector, optimiser, then the
segments of training (stage-1 episodes for learning selectors, then the final
run), evaluation, checkpoints and the run record. Every ``selector.phase_steps``
steps the selector picks the knowledge weights; kinds with weight 0 are not
computed, and the models are asked only for the outputs the selected kinds need.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from kdray import checkpoint as ckpt
from kdray.config import RunConfig
from kdray.glue import compute_metrics, get_task, make_collator, prepare_data, primary_score
from kdray.knowledge import KnowledgeContext, build_knowledge, needs_of
from kdray.loop_data import RewardSet, collate_rows, dist_info, epoch_batches, predict, to_device
from kdray.models import build_student, count_parameters, layer_map, load_teacher, load_tokenizer
from kdray.paths import cache_root
from kdray.records import RunResult
from kdray.selection.base import PhaseOutcome, PhaseState, build_selector
from kdray.step import distill_step, phase_state, teacher_source
from kdray.teacher_outputs import TeacherOutputCache, build_teacher_cache, cache_key


def train(
    config: RunConfig,
    *,
    teacher_path: str | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    resume_from: str | None = None,
) -> RunResult:
    """Distil one student as ``config`` says; return (and write to ``output_dir``) its run record."""
    tc, sc = config.train, config.selector
    rank, world = dist_info()
    device = _device(config)
    _seed_everything(tc.seed)
    out_dir = Path(config.output_dir)

    # ---- data
    spec = get_task(config.task)
    teacher_score = math.nan
    if teacher_path is None:
        from kdray.teacher import get_teacher

        found = get_teacher(config.task, config, cache_root())
        teacher_path, teacher_score = str(found.path), float(found.score)
    tokenizer = load_tokenizer(teacher_path)
    data = prepare_data(config.task, tokenizer, config.data, tc.max_seq_length, tc.seed)
    collate = make_collator(tokenizer)
    lengths = [int(x) for x in data.train["length"]]
    batches_per_epoch = len(epoch_batches(lengths, tc.batch_size, tc.seed, 0, tc.length_bucketing, rank, world))
    if batches_per_epoch == 0:
        raise ValueError(f"{config.task}: {len(lengths)} training rows give no batch of {tc.batch_size} on {world} ranks")
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * batches_per_epoch))

    # ---- selector first: its kinds decide whether the models need (slower) eager attention
    selector = build_selector(sc, config.knowledge.pool, tc.seed)
    if sc.init_from:
        _init_selector(selector, sc.init_from)

    # ---- models
    teacher = load_teacher(teacher_path, spec, attentions="attention" in selector.pool).to(device).eval()
    teacher.requires_grad_(False)
    if math.isnan(teacher_score):
        teacher_score = _teacher_score(teacher_path, teacher, data, spec, collate, tc.eval_batch_size, device, rank, world)
    torch.manual_seed(tc.seed)
    student = build_student(teacher, config.student, spec).to(device)
    n_student, n_teacher = student.config.num_hidden_layers, teacher.config.num_hidden_layers

    # ---- knowledge pool (the selector may define its own kind set, e.g. pkd)
    pairs = layer_map(n_student, n_teacher, config.knowledge.layer_map)
    kctx = KnowledgeContext(
        layer_map=tuple((int(s), int(t)) for s, t in pairs),
        student_width=student.config.hidden_size,
        teacher_width=teacher.config.hidden_size,
        student_heads=student.config.num_attention_heads,
        teacher_heads=teacher.config.num_attention_heads,
        temperature=config.knowledge.temperature,
        is_regression=spec.is_regression,
        feature_mode=getattr(selector, "feature_mode", None) or config.knowledge.feature_mode,
    )
    knowledge = build_knowledge(selector.pool, kctx).to(device)
    init_student = {k: v.detach().clone() for k, v in student.state_dict().items()}
    init_knowledge = {k: v.detach().clone() for k, v in knowledge.state_dict().items()}
    model: nn.Module = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)

    # ---- teacher-output cache (attention and uncached layers fall back to the live teacher)
    cache: TeacherOutputCache | None = None
    pool_needs = needs_of(knowledge, {k: 1.0 for k in selector.pool})
    if tc.teacher_cache and pool_needs.teacher:
        layers = set(pool_needs.teacher_hidden) | {n_teacher}
        key = cache_key(
            {"teacher": _fingerprint(teacher_path), "task": config.task, "max_len": tc.max_seq_length,
             "layers": sorted(layers), "rows": len(data.train), "data": getattr(data.train, "_fingerprint", None)}
        )
        folder = cache_root() / "teacher_outputs" / f"{config.task}-{key}"
        if rank == 0:
            build_teacher_cache(teacher, data.train, collate, layers, folder, tc.eval_batch_size, device)
        if world > 1:
            torch_dist.barrier()
        cache = TeacherOutputCache(folder)
        if cache.keep_on(device) and rank == 0:
            print(f"[kdray] teacher-output cache on {device} ({cache.nbytes / 2**20:.0f} MiB)", flush=True)

    # ---- reward set: a fixed subset, scored once per phase when traced or needed
    score_reward = sc.trace_reward_set or selector.learns
    reward_source = data.holdout if sc.reward.reward_set == "train_holdout" else data.dev[spec.dev_splits[0]]
    reward_rows = reward_source.select(range(min(sc.reward.eval_examples, len(reward_source))))
    reward_set = RewardSet(reward_rows, collate, tc.eval_batch_size, device) if score_reward else None

    # ---- mixed precision: one autocast context, GradScaler only for fp16
    amp_dtype = _amp_dtype(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    # ---- segments: stage-1 episodes (learning selectors), then the final run
    n_episodes = sc.episodes if selector.learns else 0
    episode_steps = sc.episode_steps or max(1, total_steps // 3)
    segments = [episode_steps] * n_episodes + [total_steps]
    order_cache: dict[tuple[int, int], list[list[int]]] = {}

    def rows_at(segment: int, step: int) -> list[int]:
        epoch = step // batches_per_epoch
        seed = tc.seed if segment == n_episodes else tc.seed + 7919 * (segment + 1)
        if (segment, epoch) not in order_cache:
            order_cache.clear()
            order_cache[(segment, epoch)] = epoch_batches(lengths, tc.batch_size, seed, epoch, tc.length_bucketing, rank, world)
        return order_cache[(segment, epoch)][step % batches_per_epoch]

    teacher_outputs = teacher_source(teacher, cache, device, autocast)

    def build_state(batch: dict[str, torch.Tensor], rows: list[int], step: int, steps: int, losses: dict[str, float]) -> PhaseState:
        return phase_state(student, teacher_outputs, selector.needs_state, batch, rows, n_student, n_teacher,
                           step, steps, losses, autocast)

    def reward_loss() -> float:
        return math.nan if reward_set is None else reward_set.loss(student, spec.is_regression)

    def evaluate() -> tuple[float, dict[str, float]]:
        metrics: dict[str, float] = {}
        scores = []
        for split, ds in data.dev.items():
            preds, labels, _ = predict(student, ds, collate, tc.eval_batch_size, device, spec.is_regression, rank, world)
            m = compute_metrics(config.task, preds, labels)
            scores.append(primary_score(config.task, m))
            metrics.update(m if len(data.dev) == 1 else {f"{split}_{k}": v for k, v in m.items()})
        return float(np.mean(scores)), metrics

    # ---- resume
    state = ckpt.load(resume_from) if resume_from else None
    start_segment = int(state["segment"]) if state else 0
    counters = dict(state["counters"]) if state else {"steps": 0, "train_seconds": 0.0, "selector_seconds": 0.0, "step_seconds": 0.0, "samples": 0}
    traces: list[dict[str, Any]] = list(state["traces"]) if state else []
    last_eval: dict[str, Any] = dict(state["last_eval"]) if state else {}
    if state:
        selector.load_state_dict(state["selector"])
        selector.training = bool(state["selector_training"])

    for segment in range(start_segment, len(segments)):
        steps, final = segments[segment], segment == n_episodes
        # a checkpoint taken at an episode's end resumes at the next segment's step 0: a fresh start
        resuming = state is not None and segment == start_segment and int(state["step"]) > 0
        if not resuming:
            student.load_state_dict(init_student)
            knowledge.load_state_dict(init_knowledge)
            selector.start_episode(segment)
            if final and selector.learns:
                selector.training = sc.stage2 == "learning"
        optimizer = _optimizer(student, knowledge, tc.lr, tc.weight_decay)
        scheduler = _scheduler(optimizer, steps, tc.warmup_ratio)
        phase: dict[str, Any] = {"weights": None, "sums": {}, "count": 0, "reward": math.nan, "losses": {}}
        start_step = 0
        if state is not None and segment == start_segment:
            ckpt.set_rng_state(state["rng"])
        if resuming:
            student.load_state_dict(state["student"])
            knowledge.load_state_dict(state["knowledge"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            phase = dict(state["phase"])
            phase["sums"] = {k: v.to(device) for k, v in phase["sums"].items()}
            phase["next_state"] = _state_dict(phase.get("next_state"), device)
            start_step = int(state["step"])
        student.train()
        loss_since_eval, n_since_eval = torch.zeros((), device=device), 0
        bar = _progress(tc.progress and rank == 0, steps, start_step, "final" if final else f"episode {segment + 1}/{n_episodes}")
        for step in range(start_step, steps):
            t_step = time.perf_counter()
            rows = rows_at(segment, step)
            batch = to_device(collate_rows(data.train, rows, collate), device)

            # phase start: the selector decides the weights until the next decision
            if step % sc.phase_steps == 0 or phase["weights"] is None:
                t0 = time.perf_counter()
                # the previous phase's last step gave the state; a segment's first decision builds its own
                saved = phase.pop("next_state", None)
                st = PhaseState(**saved) if saved else build_state(batch, rows, step, steps, phase["losses"])
                if score_reward and math.isnan(phase["reward"]):
                    phase["reward"] = reward_loss()
                weights = selector.decide(st)
                phase.update(weights=_agree(weights, world), sums={}, count=0, start=step)
                counters["selector_seconds"] += time.perf_counter() - t0
            weights = phase["weights"]
            if not any(weights.get(k, 0.0) > 0 for k in selector.pool):
                raise ValueError(f"selector {sc.name!r} gave every kind weight 0 at step {step}: {weights}")

            # one optimisation step on the selected kinds only; a phase's last step also gives the next state
            done = step + 1 == steps
            phase_end = (step + 1) % sc.phase_steps == 0 or done
            result = distill_step(model, student, knowledge, selector.pool, weights, batch, rows, teacher_outputs,
                                  optimizer, scheduler, scaler, tc.max_grad_norm, world, autocast,
                                  state_layers=(n_student, n_teacher) if phase_end and selector.needs_state else None)
            loss, losses = result.loss, result.losses
            for k, v in losses.items():
                phase["sums"][k] = phase["sums"].get(k, torch.zeros((), device=device, dtype=torch.float64)) + v.detach().double()
            phase["count"] += 1
            loss_since_eval += loss.detach().float()
            n_since_eval += 1
            counters["steps"] += 1
            counters["samples"] += len(rows) * world
            dt = time.perf_counter() - t_step
            counters["step_seconds"] += dt
            if bar is not None:
                bar.update(1)
                if (step + 1) % tc.log_every == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")  # the only sync inside the loop, every log_every steps

            # phase end: reward-set loss, then the selector observes and the trace grows
            if phase_end:
                t0 = time.perf_counter()
                mean_losses = {k: float(v) / phase["count"] for k, v in phase["sums"].items()}
                after = reward_loss()
                # the state at the next decision: this phase's last batch, from the step's own forward
                nxt = PhaseState(teacher_cls=result.teacher_cls, student_cls=result.student_cls, losses=mean_losses,
                                 progress=(step + 1) / steps, step=step + 1)
                record = selector.observe(PhaseOutcome(phase["reward"], after, mean_losses, nxt, done))
                for kind in selector.pool:
                    traces.append({
                        "step": counters["steps"], "phase": record.phase, "episode": segment if not final else -1,
                        "knowledge": kind, "weight": float(weights.get(kind, 0.0)), "reward": float(record.reward),
                        "q_value": float(record.q_value), "reward_set_loss": float(record.reward_set_loss),
                    })
                phase.update(weights=None, sums={}, count=0, reward=after, losses=mean_losses,
                             next_state=None if done else _state_dict(nxt))
                counters["selector_seconds"] += time.perf_counter() - t0
            counters["train_seconds"] += time.perf_counter() - t_step

            # evaluation (final run only), then the checkpoint, then report (which may pick the checkpoint up)
            metrics_out: dict[str, Any] | None = None
            if final and (done or (tc.eval_every and (step + 1) % tc.eval_every == 0)
                          or (tc.eval_every is None and (step + 1) % batches_per_epoch == 0)):
                score, metrics = evaluate()
                train_loss = float(loss_since_eval) / max(1, n_since_eval)
                if world > 1:
                    t = torch.tensor([train_loss], device=device)
                    torch_dist.all_reduce(t)
                    train_loss = float(t) / world
                loss_since_eval, n_since_eval = torch.zeros((), device=device), 0
                last_eval = {"step": step + 1, "dev_score": score, "metrics": metrics}
                metrics_out = {"step": step + 1, "epoch": (step + 1) / batches_per_epoch, "dev_score": score, **metrics, "train_loss": train_loss}
            if rank == 0 and (done or (tc.checkpoint_every and counters["steps"] % tc.checkpoint_every == 0)):
                next_segment = done and not final
                ckpt.save_atomic({
                    "segment": segment + 1 if next_segment else segment, "step": 0 if next_segment else step + 1,
                    "student": student.state_dict(), "knowledge": knowledge.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "selector": selector.state_dict(), "selector_training": selector.training, "rng": ckpt.rng_state(),
                    # next_state (tensors and numbers, weights_only-safe) came from a training forward that a
                    # resume cannot repeat, so it is saved
                    "phase": {**phase, "sums": {k: v.cpu() for k, v in phase["sums"].items()},
                              "next_state": _state_dict(phase.get("next_state"), torch.device("cpu"))},
                    "counters": counters, "traces": traces, "last_eval": last_eval,
                }, out_dir / "checkpoint" / "checkpoint.pt")
            if metrics_out is not None and report is not None:
                report(metrics_out)
        if bar is not None:
            bar.close()
        state = None

    # ---- the run record
    method = f"actor_critic_{sc.action}" if sc.name == "actor_critic" else sc.name
    result = RunResult(
        task=config.task, metric_name="/".join(spec.metrics), dev_score=float(last_eval.get("dev_score", math.nan)),
        dev_metrics=dict(last_eval.get("metrics", {})), teacher_score=float(teacher_score), method=method,
        action=sc.action, knowledge_pool=list(selector.pool), phase_steps=sc.phase_steps,
        reward_shaping=sc.reward.model_dump(), seed=tc.seed, teacher=str(teacher_path),
        student=_student_name(config), student_params=count_parameters(student), train_steps=counters["steps"],
        train_seconds=counters["train_seconds"],
        samples_per_second=counters["samples"] / max(counters["train_seconds"], 1e-9),
        selector_seconds=counters["selector_seconds"], final_steps=total_steps,
        mean_step_seconds=counters["step_seconds"] / max(1, counters["steps"]), teacher_cache=cache is not None,
        traces=traces,
    )
    if rank == 0:
        _write_record(result, selector, out_dir)
    return result


# --------------------------------------------------------------------------- helpers


def _state_dict(state: PhaseState | dict[str, Any] | None, device: torch.device | None = None) -> dict[str, Any] | None:
    """A phase state as plain fields (what the phase dict and checkpoints hold), tensors moved to ``device``."""
    if state is None:
        return None
    fields = dict(state) if isinstance(state, dict) else dict(vars(state))
    for key in ("teacher_cls", "student_cls"):
        if fields[key] is not None and device is not None:
            fields[key] = fields[key].to(device)
    return fields


def _device(config: RunConfig) -> torch.device:
    if torch.cuda.is_available() and config.resources.use_gpu:
        rank_local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", rank_local % torch.cuda.device_count())
    return torch.device("cpu")


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32; mixed precision only on GPUs."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(student: nn.Module, knowledge: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the student and the knowledge projections; no decay on biases and LayerNorms."""
    decay, no_decay = [], []
    for module in (student, knowledge):
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _scheduler(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then linear decay to 0 over ``steps``."""
    warmup = int(steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _agree(weights: dict[str, float], world: int) -> dict[str, float]:
    """All ranks use rank 0's decision (selectors see rank-local batches)."""
    if world == 1:
        return dict(weights)
    box = [weights]
    torch_dist.broadcast_object_list(box, src=0)
    return dict(box[0])


def _init_selector(selector: Any, path: str) -> None:
    """Start from a saved selector: its networks when it has them, else its whole state."""
    if hasattr(selector, "load_networks"):
        selector.load_networks(path)
    else:
        selector.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _fingerprint(path: str) -> dict[str, Any]:
    """Teacher identity for cache keys: folder plus size and mtime of its weight files."""
    folder = Path(path)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
    return {"path": str(folder.resolve()), "files": [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]}


def _teacher_score(path: str, teacher: nn.Module, data: Any, spec: Any, collate: Callable, batch_size: int,
                   device: torch.device, rank: int, world: int) -> float:
    """The teacher's dev score: from its metrics.json when it has one, else evaluated once here."""
    metrics_file = Path(path) / "metrics.json"
    if metrics_file.is_file():
        saved = json.loads(metrics_file.read_text())
        if isinstance(saved.get("score"), (int, float)):
            return float(saved["score"])
    scores = []
    for ds in data.dev.values():
        preds, labels, _ = predict(teacher, ds, collate, batch_size, device, spec.is_regression, rank, world)
        scores.append(primary_score(spec.name, compute_metrics(spec.name, preds, labels)))
    return float(np.mean(scores))


def _student_name(config: RunConfig) -> str:
    s = config.student
    return s.model or "" if s.init == "pretrained" else f"{config.teacher.model}:layers={s.layers}"


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)


def _write_record(result: RunResult, selector: Any, out_dir: Path) -> None:
    """run_record.json, traces.parquet and selector.pt, each written atomically."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".run_record.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result.record(), indent=2, default=float))
    os.replace(tmp, out_dir / "run_record.json")
    columns = ["step", "phase", "episode", "knowledge", "weight", "reward", "q_value", "reward_set_loss"]
    tmp = out_dir / f".traces.parquet.{os.getpid()}.tmp"
    pd.DataFrame(result.traces, columns=columns).to_parquet(tmp, index=False)
    os.replace(tmp, out_dir / "traces.parquet")
    ckpt.save_atomic(selector.state_dict(), out_dir / "selector.pt")
