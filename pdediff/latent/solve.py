"""Posterior sampling with a latent diffusion model: guidance through the decoder.

The latent model's denoiser ``D(z, sigma)`` runs in the (normalised, scaled) latent space
of an autoencoder; observations ``y = A x + noise`` are of the fields ``x = E^{-1}(z)``.
The DiffusionPDE step correction (Huang et al. 2024, arXiv:2406.17763) is applied to the
latent sampler state with the composed operator

.. math::  L_f(\\hat z_0) = \\zeta_f\\, \\big\\| A_f\\, \\mathcal D(\\hat z_0) - y_f \\big\\|,
           \\qquad z \\leftarrow z - \\nabla_z \\sum_f L_f\\big(D(z, \\sigma)\\big),

where :math:`\\mathcal D` is the decoder (after undoing the latent model's normalisation and
the scale factor) and :math:`A_f` the pixel-space interpolation operator of field ``f`` on
the autoencoder's normalised fields (:func:`pdediff.io.observations.build_operator`), as
in latent posterior sampling (Rout et al. 2023, "Solving Linear Inverse Problems Provably
via Posterior Sampling with Latent Diffusion Models", arXiv:2307.00619, the gradient
through the decoder without their gluing term).  An optional PDE term acts on the decoded
fields in the same way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping

import torch
import xarray as xr

from pdediff.core.guidance import ObservationTerm, ResidualTerm, step_correction
from pdediff.core.samplers import sample_heun
from pdediff.core.schedules import karras_sigmas
from pdediff.errors import PdediffError
from pdediff.io.conventions import attrs_params, history_line
from pdediff.io.fieldspec import FieldSpec
from pdediff.io.observations import (
    ObservationModel,
    Observations,
    build_operator,
    read_observations,
)
from pdediff.latent.autoencoder import Autoencoder, load_autoencoder
from pdediff.latent.encode import check_latent_spec
from pdediff.pde.registry import FAMILIES

__all__ = ["DEFAULT_OBS_WEIGHT", "latent_decoder", "latent_guidance_terms", "latent_solve"]

#: Observation weight of every field unless given.  Lower than the pixel solver's 1000: a
#: latent value moves a whole patch of the decoded fields, and larger weights overshoot
#: (measured on small Darcy models only; tune per model).
DEFAULT_OBS_WEIGHT = 10.0


def latent_decoder(
    ae: Autoencoder, latent_spec: FieldSpec
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z (normalised by the latent model's spec) -> x (normalised by ae.spec)``,
    differentiable."""
    return lambda z: ae.decode(latent_spec.denormalise(z))


def _weights(obs_weight: float | Mapping[str, float], fields: list[str]) -> dict[str, float]:
    if isinstance(obs_weight, Mapping):
        unknown = sorted(set(obs_weight) - set(fields))
        if unknown:
            raise PdediffError(
                f"observation weights for unknown field(s) {unknown}; the autoencoder has {fields}"
            )
        weights = {f: float(obs_weight.get(f, DEFAULT_OBS_WEIGHT)) for f in fields}
    else:
        weights = dict.fromkeys(fields, float(obs_weight))
    bad = {f: w for f, w in weights.items() if not w >= 0}
    if bad:
        raise PdediffError(f"observation weights must be >= 0, got {bad}")
    return weights


