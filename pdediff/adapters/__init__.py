"""Adapters: LoRA on a trained denoiser and few-shot fine-tuning with prior preservation.

>>> from pdediff.adapters import finetune, load_adapted
>>> result = finetune("darcy64", "few.nc", "few.safetensors", rank=4,
...                   prior_weight=1.0, steps=200)                      # doctest: +SKIP
>>> denoiser, spec = load_adapted("darcy64", "few.safetensors")         # doctest: +SKIP

``denoiser`` is the base model with the adapter folded in; sample it like any checkpoint's
(e.g. :func:`pdediff.solve.posterior.sample_posterior`).  The LoRA primitives
(:func:`add_lora`, :func:`merge_lora`, ...) work on any ``nn.Module``.
"""

from pdediff.adapters.fewshot import (
    METHODS,
    FinetuneResult,
    finetune,
    load_adapted,
    sample_prior,
)
from pdediff.adapters.lora import (
    LoRA,
    LoRAError,
    add_lora,
    base_model_hash,
    count_parameters,
    load_lora,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    read_lora,
    remove_lora,
    save_lora,
    set_lora_enabled,
)

__all__ = [
    "METHODS",
    "FinetuneResult",
    "LoRA",
    "LoRAError",
    "add_lora",
    "base_model_hash",
    "count_parameters",
    "finetune",
    "load_adapted",
    "load_lora",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "read_lora",
    "remove_lora",
    "sample_prior",
    "save_lora",
    "set_lora_enabled",
]
