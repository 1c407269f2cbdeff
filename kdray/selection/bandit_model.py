"""The bandit selector's reward model: a quadratic-in-action design and a conjugate Bayesian linear regression.

Why this model: stage 1 yields 50-200 transitions, far too few for a neural critic.
A linear model on hand-built (state x action) features has a closed-form posterior
(normal-inverse-gamma), so it fits exactly in microseconds, its uncertainty drives
Thompson sampling, and it cannot drift the way a TD-trained network does.

Design (one row per transition), with actions encoded as ``u = 2a - 1`` in [-1, 1]
so that ``u``, ``u**2`` and ``u_k u_l`` are well conditioned:

- state block ``[1, x]``: what the state alone predicts (only unpaired rewards use it;
  in a paired row ``phi(s, a) - phi(s, ref)`` it cancels exactly, as the shared
  progress trend and batch noise cancel in the paired reward itself);
- ``u_k * [1, x]`` per kind: each kind's linear effect, moving with the state; this
  is what lets the optimum weighting move with progress;
- ``u_k**2`` (soft actions only; for {0, 1} actions it is constant): a concave
  per-kind effect puts the optimum inside [0, 1] instead of at a corner;
- ``u_k u_l`` (optional): interactions, e.g. two kinds that are redundant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Normal-inverse-gamma prior on the noise variance of *normalised* targets: one pseudo-observation
# saying "unit variance", i.e. the reward is all noise until the data say otherwise.
PRIOR_SHAPE = 1.0
PRIOR_RATE = 1.0


def design(x: torch.Tensor, weights: torch.Tensor, squares: bool, pairwise: bool) -> torch.Tensor:
    """Feature rows ``phi(s, a)`` for states ``x`` [n, d] and action weights [n, K] in [0, 1]."""
    n = x.shape[0]
    u = 2.0 * weights.to(torch.float64) - 1.0
    xs = torch.cat([torch.ones(n, 1, dtype=torch.float64), x.to(torch.float64)], dim=1)
    blocks = [xs, (u[:, :, None] * xs[:, None, :]).reshape(n, -1)]
    if squares:
        blocks.append(u * u)
    if pairwise:
        i, j = torch.triu_indices(u.shape[1], u.shape[1], offset=1)
        blocks.append(u[:, i] * u[:, j])
    return torch.cat(blocks, dim=1)


def design_width(state_width: int, kinds: int, squares: bool, pairwise: bool) -> int:
    """Number of columns :func:`design` returns."""
    return (1 + state_width) * (1 + kinds) + kinds * int(squares) + kinds * (kinds - 1) // 2 * int(pairwise)


def prior_mean(state_width: int, kinds: int, squares: bool, pairwise: bool, concavity: float) -> torch.Tensor:
    """Zero for every coefficient except ``-concavity`` on each ``u_k**2`` (soft actions only)."""
    mean = torch.zeros(design_width(state_width, kinds, squares, pairwise), dtype=torch.float64)
    if squares:
        start = (1 + state_width) * (1 + kinds)
        mean[start:start + kinds] = -concavity
    return mean


@dataclass
class Posterior:
    """N(mean, sigma^2 A^-1) x InvGamma(shape, rate) over the coefficients and the noise variance."""

    mean: torch.Tensor  # [D]
    cov_chol: torch.Tensor  # [D, D], lower Cholesky factor of A^-1
    shape: float
    rate: float

    @classmethod
    def prior(cls, prior_mean: torch.Tensor, precision: float) -> "Posterior":
        """The posterior with no data: ``prior_mean``, covariance I / precision."""
        eye = torch.eye(prior_mean.numel(), dtype=torch.float64)
        return cls(prior_mean.to(torch.float64), eye / precision**0.5, PRIOR_SHAPE, PRIOR_RATE)

    @classmethod
    def fit(cls, rows: torch.Tensor, targets: torch.Tensor, prior_mean: torch.Tensor,
            precision: float) -> "Posterior":
        """Exact conjugate update from the prior N(prior_mean, sigma^2 I / precision)."""
        rows, targets, m0 = rows.to(torch.float64), targets.to(torch.float64), prior_mean.to(torch.float64)
        a = rows.T @ rows + precision * torch.eye(rows.shape[1], dtype=torch.float64)
        chol_a = torch.linalg.cholesky(a)
        mean = torch.cholesky_solve((rows.T @ targets + precision * m0)[:, None], chol_a)[:, 0]
        cov = torch.cholesky_inverse(chol_a)
        cov = 0.5 * (cov + cov.T)
        residual = float(targets @ targets + precision * (m0 @ m0) - mean @ (a @ mean))
        rate = PRIOR_RATE + 0.5 * max(residual, 0.0)
        return cls(mean, torch.linalg.cholesky(cov), PRIOR_SHAPE + 0.5 * rows.shape[0], rate)

    @property
    def noise_var(self) -> float:
        """Posterior mean of the noise variance (normalised units)."""
        return self.rate / (self.shape - 1.0) if self.shape > 1.0 else self.rate / self.shape

    def sample(self, count: int, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
        """``count`` coefficient draws [count, D]; ``scale`` widens (>1) or narrows (<1) the spread.

        sigma^2 ~ InvGamma(shape, rate) is drawn exactly as 2 rate / chi^2 with 2 shape degrees of
        freedom (an integer, since the prior shape is 1 and each row adds 1/2), so only the seeded
        generator's normals are used and a resumed selector draws the same values.
        """
        dof = int(round(2.0 * self.shape))
        chi2 = torch.randn(count, dof, generator=generator, dtype=torch.float64).pow(2).sum(dim=1)
        sigma = (2.0 * self.rate / chi2).sqrt()
        z = torch.randn(count, self.mean.numel(), generator=generator, dtype=torch.float64)
        return self.mean[None] + scale * sigma[:, None] * (z @ self.cov_chol.T)

    def predictive_std(self, rows: torch.Tensor) -> torch.Tensor:
        """Standard deviation of the mean prediction ``rows @ coef`` (parameter uncertainty only)."""
        proj = rows.to(torch.float64) @ self.cov_chol
        return (self.noise_var * proj.pow(2).sum(dim=1)).sqrt()

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "cov_chol": self.cov_chol, "shape": self.shape, "rate": self.rate}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Posterior":
        return cls(state["mean"], state["cov_chol"], float(state["shape"]), float(state["rate"]))


@dataclass
class Memory:
    """Every transition the bandit learned from, in raw units (nothing normalised is frozen here).

    ``states`` are the raw feature vectors (NaN where a feature was missing), ``targets`` the raw
    rewards: the loss drop for an unpaired row, the advantage over ``references`` for a paired one.
    Normalisation statistics are recomputed from these, so they never go stale.
    """

    states: torch.Tensor  # [n, d] float64
    actions: torch.Tensor  # [n, K]
    references: torch.Tensor  # [n, K]; unused (zeros) where not paired
    paired: torch.Tensor  # [n] bool
    targets: torch.Tensor  # [n] raw reward
    phases: torch.Tensor  # [n] int64: which observed phase the row came from

    @classmethod
    def empty(cls, state_width: int, kinds: int) -> "Memory":
        f = torch.float64
        return cls(torch.zeros(0, state_width, dtype=f), torch.zeros(0, kinds, dtype=f), torch.zeros(0, kinds, dtype=f),
                   torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=f), torch.zeros(0, dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.targets.numel())

    def append(self, state: torch.Tensor, actions: torch.Tensor, reference: torch.Tensor | None,
               targets: torch.Tensor, phase: int, capacity: int) -> None:
        """Add one phase's rows (one per branch) and drop the oldest rows beyond ``capacity``."""
        m = actions.shape[0]
        ref = torch.zeros_like(actions) if reference is None else reference.expand_as(actions)
        self.states = torch.cat([self.states, state.to(torch.float64).expand(m, -1)])[-capacity:]
        self.actions = torch.cat([self.actions, actions.to(torch.float64)])[-capacity:]
        self.references = torch.cat([self.references, ref.to(torch.float64)])[-capacity:]
        self.paired = torch.cat([self.paired, torch.full((m,), reference is not None)])[-capacity:]
        self.targets = torch.cat([self.targets, targets.to(torch.float64)])[-capacity:]
        self.phases = torch.cat([self.phases, torch.full((m,), phase, dtype=torch.int64)])[-capacity:]

    def state_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and std over the stored rows, ignoring missing (NaN) values."""
        present = ~torch.isnan(self.states)
        count = present.sum(dim=0).clamp(min=1)
        filled = torch.where(present, self.states, torch.zeros(()))
        mean = filled.sum(dim=0) / count
        var = torch.where(present, (self.states - mean).pow(2), torch.zeros(())).sum(dim=0) / count
        std = var.sqrt()
        return mean, torch.where(std > 1e-8, std, torch.ones(()))

    def target_rms(self) -> float:
        """Root mean square of the raw targets: the scale rewards are divided by (not centred: 0 = no advantage)."""
        return float(self.targets.pow(2).mean().sqrt()) if len(self) else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("states", "actions", "references", "paired", "targets", "phases")}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Memory":
        return cls(**{k: state[k] for k in ("states", "actions", "references", "paired", "targets", "phases")})