def _compose(op: Callable, inner: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: op(inner(z))


def _pde_term(ae: Autoencoder, decode: Callable, weight: float) -> list:
    from pdediff.solve.posterior import pde_residual_fn

    family = FAMILIES.get(str(ae.spec.attrs.get("pde")))
    if family is None:
        raise PdediffError(
            f"pde_weight > 0 needs the PDE family of the fields; the autoencoder's data name "
            f"{ae.spec.attrs.get('pde')!r}, not one of {sorted(FAMILIES)}: use pde_weight=0"
        )
    residual = pde_residual_fn(family, ae.spec, attrs_params(ae.spec.attrs, family.defaults))

    def scaled(z: torch.Tensor) -> torch.Tensor:
        r = residual(decode(z))
        return r / r[0].numel() ** 0.5  # an RMS, whatever the grid size

    return [(ResidualTerm(scaled, norm="l2", name="pde"), weight)]


def latent_guidance_terms(
    model: ObservationModel,
    decode: Callable[[torch.Tensor], torch.Tensor],
    weights: Mapping[str, float],
) -> list:
    """One :class:`~pdediff.core.guidance.ObservationTerm` ``||A_f(decode(z)) - y_f||``
    per observed field with a nonzero weight, as ``(term, weight)`` pairs."""
    terms = []
    slices = model.operator.slices()
    for op, name in zip(model.operator.operators, model.operator.names, strict=True):
        if weights[name] > 0:
            term = ObservationTerm(
                _compose(op, decode), model.y[slices[name]], norm="l2", name=f"obs_{name}"
            )
            terms.append((term, weights[name]))
    return terms


def _sample(denoiser, shape, sigmas, correction, seed: int, callback) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = sigmas[0] * torch.randn(*shape, generator=generator, dtype=sigmas.dtype)
    try:
        with torch.no_grad():
            z = sample_heun(
                denoiser, x, sigmas, generator=generator, callback=callback, correction=correction
            )
    except FloatingPointError as e:
        raise FloatingPointError(f"latent sampling blew up ({e}); lower obs_weight") from None
    if not torch.isfinite(z).all():
        raise FloatingPointError("the latent samples contain NaN/inf; lower obs_weight")
    return z


@torch.no_grad()
def _misfit(model: ObservationModel, x: torch.Tensor, spec: FieldSpec) -> dict[str, float]:
    """RMS of ``A_f x - y_f`` per field over members and observations, physical units."""
    out, slices = {}, model.operator.slices()
    for op, name in zip(model.operator.operators, model.operator.names, strict=True):
        r = op(x.double()) - model.y[slices[name]]
        out[name] = float(r.square().mean().sqrt()) * spec.std[spec.variables.index(name)]
    return out


def latent_solve(
    checkpoint: str | os.PathLike,
    autoencoder: str | os.PathLike | Autoencoder,
    observations: str | os.PathLike | Observations,
    *,
    task: str = "inverse",
    members: int = 8,
    steps: int = 32,
    obs_weight: float | Mapping[str, float] = DEFAULT_OBS_WEIGHT,
    pde_weight: float = 0.0,
    seed: int = 0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    progress: bool = True,
) -> xr.Dataset:
    """Posterior ensemble of the fields given observations, sampled in latent space.

    Parameters
    ----------
    checkpoint
        A latent diffusion model: ``pdediff train`` on ``pdediff encode`` output of
        ``autoencoder`` (its EMA weights are used).
    autoencoder
        The autoencoder directory (or a loaded :class:`Autoencoder`).
    observations
        An observation file (see docs/observations.md) or :class:`Observations` of the
        autoencoder's fields.
    task
        ``forward``, ``inverse`` or ``joint``: which observations are used (by role).
    members
        Ensemble size (one batch).
    steps, sigma_min, sigma_max, rho
        EDM Heun sampler on the Karras et al. (2022) schedule.
    obs_weight
        :math:`\\zeta_f` of the step correction, one for all fields or ``field -> zeta``
        (0: no guidance, an unconditional sample).
    pde_weight
        Weight of the PDE residual of the decoded fields (0: off).
    seed
        Seed of the initial noise and of the sampler.

    Returns
    -------
    xarray.Dataset
        As :func:`pdediff.solve.solve`: ``f`` (``member``, *grid), ``f_mean``, ``f_std``,
        the observations used, and attributes (model, autoencoder, task, weights, members,
        seed, run time, ``obs_rmse_<f>`` of the members).

    Raises
    ------
    PdediffError
        Bad settings, a latent model not trained in this autoencoder's latent space,
        observations of fields or on a grid the autoencoder does not have.
    FloatingPointError
        The sample blew up (lower ``obs_weight``).
    """
    from tqdm.auto import tqdm

    from pdediff.solve.api import posterior_dataset, select_task
    from pdediff.train import load_checkpoint

    if members < 1 or steps < 1:
        raise PdediffError(f"members and steps must be >= 1, got {members} and {steps}")
    if not pde_weight >= 0:
        raise PdediffError(f"pde_weight must be >= 0, got {pde_weight}")
    denoiser, latent_spec, _ = load_checkpoint(checkpoint)
    ae = autoencoder if isinstance(autoencoder, Autoencoder) else load_autoencoder(autoencoder)
    check_latent_spec(latent_spec, ae, f"the latent model {checkpoint}")
    if not isinstance(observations, Observations):
        observations = read_observations(observations)
    obs = select_task(observations, ae.spec, task)
    model = build_operator(obs, ae.spec, normalised=True)
    decode = latent_decoder(ae, latent_spec)
    weights = _weights(obs_weight, list(ae.spec.variables))
    terms = latent_guidance_terms(model, decode, weights)
    if pde_weight > 0:
        terms += _pde_term(ae, decode, pde_weight)
    correction = step_correction(denoiser, terms) if terms else None
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, dtype=torch.float32)
    shape = (members, len(latent_spec.variables), *latent_spec.shape)
    t0 = time.perf_counter()
    with tqdm(
        total=steps, desc=f"latent {task} posterior", unit="step", disable=not progress
    ) as bar:
        z = _sample(denoiser, shape, sigmas, correction, seed, lambda info: bar.update(1))
    with torch.no_grad():
        x = decode(z)
    seconds = time.perf_counter() - t0
    attrs = {
        "model": str(checkpoint),
        "autoencoder": str(ae.path),
        "method": "latent diffusion, step correction through the decoder",
        "task": task,
        "steps": steps,
        "obs_weight": json.dumps(weights),
        "pde_weight": pde_weight,
        "members": members,
        "seed": seed,
        "run_time_s": round(seconds, 3),
        "history": history_line(f"solve-latent {task} with {checkpoint} and {ae.path}"),
    }
    attrs.update({f"obs_rmse_{f}": v for f, v in _misfit(model, x, ae.spec).items()})
    return posterior_dataset(x, ae.spec, obs, attrs)
