"""What the relation loss costs on each of its two exact paths, at a model's shapes.

``kdray.knowledge.relation`` computes the FSP-matrix MSE either from ``[B, H, H]`` matrices
(``direct``) or from ``[B, T, T]`` token Grams (``gram``). This times forward + backward of both
on the same random chains (with padding), interleaved, so the choice ``fsp_loss`` makes by shape
can be checked on the machine at hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torch.utils.flop_counter import FlopCounterMode

from kdray.knowledge.relation import fsp_loss_direct, fsp_loss_gram, gram_is_cheaper
from kdray.perf.timing import Timing, interleaved, paired_ratio


@dataclass(frozen=True)
class RelationCost:
    """Forward + backward seconds of both paths at one shape; ``speedup`` = direct / gram per round."""

    batch: int
    seq_len: int
    width: int
    chain_layers: int
    direct: Timing
    gram: Timing
    speedup: Timing
    gram_chosen: bool  # what ``fsp_loss(method="auto")`` picks for this shape in fp32
    gram_flops: float = float("nan")  # forward + backward of the gram path (FlopCounterMode)
    teacher_term_flops: float = float("nan")  # of which the teacher-only Grams (no gradient; the value's constant)


def time_relation(
    batch: int, seq_len: int, width: int, chain_layers: int, repeats: int = 5, warmup: int = 1,
    device: torch.device | str = "cpu", seed: int = 0,
) -> RelationCost:
    """Time both relation-loss paths on one chain (student states require grad; 1/8 of the tokens are padding)."""
    g = torch.Generator().manual_seed(seed)
    students = [torch.randn(batch, seq_len, width, generator=g).to(device).requires_grad_() for _ in range(chain_layers)]
    teachers = [torch.randn(batch, seq_len, width, generator=g).to(device) for _ in range(chain_layers)]
    lengths = torch.randint(seq_len - seq_len // 4, seq_len + 1, (batch,), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long().to(device)

    def run(fn) -> None:
        loss = fn(students, teachers, mask)
        torch.autograd.grad(loss, students)

    times = interleaved({"direct": lambda: run(fsp_loss_direct), "gram": lambda: run(fsp_loss_gram)}, repeats, warmup)
    with FlopCounterMode(display=False) as gram_count:
        run(fsp_loss_gram)
    with FlopCounterMode(display=False) as teacher_count, torch.no_grad():
        for t in teachers:
            t @ t.mT  # what fsp_loss_gram computes for the teacher-only term, once per chain layer
    return RelationCost(batch, seq_len, width, chain_layers, Timing.of(times["direct"]), Timing.of(times["gram"]),
                        paired_ratio(times["direct"], times["gram"]), gram_is_cheaper(seq_len, width, chain_layers),
                        gram_count.get_total_flops(), teacher_count.get_total_flops())


# (batch, tokens, width, chain layers) at the pool's default layer maps: MiniLM 6 -> 3 layers, BERT-base 12 -> 6
RELATION_SHAPES = {"minilm": (32, 128, 384, 4), "bert-base": (32, 128, 768, 7)}


def main(argv: list[str] | None = None) -> int:
    """``python -m kdray.perf.relation_cost [--repeats N]``: both paths at MiniLM and BERT-base shapes."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m kdray.perf.relation_cost", description=main.__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    print("| shape | B x T x H, chain | direct ms (IQR) | gram ms (IQR) | speed-up direct/gram [q25, q75] | auto picks "
          "| gram GFLOP fwd+bwd (teacher-only term) |")
    print("|---|---|---|---|---|---|---|")
    for name, (b, t, h, layers) in RELATION_SHAPES.items():
        r = time_relation(b, t, h, layers, repeats=args.repeats)
        print(f"| {name} | {b} x {t} x {h}, {layers} | {r.direct.median * 1e3:.0f} (±{r.direct.spread / 2:.0%}) "
              f"| {r.gram.median * 1e3:.0f} (±{r.gram.spread / 2:.0%}) | {r.speedup.median:.2f} "
              f"[{r.speedup.q25:.2f}, {r.speedup.q75:.2f}] | {'gram' if r.gram_chosen else 'direct'} "
              f"| {r.gram_flops / 1e9:.2f} ({r.teacher_term_flops / 1e9:.2f}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
