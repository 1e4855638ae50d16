"""compresso.corpus: streaming documents from text files and hub-style datasets."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import tracemalloc

import pytest

from compresso.corpus import (
    Corpus,
    CorpusError,
    as_corpus,
    check_corpus,
    iter_documents,
    iter_indexed_documents,
    raw_documents,
)


def _write(path, lines, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def files(tmp_path):
    return [_write(tmp_path / "a.txt", ["doc 0", "", "  doc 1  ", "doc 2"]),
            _write(tmp_path / "b.txt.gz", ["doc 3", "doc 4"], gzip.open),
            _write(tmp_path / "c.txt.xz", ["doc 5", "   ", "doc 6"], lzma.open),
            _write(tmp_path / "d.txt.bz2", ["doc 7"], bz2.open)]


def test_reads_plain_and_compressed_files_in_order_skipping_blank_lines(files):
    assert list(raw_documents(files)) == [f"doc {i}" for i in range(8)]
    assert list(iter_documents(files[1])) == ["doc 3", "doc 4"]  # a single path


def test_heldout_slice_train_part_and_cap(files):
    held = list(iter_documents(files, part="heldout", heldout=3))
    train = list(iter_documents(files, part="train", heldout=3))
    assert held == ["doc 0", "doc 1", "doc 2"] and train == [f"doc {i}" for i in range(3, 8)]
    assert list(iter_indexed_documents(files, heldout=3, max_documents=2)) == [(0, "doc 3"), (1, "doc 4")]
    assert list(iter_documents(files, part="all")) == held + train


def test_ranks_split_training_documents_and_resume_by_index(files):
    shards = [list(iter_indexed_documents(files, heldout=1, rank=r, world_size=3)) for r in range(3)]
    indices = sorted(i for shard in shards for i, _ in shard)
    assert indices == list(range(7))  # every training document exactly once
    assert all(i % 3 == r for r, shard in enumerate(shards) for i, _ in shard)
    assert [i for i, _ in iter_indexed_documents(files, heldout=1, rank=1, world_size=3, start=2)] == [4]
    with pytest.raises(ValueError, match="rank 3 is outside"):
        list(iter_indexed_documents(files, rank=3, world_size=3))


def test_errors_name_the_problem(tmp_path, files):
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus(files=(tmp_path / "missing.txt",))
    with pytest.raises(CorpusError, match="not both or neither"):
        Corpus()
    empty = _write(tmp_path / "empty.txt", ["", "  "])
    with pytest.raises(CorpusError, match="holds no documents"):
        check_corpus([empty])
    with pytest.raises(CorpusError, match="only 8 documents, all of them in the held-out slice"):
        check_corpus(files, heldout=10)
    check_corpus(files, heldout=7)
    broken = tmp_path / "broken.xz"
    broken.write_bytes(b"not xz at all")
    with pytest.raises(CorpusError, match="broken.xz: cannot read it"):
        list(raw_documents([broken]))


def test_hub_dataset_path_streams_rows(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": f"row {i}\nwith a newline", "id": i} for i in range(5)] + [{"text": "", "id": 5}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = as_corpus(folder)  # a folder is a dataset, read with `datasets` like a hub id
    assert corpus.dataset == str(folder)
    with pytest.raises(CorpusError, match="is a folder"):
        Corpus(files=(folder,))
    docs = list(iter_documents(corpus, heldout=1))
    assert docs == [f"row {i} with a newline" for i in range(1, 5)]
    with pytest.raises(CorpusError, match="no field 'body'"):
        list(raw_documents(Corpus(dataset=str(folder), text_field="body")))
    assert as_corpus("someone/some-dataset").dataset == "someone/some-dataset"


def test_memory_stays_flat_while_streaming(tmp_path):
    """Peak Python allocations while reading a file do not grow with the file (one line at a time)."""
    line = "cuvânt " * 40
    peaks = []
    for n in (2_000, 20_000):
        path = _write(tmp_path / f"c{n}.txt.gz", [line] * n, gzip.open)
        tracemalloc.start()
        count = sum(1 for _ in iter_documents(path))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count == n
    assert peaks[1] < 1.5 * peaks[0] + 64_000, peaks
