"""What the tests of conditioned models share: a tiny training config and the evaluation
that tells whether each test sample got its own condition."""

from __future__ import annotations

import json

#: A tiny UNet config for conditioned models on 8x8 grids (a few steps on the CPU).
TINY = {
    "model": {"backbone_kwargs": {"model_channels": 8, "channel_mult": [1, 2]}},
    "optimizer": {"lr": 2e-3, "warmup_steps": 2},
    "batch_size": 4,
    "log_every": 3,
    "checkpoint_every": 3,
}


def forward_with_every_node(model, data) -> tuple[dict[int, dict], dict[int, float]]:
    """``evaluate`` of the forward task with every node of ``a`` observed: each sample's
    recorded condition, and the interp-solve error of ``u`` (round-off only when the
    sample's own family and parameters were used)."""
    from pdediff.solve.evaluate import evaluate

    result = evaluate(
        model,
        data,
        task="forward",
        fraction=1.0,
        members=1,
        protocol={"steps": 2},
        methods=("diffusion", "interp-solve"),
        progress=False,
    )
    conditions = {r["sample"]: json.loads(r["condition"]) for r in result.rows}
    exact = {
        r["sample"]: r["rel_l2_mean"]
        for r in result.rows
        if r["method"] == "interp-solve" and r["field"] == "u"
    }
    return conditions, exact
