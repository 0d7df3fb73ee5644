"""The exact posterior of the Darcy coefficient under its true prior: a reference, not a method.

Darcy's permeability is a thresholded Gaussian random field (:mod:`pdediff.pde.darcy`):
``a = a_high`` where ``g >= 0`` and ``a_low`` elsewhere, ``g = Phi (w * xi)``,
``xi ~ N(0, I)`` (:func:`pdediff.pde.grf.neumann_weights`).  Noise-free point observations
of ``a`` at nodes ``S`` say only the signs ``s_i`` of ``g`` there, so the posterior of ``g``
is the prior conditioned on ``s_i g_i > 0`` for ``i`` in ``S``:

1. ``g_S`` is a truncated Gaussian ``N(0, C_SS)`` restricted to the orthant of the signs; it
   is sampled by exact Hamiltonian Monte Carlo (Pakman & Paninski 2014, "Exact Hamiltonian
   Monte Carlo for truncated multivariate Gaussians", J. Comput. Graph. Stat. 23(2)), whose
   trajectories are sinusoids reflected at the walls of the orthant (:func:`tmvn_hmc`);
2. the rest of the field given ``g_S`` is Gaussian and drawn by Matheron's rule,
   ``g = g' + C_{.S} C_SS^{-1} (g_S - g'_S)`` with ``g'`` a fresh prior draw;
3. each member is thresholded and solved exactly (the reference solver).

The ensemble is a sample of the true posterior ``p(a, u | y)`` of data drawn from this prior
(as the test sets of ``pdediff generate darcy`` are): its mean is the Bayes estimate of ``u``
in squared error, so its error is the floor that no method, learned or classical, can beat
on average with the same sensors.  The benchmark tables use it to say how far the learned
prior is from the truth and what an error target is worth.  It needs the generating prior,
which real data do not come with; it is therefore a row of the benchmarks, not a solver.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import scipy.fft
import scipy.linalg

from pdediff.errors import PdediffError
from pdediff.pde.base import Array, Grid
from pdediff.pde.grf import neumann_weights
from pdediff.pde.registry import get_family

__all__ = ["darcy_exact_posterior", "tmvn_hmc"]

#: Trajectory length of the exact HMC (Pakman & Paninski: pi / 2 for an identity mass).
TRAVEL_TIME = math.pi / 2
_WALL_TOL = 1e-12


def _first_hit(pos: Array, vel: Array) -> tuple[float, int]:
    """Time and index of the first wall ``x_i = 0`` that ``x(t) = pos cos t + vel sin t``
    crosses outwards (``pos_i >= 0``); ``(inf, -1)`` if none within ``pi``."""
    amp = np.hypot(pos, vel)
    phase = np.arctan2(-vel, pos)  # x_i(t) = amp cos(t + phase), phase in [-pi/2, pi/2]
    t = np.pi / 2 - phase
    t[(amp < _WALL_TOL) | (t < _WALL_TOL)] = np.inf  # on the wall, moving inwards
    j = int(np.argmin(t))
    return (float(t[j]), j) if np.isfinite(t[j]) else (math.inf, -1)


def tmvn_hmc(
    cov: Array,
    signs: Array,
    n_samples: int,
    rng: np.random.Generator,
    *,
    burn_in: int = 100,
    thin: int = 2,
    max_bounces: int = 100_000,
) -> Array:
    """Draws of ``z ~ N(0, cov)`` conditioned on ``signs * z > 0`` (an orthant), by exact HMC.

    In the variables ``x = signs * z`` (covariance ``G = diag(s) cov diag(s)``) the walls are
    the coordinate planes.  With ``G = R R^T`` and ``x = R v`` the Hamiltonian is
    ``|v|^2/2 + |p|^2/2``, so ``v(t) = v cos t + p sin t``; everything is tracked in
    ``x``-coordinates (position ``x`` and velocity ``q = R p``), the first wall crossing has
    a closed form (:func:`_first_hit`), and a reflection at wall ``j`` is
    ``q <- q - 2 q_j G_{:j} / G_{jj}`` (the velocity's component along the wall's normal
    ``R^T e_j`` reversed).  Each trajectory runs for ``pi/2`` with a fresh ``p ~ N(0, I)``;
    every draw is exact (no rejection), only correlated with the previous ones.

    Parameters
    ----------
    cov
        ``(M, M)`` symmetric positive definite covariance.
    signs
        ``(M,)`` entries ``+1`` / ``-1``: the orthant.
    n_samples, burn_in, thin
        Draws returned, trajectories discarded first, trajectories per draw.
    max_bounces
        Guard against a trajectory that never ends (an ill-conditioned ``cov``).

    Returns
    -------
    numpy.ndarray
        ``(n_samples, M)`` draws of ``z``.
    """
    signs = np.asarray(signs, np.float64)
    if cov.shape != (signs.size, signs.size) or not np.all(np.abs(signs) == 1):
        raise PdediffError(
            f"tmvn_hmc needs an (M, M) covariance and M signs of +-1, got {cov.shape} "
            f"and {signs.shape}"
        )
    g = cov * signs[:, None] * signs[None, :]
    chol = scipy.linalg.cholesky(g, lower=True)
    x = np.sqrt(np.diag(g)) * 0.1 + 1e-3  # a point inside the orthant
    out = np.empty((n_samples, signs.size))
    for it in range(burn_in + n_samples * thin):
        q = chol @ rng.standard_normal(signs.size)
        left = TRAVEL_TIME
        for _ in range(max_bounces):
            t, j = _first_hit(x, q)
            step = min(t, left)
            x, q = x * math.cos(step) + q * math.sin(step), q * math.cos(step) - x * math.sin(step)
            left -= step
            if left <= 0:
                break
            x[j] = 0.0
            q = q - 2.0 * q[j] / g[j, j] * g[:, j]
        else:
            raise PdediffError(
                f"exact HMC: a trajectory hit more than {max_bounces} walls (is the "
                "covariance of the observed points ill-conditioned? two sensors on one node?)"
            )
        k = it - burn_in
        if k >= 0 and k % thin == thin - 1:
            out[k // thin] = np.maximum(x, 0.0) * signs
    return out


def _sensor_rows(weights: Array, idx: Array) -> Array:
    """``K`` with rows ``w * Phi^T e_i``, so that ``g_S = K xi`` (``xi`` flattened)."""
    deltas = np.zeros((idx.size, *weights.shape))
    deltas.reshape(idx.size, -1)[np.arange(idx.size), idx] = 1.0
    axes = tuple(range(1, weights.ndim + 1))
    rows = scipy.fft.dctn(deltas, type=2, norm="ortho", axes=axes) * weights
    return rows.reshape(idx.size, -1)


def darcy_exact_posterior(
    grid: Grid,
    params: Mapping[str, float] | None,
    obs_idx: Array,
    obs_values: Array,
    members: int,
    rng: np.random.Generator,
    *,
    burn_in: int = 100,
    thin: int = 2,
) -> dict[str, Array]:
    """Members of the exact posterior ``p(a, u | a at obs_idx)`` of Darcy's prior.

    Parameters
    ----------
    grid, params
        The Darcy grid and parameter overrides (``None``: the defaults); the prior is
        :func:`pdediff.pde.darcy.sample`'s with these ``alpha``, ``tau``, levels.
    obs_idx, obs_values
        Flat grid indices of the sensors (distinct nodes) and the observed ``a`` there
        (each ``a_low`` or ``a_high``, noise-free).
    members
        Ensemble size.
    burn_in, thin
        Of :func:`tmvn_hmc`.

    Returns
    -------
    dict
        ``{"a", "u"}``, float64 arrays ``(members, *grid.shape)``.
    """
    fam = get_family("darcy")
    p = fam.params(params)
    idx = np.asarray(obs_idx, np.int64).ravel()
    vals = np.asarray(obs_values, np.float64).ravel()
    if idx.size == 0 or idx.size != vals.size or np.unique(idx).size != idx.size:
        raise PdediffError(
            f"the exact Darcy posterior needs distinct sensor nodes with one value each, got "
            f"{idx.size} indices ({np.unique(idx).size} distinct) and {vals.size} values"
        )
    high = np.isclose(vals, p["a_high"])
    if not np.all(high | np.isclose(vals, p["a_low"])):
        raise PdediffError(
            f"observed a must be a_low = {p['a_low']} or a_high = {p['a_high']} (noise-free "
            "sensors of the thresholded field)"
        )
    weights = neumann_weights(grid.shape, p["alpha"], p["tau"], lengths=grid.lengths)
    rows = _sensor_rows(weights, idx)
    cov = rows @ rows.T
    z_s = tmvn_hmc(cov, np.where(high, 1.0, -1.0), members, rng, burn_in=burn_in, thin=thin)
    # Matheron's rule: a prior draw g', corrected to take the sampled values at the sensors.
    axes = tuple(range(1, len(grid.shape) + 1))
    xi = rng.standard_normal((members, *grid.shape))
    prior = scipy.fft.idctn(weights * xi, type=2, norm="ortho", axes=axes)
    coef = scipy.linalg.cho_solve(
        scipy.linalg.cho_factor(cov), (z_s - prior.reshape(members, -1)[:, idx]).T
    )
    cross = scipy.fft.idctn(
        rows.reshape(idx.size, *grid.shape) * weights, type=2, norm="ortho", axes=axes
    )  # Cov(g, g_S): one field per sensor
    g = prior + np.tensordot(coef.T, cross, axes=1)
    a = np.where(g >= 0.0, p["a_high"], p["a_low"])
    u = np.stack([fam.solve({"a": m}, grid, p)["u"] for m in a])
    return {"a": a, "u": u}
