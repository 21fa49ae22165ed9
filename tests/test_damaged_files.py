"""Damaged files of every format: inspect and load_state_dict fail with one-line InputErrors, never tracebacks."""

import random

import pytest

import torchkeep
from _files import (
    checkpoint_pt,
    legacy_pt,
    npz_file,
    onnx_file,
    pt2_file,
    safetensors_file,
    state_dict_pt,
    torchscript_pt,
)
from torchkeep.errors import InputError, TorchkeepError

BUILDERS = [state_dict_pt, checkpoint_pt, legacy_pt, torchscript_pt, safetensors_file, onnx_file, npz_file, pt2_file]


def _mutate(data: bytearray, rng: random.Random) -> bytearray:
    op = rng.choice(["flip", "flipmany", "trunc", "insert", "zero"])
    if op == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif op == "flipmany":
        for _ in range(rng.randint(5, 40)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif op == "trunc":
        data = data[: rng.randrange(1, len(data))]
    elif op == "insert":
        p = rng.randrange(len(data))
        data[p:p] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
    else:
        p = rng.randrange(len(data))
        n = min(rng.randint(1, 64), len(data) - p)
        data[p : p + n] = b"\0" * n
    return data


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_random_damage_never_escapes_as_a_traceback(tmp_path, builder):
    src = builder(tmp_path)
    original = src.read_bytes()
    rng = random.Random(builder.__name__)
    for i in range(25):
        damaged = tmp_path / f"damaged{i}{src.suffix}"
        damaged.write_bytes(bytes(_mutate(bytearray(original), rng)))
        for verb in (torchkeep.inspect, torchkeep.load_state_dict):
            try:
                verb(damaged)
            except TorchkeepError:
                pass  # refused or reported: fine; any other exception fails the test


def test_zip_with_undecodable_member_name(tmp_path):
    data = bytearray(state_dict_pt(tmp_path).read_bytes())
    # the last central-directory entry says "UTF-8 name" (flag bit 11) but its name is not UTF-8
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 9] |= 0x08
    data[cd + 46] = 0xFF
    bad = tmp_path / "badname.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"badname.pt: .*(corrupt|truncated)"):
        torchkeep.inspect(bad)


def test_onnx_field_of_the_wrong_wire_type(tmp_path):
    data = bytearray(onnx_file(tmp_path).read_bytes())
    i = data.index(b":")  # field 7 (graph), wire type 2 -> make it a varint (wire type 0)
    data[i] = 0x38
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError):
        torchkeep.inspect(bad)


def test_safetensors_header_over_the_library_limit_is_one_error_everywhere(tmp_path):
    # one parser, one limit: inspect, load_state_dict and torchkeep.load say the same thing
    import struct

    from torchkeep._detect import MAX_SAFETENSORS_HEADER

    body = b'{"__metadata__":{}}'
    p = tmp_path / "big.safetensors"
    p.write_bytes(struct.pack("<Q", MAX_SAFETENSORS_HEADER + 1) + body + b" " * 64)
    # the claimed length runs past the file as well; make the file long enough that only the limit is wrong
    with open(p, "r+b") as fh:
        fh.truncate(MAX_SAFETENSORS_HEADER + 16)
    messages = []
    for call in (torchkeep.inspect, torchkeep.load_state_dict, torchkeep.load):
        with pytest.raises(InputError) as info:
            call(p)
        messages.append(str(info.value))
    assert all("more than the 100000000" in m for m in messages), messages
