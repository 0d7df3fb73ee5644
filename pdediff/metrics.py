"""Scores of predicted fields and of ensembles against the truth.

Deterministic scores (relative L2, the thresholded pixel error rate of DiffusionPDE's Darcy
coefficient, PDE residual norms, energy spectra) and probabilistic scores of ensembles (CRPS,
interval coverage, spread--skill ratio, rank histogram), plus :func:`summarize`, which
gathers them per field.

Conventions
-----------
* Inputs are numpy arrays or torch tensors (any device, any float dtype, gradients are
  dropped); they are scored in float64 and results are numpy float64 arrays or floats.
* Deterministic scores take ``pred`` and ``truth`` of one shape ``(N, *grid)``: the sample
  axis first, reductions over the grid axes, one value per sample.
* Ensembles are ``(M, *grid)`` against ``truth`` of shape ``grid`` (one case: the score is
  reduced to a float) or ``(N, M, *grid)`` against ``(N, *grid)`` (one score per sample).
  The member axis (0 or 1) is inferred from the shapes; pass ``member_axis`` when both
  readings fit (``N == M`` and equal trailing shapes).
* Bad shapes and arguments raise :class:`MetricsError`, a ``ValueError``.

References
----------
Gneiting, T. & Raftery, A. E. (2007). Strictly proper scoring rules, prediction, and
estimation. JASA 102(477), 359-378.
Ferro, C. A. T. (2014). Fair scores for ensemble forecasts. Q. J. R. Meteorol. Soc. 140,
1917-1923.
Hamill, T. M. (2001). Interpretation of rank histograms for verifying ensemble forecasts.
Mon. Wea. Rev. 129, 550-560.
Fortin, V., Abaza, M., Anctil, F. & Turcotte, R. (2014). Why should ensemble spread match
the RMSE of the ensemble mean? J. Hydrometeorol. 15, 1708-1713.
Huang, J. et al. (2024). DiffusionPDE: generative PDE-solving under partial observation.
NeurIPS (arXiv 2406.17763).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from pdediff.errors import PdediffError
from pdediff.pde.base import Grid, PDEFamily

ArrayLike = np.ndarray | torch.Tensor | float | Sequence[float]

__all__ = [
    "MetricsError",
    "ResidualNorms",
    "coverage",
    "crps_ensemble",
    "energy_spectrum",
    "rank_histogram",
    "relative_l2",
    "residual_norm",
    "spectrum_distance",
    "spectrum_error",
    "spread_skill",
    "summarize",
    "threshold_error_rate",
]


class MetricsError(PdediffError):
    """Bad input to a metric: mismatched shapes, missing axes, invalid parameters."""


# --------------------------------------------------------------------------- helpers


def _np(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array (torch tensors are detached and copied to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"{name} must be a numeric array or tensor: {exc}") from exc


def _pair(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``truth`` as float64 arrays of one shape ``(N, *grid)``."""
    p, t = _np(pred, "pred"), _np(truth, "truth")
    if p.shape != t.shape:
        raise MetricsError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    if p.ndim < 2:
        raise MetricsError(
            f"pred and truth must be (N, *grid) with a sample axis first, got shape {p.shape}; "
            "add a leading axis of size 1 for a single field"
        )
    return p, t


def _grid_axes(ndim: int, axes: int | Sequence[int] | None) -> tuple[int, ...]:
    """The reduction axes: all but the sample axis by default; axis 0 is never reduced."""
    if axes is None:
        return tuple(range(1, ndim))
    out = tuple(int(a) % ndim for a in np.atleast_1d(axes))
    if 0 in out:
        raise MetricsError(f"axes {axes} include the sample axis 0; reductions are per sample")
    return out


