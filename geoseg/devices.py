"""Where a model runs: one rule for every backend (grounder, CLIP Surgery matcher, SAM3 segmenter)."""

from __future__ import annotations


def resolve_device(name: str | None) -> str:
    """``None`` / ``""`` / ``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda..."`` without a
    visible GPU is a clear RuntimeError (not a failure deep inside the first forward); anything else is returned."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return str(name)


def resolve_dtype(dtype: str, device: str):
    """``auto`` -> bfloat16 on CUDA, float32 on CPU; or a torch dtype name (``float16``, ``bfloat16``, ``float32``)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32")
    return value
