"""One table of dtype facts: what torchkeep reads from a format it writes back, bit for bit."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

import torchkeep
from torchkeep._dtypes import (
    DTYPE_ITEMSIZE,
    SAFETENSORS_CODES,
    SAFETENSORS_DTYPES,
    cast_dtype,
    safetensors_code,
    torch_dtype,
)
from torchkeep.errors import UsageError


def test_every_safetensors_code_is_the_librarys_own() -> None:
    # the codes torchkeep writes are exactly the ones safetensors.torch maps to the same torch dtype
    for code, name in SAFETENSORS_DTYPES.items():
        assert safetensors.torch._TYPES[code] == torch_dtype(name)
        assert DTYPE_ITEMSIZE[name] == torch_dtype(name).itemsize
    assert {SAFETENSORS_CODES[n] for n in SAFETENSORS_DTYPES.values()} == set(SAFETENSORS_DTYPES)


@pytest.mark.parametrize("name", sorted(SAFETENSORS_CODES))
def test_convert_round_trips_every_writable_dtype(tmp_path, name: str) -> None:
    dt = torch_dtype(name)
    # arbitrary bytes viewed as the dtype (NaN patterns included): the copy must keep every bit
    t = torch.arange(48, dtype=torch.uint8).reshape(3, 16).view(dt)
    src = tmp_path / "w.pt"
    torch.save({"w": t}, src)
    out = tmp_path / "w.safetensors"
    torchkeep.convert(src, out)
    back = safetensors.torch.load_file(out)["w"]
    assert back.dtype == dt
    assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))
    # and torchkeep's own reader agrees with the library
    ours = torchkeep.load_state_dict(out)["w"]
    assert ours.dtype == dt and torch.equal(ours.view(torch.uint8), t.view(torch.uint8))


def test_user_dtype_names() -> None:
    assert cast_dtype("fp16") == cast_dtype("torch.float16") == cast_dtype("HALF") == "float16"
    assert cast_dtype("int8") is None
    assert safetensors_code("torch.float") == "F32" and safetensors_code("cdouble") is None
    assert torch_dtype("torch.bfloat16") is torch.bfloat16
    with pytest.raises(UsageError):
        torch_dtype("float7")
