"""LIAR's closed-form reconstruction of one linear map whose input units are pruned.

For ``y = W a + b`` with input features split into kept ``K`` and pruned ``P``, calibration
activations give the least-squares affine estimate of the pruned features from the kept ones,

    a_P ~ Q a_K + c,   Q = C_PK (C_KK + lambda I)^-1,   c = mean_P - Q mean_K

(``C`` the centred covariance, ``lambda`` a ridge relative to the mean variance of ``a_K``), and
the pruned columns' contribution is folded into the kept ones and the bias:

    W_K' = W_K + W_P Q,   b' = b + W_P c.

Only first and second moments of the activations are needed (``ActivationStats``), gathered
with forward passes; no gradient and no retraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ActivationStats:
    """Running sums of a projection's input features over calibration tokens (float64)."""

    gram: torch.Tensor  # (d, d) sum of a a^T
    total: torch.Tensor  # (d,) sum of a
    count: int = 0

    @classmethod
    def zeros(cls, dim: int) -> ActivationStats:
        return cls(torch.zeros(dim, dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64))

    def update(self, features: torch.Tensor) -> None:
        """Add (n, d) feature rows."""
        a = features.detach().reshape(-1, self.total.shape[0]).to("cpu", torch.float64)
        self.gram += a.T @ a
        self.total += a.sum(0)
        self.count += a.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self._n()

    @property
    def second_moment(self) -> torch.Tensor:
        """E[a a^T]."""
        return self.gram / self._n()

    @property
    def covariance(self) -> torch.Tensor:
        """E[(a - mean)(a - mean)^T]."""
        mean = self.mean
        return self.second_moment - torch.outer(mean, mean)

    def _n(self) -> int:
        if self.count == 0:
            raise ValueError("no calibration tokens were collected (empty calibration set?)")
        return self.count


def pruned_columns(dim: int, keep: torch.Tensor) -> torch.Tensor:
    """The input columns of a ``dim``-wide layer that are not in ``keep``."""
    dropped = torch.ones(dim, dtype=torch.bool)
    dropped[keep] = False
    return torch.nonzero(dropped).flatten()


def liar_reconstruction(weight: torch.Tensor, bias: torch.Tensor, stats: ActivationStats,
                        keep: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``W_K'``, ``b'``) of the layer ``weight`` (out, d), ``bias`` (out,) keeping columns
    ``keep``, from the calibration statistics of its input. ``ridge`` > 0 is relative to the
    mean variance of the kept features, so the solve is stable on rank-deficient data."""
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0 (relative to the feature variance), got {ridge}")
    keep = keep.cpu()
    drop = pruned_columns(weight.shape[1], keep)
    if len(drop) == 0:
        return weight.detach().clone(), bias.detach().clone()
    cov, mean = stats.covariance, stats.mean
    cov_kk = cov[keep][:, keep]
    lam = ridge * float(cov_kk.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(len(keep), dtype=cov.dtype)
    q = torch.linalg.solve(cov_kk + lam * eye, cov[keep][:, drop]).T  # (|P|, |K|); C symmetric
    w = weight.detach().to("cpu", torch.float64)
    w_drop = w[:, drop]
    new_weight = w[:, keep] + w_drop @ q
    new_bias = bias.detach().to("cpu", torch.float64) + w_drop @ (mean[drop] - q @ mean[keep])
    return (new_weight.to(weight.device, weight.dtype), new_bias.to(bias.device, bias.dtype))


def relative_output_error(weight: torch.Tensor, bias: torch.Tensor, new_weight: torch.Tensor,
                          new_bias: torch.Tensor, keep: torch.Tensor,
                          stats: ActivationStats) -> float:
    """``E||y - y'||^2 / E||y - E y||^2`` over the calibration tokens, where ``y = W a + b``
    and ``y' = W' a_K + b'``: 0 is a perfect reconstruction, about 1 loses the layer's signal."""
    w = weight.detach().to("cpu", torch.float64)
    diff = w.clone()
    diff[:, keep.cpu()] -= new_weight.detach().to("cpu", torch.float64)
    shift = (bias.detach() - new_bias.detach()).to("cpu", torch.float64)
    moment, mean = stats.second_moment, stats.mean
    error = (torch.trace(diff @ moment @ diff.T) + 2 * shift @ (diff @ mean) + shift @ shift)
    variance = torch.trace(w @ stats.covariance @ w.T)
    return float(error.clamp_min(0) / variance.clamp_min(1e-12))