def _ensemble(
    ensemble: ArrayLike, truth: ArrayLike, member_axis: int | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Ensemble moved to ``(M, *shape)`` and truth ``shape``; the flag says whether axis 0
    of ``truth`` is a sample axis (input ``(N, M, *grid)``)."""
    x, y = _np(ensemble, "ensemble"), _np(truth, "truth")
    if x.ndim != y.ndim + 1:
        raise MetricsError(
            f"ensemble must have one axis more than truth (members), got ensemble {x.shape} "
            f"and truth {y.shape}; expected (M, *grid) vs grid or (N, M, *grid) vs (N, *grid)"
        )
    fits = [ax for ax in (0, 1) if ax < x.ndim and np.delete(x.shape, ax).tolist() == list(y.shape)]
    if member_axis is None:
        if len(fits) != 1:
            raise MetricsError(
                f"cannot tell the member axis of ensemble {x.shape} against truth {y.shape}"
                + (": both 0 and 1 fit; pass member_axis" if fits else "")
            )
        member_axis = fits[0]
    elif member_axis not in fits:
        raise MetricsError(
            f"member_axis={member_axis} does not fit ensemble {x.shape} against truth {y.shape}"
        )
    if x.shape[member_axis] < 1:
        raise MetricsError("ensemble has no members")
    return np.moveaxis(x, member_axis, 0), y, member_axis == 1


def _reduce(pointwise: np.ndarray, per_sample: bool) -> np.ndarray | float:
    """Mean over the grid axes: per sample ``(N,)`` or one float."""
    if not per_sample:
        return float(pointwise.mean())
    return pointwise.reshape(pointwise.shape[0], -1).mean(axis=1)


# --------------------------------------------------------------------- deterministic


def relative_l2(
    pred: ArrayLike, truth: ArrayLike, axes: int | Sequence[int] | None = None
) -> np.ndarray:
    r"""Relative L2 error per sample, the metric of DiffusionPDE's Table 1 (as a fraction).

    .. math:: e_n = \frac{\lVert \hat u_n - u_n \rVert_2}{\lVert u_n \rVert_2}

    Parameters
    ----------
    pred, truth
        Arrays of one shape ``(N, *grid)``.
    axes
        Axes of the norm; default all but the sample axis 0.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` (more if ``axes`` leaves axes out); multiply by 100 for percent.  Where
        ``||truth|| = 0`` the error is ``inf``, or ``0`` if ``pred`` is zero there too.
    """
    p, t = _pair(pred, truth)
    ax = _grid_axes(p.ndim, axes)
    num = np.sqrt(np.sum((p - t) ** 2, axis=ax))
    den = np.sqrt(np.sum(t**2, axis=ax))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(num == 0.0, 0.0, num / den)


def threshold_error_rate(
    pred: ArrayLike,
    truth: ArrayLike,
    threshold: float | None = None,
    levels: tuple[float, float] = (3.0, 12.0),
    axes: int | Sequence[int] | None = None,
) -> np.ndarray:
    r"""Pixel error rate of a two-valued field after thresholding (DiffusionPDE's Darcy ``a``).

    Both fields are classified by ``x >= threshold``; the score is the fraction of pixels
    whose classes differ:

    .. math:: e_n = \frac{1}{|\Omega|} \sum_{i \in \Omega}
              \mathbb 1[\hat a_{n,i} \ge \theta] \ne \mathbb 1[a_{n,i} \ge \theta]

    Parameters
    ----------
    pred, truth
        Arrays of one shape ``(N, *grid)``, in the units of ``levels``.
    threshold
        ``theta``; default the midpoint of ``levels`` (7.5 for Darcy's ``{3, 12}``).
    levels
        The two values the true field takes, ``(a_low, a_high)`` (in normalised units if
        the fields are normalised).
    axes
        Axes to average over; default all but the sample axis 0.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` fractions in ``[0, 1]``.
    """
    p, t = _pair(pred, truth)
    if threshold is None:
        lo, hi = (float(v) for v in levels)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
            raise MetricsError(f"levels must be two distinct finite values, got {levels}")
        threshold = 0.5 * (lo + hi)
    ax = _grid_axes(p.ndim, axes)
    return np.mean((p >= threshold) != (t >= threshold), axis=ax)


class ResidualNorms(NamedTuple):
    """Per-sample residual norms, each ``(N,)``."""

    relative: np.ndarray
    """``||r|| / max_k ||term_k||`` (:meth:`PDEFamily.relative_residual`)."""
    rms: np.ndarray
    """``sqrt(mean_i r_i^2)`` over the interior, in the units of the equation."""


def residual_norm(
    family: PDEFamily,
    fields: Mapping[str, ArrayLike],
    grid: Grid,
    params: Mapping[str, float] | None = None,
) -> ResidualNorms:
    """Residual of fields under a PDE family's discrete equation, per sample.

    Parameters
    ----------
    family
        The :class:`~pdediff.pde.base.PDEFamily` whose residual is evaluated.
    fields
        ``name -> (N, *grid.shape)`` arrays or tensors (numpy arrays are scored in float64,
        tensors in their own dtype and device).
    grid
        The grid of the fields (spacing from its coordinates).
    params
        Overrides of the family's default parameters.

    Returns
    -------
    ResidualNorms
        ``relative`` (from ``family.relative_residual``) and ``rms``, each ``(N,)``.
    """
    p = family.params(params)
    tensors = {
        k: v if isinstance(v, torch.Tensor) else torch.from_numpy(_np(v, k))
        for k, v in fields.items()
    }
    with torch.no_grad():
        rel = family.relative_residual(tensors, grid, p)
        r = family.residual(tensors, grid, p)
        rms = r.flatten(1).pow(2).mean(dim=1).sqrt()
    return ResidualNorms(_np(rel, "relative"), _np(rms, "rms"))


# --------------------------------------------------------------------------- spectra


def _periods(lengths: float | Sequence[float] | Grid, shape: tuple[int, int]) -> np.ndarray:
    """Periods ``(Ly, Lx)`` of the last two axes; for a Grid, ``n h`` per dim."""
    if isinstance(lengths, Grid):
        if len(lengths.dims) < 2 or lengths.shape[-2:] != shape:
            raise MetricsError(f"grid shape {lengths.shape} does not end with field shape {shape}")
        dims = lengths.dims[-2:]
        return np.array([n * lengths.spacing(d) for n, d in zip(shape, dims, strict=True)])
    periods = np.broadcast_to(np.asarray(lengths, dtype=np.float64), (2,)).copy()
    if not np.all(periods > 0):
        raise MetricsError(f"lengths must be positive, got {lengths}")
    return periods


def energy_spectrum(
    field: ArrayLike, lengths: float | Sequence[float] | Grid = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    r"""Shell-summed power spectrum of 2-D fields (the last two axes), by periodic FFT.

    With Fourier coefficients :math:`\hat f_{\mathbf k} = \frac{1}{n_y n_x}\sum_j f_j
    e^{-i \mathbf k \cdot \mathbf x_j}` on wavenumbers :math:`\mathbf k = 2\pi(m_y/L_y,
    m_x/L_x)`, shell :math:`j` gathers :math:`|\mathbf k| \in [(j-\tfrac12)\Delta k,
    (j+\tfrac12)\Delta k)`, :math:`\Delta k = 2\pi/\max(L_y, L_x)`, and

    .. math:: E(k_j) = \sum_{\mathbf k \in \text{shell } j} |\hat f_{\mathbf k}|^2,
              \qquad \sum_j E(k_j) = \overline{f^2}

    (Parseval: the shells sum to the mean square of the field; halve it for the kinetic
    energy of a velocity component).  The FFT treats the field as periodic: for a
    non-periodic field this is the spectrum of the field as given, whose jump at the
    boundary leaks power into high wavenumbers (no window, no detrending).

    Parameters
    ----------
    field
        ``(..., ny, nx)``.
    lengths
        Periods ``(Ly, Lx)`` or one for both, in physical units: ``n h`` per dim.  A
        :class:`~pdediff.pde.base.Grid` gives ``n h`` from its last two dims (for a node
        grid that is one spacing more than ``grid.length``).

    Returns
    -------
    k : numpy.ndarray
        ``(K,)`` shell wavenumbers ``j dk`` (radians per unit length), from 0.
    E : numpy.ndarray
        ``(..., K)``.
    """
    f = _np(field, "field")
    if f.ndim < 2:
        raise MetricsError(f"field must have at least two (grid) axes, got shape {f.shape}")
    ny, nx = f.shape[-2:]
    ly, lx = _periods(lengths, (ny, nx))
    power = np.abs(np.fft.fft2(f) / (ny * nx)) ** 2
    ky = 2 * np.pi * np.fft.fftfreq(ny, d=ly / ny)
    kx = 2 * np.pi * np.fft.fftfreq(nx, d=lx / nx)
    dk = 2 * np.pi / max(ly, lx)
    shell = np.rint(np.hypot(*np.meshgrid(ky, kx, indexing="ij")) / dk).astype(np.int64)
    n_shells = int(shell.max()) + 1
    flat = power.reshape(-1, ny * nx)
    rows = np.arange(flat.shape[0])[:, None] * n_shells
    spectrum = np.bincount((shell.ravel() + rows).ravel(), flat.ravel(), rows.size * n_shells)
    return dk * np.arange(n_shells), spectrum.reshape(*f.shape[:-2], n_shells)


def spectrum_error(
    pred: ArrayLike,
    truth: ArrayLike,
    lengths: float | Sequence[float] | Grid = 1.0,
    floor: float = 1e-10,
) -> np.ndarray:
    r"""Relative log-spectrum error: RMS of the log10 ratio of shell spectra, per sample.

    .. math:: e_n = \Big[\frac{1}{K}\sum_{j=1}^{K}
              \log_{10}^2 \frac{E_{\hat u_n}(k_j) + \delta_n}{E_{u_n}(k_j) + \delta_n}
              \Big]^{1/2}, \qquad \delta_n = \text{floor} \cdot \textstyle\sum_j E_{u_n}(k_j)

    over the shells ``j = 1..K``, ``K = min(ny, nx) // 2`` inside the Nyquist circle (the
    mean, ``j = 0``, is left out).  It is scale-free: ``e = 0.301`` is a factor 2 in power
    at every shell; the floor keeps shells with no true power finite.

    Parameters
    ----------
    pred, truth
        ``(N, ..., ny, nx)`` of one shape.
    lengths
        As in :func:`energy_spectrum`.
    floor
        ``delta`` relative to the total true power.

    Returns
    -------
    numpy.ndarray
        ``(N,)``.
    """
    p, t = _pair(pred, truth)
    _, ep = energy_spectrum(p, lengths)
    _, et = energy_spectrum(t, lengths)
    k_max = min(p.shape[-2:]) // 2
    if k_max < 1:
        raise MetricsError(f"fields of shape {p.shape} have no wavenumber shell to compare")
    d = spectrum_distance(ep, et, k_max, floor).reshape(p.shape[0], -1)
    return np.sqrt(np.mean(d**2, axis=1))  # every shell of every channel weighs the same


def spectrum_distance(
    spectrum: ArrayLike, reference: ArrayLike, k_max: int, floor: float = 1e-10
) -> np.ndarray:
    r"""The log-spectrum distance of :func:`spectrum_error` between shell spectra
    (e.g. two ensemble-mean spectra of :func:`energy_spectrum`), over their last axis.

    .. math:: d = \Big[\frac{1}{K}\sum_{j=1}^{K}
              \log_{10}^2 \frac{E(k_j) + \delta}{E_\mathrm{ref}(k_j) + \delta}\Big]^{1/2},
              \qquad \delta = \text{floor} \cdot \textstyle\sum_j E_\mathrm{ref}(k_j),

    ``K = k_max`` shells (the mean, ``j = 0``, left out); 0.301 is a factor 2 in power at
    every shell.  Returns the leading shape of the inputs (a 0-d array for 1-d spectra).
    """
    e, ref = np.asarray(spectrum, np.float64), np.asarray(reference, np.float64)
    delta = floor * ref.sum(axis=-1, keepdims=True) + np.finfo(np.float64).tiny
    log_ratio = np.log10((e + delta) / (ref + delta))[..., 1 : k_max + 1]
    return np.sqrt(np.mean(log_ratio**2, axis=-1))


# -------------------------------------------------------------------------- ensembles


def crps_ensemble(
    ensemble: ArrayLike,
    truth: ArrayLike,
    *,
    fair: bool = False,
    member_axis: int | None = None,
    reduce: bool = True,
) -> np.ndarray | float:
    r"""Continuous ranked probability score of an ensemble (Gneiting & Raftery 2007, eq. 21).

    Exact for the empirical CDF of the members :math:`x_1 \le \dots \le x_M` (sorted):

    .. math:: \mathrm{CRPS} = \mathbb E|X - y| - \tfrac12 \mathbb E|X - X'|
              = \frac1M \sum_i |x_i - y| - \frac{1}{M^2} \sum_{i=1}^{M} (2i - M - 1)\, x_i

    in ``O(M log M)``; ``fair=True`` replaces ``1/M^2`` by ``1/(M(M-1))``, the unbiased
    estimate of the CRPS of the distribution the members are drawn from (Ferro 2014).  With
    one member the CRPS is ``|x - y|``.  Lower is better; units of the field.

    Parameters
    ----------
    ensemble, truth
        ``(M, *grid)`` vs ``grid``, or ``(N, M, *grid)`` vs ``(N, *grid)``.
    fair
        Use the unbiased ("fair") estimator; needs ``M >= 2``.
    member_axis
        0 or 1; inferred from the shapes by default.
    reduce
        Average over the grid (per sample); ``False`` returns the pointwise score,
        shaped like ``truth``.

    Returns
    -------
    float or numpy.ndarray
        A float for ``(M, *grid)``, ``(N,)`` for ``(N, M, *grid)``, ``truth.shape`` if not
        ``reduce``.
    """
    x, y, per_sample = _ensemble(ensemble, truth, member_axis)
    m = x.shape[0]
    if fair and m < 2:
        raise MetricsError("the fair CRPS needs at least 2 members")
    skill = np.mean(np.abs(x - y), axis=0)
    weights = (2.0 * np.arange(1, m + 1) - m - 1).reshape(-1, *([1] * y.ndim))
    spread = np.sum(weights * np.sort(x, axis=0), axis=0) / (m * (m - 1) if fair else m * m)
    crps = skill - spread
    return _reduce(crps, per_sample) if reduce else crps


def coverage(
    ensemble: ArrayLike,
    truth: ArrayLike,
    level: float = 0.9,
    *,
    member_axis: int | None = None,
    reduce: bool = True,
) -> np.ndarray | float:
    r"""Fraction of points whose truth lies in the ensemble's central ``level`` interval.

    The interval is ``[q_{(1-level)/2}, q_{(1+level)/2}]`` of the members, with quantiles at
    the Weibull plotting positions ``k / (M + 1)`` (numpy ``method="weibull"``): the expected
    coverage of a calibrated ensemble is then ``level``, exactly when ``(M + 1)(1 +- level)/2``
    are integers and to within interpolation otherwise (numpy's default linear quantiles
    under-cover: 0.82 for ``level = 0.9``, ``M = 20``).  Positions beyond the extreme
    members are clipped to them, so ``level`` is reachable only for
    ``M >= (1 + level) / (1 - level)`` (19 members for 0.9).

    Parameters
    ----------
    ensemble, truth
        ``(M, *grid)`` vs ``grid``, or ``(N, M, *grid)`` vs ``(N, *grid)``.
    level
        Nominal coverage in ``(0, 1)``.
    member_axis, reduce
        As in :func:`crps_ensemble` (``reduce=False`` gives a boolean-valued float array).

    Returns
    -------
    float or numpy.ndarray
        Coverage in ``[0, 1]``: a float, ``(N,)``, or pointwise.
    """
    if not 0.0 < level < 1.0:
        raise MetricsError(f"level must be in (0, 1), got {level}")
    x, y, per_sample = _ensemble(ensemble, truth, member_axis)
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2], axis=0, method="weibull")
    inside = ((lo <= y) & (y <= hi)).astype(np.float64)
    return _reduce(inside, per_sample) if reduce else inside


def spread_skill(
    ensemble: ArrayLike, truth: ArrayLike, *, member_axis: int | None = None
) -> np.ndarray | float:
    r"""Spread--skill ratio: ensemble spread over the RMSE of the ensemble mean.

    .. math:: \mathrm{SSR} = \sqrt{\frac{M+1}{M}\,\overline{s^2}} \Big/
              \sqrt{\overline{(\bar x - y)^2}}

    with :math:`s^2` the unbiased (``ddof=1``) member variance and bars the mean over the
    grid points.  For members and truth drawn from one distribution,
    :math:`\mathbb E(\bar x - y)^2 = \frac{M+1}{M}\mathbb E s^2`, so a calibrated ensemble
    has SSR = 1 for any ``M``; < 1 is under-dispersed (over-confident), > 1 over-dispersed
    (Fortin et al. 2014, who also show that variances, not standard deviations, must be
    averaged).

    Parameters
    ----------
    ensemble, truth
        ``(M, *grid)`` vs ``grid``, or ``(N, M, *grid)`` vs ``(N, *grid)``; ``M >= 2``.
    member_axis
        As in :func:`crps_ensemble`.

    Returns
    -------
    float or numpy.ndarray
        A float, or ``(N,)`` (one ratio per sample, over its grid points).
    """
    x, y, per_sample = _ensemble(ensemble, truth, member_axis)
    m = x.shape[0]
    if m < 2:
        raise MetricsError("the spread-skill ratio needs at least 2 members")
    spread2 = _reduce(np.var(x, axis=0, ddof=1), per_sample)
    mse = _reduce((x.mean(axis=0) - y) ** 2, per_sample)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt((m + 1) / m * np.asarray(spread2) / np.asarray(mse))
    return float(ratio) if not per_sample else ratio


def rank_histogram(
    ensemble: ArrayLike,
    truth: ArrayLike,
    rng: np.random.Generator | int | None = None,
    *,
    member_axis: int | None = None,
) -> np.ndarray:
    r"""Talagrand rank histogram: counts of the truth's rank among the members (Hamill 2001).

    The rank of ``y`` is ``#{x_i < y}`` plus, for ties, a uniform draw from
    ``0..#{x_i = y}`` (the random tie-breaking of Hamill 2001), so ranks lie in ``0..M``.
    A calibrated ensemble gives a flat histogram (``count / total ~ 1 / (M + 1)``); a U
    shape means under-dispersion, a dome over-dispersion, a slope bias.

    Parameters
    ----------
    ensemble, truth
        ``(M, *grid)`` vs ``grid``, or ``(N, M, *grid)`` vs ``(N, *grid)``.
    rng
        Generator or seed for breaking ties (used only if there are ties).
    member_axis
        As in :func:`crps_ensemble`.

    Returns
    -------
    numpy.ndarray
        ``(M + 1,)`` int64 counts over all samples and grid points.
    """
    x, y, _ = _ensemble(ensemble, truth, member_axis)
    below = np.sum(x < y, axis=0)
    ties = np.sum(x == y, axis=0)
    ranks = below
    if np.any(ties):
        gen = np.random.default_rng(rng)
        ranks = below + gen.integers(0, ties + 1)
    return np.bincount(ranks.ravel(), minlength=x.shape[0] + 1).astype(np.int64)


# -------------------------------------------------------------------------- summary


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def summarize(
    ensemble: Mapping[str, ArrayLike],
    truth: Mapping[str, ArrayLike],
    *,
    level: float = 0.9,
    levels: Mapping[str, tuple[float, float]] | None = None,
    lengths: float | Sequence[float] | Grid | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of an ensemble against the truth, per field, as mean and std over samples.

    Per field and sample: ``rel_l2_mean`` (:func:`relative_l2` of the ensemble mean),
    ``rel_l2_member`` (mean over members of each member's relative L2, the single-sample
    score of DiffusionPDE), ``crps``, ``coverage`` (at ``level``), ``spread_skill`` (if
    ``M >= 2``); for fields in ``levels``, ``error_rate_mean`` and ``error_rate_member``
    (:func:`threshold_error_rate` of the ensemble mean and mean over members); if
    ``lengths`` is given, ``spectrum_error`` (mean over members, 2-D fields).

    Parameters
    ----------
    ensemble
        ``name -> (N, M, *grid)``.
    truth
        ``name -> (N, *grid)``, the same names.
    level
        Nominal level of :func:`coverage`.
    levels
        ``name -> (low, high)`` of two-valued fields (e.g. ``{"a": (3.0, 12.0)}``).
    lengths
        Periods for :func:`spectrum_error`; ``None`` skips spectra.

    Returns
    -------
    dict
        ``{name: {metric: {"mean": float, "std": float}}}`` (std with ``ddof=0``).
    """
    if set(ensemble) != set(truth):
        raise MetricsError(
            f"ensemble and truth must have the same fields, got {sorted(ensemble)} and "
            f"{sorted(truth)}"
        )
    levels = dict(levels or {})
    unknown = sorted(set(levels) - set(truth))
    if unknown:
        raise MetricsError(f"levels given for unknown field(s) {unknown}")
    return {
        name: _summarize_field(ensemble[name], truth[name], level, levels.get(name), lengths, name)
        for name in truth
    }


