"""The model interface, checked on every registered model (like timm's tests/test_models.py)."""

from __future__ import annotations

import pytest
import torch

import seqbackbone as sb

from .helpers import make_input, small_model

ALL = sb.list_models()


def test_zoo_is_complete():
    expected = {
        "mamba_dna_cls_tiny", "mamba_dna_cls_small", "mamba_dna_cls_base",
        "mamba_dna_lm_tiny", "mamba_dna_lm_small", "mamba_dna_lm_base",
        "mamba_audio_cls_tiny", "mamba_audio_cls_small", "mamba_audio_cls_base", "mamba_audio_mel_cls_small",
        "mamba_wave_lm_tiny", "mamba_wave_lm_small", "mamba_wave_lm_base",
        "vimamba_tiny_patch16_224", "vimamba_small_patch16_224", "vimamba_base_patch16_224",
        "vimamba_tiny_patch4_28", "mamba_pixel_tiny", "mamba_features_tiny", "mamba_features_small",
    }
    assert expected <= set(ALL)


def _expected_shape(model, x, lengths):
    cfg = model.pretrained_cfg
    B = x.shape[0]
    if cfg["task"] == "lm":
        return (B, x.shape[1], cfg["vocab_size"])
    return (B, cfg["num_classes"])


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_cfg(name):
    model = small_model(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    assert cfg["modality"] in ("audio", "dna", "image", "features")
    assert cfg["task"] in ("classification", "lm")
    assert {"num_classes", "input_size"} <= set(cfg)
    ndim = {"audio": 1, "dna": 1, "image": 3, "features": 2}[cfg["modality"]]  # (T,), (L,), (C, H, W), (L, C)
    assert len(cfg["input_size"]) == ndim
    needs = {"audio": "sample_rate", "dna": "tokenizer", "image": "mean", "features": "input_size"}[cfg["modality"]]
    assert needs in cfg
    x, mask = make_input(model)
    with torch.no_grad():
        out = model(x, mask)
    assert out.shape == _expected_shape(model, x, None)
    assert torch.isfinite(out).all()
    assert model.num_classes == cfg["num_classes"]
    assert model.num_features == 32
    hidden, tmask = model.forward_features(x, mask)
    assert hidden.shape[0] == x.shape[0] and hidden.shape[-1] == model.num_features
    assert torch.equal(model.forward_head(hidden, tmask), out)


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier_zero_gives_features(name):
    model = small_model(name)
    x, mask = make_input(model)
    per_token = model.pretrained_cfg["task"] == "lm"
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        out = model(x, mask)
    if per_token:  # (B, L, num_features)
        assert out.shape == (x.shape[0], x.shape[1], model.num_features)
        with pytest.raises(ValueError, match="tied"):
            small_model(model.pretrained_cfg["architecture"]).reset_classifier(5)
    else:
        assert out.shape == (x.shape[0], model.num_features)
        model.reset_classifier(5)
        with torch.no_grad():
            assert model(x, mask).shape == (x.shape[0], 5)
        assert model.get_classifier().out_features == 5


@pytest.mark.parametrize("name", ALL)
def test_save_load_identical(name, tmp_path):
    model = small_model(name)
    with torch.no_grad():  # move weights off their init so a load that silently skips would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x, mask = make_input(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with torch.no_grad():
        ref = model(x, mask)
        loaded = sb.from_pretrained(tmp_path).eval()
        again = sb.create_model(name, pretrained=tmp_path).eval()
        assert torch.equal(loaded(x, mask), ref)
        assert torch.equal(again(x, mask), ref)
    assert loaded.pretrained_cfg == model.pretrained_cfg


@pytest.mark.parametrize("name", ALL)
def test_no_weight_decay_covers_ssm_parameters(name):
    model = small_model(name, bidirectional="add") if "lm" not in name else small_model(name)
    nwd = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert nwd <= set(params), sorted(nwd - set(params))
    ssm = [n for n in params if n.rsplit(".", 1)[-1] in ("A_log", "D", "A_b_log", "D_b")]
    assert len(ssm) == (4 if model.backbone.config.bidirectional == "add" else 2) * len(model.backbone.layers)
    assert set(ssm) <= nwd
    assert "backbone.norm_f.weight" in nwd
    for extra in ("encoder.pos_embed", "encoder.cls_token"):
        if extra in params:
            assert extra in nwd


@pytest.mark.parametrize("name", [n for n in ALL if not n.startswith(("vimamba", "mamba_pixel"))])
def test_padded_batch_matches_each_sequence_alone(name):
    model = small_model(name)
    lengths = (23, 15, 9)
    x, mask = make_input(model, lengths)
    with torch.no_grad():
        batched = model(x, mask)
        for b in range(x.shape[0]):
            n = int(mask[b].sum())
            alone = model(x[b : b + 1, :n])  # no mask: nothing is padding
            if model.pretrained_cfg["task"] == "lm":
                torch.testing.assert_close(batched[b, :n], alone[0], rtol=1e-4, atol=1e-5)
            else:
                torch.testing.assert_close(batched[b], alone[0], rtol=1e-4, atol=1e-5)


_WRONG = {
    "dna": lambda: torch.rand(2, 50) * 2 - 1,  # a waveform
    "audio": lambda: torch.randint(4, 9, (2, 50)),  # token ids
    "image": lambda: torch.randn(2, 32),  # 2-D
    "features": lambda: torch.randn(2, 12),  # 2-D
}


@pytest.mark.parametrize("name", ALL)
def test_wrong_modality_input_raises(name):
    model = small_model(name)
    modality = model.pretrained_cfg["modality"]
    with pytest.raises((TypeError, ValueError), match=r"(?i)dtype|shape|take"):
        model(_WRONG[modality]())
    if modality != "dna":
        with pytest.raises(TypeError):
            model(torch.randint(0, 5, (2, 3, 8, 8)) if modality == "image" else torch.randint(0, 5, (2, 12, 16)))
