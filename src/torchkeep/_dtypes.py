"""Every fact torchkeep knows about dtypes, in one place (no torch import at module level).

A dtype is named by its torch attribute name (``float16``, ``bfloat16``, ``float8_e4m3fn``...). This
module maps those names to element sizes, to the codes of each file format (safetensors, legacy
storages, torch.export), to the short names users type (``fp16``, ``half``...), and to ``torch.dtype``.
Reading and writing use the same tables, so a dtype torchkeep reads from a format is one it can write
back, and the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchkeep.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CAST_DTYPES",
    "DTYPE_ITEMSIZE",
    "EXPORT_DTYPES",
    "SAFETENSORS_CODES",
    "SAFETENSORS_DTYPES",
    "SAFETENSORS_READ_ONLY",
    "STORAGE_DTYPES",
    "TORCH_DTYPE_ALIASES",
    "cast_dtype",
    "safetensors_code",
    "torch_dtype",
]

#: dtype name -> bytes per element (sub-byte packed dtypes count one byte per stored element)
DTYPE_ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1, "complex128": 16, "complex64": 8, "complex32": 4,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
}  # fmt: skip

#: safetensors dtype code -> dtype name: the codes the ``safetensors`` library itself reads and writes
#: for torch (``safetensors.torch._TYPES``), so every file torchkeep writes loads with ``safetensors``.
SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "C64": "complex64",
}  # fmt: skip

#: codes of the safetensors format that ``safetensors.torch`` cannot load yet: read, never written
SAFETENSORS_READ_ONLY: dict[str, str] = {"F8_E8M0": "float8_e8m0fnu", "F4": "float4_e2m1fn_x2"}

#: dtype name -> safetensors code, for writing (the inverse of SAFETENSORS_DTYPES)
SAFETENSORS_CODES: dict[str, str] = {name: code for code, name in SAFETENSORS_DTYPES.items()}

#: legacy storage class name -> dtype name
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8", "TypedStorage": "uint8",
}  # fmt: skip

#: torch.<attribute> alias -> dtype name (``torch.float`` is ``torch.float32``)
TORCH_DTYPE_ALIASES: dict[str, str] = {
    "float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
    "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32",
}  # fmt: skip

#: torch.export serialized ScalarType -> dtype name
EXPORT_DTYPES: dict[int, str] = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64",
    9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16", 28: "uint16",
    29: "float8_e4m3fn", 30: "float8_e5m2",
}  # fmt: skip

#: what a user may type to cast floating-point weights (``--dtype``) -> dtype name
CAST_DTYPES: dict[str, str] = {
    "fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}  # fmt: skip


def cast_dtype(name: str) -> str | None:
    """The dtype name of a user's ``--dtype`` (``fp16``, ``torch.bfloat16``...), or None if it is not one."""
    return CAST_DTYPES.get(str(name).lower().removeprefix("torch."))


def safetensors_code(name: str) -> str | None:
    """The safetensors code of dtype ``name`` (``torch.float16`` or ``float16``), or None."""
    name = str(name).removeprefix("torch.")
    return SAFETENSORS_CODES.get(TORCH_DTYPE_ALIASES.get(name, name))


def torch_dtype(name: str) -> torch.dtype:
    """``torch.<name>`` as a dtype; a UsageError when this torch has no such dtype."""
    import torch

    name = str(name).removeprefix("torch.")
    dt = getattr(torch, TORCH_DTYPE_ALIASES.get(name, name), None)
    if not isinstance(dt, torch.dtype):
        raise UsageError(f"dtype {name!r} is not supported by this torch ({torch.__version__})")
    return dt
