"""The ``pdediff`` command line: generate, inspect, import, plot, train, export, finetune,
solve, sds, evaluate, demo, train-autoencoder, encode, solve-latent, solve-cascade.

Every user-facing error (bad value, missing file or key, existing output) is printed as one
line naming what is wrong, with exit status 2 and no partial output.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from pdediff.errors import PdediffError, PdediffWarning


def _params(pairs: list[str] | None, flag: str = "--param") -> dict[str, float]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise PdediffError(f"{flag} expects NAME=NUMBER, got {pair!r}") from None
    return out


def _condition_values(pairs: list[str] | None) -> dict[str, float | str] | None:
    """``--condition NAME=VALUE`` pairs: numbers for scalar conditions, text for a label
    (e.g. ``pde=poisson``)."""
    out: dict[str, float | str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not (sep and name.strip() and value.strip()):
            raise PdediffError(f"--condition expects NAME=VALUE, got {pair!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            out[name.strip()] = value.strip()
    return out or None


def _ranges(pairs: list[str] | None) -> dict[str, tuple[float, float]]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        low, colon, high = value.partition(":")
        try:
            if not (sep and colon and name.strip()):
                raise ValueError
            out[name.strip()] = (float(low), float(high))
        except ValueError:
            raise PdediffError(f"--param-range expects NAME=LOW:HIGH, got {pair!r}") from None
    return out


def _mapping(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        src, sep, dst = pair.partition("=")
        if not sep or not src or not dst:
            raise PdediffError(f"--var expects NAME_IN_FILE=NAME, got {pair!r}")
        out[src] = dst
    return out


def _check_output(output: str, overwrite: bool) -> None:
    """Fail on a bad suffix or an existing output before any work."""
    from pdediff.io.store import output_format

    output_format(output)
    if Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")


def _misfit_text(ds) -> str:
    """``field rmse, ...`` from a result's ``obs_rmse_<field>`` attributes."""
    prefix = "obs_rmse_"
    return ", ".join(
        f"{k[len(prefix) :]} {v:.3g}" for k, v in ds.attrs.items() if k.startswith(prefix)
    )


def cmd_generate(args: argparse.Namespace) -> None:
    from pdediff.generate import generate, read_recipe
    from pdediff.io.store import write_fields

    recipe = read_recipe(args.recipe) if args.recipe else {}
    family = args.family or recipe.get("family")
    if not family:
        raise PdediffError("give a PDE family (e.g. `pdediff generate darcy ...`) or --recipe")
    _check_output(args.output, args.overwrite)
    # a flag beats the recipe, whether it gives a value or a range
    flag_params, flag_ranges = _params(args.param), _ranges(args.param_range)
    recipe_params, recipe_ranges = recipe.get("params", {}), recipe.get("param_ranges", {})
    params = {k: v for k, v in recipe_params.items() if k not in flag_ranges} | flag_params
    ranges = {k: v for k, v in recipe_ranges.items() if k not in flag_params} | flag_ranges
    n = args.n if args.n is not None else recipe.get("n", 16)
    res = args.resolution if args.resolution is not None else recipe.get("resolution", 64)
    seed = args.seed if args.seed is not None else recipe.get("seed", 0)
    t0 = time.perf_counter()
    ds = generate(
        family,
        n,
        res,
        seed=seed,
        params=params,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.quiet,
        param_ranges=ranges,
    )
    write_fields(ds, args.output, overwrite=args.overwrite)
    dt = time.perf_counter() - t0
    print(
        f"wrote {args.output}: {n} {family} samples at {res} ({dt:.1f} s, {n / dt:.2f} samples/s)"
    )


def cmd_inspect(args: argparse.Namespace) -> None:
    from pdediff.inspection import format_report
    from pdediff.io.store import open_fields

    ds = open_fields(args.file)
    print(format_report(ds, args.file, None if args.all else args.samples))


def cmd_merge(args: argparse.Namespace) -> None:
    from pdediff.io.conditions import label_datasets
    from pdediff.io.store import open_fields, write_fields

    if args.values and len(args.values) != len(args.files):
        raise PdediffError(
            f"--values gives {len(args.values)} label values for {len(args.files)} files"
        )
    opened = [open_fields(f) for f in args.files]
    values = args.values or [
        _label_value(ds, f, args.label) for ds, f in zip(opened, args.files, strict=True)
    ]
    if len(set(values)) != len(values):
        raise PdediffError(f"the files' label values {values} repeat; give distinct --values")
    ds = label_datasets(dict(zip(values, opened, strict=True)), args.label)
    write_fields(ds, args.output, overwrite=args.overwrite)
    counts = ", ".join(f"{v}: {d.sizes['sample']}" for v, d in zip(values, opened, strict=True))
    print(f"wrote {args.output}: {ds.sizes['sample']} samples labelled {args.label} ({counts})")


