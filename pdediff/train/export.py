"""Export a training checkpoint as a slim model for sampling, with a generated model card.

An exported model is a checkpoint directory (:mod:`pdediff.train.checkpoint`) without the
raw weights and the optimizer state, a few MB instead of three times that::

    config.json        architecture and training config, as in the checkpoint
    fieldspec.json     variables, grid and normalisation of the training data
    ema.safetensors    the EMA weights, the ones used for sampling
    state.json         the checkpoint's, plus an "exported" entry (source, date, name)
    log.jsonl          the training log (when the checkpoint has one)
    card.json          the facts of the model card, for machines
    MODEL_CARD.md      the same facts, for people

The card is generated from those files, never written by hand: every number in it comes
from ``config.json``, ``fieldspec.json``, ``state.json`` or ``log.jsonl``, or from what the
caller hands :func:`export_model` (the training command when ``state.json`` lacks it, the
data recipe, the ``pdediff evaluate`` table).  A fact that is not recorded is said to be
so.  :func:`~pdediff.train.checkpoint.load_checkpoint` loads an exported model for
sampling (EMA weights only); it cannot be resumed.

>>> from pdediff.train.export import export_model
>>> export_model("ckpt", "darcy64", name="darcy64", metrics="eval.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdediff import __version__
from pdediff.errors import PdediffError
from pdediff.io.conventions import attrs_params
from pdediff.train.checkpoint import (
    EXPORTED_KEY,
    Checkpoint,
    _swap_in,
    read_checkpoint,
)

__all__ = [
    "CARD_FORMAT",
    "build_card",
    "export_model",
    "final_loss",
    "read_evaluation",
    "render_card",
]

CARD_FORMAT = "pdediff-model-card"
CARD_VERSION = 1
#: Files copied unchanged from the checkpoint (``log.jsonl`` and ``guidance.json``, the
#: tuned guidance weights of :mod:`pdediff.solve.api`, only when present).
COPIED = ("config.json", "fieldspec.json", "ema.safetensors", "log.jsonl", "guidance.json")
#: The final loss is the mean over this many last lines of ``log.jsonl``.
FINAL_LOSS_LINES = 5
#: Keys of a ``pdediff evaluate`` document left out of the card (bulky, per sample).
_EVAL_BULK = ("rows", "rank_histogram")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# -- export -------------------------------------------------------------------------------
def export_model(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str,
    command: str | None = None,
    data_recipe: str | None = None,
    metrics: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write the slim, sampling-only copy of a checkpoint with its model card.

    Parameters
    ----------
    checkpoint
        A checkpoint directory written by ``pdediff train`` (or an exported model).
    out
        The model directory to write (see the module docstring); its parent is created.
    name
        The model's name (letters, digits, ``_ . -``), e.g. ``"darcy64"``.
    command
        The training command, for a checkpoint whose ``state.json`` lacks ``"command"``
        (it overrides the recorded one).
    data_recipe
        How the training data were made, e.g. the ``pdediff generate ...`` command;
        default: the data's source, size and fingerprint from ``state.json``.
    metrics
        The document written by ``pdediff evaluate`` (a mapping, or the path of its JSON),
        or a list of them (e.g. the inverse and the forward task); each ``"summary"``
        becomes a metrics table of the card.  None: no evaluation recorded.
    overwrite
        Replace ``out`` if it is an exported model already.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    CheckpointError
        The checkpoint is incomplete or its EMA weights do not fit its architecture.
    FileExistsError
        ``out`` exists and ``overwrite`` is false.
    PdediffError
        A bad name, an ``out`` that is not an exported model, or a bad ``metrics`` file.
    """
    ckpt = read_checkpoint(checkpoint)
    out = Path(out)
    _check_name(name)
    _check_out(ckpt.path, out, overwrite)
    many = metrics is not None and not isinstance(metrics, (Mapping, str, os.PathLike))
    evaluation = [read_evaluation(m) for m in metrics] if many else read_evaluation(metrics)
    # loading checks that the shipped weights fit the architecture; it also counts them
    parameters = sum(p.numel() for p in ckpt.denoiser(ema=True).parameters())
    card = build_card(
        ckpt,
        name=name,
        command=command,
        data_recipe=data_recipe,
        metrics=evaluation,
        parameters=parameters,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_model(ckpt, tmp, card)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PdediffError(
            f"model name {name!r} must be letters, digits, '_', '.' or '-' (e.g. 'darcy64')"
        )


def _is_exported(folder: Path) -> bool:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(state.get(EXPORTED_KEY), dict)


def _check_out(source: Path, out: Path, overwrite: bool) -> None:
    """Refuse to write over the checkpoint, over an existing output without ``overwrite``,
    and over anything that is not an exported model (or an empty directory)."""
    if out.exists() and out.resolve() == source.resolve():
        raise PdediffError(f"{out} is the checkpoint being exported; choose another output")
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    empty = out.is_dir() and not any(out.iterdir())
    if not (empty or (out.is_dir() and _is_exported(out))):
        raise PdediffError(
            f"{out} exists and is not an exported pdediff model; refusing to replace it "
            f"(remove it yourself or choose another output)"
        )


def _write_model(ckpt: Checkpoint, folder: Path, card: dict[str, Any]) -> None:
    for file in COPIED:
        if (ckpt.path / file).is_file():
            shutil.copy2(ckpt.path / file, folder / file)
    state = {**ckpt.state, EXPORTED_KEY: card["exported"]}
    (folder / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    (folder / "card.json").write_text(json.dumps(card, indent=1, allow_nan=False) + "\n")
    (folder / "MODEL_CARD.md").write_text(render_card(card))


# -- the facts ----------------------------------------------------------------------------
def read_evaluation(
    metrics: Mapping[str, Any] | str | os.PathLike | None,
) -> dict[str, Any] | None:
    """The ``pdediff evaluate`` document without its per-sample rows, with ``"file"`` set
    to where it was read from (None for a mapping); None when ``metrics`` is None."""
    if metrics is None:
        return None
    file = None
    if not isinstance(metrics, Mapping):
        file = Path(metrics)
        if not file.is_file():
            raise FileNotFoundError(f"evaluation table {file} does not exist")
        try:
            metrics = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PdediffError(f"{file} is not valid JSON: {e}") from None
    where = file or "the metrics mapping"
    if not isinstance(metrics, Mapping) or not isinstance(metrics.get("summary"), Mapping):
        raise PdediffError(
            f"{where} is not an evaluation table written by `pdediff evaluate` (no 'summary')"
        )
    doc = {k: v for k, v in metrics.items() if k not in _EVAL_BULK}
    return {"file": None if file is None else str(file), **doc}


def build_card(
    ckpt: Checkpoint,
    *,
    name: str,
    command: str | None = None,
    data_recipe: str | None = None,
    metrics: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
    parameters: int | None = None,
) -> dict[str, Any]:
    """The facts of a model card, as a JSON-ready dict (``card.json``).

    Parameters
    ----------
    ckpt
        The checkpoint (:func:`~pdediff.train.checkpoint.read_checkpoint`).
    name, command, data_recipe
        As in :func:`export_model`.
    metrics
        A document from :func:`read_evaluation`, or None.
    parameters
        The denoiser's parameter count (default: built from the architecture).
    """
    if parameters is None:
        parameters = sum(p.numel() for p in ckpt.build().parameters())
    arch = dict(vars(ckpt.architecture), parameters=int(parameters))
    return {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "name": name,
        "exported": {
            "name": name,
            "from": str(ckpt.path),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pdediff": __version__,
        },
        "architecture": arch,
        "fields": _fields(ckpt),
        "training": _training(ckpt, command),
        "data": _data(ckpt, data_recipe),
        "metrics": _metrics_list(metrics),
        "guidance": _guidance(ckpt),
    }


def _metrics_list(metrics: Any) -> list[dict[str, Any]] | None:
    if metrics is None:
        return None
    return [dict(m) for m in metrics] if not isinstance(metrics, Mapping) else [dict(metrics)]


def _guidance(ckpt: Checkpoint) -> dict[str, Any] | None:
    """The tuned guidance weights (``guidance.json``), if the checkpoint has them."""
    path = ckpt.path / "guidance.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PdediffError(f"{path} is not valid JSON: {e}") from None


def _fields(ckpt: Checkpoint) -> dict[str, Any]:
    spec = ckpt.fieldspec
    variables = [
        {
            "name": v,
            "long_name": spec.variable_attrs.get(v, {}).get("long_name"),
            "units": spec.variable_attrs.get(v, {}).get("units"),
            "role": spec.variable_attrs.get(v, {}).get("role"),
            "mean": mean,
            "std": std,
        }
        for v, mean, std in zip(spec.variables, spec.mean, spec.std, strict=True)
    ]
    params = attrs_params(spec.attrs)
    return {
        "pde": spec.attrs.get("pde"),
        "params": params,
        "dims": list(spec.dims),
        "shape": list(spec.shape),
        "grid": {d: _axis(spec.coords[d], spec.coord_attrs.get(d, {})) for d in spec.dims},
        "variables": variables,
        "source": spec.attrs.get("source"),
    }


def _axis(coords: list[float], attrs: Mapping[str, Any]) -> dict[str, Any]:
    n = len(coords)
    lo, hi = (min(coords), max(coords)) if n else (None, None)
    return {
        "points": n,
        "min": lo,
        "max": hi,
        "spacing": (hi - lo) / (n - 1) if n > 1 else None,
        "units": attrs.get("units"),
        "periodic": bool(attrs.get("periodic", False)),
    }


def _training(ckpt: Checkpoint, command: str | None) -> dict[str, Any]:
    cfg, state = ckpt.config, ckpt.state
    samples = (state.get("data") or {}).get("samples")
    seen = state.get("samples_seen")
    return {
        "command": command or state.get("command"),
        "command_from": "export" if command else "state.json" if state.get("command") else None,
        "commands": list(state.get("commands") or []),
        "seed": cfg.seed,
        "steps": ckpt.step,
        "configured_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "optimizer": {"name": "AdamW", **cfg.to_dict()["optimizer"]},
        "ema_decay": cfg.ema_decay,
        "loss": dict(cfg.loss),
        "samples_seen": seen,
        "epochs": seen / samples if seen is not None and samples else None,
        "elapsed_seconds": state.get("elapsed"),
        "machine": state.get("machine"),
        "world_size": state.get("world_size"),
        "final_loss": final_loss(ckpt.path / "log.jsonl"),
        "saved": state.get("saved"),
        "pdediff": state.get("pdediff"),
        "torch": state.get("torch"),
    }


def final_loss(log: Path, lines: int = FINAL_LOSS_LINES) -> dict[str, Any] | None:
    """Mean loss of the last ``lines`` records of ``log.jsonl`` with a finite loss, with
    their count and first and last steps; None without such records."""
    if not log.is_file():
        return None
    records = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
            loss, step = float(record["loss"]), int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut by a kill
        if math.isfinite(loss):
            records.append((step, loss))
    last = records[-lines:]
    if not last:
        return None
    mean = sum(loss for _, loss in last) / len(last)
    return {"mean": mean, "lines": len(last), "first_step": last[0][0], "last_step": last[-1][0]}


def _data(ckpt: Checkpoint, recipe: str | None) -> dict[str, Any]:
    info = ckpt.state.get("data") or {}
    return {
        "recipe": recipe,
        "source": info.get("source"),
        "samples": info.get("samples"),
        "sha256": info.get("sha256"),
        "history": ckpt.fieldspec.attrs.get("history"),
    }


# -- the markdown -------------------------------------------------------------------------
_NOT_RECORDED = "not recorded"


def render_card(card: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md``: the facts of :func:`build_card` as Markdown."""
    sections = [
        _md_header(card),
        _md_architecture(card["architecture"]),
        _md_fields(card["fields"]),
        _md_training(card["training"]),
        _md_data(card["data"]),
        _md_guidance(card.get("guidance")),
        *_md_all_metrics(card["metrics"]),
        _md_footer(),
    ]
    return "\n\n".join(s.strip("\n") for s in sections) + "\n"


def _num(value: Any, digits: int = 6) -> str:
    if value is None:
        return _NOT_RECORDED
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str) -> str:
    return f"```\n{text}\n```"


def _md_header(card: Mapping[str, Any]) -> str:
    exp, steps = card["exported"], card["training"]["steps"]
    return f"""# {card["name"]}

A pdediff diffusion model for sampling: the EMA weights of the checkpoint `{exp["from"]}`
at step {steps}, exported on {exp["date"]} by pdediff {exp["pdediff"]}. It has no raw
weights and no optimizer state, so it cannot be trained further.

```python
from pdediff.train import load_checkpoint

denoiser, fieldspec, config = load_checkpoint("path/to/{card["name"]}")
# shipped inside pdediff: load_checkpoint(pdediff.models.shipped_model("{card["name"]}"))
```"""


def _md_architecture(arch: Mapping[str, Any]) -> str:
    config = json.dumps(arch["backbone_config"], sort_keys=True)
    precond = json.dumps(arch["precond_config"], sort_keys=True)
    return f"""## Architecture

- Backbone: `{arch["backbone"]}`, {arch["parameters"]:,} parameters (whole denoiser)
- Backbone config: `{config}`
- Preconditioner: `{arch["precond"]}` `{precond}`"""


def _md_fields(fields: Mapping[str, Any]) -> str:
    params = ", ".join(f"{k} = {_num(v)}" for k, v in fields["params"].items()) or "none"
    grid = _table(
        ["dim", "points", "min", "max", "spacing", "units", "periodic"],
        [
            [
                d,
                a["points"],
                _num(a["min"]),
                _num(a["max"]),
                _num(a["spacing"]),
                a["units"],
                "yes" if a["periodic"] else "no",
            ]  # fmt: skip
            for d, a in fields["grid"].items()
        ],
    )
    variables = _table(
        ["variable", "long name", "units", "role", "mean", "std"],
        [
            [
                v["name"],
                v["long_name"] or "",
                v["units"] or "",
                v["role"] or "",
                _num(v["mean"]),
                _num(v["std"]),
            ]  # fmt: skip
            for v in fields["variables"]
        ],
    )
    shape = " x ".join(str(n) for n in fields["shape"])
    return f"""## Fields and grid

- PDE: `{fields["pde"] or _NOT_RECORDED}`; parameters: {params}
- Grid: dims ({", ".join(fields["dims"])}), shape {shape}

{grid}

Channels, in order, normalised as `(x - mean) / std` with these training-data statistics:

{variables}

Source of the data: {fields["source"] or _NOT_RECORDED}"""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return _NOT_RECORDED
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min ({seconds:.0f} s)"


def _machine(machine: Mapping[str, Any] | None) -> str:
    if not machine:
        return _NOT_RECORDED
    parts = [f"{k} {v}" for k, v in machine.items()]
    return ", ".join(parts) + " (the last training session's)"


def _md_commands(t: Mapping[str, Any]) -> str:
    if t["command"]:
        origin = " (given at export)" if t["command_from"] == "export" else ""
        text = f"Command{origin}:\n\n{_code(t['command'])}"
    else:
        text = f"Command: {_NOT_RECORDED}."
    later = [c for c in t["commands"] if c != t["command"]]
    if later:
        text += "\n\nOther recorded commands (resumed runs), in order:\n\n"
        text += _code("\n".join(later))
    return text


def _md_training(t: Mapping[str, Any]) -> str:
    o = t["optimizer"]
    optimizer = ", ".join(f"{k} {_num(v)}" for k, v in o.items() if k != "name")
    loss = t["final_loss"]
    final = (
        f"{loss['mean']:.4g} (mean of the last {loss['lines']} log lines, steps "
        f"{loss['first_step']} to {loss['last_step']})"
        if loss
        else _NOT_RECORDED
    )
    epochs = _NOT_RECORDED if t["epochs"] is None else f"{t['epochs']:.3g}"
    loss_kwargs = json.dumps(t["loss"], sort_keys=True) if t["loss"] else "defaults"
    versions = f"pdediff {t['pdediff'] or '?'}, torch {t['torch'] or '?'}"
    return f"""## Training

{_md_commands(t)}

- Seed: {t["seed"]}
- Steps: {t["steps"]} trained (the config asks for {t["configured_steps"]})
- Batch size: {t["batch_size"]}
- Optimizer: {o["name"]} ({optimizer})
- EMA decay: {_num(t["ema_decay"])}
- Loss (EDM) settings: {loss_kwargs}
- Samples seen: {_num(t["samples_seen"])}; epochs: {epochs}
- Wall-clock training time: {_duration(t["elapsed_seconds"])}
- Machine: {_machine(t["machine"])}; processes: {_num(t["world_size"])}
- Final loss: {final}
- Last checkpoint saved: {t["saved"] or _NOT_RECORDED} ({versions})"""


def _md_data(d: Mapping[str, Any]) -> str:
    recipe = _code(d["recipe"]) if d["recipe"] else f"Recipe: {_NOT_RECORDED}."
    return f"""## Data

{recipe}

- Training file: {d["source"] or _NOT_RECORDED}; {_num(d["samples"])} samples
- Fingerprint of the training tensor (SHA-256, first 16 hex digits): {d["sha256"] or "?"}
- History of the file: {d["history"] or _NOT_RECORDED}"""


def _md_all_metrics(metrics: list[Mapping[str, Any]] | None) -> list[str]:
    return [_md_metrics(None)] if not metrics else [_md_metrics(m) for m in metrics]


def _md_guidance(g: Mapping[str, Any] | None) -> str:
    if not g:
        return "## Guidance weights\n\nNone tuned: the presets' defaults are used."
    lines = [
        f"- preset `{preset}`, task {task}: {json.dumps(overrides)}"
        for preset, tasks in g.items()
        if preset != "tuning"
        for task, overrides in tasks.items()
    ]
    for task, tuning in (g.get("tuning") or {}).items():
        points = tuning["sweep"]["points"]
        pts = "; ".join(f"{_point_label(p)}: {_point_score(p)}" for p in points)
        metric = points[0]["metric"] if points else ""
        if any("per_points" in p for p in points):
            metric += ", geometric mean over the sensor counts"
        lines.append(f"- {task} sweep ({metric}, validation data): {pts}")
        lines.append(f"  by `{tuning['command']}`")
    return "## Guidance weights\n\nStored in guidance.json, used by `pdediff solve`:\n\n" + (
        "\n".join(lines)
    )


def _point_score(point: Mapping[str, Any]) -> str:
    """``7.47 %``, or with scores at several sensor counts ``7.47 % (500: 0.94 %, 31: ...)``."""
    text = f"{100 * point['score']:.2f} %"
    per = point.get("per_points")
    if per:
        text += " (" + ", ".join(f"{n}: {100 * v['score']:.2f} %" for n, v in per.items()) + ")"
    return text


def _point_label(point: Mapping[str, Any]) -> str:
    """A sweep point's settings (older sweeps varied the observation weight only)."""
    settings = point.get("settings") or {"default_obs_weight": point["weight"]}
    return ", ".join(f"{k} {v:g}" for k, v in settings.items())


def _md_metrics(m: Mapping[str, Any] | None) -> str:
    if m is None:
        return "## Evaluation\n\nNo evaluation recorded."
    settings = [
        ("file", m.get("file")),
        ("command", f"`{m['command']}`" if m.get("command") else None),
        ("model evaluated", m.get("model")),
        ("test data", m.get("data")),
        ("test data made by", m.get("data_history")),
        ("task", m.get("task")),
        ("observed points per field", m.get("points")),
        ("ensemble members", m.get("members")),
        ("samples done", _progress(m)),
        ("date", m.get("created")),
    ]
    lines = [f"- {k}: {v}" for k, v in settings if v is not None]
    return "## Evaluation\n\n" + "\n".join(lines) + "\n\n" + _summary_table(m["summary"])


def _progress(m: Mapping[str, Any]) -> str | None:
    done, total = m.get("samples_done"), m.get("samples")
    if done is None:
        return None
    text = f"{done}" + (f" of {total}" if total is not None else "")
    return text + (" (incomplete)" if m.get("complete") is False else "")


def _summary_table(summary: Mapping[str, Any]) -> str:
    """mean ± std over the test samples of each metric, per method and field."""
    metrics: list[str] = []
    for per_field in summary.values():
        for entry in per_field.values():
            metrics += [k for k, v in entry.items() if isinstance(v, Mapping) and k not in metrics]
    rows = []
    for method, per_field in summary.items():
        for name, entry in per_field.items():
            n = max((entry[k].get("n", 0) for k in metrics if k in entry), default=0)
            failed = entry.get("failed") or 0
            cells = [method, name, f"{n}" + (f" ({failed} failed)" if failed else "")]
            cells += [_stat(entry.get(k)) for k in metrics]
            rows.append(cells)
    note = "Mean ± std over the test samples, as stored in the evaluation's summary:"
    return note + "\n\n" + _table(["method", "field", "n", *metrics], rows)


def _stat(s: Mapping[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "-"
    std = s.get("std")
    return f"{s['mean']:#.4g}" + ("" if std is None else f" ± {std:.2g}")


def _md_footer() -> str:
    return (
        "---\n\nGenerated by `pdediff export` from the checkpoint's config.json, "
        "fieldspec.json, state.json and log.jsonl, and from what was given to it (command, "
        "data recipe, evaluation); card.json holds the same facts."
    )
