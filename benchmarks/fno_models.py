"""Train the FNO baselines of a family's solver table from the diffusion model's training set.

For the forward task (coefficient field -> solution field, e.g. Poisson ``a -> u``,
Navier-Stokes ``w0 -> w``) and the inverse task (the reverse) at each sensor setting, an
FNO of :func:`pdediff.baselines.train_fno_baseline` (neuraloperator's FNO, the observed
field at random sensors with the mask as a channel) learns on the same training fields as
the diffusion model, and is saved to ``--save DIR/TASK_LABEL`` (``LABEL``: ``p500`` for a
count, ``f0.03`` for a fraction, the labels of ``solver_table.py``), so that

    python benchmarks/solver_table.py ... --rows fno \
        --fno-forward 'DIR/forward_{sensors}' --fno-inverse 'DIR/inverse_{sensors}'

scores them on the table's own test samples and sensors.  This script only trains; the
JSON records each model's training time, parameters and loss history (a model already
saved is kept, with its record from an earlier ``--out``).

    python benchmarks/fno_models.py --train /work/runs/fam/poisson32_train.nc \
        --save /work/runs/fno/poisson32 --out benchmarks/results/fno_models_poisson32.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pdediff.baselines import train_fno_baseline
from pdediff.errors import PdediffError
from pdediff.io import open_fields
from pdediff.pde.registry import get_family

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402
from solver_table import sensor_setting  # noqa: E402


def task_fields(family_name: str) -> dict[str, tuple[str, str]]:
    """``task -> (source, target)``: the family's first coefficient and solution fields."""
    family = get_family(family_name)
    coefficient, solution = family.role_fields("coefficient"), family.role_fields("solution")
    if not coefficient or not solution:
        raise PdediffError(
            f"{family_name} has no coefficient field (roles: {family.fields}); the FNO "
            "baselines map a coefficient to a solution field and back"
        )
    return {"forward": (coefficient[0], solution[0]), "inverse": (solution[0], coefficient[0])}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="training fields (.nc or .zarr)")
    p.add_argument("--save", required=True, help="folder of the trained FNOs")
    p.add_argument("--tasks", nargs="+", default=["forward", "inverse"])
    p.add_argument(
        "--sensors", nargs="+", default=["500", "0.03"], help="as solver_table.py's --sensors"
    )
    p.add_argument("--n-train", type=int, default=None, help="first K training samples")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--modes", type=int, default=12)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="retrain models already saved")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = open_fields(args.train)
    if args.n_train:
        train = train.isel(sample=slice(args.n_train))
    fields = task_fields(train.attrs.get("pde", ""))
    earlier = (
        json.loads(Path(args.out).read_text())["rows"]
        if args.out and Path(args.out).is_file()
        else []
    )
    kept = {r["model"]: r for r in earlier}
    rows = []
    for sensors in args.sensors:
        label, draw = sensor_setting(sensors)
        m = draw["points"] or draw["fraction"]
        for task in args.tasks:
            source, target = fields[task]
            folder = Path(args.save) / f"{task}_{label}"
            if folder.is_dir() and not args.overwrite:
                print(f"{folder}: kept (--overwrite retrains)", flush=True)
                rows += [kept[str(folder)]] if str(folder) in kept else []
                continue
            t0 = time.perf_counter()
            model = train_fno_baseline(
                train, source, target, sensors=m, steps=args.steps, batch_size=args.batch_size,
                seed=args.seed, width=args.width, modes=args.modes, n_layers=args.layers,
                lr=args.lr,
            )  # fmt: skip
            model.save(folder)
            rows.append(
                {
                    "task": task,
                    "source": source,
                    "target": target,
                    "sensors": sensors,
                    "model": str(folder),
                    "n_train": int(train.sizes["sample"]),
                    "train_seconds": round(time.perf_counter() - t0, 1),
                    "parameters": sum(q.numel() for q in model.net.parameters()),
                    "final_train_loss": round(model.history[-1]["loss"], 4),
                    "history": model.history,
                }
            )
            print(
                f"{task} {source} -> {target}, {label}: loss "
                f"{rows[-1]['final_train_loss']:.4f} ({rows[-1]['train_seconds']:.0f} s)",
                flush=True,
            )
    result = {"settings": vars(args), "family": train.attrs.get("pde"), "rows": rows}
    save(result, args.out)
    return result


if __name__ == "__main__":
    main()
