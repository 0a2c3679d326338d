"""The final model folder appears whole or not at all, and `--stage all --resume` after a kill
during its save finishes the run."""

from __future__ import annotations

import pytest
import torch

from citrus_v.model.citrus_v import CitrusV


def test_stage_all_resumed_after_a_kill_during_the_final_save_finishes(tmp_path, monkeypatch):
    from citrus_v.data.phantoms.suite import generate_suite
    from citrus_v.train.checkpointing import latest_checkpoint, load_checkpoint
    from citrus_v.train.pipeline import run_all_stages
    from citrus_v.train.stages import get_stage, with_data_file

    torch.set_num_threads(1)
    files = generate_suite(tmp_path / "suite", 24, n_val=0, n_test=0, seed=3, size=112, progress=False)
    stages = [with_data_file(get_stage(k, "tiny"), files["train"]).replace(max_steps=1, grad_accum=1, save_every=100, warmup_steps=1)
              for k in (1, 2, 3, 4)]
    out = tmp_path / "run"
    save = CitrusV.save_pretrained
    calls = []

    def killed_in_stage4(self, folder, **kw):  # stage 4's export: config written, the weights never
        calls.append(folder)
        if len(calls) < 4:
            return save(self, folder, **kw)
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(CitrusV, "save_pretrained", killed_in_stage4)
    with pytest.raises(KeyboardInterrupt):
        run_all_stages(stages, data_files=[files["train"]], out_dir=out, progress=False)
    monkeypatch.setattr(CitrusV, "save_pretrained", save)
    assert (out / "stage3" / "final" / "model.safetensors").is_file()
    assert not (out / "stage4" / "final").exists()  # never half-written: the partial folder sits beside it
    assert (out / "stage4" / "final.partial" / "config.json").is_file()

    run_all_stages(stages, data_files=[files["train"]], out_dir=out, progress=False, resume=True)
    final = out / "stage4" / "final"
    assert not (out / "stage4" / "final.partial").exists()
    weights = CitrusV.from_pretrained(final).state_dict()
    trained = load_checkpoint(latest_checkpoint(out / "stage4" / "checkpoints")).model
    assert set(weights) <= set(trained) and all(torch.equal(weights[k], trained[k]) for k in weights)
