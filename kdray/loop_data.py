"""Batch order, evaluation and distributed helpers of the training loop.

The batch order is a pure function of (seed, epoch), so a resumed run can
recompute it and continue from a stored position instead of pickling loaders.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as torch_dist
from torch import nn

from kdray.knowledge import reward_loss, run_model, task_loss


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not running under torch.distributed."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, bucketing: bool = True
) -> list[list[int]]:
    """Random batches (row indices) drawn from ``generator``; with ``bucketing``, of similar lengths.

    Length bucketing sorts rows by length inside windows of 50 batches of a random permutation, then
    shuffles the batches: little padding, still random order. The teacher stage draws its epochs from one
    generator; the loop seeds one per epoch (:func:`epoch_batches`).
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if bucketing:
        window = batch_size * 50
        order = [i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lambda i: lengths[i])]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if bucketing:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucketing: bool, rank: int = 0, world: int = 1
) -> list[list[int]]:
    """This rank's batches (row indices) of one epoch: :func:`bucketed_batches` seeded by (seed, epoch).

    With several ranks every rank gets the same number of whole batches (the DistributedSampler
    contract, dropping the remainder).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    batches = bucketed_batches(lengths, batch_size, g, bucketing)
    if world > 1:
        per_rank = len(batches) // world
        batches = batches[rank::world][:per_rank]
    return batches


class BatchOrder:
    """The loop's data cursor: which rows step ``step`` of segment ``segment`` trains on.

    A pure function of (segment, step), so a resumed or forked run recomputes it instead of pickling
    loaders. Stage-1 episodes draw their own orders; the final run (``final_segment``) uses the run's seed.
    One epoch's order is kept at a time.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, bucketing: bool, final_segment: int,
                 rank: int = 0, world: int = 1) -> None:
        self.lengths, self.batch_size, self.seed, self.bucketing = list(lengths), batch_size, seed, bucketing
        self.final_segment, self.rank, self.world = final_segment, rank, world
        self.per_epoch = len(self._epoch(seed, 0))
        self._kept: tuple[tuple[int, int], list[list[int]]] | None = None

    def _epoch(self, seed: int, epoch: int) -> list[list[int]]:
        return epoch_batches(self.lengths, self.batch_size, seed, epoch, self.bucketing, self.rank, self.world)

    def rows(self, segment: int, step: int) -> list[int]:
        """Row indices of one training step."""
        epoch = step // self.per_epoch
        if self._kept is None or self._kept[0] != (segment, epoch):
            seed = self.seed if segment == self.final_segment else self.seed + 7919 * (segment + 1)
            self._kept = ((segment, epoch), self._epoch(seed, epoch))
        return self._kept[1][step % self.per_epoch]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def collate_rows(dataset: Any, rows: Sequence[int], collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return collate([dataset[int(i)] for i in rows])


MAX_PADDING = 0.1  # share of a scoring batch's token slots that may be padding before the batch is closed


def longest_first_batches(
    items: Sequence[dict[str, Any]], batch_size: int, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Positions of ``items`` in batches of similar length, longest first (evaluation, the reward set and the
    teacher-output cache build).

    A batch takes up to ``batch_size`` rows, but is closed early when the next row would make more than
    ``max_padding`` of its token slots padding: with dynamic padding every row costs as much as the batch's
    longest, so a long-tailed length distribution (SST-2's phrases) would otherwise pay for its longest row
    in every row of the first batch. Uniform lengths still give full batches.
    """
    order = sorted(range(len(items)), key=lambda j: len(items[j]["input_ids"]), reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    for j in order:
        n = len(items[j]["input_ids"])
        slots = (len(current) + 1) * longest
        if current and (len(current) == batch_size or slots - (real + n) > max_padding * slots):
            batches.append(current)
            current, real = [], 0
        if not current:
            longest = n
        current.append(j)
        real += n
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Any, collate: Callable, batch_size: int, device: torch.device, is_regression: bool,
    rank: int = 0, world: int = 1,
) -> tuple[list[float], list[float], float]:
    """Predictions, labels and mean task loss on ``dataset`` (sharded over ranks, gathered on all).

    Batches are formed in length order (``longest_first_batches``), so dynamic padding pads each batch to lengths close to its own
    rows (the loss is a mean and the metrics are per row, so the order changes neither); predictions and
    labels come back in the shard's row order.
    """
    rows = list(range(rank, len(dataset), world))
    items = [dataset[i] for i in rows]
    preds: list[float] = [0.0] * len(items)
    labels: list[float] = [0.0] * len(items)
    loss_sum = torch.zeros((), device=device)
    with eval_mode(model):
        for chunk in longest_first_batches(items, batch_size):
            batch = to_device(collate([items[j] for j in chunk]), device)
            logits, loss = _scored(model, batch, is_regression)
            loss_sum += loss
            p = logits.squeeze(-1) if is_regression else logits.argmax(-1)
            for j, pred, label in zip(chunk, p.cpu().tolist(), batch["labels"].cpu().tolist()):
                preds[j], labels[j] = pred, label
    if world > 1:
        gathered: list[Any] = [None] * world
        torch_dist.all_gather_object(gathered, (preds, labels))
        preds = [p for g in gathered for p in g[0]]
        labels = [l for g in gathered for l in g[1]]
        torch_dist.all_reduce(loss_sum)
    return preds, labels, float(loss_sum) / max(1, len(dataset))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for scoring; its training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _scored(model: nn.Module, batch: dict[str, torch.Tensor], is_regression: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 logits, summed task loss) of one batch: the mean loss times its row count."""
    logits = run_model(model, batch).logits.float()
    return logits, task_loss(logits, batch["labels"], is_regression) * len(batch["labels"])


class RewardSet:
    """The selector's reward set as fixed batches, collated once and kept on the device.

    The same rows are scored at every phase end, so reading them from the dataset, ordering them
    by length and padding them is done here once instead of every phase.
    """

    def __init__(self, dataset: Any, collate: Callable, batch_size: int, device: torch.device) -> None:
        items = [dataset[i] for i in range(len(dataset))]
        self.rows = len(items)
        self.batches = [to_device(collate([items[j] for j in chunk]), device)
                        for chunk in longest_first_batches(items, batch_size)]

    @torch.no_grad()
    def loss(self, model: nn.Module, is_regression: bool, score: str = "ce") -> float:
        """Mean reward loss of ``model`` over the set (``score``: ``selector.reward.score``; eval mode for the
        forward, the mode restored after)."""
        if not self.batches:
            return 0.0
        with eval_mode(model):
            logits = torch.cat([run_model(model, b).logits.float() for b in self.batches])
        labels = torch.cat([b["labels"] for b in self.batches])
        return float(reward_loss(logits, labels, is_regression, score))  # over the whole set: pearson needs it

    @torch.no_grad()
    def row_losses(self, model: nn.Module, is_regression: bool, score: str = "ce") -> torch.Tensor:
        """The reward loss of every row, in the set's batch order (what ``kdray reward-noise`` subsamples)."""
        with eval_mode(model):
            return torch.cat([reward_loss(run_model(model, b).logits, b["labels"], is_regression, score,
                                        reduction="none") for b in self.batches])
