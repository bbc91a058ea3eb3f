"""Per-modality behaviour of the registered models: DNA reverse complement, LM targets, audio rates, image sizes."""

from __future__ import annotations

import random

import pytest
import torch
import torchaudio

import seqbackbone as sb
from seqbackbone.encoders import DnaEncoder, rc_augment

from .helpers import random_dna, small_model

TOK = sb.DnaTokenizer()


def _dna_batch(lengths=(30, 22, 11), seed=0):
    rng = random.Random(seed)
    return TOK.batch_encode([random_dna(n, rng) for n in lengths])


@pytest.mark.parametrize("bidirectional", ["add", "tied"])
def test_conjoin_is_rc_invariant(bidirectional):
    m = small_model("mamba_dna_cls_tiny", n_layer=2, bidirectional=bidirectional, rc_conjoin=True)
    ids, mask = _dna_batch()
    rc = TOK.reverse_complement(ids, mask)
    assert not torch.equal(rc, ids)
    with torch.no_grad():
        a, b = m(ids, mask), m(rc, mask)
        plain, plain_rc = m(ids, mask, conjoin=False), m(rc, mask, conjoin=False)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(plain, plain_rc, atol=1e-4)  # the invariance comes from conjoining
    torch.testing.assert_close(a, (plain + plain_rc) / 2)
    # padding is respected: each row conjoined alone gives the same
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        with torch.no_grad():
            torch.testing.assert_close(m(ids[r : r + 1, :n])[0], a[r], rtol=1e-4, atol=1e-5)


def test_conjoin_rejected_where_meaningless():
    with pytest.raises(ValueError, match="rc_conjoin"):
        sb.create_model("mamba_dna_lm_tiny", rc_conjoin=True)
    with pytest.raises(ValueError, match="rc_aug"):
        sb.create_model("mamba_dna_lm_tiny", rc_aug=True)
    m = small_model("mamba_audio_cls_tiny")
    with pytest.raises(ValueError, match="DNA"):
        m(torch.zeros(1, 100), conjoin=True)


def test_rc_aug_only_in_training():
    m = small_model("mamba_dna_cls_tiny", rc_aug=True)
    ids, mask = _dna_batch((25, 25, 25, 25, 25, 25, 25, 25))
    rc = TOK.reverse_complement(ids, mask)
    with torch.no_grad():
        fwd, bwd = m(ids, mask), m(rc, mask)
        assert torch.equal(m(ids, mask), fwd)  # eval: no augmentation
        m.train()
        torch.manual_seed(1)
        out = m(ids, mask)
    is_fwd = torch.isclose(out, fwd, atol=1e-6).all(-1)
    is_bwd = torch.isclose(out, bwd, atol=1e-6).all(-1)
    assert (is_fwd | is_bwd).all() and is_fwd.any() and is_bwd.any()


def test_rc_augment_function():
    ids, mask = _dna_batch((20, 12))
    torch.manual_seed(0)
    assert torch.equal(rc_augment(ids, mask, p=0.0), ids)
    assert torch.equal(rc_augment(ids, mask, p=1.0), TOK.reverse_complement(ids, mask))


def test_dna_lm_targets_and_loss():
    m = small_model("mamba_dna_lm_tiny")
    ids, mask = _dna_batch((9, 5))
    tgt = m.targets(ids, mask)
    assert tgt.shape == ids.shape
    assert tgt[0, :8].tolist() == ids[0, 1:9].tolist() and tgt[0, 8] == -100
    assert tgt[1, :4].tolist() == ids[1, 1:5].tolist() and (tgt[1, 4:] == -100).all()
    torch.testing.assert_close(m.targets(ids), tgt)  # the mask follows from [PAD]
    logits = m(ids, mask)
    valid = tgt != -100
    ref = torch.nn.functional.cross_entropy(logits[valid], tgt[valid])
    torch.testing.assert_close(m.lm_loss(ids, mask), ref)


def test_wave_lm_targets_are_next_mu_law_codes():
    m = small_model("mamba_wave_lm_tiny")
    wave = torch.rand(2, 40) * 2 - 1
    mask = torch.arange(40)[None] < torch.tensor([[40], [25]])
    codes = torchaudio.functional.mu_law_encoding(wave, 256)
    tgt = m.targets(wave, mask)
    assert torch.equal(tgt[0, :39], codes[0, 1:]) and tgt[0, 39] == -100
    assert torch.equal(tgt[1, :24], codes[1, 1:25]) and (tgt[1, 24:] == -100).all()
    assert torch.equal(m.encoder.encode_targets(wave), codes)
    # the generation hooks: embed on codes, a tied head on (B, D) step outputs
    emb = m.encoder.embed(codes)
    assert emb.shape == (2, 40, 32)
    assert m.head(torch.randn(2, 32)).shape == (2, 256) and m.vocab_size == 256