def _label_value(ds, path: str, label: str) -> str:
    """A file's label value: its ``pde`` attribute for the label ``pde``, else its name."""
    if label == "pde" and ds.attrs.get("pde"):
        return str(ds.attrs["pde"])
    return Path(path).stem


def cmd_import(args: argparse.Namespace) -> None:
    from pdediff.io.importers import import_file
    from pdediff.io.store import open_fields

    dims = tuple(args.dims.split(",")) if args.dims else None
    path = import_file(
        args.format,
        args.src,
        args.output,
        overwrite=args.overwrite,
        variables=_mapping(args.var),
        dims=dims,
        pde=args.pde,
        length=args.length,
        periodic=args.periodic,
    )
    ds = open_fields(path)
    print(
        f"wrote {path}: {dict(ds.sizes)}, variables {list(ds.data_vars)}, "
        f"pde {ds.attrs.get('pde')!r}"
    )


def cmd_plot(args: argparse.Namespace) -> None:
    from pdediff.io.store import atomic_path, open_fields
    from pdediff.plot import plot_fields

    ds = open_fields(args.file)
    variables = args.variables.split(",") if args.variables else None
    with atomic_path(args.output, args.overwrite) as tmp:
        plot_fields(ds, tmp, variables, args.samples)  # tmp keeps the name, so the format
    print(f"wrote {args.output}")


