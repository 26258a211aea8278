"""Linear bandits on candidate features: a ridge regression per user (``A⁻¹`` by Sherman–Morrison
updates), LinUCB (Li et al., 2010) and linear Thompson sampling (Agrawal and Goyal, 2013), and the
ridge helpers they share with :mod:`metarec.meta.policy`."""

from __future__ import annotations

from abc import abstractmethod

import torch

from metarec.agents.base import UserDraws, fill_slates
from metarec.agents.baselines.bandits import OnlineBandit, check_positive, top_slate


def ridge_estimate(inverse: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """``[B, F]`` the ridge estimates ``θ = A⁻¹ b`` of a batch of users."""
    return (inverse @ response[:, :, None])[:, :, 0]


def ridge_prediction(
    x: torch.Tensor, inverse: torch.Tensor, response: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, N] x·θ, [B, N] xᵀA⁻¹x)``: each candidate's (``x``: ``[B, N, F]``) predicted target under
    the users' ridge estimates, and its variance factor (LinUCB's bonus is ``alpha`` times its root)."""
    mean = (x @ ridge_estimate(inverse, response)[:, :, None])[:, :, 0]
    variance = ((x @ inverse) * x).sum(dim=2).clamp_min(0.0)
    return mean, variance


class LinearBandit(OnlineBandit):
    """A ridge regression of the target on candidate features per user, for LinUCB and Thompson.

    Features are ``observation["candidates"]`` (``[B, N, F]``) with a constant 1 appended. Per user
    it keeps ``A⁻¹`` (``A = ridge·I + Σ x xᵀ`` over every shown item) by Sherman–Morrison rank-one
    updates, one per shown item, and ``b = Σ target·x``; the estimate is ``θ = A⁻¹ b``.
    State: ``(F + 1)² + F + 1`` float32 per user.

    Args:
        slate_size: K; ``None`` for single-item environments.
        generator: the explicit random generator (on the environment's device).
        target: ``"reward"`` or ``"click"``.
        ridge: the prior precision λ (``> 0``).
    """

    def __init__(
        self, slate_size: int | None, generator: torch.Generator, target: str = "reward", ridge: float = 1.0
    ) -> None:
        super().__init__(slate_size, generator, target)
        self.ridge = check_positive("ridge", ridge)
        self.inverse: torch.Tensor | None = None  # [B, F, F] A⁻¹
        self.response: torch.Tensor | None = None  # [B, F] b

    def features(self, observation: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, N, F + 1]``: the candidates' features and a constant 1 (of the users ``rows`` only,
        when given), allocating state on first use."""
        candidates = observation["candidates"]
        batch, dim = candidates.shape[0], candidates.shape[-1] + 1
        if self._check_batch(batch):
            eye = torch.eye(dim, dtype=torch.float32, device=self.device)
            self.inverse = (eye / self.ridge).expand(batch, dim, dim).clone()
            self.response = torch.zeros((batch, dim), dtype=torch.float32, device=self.device)
        assert self.inverse is not None
        if dim != self.inverse.shape[-1]:
            expected = self.inverse.shape[-1] - 1
            raise ValueError(f"observation['candidates']: expected {expected} features per candidate, got {dim - 1}")
        x = candidates if rows is None else candidates[rows]
        x = x.to(device=self.device, dtype=torch.float32)
        return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)

    @property
    def theta(self) -> torch.Tensor:
        """``[B, F + 1]`` the ridge estimate ``A⁻¹ b`` of each user."""
        assert self.inverse is not None and self.response is not None, "no state before the first act()"
        return ridge_estimate(self.inverse, self.response)

    @staticmethod
    def update(inverse: torch.Tensor, response: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adds K observations per user: features ``x`` (``[B, K, F + 1]``, constant included) with
        targets ``y`` (``[B, K]``). Returns the new ``A⁻¹``, one Sherman–Morrison update per shown item
        (``A⁻¹ ← A⁻¹ - (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x)``; cheaper here than one batched K x K solve), made
        exactly symmetric; adds ``Xᵀy`` to ``response`` in place. ``inverse`` is updated in place too."""
        for k in range(x.shape[1]):
            xk = x[:, k]
            u = (inverse @ xk[:, :, None])[:, :, 0]  # [B, F] A⁻¹x
            denominator = 1.0 + (xk * u).sum(dim=1)
            inverse -= u[:, :, None] * (u / denominator[:, None])[:, None, :]
        response += (y[:, :, None] * x).sum(dim=1)
        # Rounding makes the float32 inverse drift from symmetric; keep it exactly so.
        return 0.5 * (inverse + inverse.transpose(1, 2))

    def choose(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = observation["candidates"].shape[0]
        rows = self.serving_rows(batch)
        x = self.features(observation, rows)  # [B or A, N, F]
        assert self.inverse is not None and self.response is not None
        draws = self.draws(self.generator, batch, rows)
        if rows is None:
            slate = top_slate(self.scores(x, self.inverse, self.response, draws), self.k, draws)
            self._shown = (None, x.gather(1, slate[:, :, None].expand(-1, -1, x.shape[-1])))
            return slate
        # score only the users who will see a slate
        picked = top_slate(self.scores(x, self.inverse[rows], self.response[rows], draws), self.k, draws)
        self._shown = (rows, x.gather(1, picked[:, :, None].expand(-1, -1, x.shape[-1])))
        return fill_slates(picked, rows, batch)

    def response_prediction(self) -> tuple[str, torch.Tensor, torch.Tensor | None] | None:
        """The ridge estimate's prediction ``x·θ`` of the target of each item just shown."""
        if self._shown is None or self.inverse is None or self.response is None:
            return None
        rows, shown = self._shown
        theta = self.theta if rows is None else ridge_estimate(self.inverse[rows], self.response[rows])
        return self.target, (shown * theta[:, None, :]).sum(-1), rows

    @abstractmethod
    def scores(self, x: torch.Tensor, inverse: torch.Tensor, response: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        """``[B, N]`` score of each candidate (``x``: ``[B, N, F + 1]``) from the users' ``A⁻¹`` and ``b``
        (``draws``: random draws for these users)."""

    def learn(self, targets: torch.Tensor) -> None:
        assert self._shown is not None and self.inverse is not None and self.response is not None
        rows, shown = self.learning_rows(*self._shown)  # users shown a slate who count, and its features
        if rows is None:
            self.inverse = self.update(self.inverse, self.response, shown, targets)
        else:  # gathered copies, written back
            response = self.response[rows]
            self.inverse[rows] = self.update(self.inverse[rows], response, shown, targets[rows])
            self.response[rows] = response

    def reset(self, mask: torch.Tensor | None = None) -> None:
        if mask is None:
            self.inverse = self.response = None
            self.batch = None
        elif self.inverse is not None and self.response is not None:
            dim = self.inverse.shape[-1]
            self.inverse[mask] = torch.eye(dim, dtype=torch.float32, device=self.device) / self.ridge
            self.response[mask] = 0.0


class LinUCBRecommender(LinearBandit):
    """LinUCB: shows the top-K candidates by ``x·θ + alpha·sqrt(xᵀA⁻¹x)`` (Li et al., 2010).

    Args:
        slate_size: K; ``None`` for single-item environments.
        generator: the explicit random generator (on the environment's device).
        target: ``"reward"`` or ``"click"``.
        ridge: the prior precision λ (``> 0``).
        alpha: width of the confidence bonus (``>= 0``; 0 is greedy ridge regression).
    """

    name = "linucb"

    def __init__(
        self,
        slate_size: int | None,
        generator: torch.Generator,
        target: str = "reward",
        ridge: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(slate_size, generator, target, ridge)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)

    def scores(self, x: torch.Tensor, inverse: torch.Tensor, response: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        mean, variance = ridge_prediction(x, inverse, response)
        return mean + self.alpha * variance.sqrt()


class ThompsonRecommender(LinearBandit):
    """Linear Thompson sampling: draws ``θ ~ N(A⁻¹b, v²A⁻¹)`` per user and step and shows the
    top-K candidates by ``x·θ`` (Agrawal and Goyal, 2013).

    Args:
        slate_size: K; ``None`` for single-item environments.
        generator: the explicit random generator (on the environment's device).
        target: ``"reward"`` or ``"click"``.
        ridge: the prior precision λ (``> 0``).
        scale: v, the posterior scale (``> 0``; the noise std of the target under the model). The
            default 0.3 is within noise of the best of 0.1, 0.3, 0.5 and 1 on DriftingUsers-v0;
            1 keeps exploring for longer than a ~30-step session.
    """

    name = "thompson"

    def __init__(
        self,
        slate_size: int | None,
        generator: torch.Generator,
        target: str = "reward",
        ridge: float = 1.0,
        scale: float = 0.3,
    ) -> None:
        super().__init__(slate_size, generator, target, ridge)
        self.scale = check_positive("scale", scale)

    def scores(self, x: torch.Tensor, inverse: torch.Tensor, response: torch.Tensor, draws: UserDraws) -> torch.Tensor:
        factor, failed = torch.linalg.cholesky_ex(inverse)  # [B, F, F] lower, A⁻¹ = L Lᵀ
        # A float32 inverse that rounding made indefinite samples its mean for that step.
        factor = factor.masked_fill((failed != 0)[:, None, None], 0.0)
        mean = ridge_estimate(inverse, response)  # [B, F]
        noise = draws.randn(mean.shape[1]).to(mean.device)
        theta = mean + self.scale * (factor @ noise[:, :, None])[:, :, 0]
        return (x @ theta[:, :, None])[:, :, 0]
