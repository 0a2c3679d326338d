"""Checkpoints: exact round trip, atomic layout, corrupt/partial ones refused by name."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from citrus_v.train import checkpointing as ckpt


def _trained_state(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, ckpt.TrainingState]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].bias.requires_grad_(False)  # a frozen tensor: no optimizer state
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.8, 0.99))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = ckpt.TrainingState(
        model=model.state_dict(), optimizer=get_optimizer_state_dict(model, opt), scheduler={"last_epoch": 3, "base_lrs": [0.01]},
        trainer={"epoch": 1, "position": 16}, rng=ckpt.capture_rng(),
    )
    return model, opt, state


def test_roundtrip_is_exact_and_rng_restores(tmp_path):
    _, _, state = _trained_state()
    path = ckpt.save_checkpoint(tmp_path, 3, state)
    assert path.name == "step_000003" and (tmp_path / "latest").read_text().strip() == "step_000003"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng.safetensors", "rng.json",
         "trainer_state.json", "manifest.json"])
    back = ckpt.load_checkpoint(path)
    for k, v in state.model.items():
        assert torch.equal(back.model[k], v)
    for key, entry in state.optimizer["state"].items():
        for name, t in entry.items():
            assert torch.equal(back.optimizer["state"][key][name], t), (key, name)
    assert back.optimizer["param_groups"][0]["betas"] == (0.8, 0.99)
    assert back.trainer == {"epoch": 1, "position": 16, "step": 3}
    # the RNG state captured before these draws replays them exactly
    draws = (random.random(), float(np.random.rand()), float(torch.rand(())))
    ckpt.restore_rng(back.rng)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == draws


def test_no_pickle_anywhere(tmp_path):
    _, _, state = _trained_state()
    path = ckpt.save_checkpoint(tmp_path, 1, state)
    for f in path.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f"{f.name} looks like a pickle"
        assert f.suffix in (".safetensors", ".json")


def test_optimizer_state_loads_back_into_a_fresh_optimizer(tmp_path):
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    model, opt, state = _trained_state()
    back = ckpt.load_checkpoint(ckpt.save_checkpoint(tmp_path, 3, state))
    model2, opt2, _ = _trained_state(seed=1)
    model2.load_state_dict(back.model)
    set_optimizer_state_dict(model2, opt2, back.optimizer)
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_partial_tmp_is_ignored_and_removed(tmp_path):
    _, _, state = _trained_state()
    ckpt.save_checkpoint(tmp_path, 2, state)
    (tmp_path / "step_000004.tmp").mkdir()  # a save killed half-way
    (tmp_path / "step_000004.tmp" / "model.safetensors").write_bytes(b"half")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000002"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000002"
    assert [p.name for p in ckpt.remove_partial(tmp_path)] == ["step_000004.tmp"]


def test_keep_last_prunes_old(tmp_path):
    _, _, state = _trained_state()
    for s in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, s, state, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]


def test_corrupt_file_refused_naming_it_and_offering_previous(tmp_path):
    _, _, state = _trained_state()
    ckpt.save_checkpoint(tmp_path, 2, state)
    newest = ckpt.save_checkpoint(tmp_path, 4, state)
    blob = bytearray((newest / "optimizer.safetensors").read_bytes())
    blob[-3] ^= 0xFF  # flip one byte of a tensor
    (newest / "optimizer.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer.safetensors: sha256 does not match") as err:
        ckpt.load_checkpoint(newest)
    assert err.value.previous == tmp_path / "step_000002"
    assert "step_000002" in str(err.value)


def test_truncated_missing_and_manifestless_refused(tmp_path):
    _, _, state = _trained_state()
    p = ckpt.save_checkpoint(tmp_path, 1, state)
    data = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=r"model.safetensors: size \d+ bytes, manifest says \d+"):
        ckpt.load_checkpoint(p)
    (p / "model.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"model.safetensors: file listed in the manifest is missing"):
        ckpt.load_checkpoint(p)
    (p / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"manifest.json: partial checkpoint"):
        ckpt.load_checkpoint(p)
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint folder"):
        ckpt.load_checkpoint(tmp_path / "step_000009")


def test_manifest_hashes_every_file(tmp_path):
    _, _, state = _trained_state()
    p = ckpt.save_checkpoint(tmp_path, 1, state)
    manifest = json.loads((p / "manifest.json").read_text())
    assert set(manifest["files"]) == {f.name for f in p.iterdir()} - {"manifest.json"}
    assert all(len(v["sha256"]) == 64 for v in manifest["files"].values())
