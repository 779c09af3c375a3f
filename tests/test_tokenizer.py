"""Tokenizer: a tiny byte-level BPE trains, saves, reloads through AutoTokenizer and round-trips text."""

from __future__ import annotations

import pytest

from lfr_ray.tokenizer import EOT, TokenizerError, encode_docs, load_tokenizer, save_tokenizer, tokenizer_hash, train_bpe

pytestmark = pytest.mark.timeout(60)

TEXTS = [
    "In the beginning God created the heaven and the earth.\n",
    "def add(a, b):\n    return a + b\n\n\tclass Foo:  pass\n",
    "Ünïcödé, 日本語, emoji 🙂 and    runs of spaces.",
] * 20


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_tokenizer(train_bpe(iter(TEXTS), vocab_size=320), out)
    return out


def test_reloads_through_autotokenizer_and_round_trips(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.eos_token == EOT and tok.eos_token_id == 0 and tok.pad_token_id == 0
    assert 260 < len(tok) <= 320
    for text in TEXTS[:3] + ["never seen: ÿ \x00 \r\n ∑", " leading space", ""]:
        ids = encode_docs(tok, [text])[0]
        assert tok.decode(ids) == text
        assert EOT not in tok.convert_ids_to_tokens(ids)  # no special tokens added


def test_training_is_deterministic(tok_dir, tmp_path):
    save_tokenizer(train_bpe(iter(TEXTS), vocab_size=320), tmp_path / "again")
    assert tokenizer_hash(tmp_path / "again") == tokenizer_hash(tok_dir)


def test_load_tokenizer_checks_for_an_end_of_text_token(tok_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    assert load_tokenizer(tok_dir).eos_token_id == 0
    no_eos = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(tok_dir).backend_tokenizer)
    no_eos.save_pretrained(str(tmp_path / "no_eos"))
    with pytest.raises(TokenizerError, match="no_eos"):
        load_tokenizer(tmp_path / "no_eos")
    with pytest.raises(TokenizerError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