def _stage_flags(args: argparse.Namespace) -> dict | None:
    """The ``[cascade]`` settings given by --stage, --from, --to, --aug-noise-max, --aug-blur."""
    given = {
        "stage": args.stage,
        "from_shape": None if args.from_res is None else [args.from_res] * 2,
        "to_shape": None if args.to_res is None else [args.to_res] * 2,
        "aug_noise_max": args.aug_noise_max,
        "aug_blur": args.aug_blur,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if given and args.stage is None:
        raise PdediffError(
            "--from, --to and --aug-* train a super-resolution stage: add --stage sr"
        )
    return given or None


def cmd_train(args: argparse.Namespace) -> None:
    import dataclasses

    from pdediff.train import TrainConfig, load_config, train

    if args.resume and args.overwrite:
        raise PdediffError("give --resume or --overwrite, not both")
    config = load_config(args.config) if args.config else None
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "condition": [c.strip() for c in args.condition.split(",")] if args.condition else None,
        "label": args.label,
        "p_uncond": args.p_uncond,
        "cascade": _stage_flags(args),
    }
    if any(v is not None for v in overrides.values()):
        if config is None and args.resume and Path(args.out, "state.json").is_file():
            from pdediff.train import read_checkpoint

            config = read_checkpoint(args.out).config  # flags change the resumed run's
        config = config or TrainConfig()
        if overrides["cascade"] is not None:  # the flags change the config's [cascade]
            overrides["cascade"] = {**dataclasses.asdict(config.cascade), **overrides["cascade"]}
        config = config.replace(**overrides)
    try:
        result = train(
            args.data,
            args.out,
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            device=args.device,
            progress=not args.quiet,
            command="pdediff " + shlex.join(args.argv),
        )
    except KeyboardInterrupt:
        print(
            f"pdediff train: interrupted; the last checkpoint is in {args.out} "
            f"(continue with --resume)",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    if os.environ.get("RANK", "0") == "0":  # one line under torchrun
        print(
            f"trained {args.out} to step {result.step}: loss {result.loss:.4g} "
            f"({result.seconds:.1f} s)"
        )


def cmd_export(args: argparse.Namespace) -> None:
    from pdediff.train.export import export_model

    out = export_model(
        args.checkpoint,
        args.out,
        name=args.name,
        command=args.command_line,
        data_recipe=args.data_recipe,
        metrics=args.metrics,
        overwrite=args.overwrite,
    )
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote {out}: model {args.name!r} ({size:.1f} MB) with MODEL_CARD.md and card.json")


def cmd_finetune(args: argparse.Namespace) -> None:
    from pdediff.adapters import finetune

    if args.full and args.lora_rank is not None:
        raise PdediffError("give --lora-rank (LoRA) or --full (all weights), not both")
    if args.full and args.alpha is not None:
        raise PdediffError("--alpha is a LoRA setting; it does nothing with --full")
    try:
        result = finetune(
            args.base,
            args.data,
            args.out,
            method="full" if args.full else "lora",
            rank=4 if args.lora_rank is None else args.lora_rank,
            alpha=args.alpha,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            prior_weight=args.prior_weight,
            prior_samples=args.prior_samples,
            prior_steps=args.prior_steps,
            save_every=args.save_every,
            seed=args.seed,
            device=args.device,
            overwrite=args.overwrite,
            progress=not args.quiet,
            command="pdediff " + shlex.join(args.argv),
        )
    except KeyboardInterrupt:
        saved = f"the last save is in {args.out}" if args.save_every else "no output was written"
        print(f"pdediff finetune: interrupted; {saved}", file=sys.stderr)
        raise SystemExit(130) from None
    prior = f", prior loss {result.prior_loss:.4g}" if args.prior_weight > 0 else ""
    print(
        f"wrote {result.path} ({result.method}, {result.trainable_parameters} of "
        f"{result.total_parameters} parameters trained): loss {result.loss:.4g}{prior} "
        f"({result.seconds:.1f} s)"
    )


def cmd_solve(args: argparse.Namespace) -> None:
    from pdediff.io.store import atomic_path, write_fields
    from pdediff.solve import solve
    from pdediff.solve.experts import parse_expert

    _check_output(args.output, args.overwrite)
    protocol = {
        "steps": args.steps,
        "sampler": args.sampler,
        "pde_weight": args.pde_weight,
        "obs_weight": _params(args.obs_weight, "--obs-weight") or None,
        "cfg_weight": args.cfg_weight,
    }
    ds = solve(
        args.model,
        args.obs,
        task=args.task,
        members=args.members,
        preset=args.preset,
        protocol=protocol,
        use_pde=not args.no_pde,
        seed=args.seed,
        progress=not args.quiet,
        condition=_condition_values(args.condition),
        experts=[parse_expert(e) for e in args.expert or []] or None,
        main_weight=args.main_weight,
    )
    write_fields(ds, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}: {args.members} members, {ds.attrs['run_time_s']} s")
    if args.plot:
        from pdediff.plot import plot_posterior

        with atomic_path(args.plot, args.overwrite) as tmp:
            plot_posterior(ds, tmp)
        print(f"figure -> {args.plot}")


def cmd_sds(args: argparse.Namespace) -> None:
    from pdediff.io.store import write_fields
    from pdediff.sds import sds_solve

    _check_output(args.output, args.overwrite)
    ds = sds_solve(
        args.model,
        args.obs,
        renderer=args.renderer,
        steps=args.steps,
        lr=args.lr,
        obs_weight=args.obs_weight,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
        weighting=args.weighting,
        schedule=args.schedule,
        ellipses=args.ellipses,
        seed=args.seed,
        progress=not args.quiet,
    )
    write_fields(ds, args.output, overwrite=args.overwrite)
    misfit = _misfit_text(ds)
    print(
        f"wrote {args.output}: {args.renderer}, {args.steps} steps, {ds.attrs['run_time_s']} s"
        + (f"; observation RMSE {misfit}" if misfit else "")
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    import shlex

    from pdediff.solve.evaluate import evaluate, table_paths

    json_path, csv_path = table_paths(args.out)
    before = json_path.stat().st_mtime_ns if json_path.exists() else None
    protocol = {
        "steps": args.steps,
        "pde_weight": args.pde_weight,
        "obs_weight": _params(args.obs_weight, "--obs-weight") or None,
    }
    try:
        result = evaluate(
            args.model,
            args.data,
            task=args.task,
            points=args.points,
            fraction=args.fraction,
            noise_std=args.noise_std,
            layout=args.layout,
            members=args.members,
            preset=args.preset,
            protocol=protocol,
            use_pde=not args.no_pde,
            samples=args.samples,
            seed=args.seed,
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
            baseline_options={"fno": {"model": args.fno_model}} if args.fno_model else None,
            out=json_path,
            overwrite=args.overwrite,
            resume=args.resume,
            command="pdediff " + shlex.join(args.argv),
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        written = json_path.exists() and json_path.stat().st_mtime_ns != before
        done = f"the samples done are in {json_path}" if written else "no output was written"
        print(f"pdediff evaluate: interrupted; {done}", file=sys.stderr)
        raise SystemExit(130) from None
    print(result.format())
    print(f"wrote {json_path} and {csv_path}: {len(result.rows)} rows")


def cmd_demo(args: argparse.Namespace) -> None:
    from pdediff.demo import run_demo

    run_demo(
        Path(args.out),
        model=args.model,
        seed=args.seed,
        points=args.points,
        members=args.members,
        steps=args.steps,
    )


def cmd_train_autoencoder(args: argparse.Namespace) -> None:
    from pdediff.latent import train_autoencoder

    try:
        result = train_autoencoder(
            args.data,
            args.out,
            downsample=args.downsample,
            latent_channels=args.latent_channels,
            kl_weight=args.kl_weight,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            base_channels=args.base_channels,
            loss=args.loss,
            save_every=args.save_every,
            overwrite=args.overwrite,
            device=args.device,
            progress=not args.quiet,
            command="pdediff " + shlex.join(args.argv),
        )
    except KeyboardInterrupt:
        print(
            f"pdediff train-autoencoder: interrupted; the last save (every {args.save_every} "
            f"steps) is in {args.out}, if any",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    errors = ", ".join(f"{f} {e:.3g}" for f, e in result.reconstruction.items())
    print(
        f"wrote {result.path}: x{args.downsample} latents with {args.latent_channels} "
        f"channels, scale factor {result.scale_factor:.4g}, {result.steps} steps, loss "
        f"{result.loss:.4g} ({result.seconds:.1f} s)"
    )
    print(f"held-out relative L2: {errors}")
    r = result.residual
    if r:
        print(
            f"{r['pde']} residual (relative): originals {r['original']:.3g}, "
            f"reconstructions {r['reconstructed']:.3g}"
        )


def cmd_encode(args: argparse.Namespace) -> None:
    from pdediff.io.store import open_fields, write_fields
    from pdediff.latent import encode_dataset, load_autoencoder

    _check_output(args.output, args.overwrite)
    ae = load_autoencoder(args.autoencoder)
    z = encode_dataset(ae, open_fields(args.data), sample=args.sample, seed=args.seed)
    write_fields(z, args.output, overwrite=args.overwrite)
    grid = "x".join(str(n) for n in ae.latent_shape)
    print(
        f"wrote {args.output}: {z.sizes['sample']} samples, {ae.latent_channels} latent "
        f"channels on a {grid} grid; train a latent model with "
        f"`pdediff train --data {args.output} --out LDM`"
    )


def _latent_obs_weight(values: list[str] | None) -> float | dict[str, float] | None:
    """``--obs-weight W`` (every field) or repeated ``--obs-weight FIELD=W``."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        try:
            return float(values[0])
        except ValueError:
            raise PdediffError(f"--obs-weight expects W or FIELD=W, got {values[0]!r}") from None
    return _params(values, "--obs-weight")


def cmd_solve_latent(args: argparse.Namespace) -> None:
    from pdediff.io.store import write_fields
    from pdediff.latent import latent_solve

    _check_output(args.output, args.overwrite)
    weight = _latent_obs_weight(args.obs_weight)
    ds = latent_solve(
        args.model,
        args.autoencoder,
        args.obs,
        task=args.task,
        members=args.members,
        steps=args.steps,
        pde_weight=args.pde_weight,
        seed=args.seed,
        progress=not args.quiet,
        **({"obs_weight": weight} if weight is not None else {}),
    )
    write_fields(ds, args.output, overwrite=args.overwrite)
    misfit = _misfit_text(ds)
    print(
        f"wrote {args.output}: {args.members} members, {ds.attrs['run_time_s']} s; "
        f"observation RMSE {misfit}"
    )


def _one_or_list(values: list | None):
    """A flag given once as its value, several times as the list (``None`` if absent)."""
    if values is None:
        return None
    return values[0] if len(values) == 1 else values


def cmd_solve_cascade(args: argparse.Namespace) -> None:
    from pdediff.cascade import cascade_solve
    from pdediff.io.store import write_fields

    _check_output(args.output, args.overwrite)
    protocol = {
        "sampler": args.sampler,
        "pde_weight": args.pde_weight,
        "obs_weight": _params(args.obs_weight, "--obs-weight") or None,
        "cfg_weight": args.cfg_weight,
    }
    ds = cascade_solve(
        args.stages,
        args.obs,
        task=args.task,
        members=args.members,
        steps=_one_or_list(args.steps),
        aug_level=_one_or_list(args.aug_level),
        seed=args.seed,
        preset=args.preset,
        protocol=protocol,
        use_pde=not args.no_pde,
        condition=_condition_values(args.condition),
        progress=not args.quiet,
    )
    write_fields(ds, args.output, overwrite=args.overwrite)
    grid = "x".join(str(ds.sizes[d]) for d in ds[next(iter(ds.data_vars))].dims[1:])
    print(
        f"wrote {args.output}: {args.members} members on {grid} after {len(args.stages)} "
        f"stages, {ds.attrs['run_time_s']} s"
    )


def build_parser() -> argparse.ArgumentParser:
    from pdediff import __version__

    p = argparse.ArgumentParser(
        prog="pdediff",
        description="Forward and inverse PDE problems, with uncertainty, by sampling guided "
        "diffusion models over gridded xarray data.",
    )
    p.add_argument("--version", action="version", version=f"pdediff {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a dataset with a reference solver")
    g.add_argument("family", nargs="?", help="darcy, poisson, helmholtz, burgers, navier_stokes")
    g.add_argument("--recipe", help="TOML recipe (see datasets/); flags override it")
    g.add_argument("--n", type=int, help="number of samples")
    g.add_argument("--resolution", type=int, help="grid points per dim")
    g.add_argument("--seed", type=int, help="master seed (same data for any --workers)")
    g.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="override a PDE parameter (repeatable), e.g. --param tau=4",
    )
    g.add_argument(
        "--param-range",
        action="append",
        metavar="NAME=LOW:HIGH",
        help="draw a PDE parameter uniformly per sample (repeatable), e.g. --param-range k=1:4; "
        "stored as the variable NAME",
    )
    g.add_argument("--workers", type=int, default=1, help="local Dask worker processes")
    g.add_argument("--scheduler", help="address of a running dask.distributed scheduler")
    g.add_argument("-o", "--output", required=True, help="OUT.nc (NetCDF4) or OUT.zarr")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("inspect", help="variables, ranges, NaNs and PDE residual of a file")
    i.add_argument("file")
    i.add_argument("--samples", type=int, default=16, help="samples to compute residuals for")
    i.add_argument("--all", action="store_true", help="residuals of every sample")
    i.set_defaults(func=cmd_inspect)

    mg = sub.add_parser(
        "merge", help="one labelled dataset of several (e.g. PDE families), for train --label"
    )
    mg.add_argument("files", nargs="+", help="field files with the same variables and grid")
    mg.add_argument("-o", "--output", required=True, help="the merged file")
    mg.add_argument("--label", default="pde", help="name of the per-sample label (default pde)")
    mg.add_argument(
        "--values",
        nargs="+",
        help="label value of each file (default: its pde attribute for --label pde, else "
        "the file name)",
    )
    mg.add_argument("--overwrite", action="store_true", help="replace an existing output")
    mg.set_defaults(func=cmd_merge)

    m = sub.add_parser("import", help="convert PDEBench / FNO / neuraloperator / npy files")
    m.add_argument("format", help="pdebench, fno-mat, neuraloperator, diffusionpde-npy")
    m.add_argument("src", help="input file (or directory for diffusionpde-npy)")
    m.add_argument("-o", "--output", required=True, help="OUT.nc or OUT.zarr")
    m.add_argument(
        "--var",
        action="append",
        metavar="IN=OUT",
        help="rename a variable of the file (repeatable), e.g. --var coeff=a",
    )
    m.add_argument("--dims", help="grid dim names, comma separated, e.g. t,x")
    m.add_argument("--pde", help="PDE family of the data (written to attrs)")
    m.add_argument(
        "--length", type=float, default=1.0, help="domain length when the file has no coordinates"
    )
    grid_kind = m.add_mutually_exclusive_group()
    grid_kind.add_argument(
        "--periodic",
        dest="periodic",
        action="store_const",
        const=True,
        help="the spatial dims are periodic (default: from the format)",
    )
    grid_kind.add_argument(
        "--bounded",
        dest="periodic",
        action="store_const",
        const=False,
        help="the spatial dims are a box with boundary nodes",
    )
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=cmd_import)

    pl = sub.add_parser("plot", help="figure of a few samples of a field file")
    pl.add_argument("file")
    pl.add_argument("-o", "--output", required=True, help="figure path (.png, .pdf, .svg)")
    pl.add_argument("--variables", help="comma-separated variables (default: all)")
    pl.add_argument("--samples", type=int, default=4)
    pl.add_argument("--overwrite", action="store_true")
    pl.set_defaults(func=cmd_plot)

    t = sub.add_parser("train", help="train a diffusion model on a field file")
    t.add_argument("--data", required=True, help="training fields (.nc or .zarr)")
    t.add_argument("--out", required=True, help="checkpoint directory")
    t.add_argument("--config", help="training config (.toml or .json); flags override it")
    t.add_argument("--steps", type=int, help="total optimisation steps")
    t.add_argument("--batch-size", type=int, help="samples per step over all processes")
    t.add_argument("--seed", type=int, help="seed of weights, batches and noise")
    t.add_argument(
        "--condition",
        metavar="NAME[,NAME]",
        help="condition the model on per-sample variables of the data, e.g. k (from "
        "generate --param-range)",
    )
    t.add_argument(
        "--label",
        metavar="NAME",
        help="condition the model on a per-sample variable of class names, e.g. pde (from "
        "pdediff merge --label pde)",
    )
    t.add_argument(
        "--p-uncond",
        type=float,
        help="probability of dropping the condition, for classifier-free guidance (default 0.1)",
    )
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    t.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--stage",
        choices=["base", "sr"],
        help="cascade stage: sr trains a super-resolution stage (needs --from and --to)",
    )
    t.add_argument("--from", dest="from_res", type=int, help="sr: grid points of the low res")
    t.add_argument("--to", dest="to_res", type=int, help="sr: grid points of the data")
    t.add_argument(
        "--aug-noise-max",
        type=float,
        help="sr: conditioning augmentation, noise level s ~ U[0, MAX] (normalised units)",
    )
    t.add_argument(
        "--aug-blur", type=float, help="sr: Gaussian blur of the conditioning, U[0, B] grid steps"
    )
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="slim model for sampling (EMA weights) with a model card")
    x.add_argument("checkpoint", help="checkpoint directory (pdediff train)")
    x.add_argument("out", help="model directory to write")
    x.add_argument("--name", required=True, help="model name, e.g. darcy64")
    x.add_argument(
        "--command",
        dest="command_line",
        metavar="COMMAND",
        help="the training command, when the checkpoint did not record it",
    )
    x.add_argument("--data-recipe", help="how the training data were made (a command)")
    x.add_argument(
        "--metrics",
        action="append",
        help="evaluation table (pdediff evaluate --out TABLE.json); repeatable",
    )
    x.add_argument("--overwrite", action="store_true", help="replace an exported model")
    x.set_defaults(func=cmd_export)

    f = sub.add_parser("finetune", help="few-shot fine-tuning: LoRA adapter or all weights")
    f.add_argument("--base", required=True, help="base checkpoint (pdediff train or export)")
    f.add_argument("--data", required=True, help="the few new samples (.nc or .zarr)")
    f.add_argument(
        "--out",
        required=True,
        help="ADAPTER.safetensors (+ .json); with --full a checkpoint directory",
    )
    f.add_argument("--lora-rank", type=int, help="rank of the LoRA adapters (default 4)")
    f.add_argument("--alpha", type=float, help="LoRA scale numerator (default: the rank)")
    f.add_argument("--full", action="store_true", help="train every weight, write a checkpoint")
    f.add_argument(
        "--prior-weight", type=float, default=0.0, help="prior-preservation weight (0: off)"
    )
    f.add_argument("--prior-samples", type=int, default=64, help="samples drawn from the base")
    f.add_argument("--prior-steps", type=int, default=18, help="Heun steps per prior sample")
    f.add_argument("--steps", type=int, default=200, help="optimisation steps")
    f.add_argument("--batch-size", type=int, default=8, help="new samples per step")
    f.add_argument("--lr", type=float, help="learning rate (default 1e-3 LoRA, 1e-4 full)")
    f.add_argument("--save-every", type=int, help="also write the output every N steps")
    f.add_argument("--seed", type=int, default=0, help="seed of adapters, batches and noise")
    f.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_finetune)

    s = sub.add_parser("solve", help="posterior ensemble of a trained model given observations")
    s.add_argument("--model", required=True, help="checkpoint directory (pdediff train)")
    s.add_argument("--obs", required=True, help="observations (.nc, .zarr or .csv)")
    s.add_argument("--task", default="joint", choices=["forward", "inverse", "joint"])
    s.add_argument("--members", type=int, default=8, help="ensemble size")
    s.add_argument("--preset", default="pdediff", choices=["pdediff", "joint", "diffusionpde"])
    s.add_argument("--steps", type=int, help="sampler steps (overrides the preset)")
    s.add_argument("--sampler", help="euler, heun, euler_maruyama, pc, dpmpp_2m")
    s.add_argument(
        "--obs-weight",
        action="append",
        metavar="FIELD=W",
        help="observation guidance weight of a field (repeatable)",
    )
    s.add_argument("--pde-weight", type=float, help="PDE residual guidance weight")
    s.add_argument("--no-pde", action="store_true", help="observations only")
    s.add_argument(
        "--condition",
        action="append",
        metavar="NAME=VALUE",
        help="condition of a conditioned model (repeatable), e.g. --condition k=4, a label "
        "--condition pde=poisson",
    )
    s.add_argument(
        "--cfg-weight",
        type=float,
        help="classifier-free guidance weight of a conditioned model (default 0: conditional)",
    )
    s.add_argument(
        "--expert",
        action="append",
        metavar="DIR:W",
        help="product of experts: add checkpoint DIR with weight W (repeatable; same "
        "variables, grid and normalisation as --model)",
    )
    s.add_argument(
        "--main-weight",
        type=float,
        help="weight of --model among the experts (default 1 - sum of the expert weights)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", required=True, help="POSTERIOR.nc or .zarr")
    s.add_argument("--plot", help="figure: truth-free summary (mean, std, observations)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_solve)

    sd = sub.add_parser(
        "sds", help="fit a renderer (neural field, ellipses, physics) by score distillation"
    )
    sd.add_argument("--model", required=True, help="checkpoint directory (pdediff train)")
    sd.add_argument("--obs", required=True, help="observations (.nc, .zarr or .csv)")
    sd.add_argument(
        "--renderer",
        default="physics-ellipses",
        choices=["neural-field", "ellipses", "physics-ellipses", "physics-neural-field"],
        help="what is optimised; physics-* solve u from a (Darcy, Poisson, Helmholtz)",
    )
    sd.add_argument("--steps", type=int, default=200, help="Adam steps")
    sd.add_argument("--lr", type=float, default=2e-2, help="Adam learning rate")
    sd.add_argument(
        "--obs-weight", type=float, default=10.0, help="weight of the squared observation misfit"
    )
    sd.add_argument("--sigma-min", type=float, default=0.02, help="smallest noise level")
    sd.add_argument("--sigma-max", type=float, default=3.0, help="largest noise level")
    sd.add_argument("--weighting", default="sigma2", choices=["sigma2", "sigma", "uniform"])
    sd.add_argument("--schedule", default="log-uniform", choices=["log-uniform", "anneal"])
    sd.add_argument("--ellipses", type=int, default=4, help="ellipses of the ellipse renderers")
    sd.add_argument("--seed", type=int, default=0, help="seed of the renderer and the noise")
    sd.add_argument("-o", "--out", "--output", dest="output", required=True, help="RESULT.nc")
    sd.add_argument("--overwrite", action="store_true")
    sd.add_argument("--quiet", action="store_true")
    sd.set_defaults(func=cmd_sds)

    ev = sub.add_parser("evaluate", help="score a model and baselines on a test set")
    ev.add_argument("--model", required=True, help="checkpoint directory (pdediff train)")
    ev.add_argument("--data", required=True, help="test fields (.nc or .zarr)")
    ev.add_argument("--task", required=True, choices=["forward", "inverse", "joint"])
    count = ev.add_mutually_exclusive_group()
    count.add_argument("--points", type=int, default=500, help="observed points per field")
    count.add_argument("--fraction", type=float, help="observed fraction of the grid points")
    ev.add_argument("--layout", default="points", choices=["points", "columns"])
    ev.add_argument("--noise-std", type=float, default=0.0, help="observation noise (physical)")
    ev.add_argument("--members", type=int, default=8, help="ensemble size")
    ev.add_argument("--preset", default="pdediff", choices=["pdediff", "joint", "diffusionpde"])
    ev.add_argument("--steps", type=int, help="sampler steps (overrides the preset)")
    ev.add_argument(
        "--obs-weight",
        action="append",
        metavar="FIELD=W",
        help="observation guidance weight of a field (repeatable)",
    )
    ev.add_argument("--pde-weight", type=float, help="PDE residual guidance weight")
    ev.add_argument("--no-pde", action="store_true", help="observations only")
    ev.add_argument("--samples", type=int, help="evaluate the first K test samples")
    ev.add_argument(
        "--methods",
        default="diffusion",
        help="comma separated: diffusion,interp-solve,pde-fit,fno,exact-prior (the last: "
        "forward Darcy, the exact posterior under the test data's own prior, a reference)",
    )
    ev.add_argument(
        "--fno-model",
        metavar="DIR",
        help="FNO baseline of the task (FNOBaseline.save directory), for --methods fno",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of observations and sampling")
    ev.add_argument("--out", required=True, help="TABLE.json (rows also to TABLE.csv)")
    wr = ev.add_mutually_exclusive_group()
    wr.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    wr.add_argument(
        "--resume",
        action="store_true",
        help="continue an existing --out made with the same settings (keep its samples)",
    )
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="the main job for a newcomer (see README)")
    d.add_argument("--out", default="pdediff-demo", help="folder for the demo's outputs")
    d.add_argument(
        "--model",
        help="a shipped model (darcy64, poisson32, ...) or a model directory (default: darcy64)",
    )
    d.add_argument("--seed", type=int, default=0, help="seed of truth, sensors and sampling")
    d.add_argument("--points", type=int, default=500, help="sensors per field")
    d.add_argument("--members", type=int, default=8, help="ensemble size")
    d.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    d.set_defaults(func=cmd_demo)

    ta = sub.add_parser("train-autoencoder", help="train a field autoencoder for latent diffusion")
    ta.add_argument("--data", required=True, help="training fields (.nc or .zarr)")
    ta.add_argument("--out", required=True, help="autoencoder directory")
    ta.add_argument("--downsample", type=int, default=4, help="grid reduction per dim: 2-16")
    ta.add_argument("--latent-channels", type=int, default=4, help="channels of the latents")
    ta.add_argument("--base-channels", type=int, default=32, help="width of the finest level")
    ta.add_argument("--kl-weight", type=float, default=1e-6, help="KL weight (SD: 1e-6)")
    ta.add_argument("--loss", default="l1", choices=["l1", "l2"], help="reconstruction loss")
    ta.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    ta.add_argument("--batch-size", type=int, default=16, help="samples per step")
    ta.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate")
    ta.add_argument("--save-every", type=int, default=500, help="also write every N steps")
    ta.add_argument("--seed", type=int, default=0, help="seed of weights, batches, noise")
    ta.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0")
    ta.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ta.add_argument("--quiet", action="store_true", help="no progress bar")
    ta.set_defaults(func=cmd_train_autoencoder)

    en = sub.add_parser("encode", help="latents of a field file, to train a latent model on")
    en.add_argument("--autoencoder", required=True, help="autoencoder directory")
    en.add_argument("--data", required=True, help="fields (.nc or .zarr)")
    en.add_argument("-o", "--output", required=True, help="LATENTS.nc or .zarr")
    en.add_argument("--sample", action="store_true", help="draw z ~ q(z|x), not its mean")
    en.add_argument("--seed", type=int, default=0, help="seed of the draws with --sample")
    en.add_argument("--overwrite", action="store_true")
    en.set_defaults(func=cmd_encode)

    sl = sub.add_parser(
        "solve-latent", help="posterior ensemble of a latent diffusion model given observations"
    )
    sl.add_argument("--model", required=True, help="latent model (pdediff train on latents)")
    sl.add_argument("--autoencoder", required=True, help="autoencoder directory")
    sl.add_argument("--obs", required=True, help="observations (.nc, .zarr or .csv)")
    sl.add_argument("--task", default="inverse", choices=["forward", "inverse", "joint"])
    sl.add_argument("--members", type=int, default=8, help="ensemble size")
    sl.add_argument("--steps", type=int, default=32, help="Heun steps")
    sl.add_argument(
        "--obs-weight",
        action="append",
        metavar="W|FIELD=W",
        help="observation guidance weight: one for all fields, or per field (repeatable)",
    )
    sl.add_argument("--pde-weight", type=float, default=0.0, help="PDE residual weight")
    sl.add_argument("--seed", type=int, default=0)
    sl.add_argument("-o", "--output", required=True, help="POSTERIOR.nc or .zarr")
    sl.add_argument("--overwrite", action="store_true")
    sl.add_argument("--quiet", action="store_true")
    sl.set_defaults(func=cmd_solve_latent)

    sc = sub.add_parser(
        "solve-cascade", help="posterior ensemble through a base model and super-resolution stages"
    )
    sc.add_argument(
        "--stages", nargs="+", required=True, help="BASE SR1 [SR2 ...] checkpoint directories"
    )
    sc.add_argument("--obs", required=True, help="observations (.nc, .zarr or .csv)")
    sc.add_argument("--task", default="inverse", choices=["forward", "inverse", "joint"])
    sc.add_argument("--members", type=int, default=8, help="ensemble size")
    sc.add_argument("--preset", default="pdediff", choices=["pdediff", "joint", "diffusionpde"])
    sc.add_argument("--steps", type=int, nargs="+", help="sampler steps: one, or one per stage")
    sc.add_argument(
        "--aug-level",
        type=float,
        nargs="+",
        default=[0.0],
        help="noise level s of the conditioning: one, or one per super-resolution stage",
    )
    sc.add_argument("--sampler", help="euler, heun, euler_maruyama, pc, dpmpp_2m")
    sc.add_argument(
        "--obs-weight",
        action="append",
        metavar="FIELD=W",
        help="observation guidance weight of a field (repeatable)",
    )
    sc.add_argument("--pde-weight", type=float, help="PDE residual guidance weight")
    sc.add_argument("--no-pde", action="store_true", help="observations only")
    sc.add_argument(
        "--condition",
        action="append",
        metavar="NAME=VALUE",
        help="condition of the conditioned stages (repeatable), e.g. --condition k=4",
    )
    sc.add_argument("--cfg-weight", type=float, help="classifier-free guidance of the base")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("-o", "--output", required=True, help="POSTERIOR.nc or .zarr")
    sc.add_argument("--overwrite", action="store_true")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(func=cmd_solve_cascade)
    return p


@contextlib.contextmanager
def _plain_warnings(command: str) -> Iterator[None]:
    """Print pdediff's own warnings as one line, like its errors (no file and source line)."""
    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, PdediffWarning):
                print(f"pdediff {command}: warning: {message}", file=sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with _plain_warnings(args.command):
            args.func(args)
    except (PdediffError, FileExistsError, FileNotFoundError, FloatingPointError) as e:
        print(f"pdediff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pdediff {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
