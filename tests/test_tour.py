from torch import nn

from torchkeep._tour import formats_tour


def test_every_format_is_written_and_inspected(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    entries = formats_tour(model, tmp_path / "tour", (1, 1, 8, 8))
    kinds = {e.file.rsplit("/", 1)[-1]: e.inspection.kind for e in entries if e.inspection}
    assert [e.error for e in entries] == [None] * len(entries)
    assert kinds == {
        "state_dict.pt": "state_dict",
        "checkpoint.pth": "checkpoint",
        "full_model.pth": "full_model",
        "legacy.pt": "state_dict",
        "scripted.pt": "torchscript",
        "exported.pt2": "exported_program",
        "model.onnx": "onnx",
        "model.safetensors": "tensors",
        "weights.npz": "tensors",
    }