def test_audio_other_rate_is_resampled():
    m = small_model("mamba_audio_cls_tiny")
    t = torch.linspace(0, 1, 16000)
    wave16 = (0.5 * torch.sin(2 * torch.pi * 440 * t))[None]
    wave8 = torchaudio.functional.resample(wave16, 16000, 8000)
    with torch.no_grad():
        torch.testing.assert_close(m(wave16, sample_rate=16000), m(wave8), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m(wave8, sample_rate=8000), m(wave8))
    mask = torch.ones_like(wave16, dtype=torch.bool)
    mask[:, 12000:] = False
    tokens, tmask = m.encoder(wave16, mask, sample_rate=16000)
    assert tmask.sum() == -(-6000 // 32)  # 12000 samples at 16 kHz = 6000 at 8 kHz


def test_audio_rate_needed_message():
    from seqbackbone.encoders import FrameEncoder

    enc = FrameEncoder(16, sample_rate=None)
    with pytest.raises(ValueError, match="sample_rate"):
        enc(torch.zeros(1, 64), sample_rate=16000)
    m = small_model("mamba_dna_cls_tiny")
    with pytest.raises(TypeError, match="audio"):
        m(torch.ones(1, 8, dtype=torch.long) * 4, sample_rate=8000)


def test_image_model_at_another_size():
    m = small_model("vimamba_tiny_patch4_28")
    with torch.no_grad():
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert m(torch.randn(2, 1, 36, 20)).shape == (2, 10)  # 9 x 5 patches: pos embed resampled
        h, _ = m.forward_features(torch.randn(1, 1, 36, 20))
    assert h.shape == (1, 9 * 5 + 1, 32)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        m(torch.randn(1, 1, 30, 28))
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 3, 28, 28))


def test_pixel_model_sequence_length():
    m = sb.create_model("mamba_pixel_tiny", n_layer=1, d_model=16, d_state=4)
    assert m.pretrained_cfg["input_size"] == (1, 28, 28)
    with torch.no_grad():
        h, mask = m.forward_features(torch.randn(2, 1, 28, 28))
    assert h.shape == (2, 784, 16) and mask is None
    assert m.backbone.config.bidirectional == "add"


def test_dna_encoder_position_embedding_and_dropout():
    enc = DnaEncoder(16, max_len=8, drop_rate=0.5)
    ids = torch.tensor([[4, 5, 6, 7, 0, 0], [7, 7, 7, 7, 7, 7]])
    enc.eval()
    tokens, mask = enc(ids)
    expected = enc.embedding(ids) + enc.pos_embed[:6]
    torch.testing.assert_close(tokens, expected)
    assert mask.tolist() == (ids != 0).tolist()
    # the same base at two positions differs only by the position embeddings
    torch.testing.assert_close(tokens[1, 3] - tokens[1, 1], enc.pos_embed[3] - enc.pos_embed[1])
    enc.train()
    dropped, _ = enc(ids)
    assert (dropped == 0).any() and not torch.allclose(dropped, tokens)
    with pytest.raises(ValueError, match="max_len"):
        enc(torch.full((1, 9), 4))
    with pytest.raises(ValueError, match="max_len"):
        DnaEncoder(16, max_len=0)
    with pytest.raises(ValueError, match="drop_rate"):
        DnaEncoder(16, drop_rate=1.0)


def test_dna_classifier_with_position_embedding_saves_and_loads(tmp_path):
    m = sb.create_model("mamba_dna_cls_tiny", d_model=32, n_layer=1, num_classes=3,
                        encoder_kwargs={"max_len": 64, "drop_rate": 0.1})
    assert "encoder.pos_embed" in m.no_weight_decay()
    m.eval()
    ids = torch.randint(4, 8, (2, 60))
    m.save_pretrained(str(tmp_path / "m"))
    again = sb.from_pretrained(str(tmp_path / "m")).eval()
    torch.testing.assert_close(again(ids), m(ids))


def test_mel_spec_augment_masks_real_frames_in_training_only():
    from seqbackbone.encoders import MelEncoder

    torch.manual_seed(0)
    enc = MelEncoder(16, freq_masks=2, freq_mask_width=8, time_masks=2, time_mask_width=10)
    x = torch.randn(3, 4000) * 0.1
    mask = torch.arange(4000)[None] < torch.tensor([[4000], [2000], [600]])
    x = x * mask
    spec = torch.log(enc.mel(x) + 1e-6)
    real = torch.arange(spec.shape[-1])[None] < (mask.sum(-1) // 80 + 1)[:, None]
    spec = spec * real[:, None]
    out = enc.spec_augment(spec, real)
    changed = out != spec
    assert changed.any() and not changed.transpose(1, 2)[~real].any()  # padded frames stay 0
    fill = (spec * real[:, None]).sum((1, 2)) / (real.sum(-1) * spec.shape[1])
    for b in range(3):
        torch.testing.assert_close(out[b][changed[b]], fill[b].expand(int(changed[b].sum())))
        # a time span covers at most a fifth of the real frames; a band at most freq_mask_width bins
        whole_columns = changed[b].all(0).sum()
        assert whole_columns <= 2 * (int(real[b].sum()) // 5)
    enc.eval()
    with torch.no_grad():
        a, _ = enc(x, mask)
        b, _ = enc(x, mask)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="time_masks"):
        MelEncoder(16, time_masks=-1)
