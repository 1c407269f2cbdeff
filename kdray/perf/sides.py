"""One optimisation step of each side of a peer comparison: kdray's, and TextBrewer's GeneralDistiller.

Both sides get their own copy of the same student, the same frozen teacher, the same batch
objects (plain dicts), AdamW with the same settings, a constant schedule, gradient clipping at
1.0 and the same autocast. kdray's step is :func:`kdray.step.distill_step` with
:func:`kdray.step.teacher_source` (live teacher, no cache) and :func:`kdray.knowledge.build_knowledge`;
TextBrewer's is the body of its ``train_with_num_steps`` loop for one batch (``train_on_batch``,
``write_loss``, backward, clip, optimiser and scheduler step, ``zero_grad``), with the projections
``initialize_training`` adds. The optimiser and schedule are built here with torch directly
(AdamW, constant ``LambdaLR``), the same for both sides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from kdray.knowledge import build_knowledge, needs_of
from kdray.perf.pair import Pair, stack_rows
from kdray.perf.timing import clock
from kdray.step import distill_step, teacher_source
from kdray.teacher_outputs import build_teacher_cache
from kdray.teacher_precision import live_teacher
from kdray.training import build_adamw

LR = 5e-5
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
TEXTBREWER_VERSION = "0.2.1.post1"

AutocastFn = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class PeerPair:
    """What both sides compute: kdray's pool (all weights 1) and TextBrewer's equivalent configuration."""

    name: str
    kdray_pool: tuple[str, ...]
    eager: bool  # attention maps needed: eager attention on both sides, else SDPA
    hard_labels: bool  # TextBrewer: hard-label loss from the model's own ``loss`` (labels in the batch)
    intermediate: bool  # TextBrewer: hidden_mse + attention_mse on kdray's mapped layers
    description: str
    # kdray's live teacher forward in another precision (``train.teacher_precision``: bf16, or int8 on CPUs)
    # while both students keep the step's: a row that does the same work in other numerics, beside the
    # same-precision rows
    kdray_teacher_precision: str = "same"
    # kdray reads the teacher's outputs from its teacher-output cache (``train.teacher_cache``, attention maps
    # included), built once before the timed rounds; TextBrewer runs its teacher live as it always does
    kdray_cached: bool = False


def _with_teacher_in(base: PeerPair, precision: str) -> PeerPair:
    """``base`` with kdray's live teacher in ``precision`` (bf16, or int8 on CPUs); TextBrewer's side unchanged."""
    where = ", CPUs" if precision == "int8" else ""
    return dataclasses.replace(
        base, name=f"{base.name}_{precision}_teacher", kdray_teacher_precision=precision,
        description=f"{base.description}; kdray's teacher forward in {precision} "
                    f"(train.teacher_precision: {precision}{where}), TextBrewer's as the step's")


_VANILLA_KD = PeerPair("vanilla_kd", ("finetune", "response"), False, True, False,
                       "logits KD + hard labels (SDPA attention)")
_KD_HIDDEN_ATTENTION = PeerPair("kd_hidden_attention", ("response", "feature", "attention"), True, False, True,
                                "logits KD + hidden MSE + attention MSE on the mapped layers (eager attention)")
PAIRS: dict[str, PeerPair] = {p.name: p for p in (
    _VANILLA_KD,
    _KD_HIDDEN_ATTENTION,
    _with_teacher_in(_VANILLA_KD, "bf16"),
    _with_teacher_in(_VANILLA_KD, "int8"),
    _with_teacher_in(_KD_HIDDEN_ATTENTION, "bf16"),
    _with_teacher_in(_KD_HIDDEN_ATTENTION, "int8"),
    dataclasses.replace(_KD_HIDDEN_ATTENTION, name="kd_hidden_attention_cached", kdray_cached=True,
                        description="logits KD + hidden MSE + attention MSE (eager attention); kdray from its "
                                    "teacher-output cache (train.teacher_cache, attention maps included), "
                                    "TextBrewer with its live teacher"),
)}


def textbrewer_missing() -> str | None:
    """Why TextBrewer cannot run here (None when it can): the reason a skipped peer row prints."""
    try:
        import textbrewer
    except ImportError as err:
        return (f"textbrewer is not installed ({err}); install it with `pip install -e .[peers]` "
                f"(textbrewer=={TEXTBREWER_VERSION}; its declared tensorboard dependency is optional when tensorboardX is present)")
    version = getattr(textbrewer, "__version__", "?")
    if version != TEXTBREWER_VERSION:
        return f"textbrewer {version} is installed; the comparison is pinned to {TEXTBREWER_VERSION}"
    return None


def adamw(params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser and constant schedule both sides use (fused where kdray's own loop fuses it, so the pair
    compares the distillers, not two AdamW kernels)."""
    optimizer = build_adamw(params, lr=LR, weight_decay=WEIGHT_DECAY)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class KdraySide:
    """kdray's optimisation step on ``spec.kdray_pool`` with a live teacher."""

    name = "kdray"

    def __init__(self, pair: Pair, student: nn.Module, spec: PeerPair, device: torch.device, autocast: AutocastFn) -> None:
        self.student = student
        self.pool = list(spec.kdray_pool)
        self.weights = {k: 1.0 for k in self.pool}
        self.knowledge = build_knowledge(self.pool, pair.context).to(device)
        self.optimizer, self.scheduler = adamw([*student.parameters(), *self.knowledge.parameters()])
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.teacher, self.teacher_autocast = live_teacher(pair.teacher, spec.kdray_teacher_precision, autocast, device)
        self.teacher_fn = teacher_source(self.teacher, None, device, self.teacher_autocast)
        self.autocast = autocast
        self.pair, self.device = pair, device
        self.rows = list(range(pair.shape.batch))
        self._rows_of: dict[int, list[int]] = {}  # id(batch) -> its rows in the cache

    def cache(self, batches: list[dict[str, torch.Tensor]], folder: str) -> float:
        """Build kdray's teacher-output cache over ``batches`` (what ``train.teacher_cache`` builds over a training
        set: the pool's hidden states and attention maps, fp16) and serve later steps on them from it; returns the
        build's seconds."""
        needs = needs_of(self.knowledge, self.weights)
        rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["input_ids"]))]
        per = self.pair.shape.batch
        self._rows_of = {id(b): list(range(k * per, (k + 1) * per)) for k, b in enumerate(batches)}
        start = clock()
        cache = build_teacher_cache(self.pair.teacher, rows, stack_rows, set(needs.teacher_hidden), folder, per,
                                    self.device, needs.teacher_attentions)
        seconds = clock() - start
        self.teacher_fn = teacher_source(self.teacher, cache, self.device, self.teacher_autocast)
        return seconds

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimisation step; returns the weighted loss."""
        rows = self._rows_of.get(id(batch), self.rows)
        return distill_step(self.student, self.student, self.knowledge, self.pool, self.weights, batch, rows,
                            self.teacher_fn, self.optimizer, self.scheduler, self.scaler, MAX_GRAD_NORM,
                            autocast=self.autocast).loss


def _kd_adaptor(batch: dict[str, torch.Tensor], out: Any) -> dict[str, Any]:
    return {"logits": out.logits, "losses": out.loss}


def _full_adaptor(batch: dict[str, torch.Tensor], out: Any) -> dict[str, Any]:
    return {"logits": out.logits, "hidden": out.hidden_states, "attention": out.attentions,
            "inputs_mask": batch["attention_mask"]}


class TextBrewerSide:
    """TextBrewer's GeneralDistiller step, configured as the pair says (KD at kdray's temperature)."""

    name = "textbrewer"

    def __init__(self, pair: Pair, student: nn.Module, spec: PeerPair, device: torch.device, autocast: AutocastFn) -> None:
        from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

        matches: list[dict[str, Any]] = []
        if spec.intermediate:
            for s, t in pair.context.layer_map:  # hidden lists start at the embeddings, attention lists at layer 1
                matches.append({"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1})
                matches.append({"layer_T": t - 1, "layer_S": s - 1, "feature": "attention", "loss": "attention_mse",
                                "weight": 1})
        self._out = tempfile.TemporaryDirectory(prefix="kdray-textbrewer-")  # TrainingConfig creates output_dir
        train_cfg = TrainingConfig(device=device, log_dir=None, output_dir=self._out.name)
        distill_cfg = DistillationConfig(temperature=pair.context.temperature, kd_loss_type="ce", kd_loss_weight=1,
                                         hard_label_weight=1 if spec.hard_labels else 0,
                                         intermediate_matches=matches or None)
        adaptor = _full_adaptor if spec.intermediate else _kd_adaptor
        self.distiller = GeneralDistiller(train_cfg, distill_cfg, model_T=pair.teacher, model_S=student,
                                          adaptor_T=adaptor, adaptor_S=adaptor)
        optimizer, scheduler = adamw(list(student.parameters()))
        self.optimizer, self.scheduler, _ = self.distiller.initialize_training(optimizer, None, None, scheduler)
        self.args = {"output_hidden_states": True, "output_attentions": True} if spec.intermediate else {}
        self.autocast = autocast
        self.distiller.__enter__()  # what `with distiller:` around `train` does: teacher eval, student train
        self._writer_step = 0

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimisation step as ``train_with_num_steps`` runs it; returns the total loss."""
        d = self.distiller
        with self.autocast():
            total_loss, losses = d.train_on_batch(batch, self.args)
        d.write_loss(total_loss, self._writer_step, losses)
        self._writer_step += 1
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(d.model_S.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return total_loss.detach()

    def close(self) -> None:
        """Restore the models' train/eval flags and remove the output folder."""
        self.distiller.__exit__(None, None, None)
        self._out.cleanup()
