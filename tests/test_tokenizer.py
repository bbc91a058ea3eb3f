"""DnaTokenizer: ids, round trips, errors, batching and the reverse complement."""

from __future__ import annotations

import random

import pytest
import torch

from seqbackbone import DnaTokenizer
from seqbackbone.tokenizer import CLS_ID, PAD_ID, SEP_ID, reverse_complement_ids

TOK = DnaTokenizer()
_COMP = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


def _rc_str(s: str) -> str:  # independent reference
    return "".join(_COMP[c] for c in reversed(s))


def _random(n, rng, alphabet="ACGTN"):
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_vocabulary_ids():
    assert TOK.vocab == {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "A": 4, "C": 5, "G": 6, "T": 7, "N": 8}
    assert TOK.vocab_size == len(TOK) == 9 and TOK.pad_id == 0
    assert TOK.encode("ACGTN").tolist() == [4, 5, 6, 7, 8]


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_and_case(seed):
    rng = random.Random(seed)
    s = _random(rng.randint(1, 300), rng)
    ids = TOK.encode(s)
    assert ids.dtype == torch.long and ids.shape == (len(s),)
    assert TOK.decode(ids) == s
    assert torch.equal(TOK.encode(s.lower()), ids)


def test_other_letters_become_n_or_raise_when_strict():
    assert TOK.decode(TOK.encode("ACRYgt")) == "ACNNGT"
    with pytest.raises(ValueError, match=r"'R' at position 2"):
        DnaTokenizer(strict=True).encode("ACRYGT")
    with pytest.raises(ValueError, match=r"'-' at position 3"):
        TOK.encode("ACG-T")
    with pytest.raises(ValueError, match="non-ASCII"):
        TOK.encode("ACGé")
    with pytest.raises(TypeError):
        TOK.encode(123)


def test_special_tokens_and_decode_options():
    tok = DnaTokenizer(add_special_tokens=True)
    ids = tok.encode("ACG")
    assert ids.tolist() == [CLS_ID, 4, 5, 6, SEP_ID]
    assert tok.decode(ids) == "ACG"
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS]ACG[SEP]"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode([4, 99])
    with pytest.raises(TypeError):
        TOK.decode(torch.zeros(3))


def test_batch_encode_pads_right():
    ids, mask = TOK.batch_encode(["ACGT", "A", "GG"])
    assert ids.shape == mask.shape == (3, 4) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [4, 1, 2]
    assert (ids[~mask] == PAD_ID).all()
    assert TOK.decode(ids) == ["ACGT", "A", "GG"]
    ids, mask = TOK.batch_encode(["ACGTACGT", "A"], max_length=5, pad_to=7)
    assert ids.shape == (2, 7) and mask.sum(1).tolist() == [5, 1]
    with pytest.raises(TypeError, match="list"):
        TOK.batch_encode("ACGT")


def test_reverse_complement_of_strings_matches_reference():
    rng = random.Random(0)
    for _ in range(5):
        s = _random(rng.randint(1, 50), rng)
        assert TOK.reverse_complement(s) == _rc_str(s)
        assert TOK.decode(TOK.reverse_complement(TOK.encode(s))) == _rc_str(s)


def test_reverse_complement_of_padded_batch():
    rng = random.Random(1)
    seqs = [_random(n, rng) for n in (17, 3, 9, 1)]
    ids, mask = TOK.batch_encode(seqs)
    rc = TOK.reverse_complement(ids)
    assert torch.equal(rc == PAD_ID, ids == PAD_ID)  # still right-padded
    assert TOK.decode(rc) == [_rc_str(s) for s in seqs]
    assert torch.equal(TOK.reverse_complement(rc), ids)  # RC of RC is the identity
    assert torch.equal(TOK.reverse_complement(ids, mask), rc)


def test_reverse_complement_keeps_specials_in_place():
    tok = DnaTokenizer(add_special_tokens=True)
    ids, _ = tok.batch_encode(["AACG", "TG"])
    rc = reverse_complement_ids(ids)
    assert rc[0].tolist() == [CLS_ID] + TOK.encode("CGTT").tolist() + [SEP_ID]
    assert rc[1].tolist() == [CLS_ID] + TOK.encode("CA").tolist() + [SEP_ID, PAD_ID, PAD_ID]
    assert torch.equal(reverse_complement_ids(rc), ids)


def test_reverse_complement_respects_an_explicit_mask():
    ids = TOK.encode("AACGTT" + "GGG")[None]  # the last 3 positions are marked as padding by the mask
    mask = torch.arange(9)[None] < 6
    rc = reverse_complement_ids(ids, mask)
    assert TOK.decode(rc[0]) == _rc_str("AACGTT") + "GGG"


def test_reverse_complement_random_property():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 9, (6, 40), generator=g)
    assert torch.equal(reverse_complement_ids(reverse_complement_ids(ids)), ids)
    with pytest.raises(TypeError):
        reverse_complement_ids(ids.float())