def _summarize_field(
    ensemble: ArrayLike,
    truth: ArrayLike,
    level: float,
    levels: tuple[float, float] | None,
    lengths: float | Sequence[float] | Grid | None,
    name: str,
) -> dict[str, dict[str, float]]:
    xs, y = _np(ensemble, f"ensemble[{name!r}]"), _np(truth, f"truth[{name!r}]")
    x, y, _ = _ensemble(xs, y, member_axis=1)  # x: (M, N, *grid)
    if y.ndim < 2:
        raise MetricsError(f"field {name!r}: truth must be (N, *grid), got {y.shape}")
    out = {
        "rel_l2_mean": relative_l2(x.mean(axis=0), y),
        "rel_l2_member": np.mean([relative_l2(xm, y) for xm in x], axis=0),
        "crps": crps_ensemble(xs, y, member_axis=1),
        "coverage": coverage(xs, y, level, member_axis=1),
    }
    if x.shape[0] >= 2:
        out["spread_skill"] = spread_skill(xs, y, member_axis=1)
    if levels is not None:
        out["error_rate_mean"] = threshold_error_rate(x.mean(axis=0), y, levels=levels)
        rates = [threshold_error_rate(xm, y, levels=levels) for xm in x]
        out["error_rate_member"] = np.mean(rates, axis=0)
    if lengths is not None and y.ndim >= 3:
        out["spectrum_error"] = np.mean([spectrum_error(xm, y, lengths) for xm in x], axis=0)
    return {k: _stats(v) for k, v in out.items()}
