"""Registry, create_model overrides, save/load edge cases and timm registration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

import seqbackbone as sb
from seqbackbone.hub import read_state_dict
from seqbackbone.registry import model_table

from .helpers import make_input, small_model


def test_list_models_pattern_sorted_and_is_model():
    names = sb.list_models()
    assert names == sorted(names) and len(names) >= 12
    dna = sb.list_models("mamba_dna_*")
    assert dna and all(n.startswith("mamba_dna_") for n in dna)
    assert sb.list_models(["vimamba_*", "mamba_pixel_*"]) == sorted(
        sb.list_models("vimamba_*") + sb.list_models("mamba_pixel_*")
    )
    assert sb.list_models(pretrained=True) == []  # no published weights
    assert sb.is_model("mamba_dna_cls_tiny") and not sb.is_model("mamba_dna_cls_huge")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="mamba_dna_cls_tiny"):
        sb.create_model("mamba_dna_cls_tinny")


def test_register_duplicate_raises():
    def mamba_dna_cls_tiny(**kw):  # same name as a registered model
        raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        sb.register_model(mamba_dna_cls_tiny)


def test_overrides_reach_the_config():
    m = sb.create_model("mamba_audio_cls_tiny", num_classes=4, n_layer=2, d_model=48, sample_rate=16000,
                        bidirectional="tied")
    assert m.num_classes == 4 and len(m.backbone.layers) == 2 and m.num_features == 48
    assert m.pretrained_cfg["sample_rate"] == 16000 and m.encoder.sample_rate == 16000
    assert m.backbone.config.bidirectional == "tied"
    with pytest.raises(ValueError, match="unknown config fields.*num_clases"):
        sb.create_model("mamba_audio_cls_tiny", num_clases=4)
    with pytest.raises(ValueError, match="causal"):
        sb.create_model("mamba_dna_lm_tiny", bidirectional="add")
    with pytest.raises(ValueError, match="published weights"):
        sb.create_model("mamba_dna_cls_tiny", pretrained=True)


def test_model_table_counts_parameters():
    rows = {name: (n, cfg) for name, n, cfg in model_table("mamba_dna_*_tiny")}
    assert set(rows) == {"mamba_dna_cls_tiny", "mamba_dna_lm_tiny"}
    for name, (n, cfg) in rows.items():
        assert n == sum(p.numel() for p in sb.create_model(name).parameters())
        assert cfg["architecture"] == name


def test_lm_head_is_tied_and_saved_once(tmp_path):
    m = small_model("mamba_dna_lm_tiny")
    assert m.head.weight is m.encoder.embedding.weight
    m.save_pretrained(tmp_path)
    keys = set(read_state_dict(tmp_path))
    assert "encoder.embedding.weight" in keys and "head.weight" not in keys
    m2 = sb.from_pretrained(tmp_path)
    assert m2.head.weight is m2.encoder.embedding.weight
    torch.testing.assert_close(m2.head.weight, m.head.weight, rtol=0, atol=0)


def test_num_classes_change_reinitialises_only_the_head(tmp_path):
    m = small_model("mamba_dna_cls_tiny", num_classes=3)
    m.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="head"):
        m5 = sb.create_model("mamba_dna_cls_tiny", pretrained=tmp_path, num_classes=5)
    assert m5.num_classes == 5 and m5.pretrained_cfg["num_classes"] == 5
    sd, sd5 = m.state_dict(), m5.state_dict()
    for k, v in sd.items():
        if not k.startswith("head."):
            assert torch.equal(v, sd5[k]), k
    assert sd5["head.fc.weight"].shape == (5, 32)


def test_prefixed_keys_load(tmp_path):
    m = small_model("mamba_features_tiny")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1)
    m.save_pretrained(tmp_path)
    state = read_state_dict(tmp_path)
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        save_file({prefix + k: v for k, v in state.items()}, str(tmp_path / "model.safetensors"))
        m2 = sb.from_pretrained(tmp_path)
        for k, v in m.state_dict().items():
            assert torch.equal(v, m2.state_dict()[k]), (prefix, k)


def test_architecture_mismatch_raises_clearly(tmp_path):
    small_model("mamba_dna_cls_tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="shape mismatch"):
        sb.hub.load_weights(sb.create_model("mamba_dna_cls_tiny", n_layer=1, d_model=48), tmp_path)


def test_save_is_atomic_and_json_readable(tmp_path):
    m = small_model("vimamba_tiny_patch4_28")
    m.save_pretrained(tmp_path)
    m.save_pretrained(tmp_path)  # overwriting leaves no temporary files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model_name"] == "vimamba_tiny_patch4_28"
    assert meta["config"]["patch_size"] == 4 and meta["pretrained_cfg"]["input_size"] == [1, 28, 28]


def test_pickle_checkpoints_are_refused(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="safetensors"):
        read_state_dict(tmp_path / "model.pt")


def test_custom_encoder_plugs_in():
    class Accelerometer(torch.nn.Module):  # a user's own encoder: (B, L, 3) -> (B, L, D)
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 32)

        def forward(self, x, mask=None):
            return self.proj(x), mask

    model = sb.SequenceModel(
        encoder=Accelerometer(),
        backbone=sb.MambaBackbone(32, 1, d_state=4, bidirectional="add"),
        head=sb.heads.ClassifierHead(32, 6),
    ).eval()
    x = torch.randn(2, 10, 3)
    mask = torch.arange(10)[None] < torch.tensor([[10], [6]])
    out = model(x, mask)
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[1], model(x[1:, :6])[0], rtol=1e-4, atol=1e-5)
    assert {"backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D_b"} <= model.no_weight_decay()
    with pytest.raises(TypeError, match="audio"):
        model(x, sample_rate=8000)


def test_timm_create_model():
    assert set(timm.list_models("vimamba*")) == set(sb.list_models("vimamba*"))
    m = timm.create_model("vimamba_tiny_patch4_28", num_classes=3, n_layer=1, d_model=32, global_pool="avg")
    assert isinstance(m, sb.SequenceModel) and m.num_classes == 3 and m.config.pooling == "mean"
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    data_cfg = timm.data.resolve_data_config(model=m)
    assert data_cfg["input_size"] == (1, 28, 28) and data_cfg["mean"] == (0.1307,)
    big = timm.create_model("vimamba_tiny_patch16_224", n_layer=1)
    assert big.pretrained_cfg["input_size"] == (3, 224, 224) and big.num_features == 192


@pytest.mark.parametrize("timm_first", [False, True])
def test_timm_registration_is_lazy_and_order_free(timm_first):
    # `import seqbackbone` leaves timm (seconds to import) alone; importing timm before or after registers the models
    code = (
        "import sys\n"
        + ("import timm\n" if timm_first else "")
        + "import seqbackbone\n"
        + ("" if timm_first else "assert 'timm' not in sys.modules and 'torchvision' not in sys.modules\n")
        + "import timm\n"
        "assert set(timm.list_models('vimamba*')) == set(seqbackbone.list_models('vimamba*'))\n"
        "assert timm.is_model('mamba_pixel_tiny')\n"
        "assert not any(type(f).__name__ == '_TimmImportHook' for f in sys.meta_path)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_forward_intermediates_and_grad_checkpointing_reach_backbone():
    m = small_model("mamba_dna_cls_tiny", n_layer=2)
    x, mask = make_input(m)
    m.set_grad_checkpointing(True)
    assert m.backbone.grad_checkpointing
    m.train()
    m(x, mask).sum().backward()
    assert m.backbone.layers[0].mixer.A_log.grad is not None
    m.eval()
    with torch.no_grad():
        final, inter = m.forward_intermediates(x, mask, indices=[0, 1], norm=True)
        hidden, _ = m.forward_features(x, mask)
    assert len(inter) == 2 and inter[0].shape == hidden.shape
    torch.testing.assert_close(inter[1], hidden)
    torch.testing.assert_close(final, hidden)


def test_bfloat16_model_takes_float_waveforms():
    m = sb.create_model("mamba_audio_cls_tiny", n_layer=1, d_model=32, dtype=torch.bfloat16).eval()
    assert next(m.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        out = m(torch.rand(2, 200) * 2 - 1)
    assert out.shape == (2, 10) and torch.isfinite(out.float()).all()
