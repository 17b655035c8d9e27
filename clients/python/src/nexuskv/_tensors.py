"""Conversions between caller tensors (numpy, torch) and the wire's little-endian row-major bytes.

torch is optional: it is imported only when a torch tensor is passed. bfloat16 travels as its raw
16-bit pattern; numpy has no bfloat16, so bfloat16 answers decode to float32 (an exact widening).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPE_NAMES = ("float32", "float16", "bfloat16")
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def itemsize(dtype: str) -> int:
    return _ITEMSIZE[dtype]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def dtype_name(x: Any) -> str:
    """The wire dtype name of an array or tensor ("float32", "float16" or "bfloat16")."""
    name = str(x.dtype).removeprefix("torch.") if _is_torch(x) else np.asarray(x).dtype.name
    if name not in DTYPE_NAMES:
        raise TypeError(f"unsupported tensor dtype {name}: use float32, float16 or bfloat16")
    return name


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def to_bytes(x: Any, dtype: str) -> bytes:
    """Little-endian row-major bytes of x, which must already be of `dtype`."""
    if dtype_name(x) != dtype:
        raise TypeError(f"tensor dtype {dtype_name(x)} differs from the session dtype {dtype}")
    if _is_torch(x):
        import torch

        t = x.detach().to("cpu").contiguous()
        if dtype == "bfloat16":
            return t.view(torch.int16).numpy().astype("<i2", copy=False).tobytes()
        return t.numpy().astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes()
    a = np.asarray(x)
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def from_bytes(buf: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A native-endian numpy array from wire bytes. bfloat16 becomes float32 (exact)."""
    count = int(np.prod(shape)) if shape else 1
    if len(buf) != count * _ITEMSIZE[dtype]:
        raise ValueError(f"{len(buf)} bytes cannot hold {shape} {dtype} ({count * _ITEMSIZE[dtype]} bytes)")
    if dtype == "bfloat16":
        bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    wire = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(buf, dtype=wire).astype(np.dtype(dtype), copy=True).reshape(shape)
