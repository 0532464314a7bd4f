"""Calibration text -> token blocks, as AutoAWQ builds them; seeded and deterministic."""

import json

import pytest
import torch  # the [torch] extra (installed in CI)

from awqkit.model.calibration import default_calibration_texts, get_calib_blocks, load_calibration_texts


class WordTokenizer:
    """One token per whitespace-separated word: makes the block arithmetic checkable."""

    def encode(self, text):
        return [len(w) for w in text.split()]


def test_sources_list_txt_jsonl(tmp_path):
    docs = ["alpha beta", "", "gamma delta epsilon"]
    assert load_calibration_texts(docs) == docs
    (tmp_path / "c.txt").write_text("alpha beta\n\ngamma delta epsilon\n")
    assert load_calibration_texts(str(tmp_path / "c.txt")) == ["alpha beta", "", "gamma delta epsilon", ""]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d, "url": "x"}) for d in docs) + "\n")
    assert load_calibration_texts(str(tmp_path / "c.jsonl")) == docs
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="text"):
        load_calibration_texts(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError):
        load_calibration_texts(str(tmp_path / "missing.txt"))


def test_blocks_drop_empty_and_long_documents_and_cut():
    docs = ["a b c", "   ", "x " * 50, "d e", "f g h i"]
    blocks = get_calib_blocks(WordTokenizer(), docs, n_samples=10, seqlen=4, seed=0)
    # kept: 3 + 2 + 4 = 9 tokens (the 50-word document is longer than seqlen) -> 2 blocks of 4
    assert blocks.shape == (2, 4) and blocks.dtype == torch.long


def test_n_samples_and_determinism():
    docs = [" ".join(["w"] * (i % 7 + 1)) for i in range(200)]
    a = get_calib_blocks(WordTokenizer(), docs, n_samples=50, seqlen=8, seed=3)
    b = get_calib_blocks(WordTokenizer(), docs, n_samples=50, seqlen=8, seed=3)
    assert torch.equal(a, b)
    # 50 documents of 1..7 words taken (all 200 would give ~800 tokens), less a partial last block
    assert 50 - 7 <= a.numel() <= 50 * 7


def test_too_little_text_is_a_clear_error():
    with pytest.raises(ValueError, match="calibration too small"):
        get_calib_blocks(WordTokenizer(), ["a b"], n_samples=4, seqlen=16)


def test_default_text_is_offline_and_real():
    docs = default_calibration_texts()
    assert len(docs) > 500 and sum(len(d) for d in docs) > 200_000
    assert docs == default_calibration_texts()


def test_real_tokenizer_blocks(data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data_dir / "stories260K-hf")
    blocks = get_calib_blocks(tok, str(data_dir / "c4-validation" / "c4_validation_2k.jsonl"), n_samples=16, seqlen=128)
    assert blocks.shape[1] == 128 and blocks.shape[0] >= 5
    assert int(blocks.max()) < 512
