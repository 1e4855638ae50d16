"""Readers for the authors' formats: small files written here, plus the real ../shared/data."""

import json

import pytest

from compresso.evaluation.config import EvaluateConfig
from compresso.evaluation.data import (
    DataError,
    carve_validation,
    fixed_subset,
    read_conllu,
    read_laroseda,
    read_moroco,
    read_ro_sts,
    read_ronec,
)
from compresso.evaluation.tasks import DatasetCache

CONLLU = """# sent_id = 1
# text = Într-o zi.
1-2\tÎntr-o\t_\t_\t_\t_\t_\t_\t_\t_
1\tÎntr-\tîntru\tADP\tSpsay\t_\t2\tcase\t_\t_
2\to\tun\tDET\tTifsr\t_\t3\tdet\t_\t_
2.1\tx\tx\tX\tX\t_\t_\t_\t_\t_
3\tzi\tzi\tNOUN\tNcfsrn\t_\t0\troot\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\tPERIOD\t_\t3\tpunct\t_\t_

# sent_id = 2
1\tDa\tda\tINTJ\tI\t_\t0\troot\t_\t_

"""


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_conllu_skips_ranges_and_empty_nodes(tmp_path):
    sents = read_conllu(write(tmp_path / "a.conllu", CONLLU))
    assert [s.words for s in sents] == [["Într-", "o", "zi", "."], ["Da"]]
    assert sents[0].upos == ["ADP", "DET", "NOUN", "PUNCT"]
    assert sents[0].xpos == ["Spsay", "Tifsr", "Ncfsrn", "PERIOD"]
    assert sents[0].id == "1"


def test_conllu_malformed_line_names_file_and_line(tmp_path):
    bad = CONLLU.replace("3\tzi\tzi\tNOUN\tNcfsrn\t_\t0\troot\t_\tSpaceAfter=No", "3\tzi\tzi\tNOUN")
    path = write(tmp_path / "bad.conllu", bad)
    with pytest.raises(DataError, match=r"bad\.conllu:7: expected 10 tab-separated CoNLL-U columns, found 4"):
        read_conllu(path)
    path = write(tmp_path / "bad2.conllu", CONLLU.replace("1\tDa", "x\tDa"))
    with pytest.raises(DataError, match=r"bad2\.conllu:11: column 1 \(ID\)"):
        read_conllu(path)


def ronec_record(i, tokens, tags):
    return {"id": i, "tokens": tokens, "ner_tags": tags, "ner_ids": [0] * len(tags), "space_after": [True] * len(tags)}


def test_ronec_reads_and_points_at_the_bad_record(tmp_path):
    good = [ronec_record(1, ["Ion", "Popescu", "vine"], ["B-PERSON", "I-PERSON", "O"]),
            ronec_record(2, ["la", "Cluj"], ["O", "B-GPE"])]
    sents = read_ronec(write(tmp_path / "ok.json", json.dumps(good)))
    assert [s.tags for s in sents] == [["B-PERSON", "I-PERSON", "O"], ["O", "B-GPE"]]
    bad = good + [ronec_record(3, ["a", "b"], ["O"])]
    path = write(tmp_path / "bad.json", json.dumps(bad, indent=1))  # one record spans many lines
    text = path.read_text().splitlines()
    line = next(i for i, ln in enumerate(text, 1) if '"id": 3' in ln) - 1  # the record's opening brace
    with pytest.raises(DataError, match=rf"bad\.json:{line}: record 2 \(id 3\): 'tokens' and 'ner_tags'"):
        read_ronec(path)
    path = write(tmp_path / "tags.json", json.dumps([ronec_record(4, ["x"], ["PERSON"])]))
    with pytest.raises(DataError, match=r"tags\.json:1: record 0 \(id 4\): ner_tags must be BIO"):
        read_ronec(path)
    path = write(tmp_path / "broken.json", '[{"id": 1, "tokens": ["a"],\n "ner_tags": ["O"]},\n {"id": 2 "x"}]')
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON"):
        read_ronec(path)


def test_laroseda_ratings(tmp_path):
    reviews = {"reviews": [{"index": "1", "title": "Bun", "content": "merge", "starRating": "5"},
                           {"index": "2", "title": "Slab", "content": "nu", "starRating": 1}]}
    got = read_laroseda(write(tmp_path / "l.json", json.dumps(reviews, indent=1)))
    assert [(r.title, r.rating) for r in got] == [("Bun", 5), ("Slab", 1)]
    reviews["reviews"].append({"index": "3", "title": "Ok", "content": "", "starRating": "3"})
    path = write(tmp_path / "bad.json", json.dumps(reviews, indent=1))
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if '"index": "3"' in ln) - 1
    with pytest.raises(DataError, match=rf"bad\.json:{line}: review 2 \(index 3\): starRating must be 1, 2, 4 or 5"):
        read_laroseda(path)
    with pytest.raises(DataError, match=r'nope\.json:1: expected a JSON object with a "reviews" array'):
        read_laroseda(write(tmp_path / "nope.json", "[]"))


def test_ro_sts_rows(tmp_path):
    path = write(tmp_path / "s.tsv", "5.0\tUn avion decolează.\tUn avion decolează acum.\n0.4\tA\tB\n")
    assert [(p.score, p.sentence2) for p in read_ro_sts(path)] == [(5.0, "Un avion decolează acum."), (0.4, "B")]
    with pytest.raises(DataError, match=r"b\.tsv:2: expected 3 tab-separated columns"):
        read_ro_sts(write(tmp_path / "b.tsv", "1.0\ta\tb\n2.0\tonly two\n"))
    with pytest.raises(DataError, match=r"c\.tsv:1: score 'x' is not a number"):
        read_ro_sts(write(tmp_path / "c.tsv", "x\ta\tb\n"))
    with pytest.raises(DataError, match=r"d\.tsv:1: score 7.0 is outside \[0, 5\]"):
        read_ro_sts(write(tmp_path / "d.tsv", "7\ta\tb\n"))


def write_moroco(folder, rows):
    write(folder / "samples.txt", "".join(f"{i}\t{t}\n" for i, t, _ in rows))
    write(folder / "dialect_labels.txt", "".join(f"{i}\t{d}\n" for i, _, d in rows))
    write(folder / "category_labels.txt", "".join(f"{i}\t3\n" for i, _, _ in rows))


def test_moroco_joins_files_by_id(tmp_path):
    write_moroco(tmp_path / "train", [("10", "Text $NE$ unu", 1), ("11", "Text doi", 2)])
    got = read_moroco(tmp_path / "train")
    assert [(s.id, s.dialect, s.category) for s in got] == [("10", 1, 3), ("11", 2, 3)]
    write(tmp_path / "train" / "dialect_labels.txt", "10\t1\n11\t3\n")
    with pytest.raises(DataError, match=r"dialect_labels\.txt:2: dialect label must be 1 \(Moldavian\) or 2"):
        read_moroco(tmp_path / "train")
    write(tmp_path / "train" / "dialect_labels.txt", "10\t1\n11 2\n")
    with pytest.raises(DataError, match=r"dialect_labels\.txt:2: expected ID<TAB>1\|2"):
        read_moroco(tmp_path / "train")


def test_carve_and_subset_are_deterministic():
    items = list(range(100))
    train, val = carve_validation(items, 0.1)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert carve_validation(items, 0.1) == (train, val) and train == sorted(train)
    sub = fixed_subset(items, 7)
    assert sub == fixed_subset(items, 7) and len(sub) == 7 and sub == sorted(sub)
    assert fixed_subset(items, None) is items


def small_release(root, with_train: bool):
    """A miniature of the five datasets in their authors' layouts."""
    sent = CONLLU
    write(root / "ro_rrt" / "ro_rrt-ud-dev.conllu", sent * 5)
    write(root / "ro_rrt" / "ro_rrt-ud-test.conllu", sent)
    recs = [ronec_record(i, ["Ion", "vine"], ["B-PERSON", "O"]) for i in range(20)]
    write(root / "ronec" / "valid.json", json.dumps(recs))
    write(root / "ronec" / "test.json", json.dumps(recs[:3]))
    if with_train:
        write(root / "ro_rrt" / "ro_rrt-ud-train.conllu", sent * 3)
        write(root / "ronec" / "train.json", json.dumps(recs))
    reviews = {"reviews": [{"index": str(i), "title": "t", "content": "c", "starRating": str(r)}
                           for i, r in enumerate([1, 2, 4, 5] * 5)]}
    write(root / "laroseda" / "laroseda_train.json", json.dumps(reviews))
    write(root / "laroseda" / "laroseda_test.json", json.dumps(reviews))
    for split in ("train", "dev", "test"):
        write(root / "ro_sts" / f"RO-STS.{split}.tsv", "1.0\ta\tb\n4.5\tc\td\n")
    for split in ("train", "validation", "test"):
        write_moroco(root / "moroco" / split, [("1", "a", 1), ("2", "b", 2)])


def test_task_data_carves_validation_when_a_split_is_missing(tmp_path):
    small_release(tmp_path, with_train=False)
    cache = DatasetCache(EvaluateConfig(data_dir=str(tmp_path)))
    upos = cache.task("upos")
    assert upos.sizes() == {"train": 9, "validation": 1, "test": 2}
    assert any("trained on ro_rrt-ud-dev.conllu" in n for n in upos.notes)
    assert any("no validation split" in n for n in upos.notes)
    assert upos.labels == ["ADP", "DET", "INTJ", "NOUN", "PUNCT"]
    xpos = cache.task("xpos")
    assert "Ncfsrn" in xpos.labels
    ner = cache.task("ner")
    assert ner.labels[0] == "O" and set(ner.labels) == {"O", "B-PERSON"}
    sapn, sar = cache.task("sapn"), cache.task("sar")
    assert sapn.labels == ["negative", "positive"] and sar.labels == ["1", "2", "4", "5"]
    assert {ex.label for ex in sapn.test} == {"negative", "positive"} and sapn.test[0].text_pair == "c"
    assert sapn.sizes() == {"train": 18, "validation": 2, "test": 20}
    sts, di = cache.task("sts"), cache.task("di")
    assert sts.labels is None and sts.test[1].label == 4.5 and not sts.notes
    assert di.labels == ["moldavian", "romanian"] and [ex.label for ex in di.test] == ["moldavian", "romanian"]


def test_full_release_layout_uses_its_own_splits(tmp_path):
    small_release(tmp_path, with_train=True)
    cache = DatasetCache(EvaluateConfig(data_dir=str(tmp_path)))
    upos, ner = cache.task("upos"), cache.task("ner")
    assert upos.sizes() == {"train": 6, "validation": 10, "test": 2} and not upos.notes
    assert ner.sizes() == {"train": 20, "validation": 20, "test": 3} and not ner.notes


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        DatasetCache(EvaluateConfig(data_dir=str(tmp_path / "nowhere"))).task("upos")
    (tmp_path / "ro_sts").mkdir()
    with pytest.raises(DataError, match=r"ro_sts: RO-STS\.train\.tsv not found"):
        DatasetCache(EvaluateConfig(data_dir=str(tmp_path))).task("sts")
    with pytest.raises(DataError, match=r"no ronec or RONEC/ folder"):
        DatasetCache(EvaluateConfig(data_dir=str(tmp_path))).task("ner")


def test_quick_run_subsets(tmp_path):
    small_release(tmp_path, with_train=False)
    cache = DatasetCache(EvaluateConfig(data_dir=str(tmp_path), max_train_examples=5, max_eval_examples=1))
    sar = cache.task("sar")
    assert sar.sizes() == {"train": 5, "validation": 1, "test": 1}
    assert any("quick run" in n for n in sar.notes)


@pytest.mark.shared
def test_reads_the_shared_data(shared_dir):
    cache = DatasetCache(EvaluateConfig(data_dir=str(shared_dir / "data")))
    sizes = {t: cache.task(t).sizes() for t in ("upos", "ner", "sapn", "sts", "di")}
    assert sizes["upos"] == {"train": 564, "validation": 188, "test": 729}  # 25%: min_validation_examples, capped
    assert sizes["ner"]["train"] + sizes["ner"]["validation"] == 1330
    assert sizes["sapn"] == {"train": 10800, "validation": 1200, "test": 3000}
    assert sizes["sts"] == {"train": 5749, "validation": 1500, "test": 1379}
    assert sizes["di"] == {"train": 3555, "validation": 1184, "test": 1184}
    assert len(cache.task("ner").labels) == 31  # O + B/I over 15 classes


# --- other real files (issue 15, item 9) ---------------------------------------------------------

def test_every_reader_accepts_a_byte_order_mark_and_crlf(tmp_path):
    bom = "\ufeff"
    small_release(tmp_path, with_train=True)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            path.write_text(bom + path.read_text(encoding="utf-8").replace("\n", "\r\n"), encoding="utf-8")
    plain = tmp_path / "plain"
    small_release(plain, with_train=True)
    with_bom, without = DatasetCache(EvaluateConfig(data_dir=str(tmp_path))), DatasetCache(EvaluateConfig(data_dir=str(plain)))
    for task in ("upos", "xpos", "ner", "sapn", "sts", "di"):
        a, b = with_bom.task(task), without.task(task)
        assert a.sizes() == b.sizes() and a.labels == b.labels, task
        assert [(ex.text, ex.label) for ex in a.test] == [(ex.text, ex.label) for ex in b.test], task


def test_invalid_utf8_and_folders_are_clean_errors(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_bytes(CONLLU.encode() + b"5\tcas\xe3\tx\tNOUN\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(DataError, match=r"bad\.conllu:13: not valid UTF-8"):
        read_conllu(path)
    for reader in (read_conllu, read_ronec, read_laroseda, read_ro_sts):
        folder = tmp_path / f"{reader.__name__}.d"
        folder.mkdir()
        with pytest.raises(DataError, match=rf"{folder.name}: is a folder; expected a file"):
            reader(folder)
    (tmp_path / "t" / "samples.txt").mkdir(parents=True)
    write(tmp_path / "t" / "dialect_labels.txt", "1\t1\n")
    with pytest.raises(DataError, match="samples.txt"):
        read_moroco(tmp_path / "t")
    sts = tmp_path / "latin1.tsv"
    sts.write_bytes("1.0\tab\tcd\n2.0\tcafé\tx\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.tsv:2: not valid UTF-8"):
        read_ro_sts(sts)


def test_laroseda_is_parsed_as_json_not_by_pattern(tmp_path):
    reviews = [{"index": str(i), "title": "t", "content": "c", "starRating": r} for i, r in enumerate([1, 2, 4, 5] * 3)]
    # A nested "reviews" key (and the word in a string) before the real array used to be matched first.
    doc = {"meta": {"reviews": [{"index": "x", "title": "a", "content": "b", "starRating": 5}]},
           "note": '"reviews": [', "reviews": reviews}
    path = write(tmp_path / "l.json", json.dumps(doc, indent=2))
    got = read_laroseda(path)
    assert len(got) == 12 and [r.id for r in got] == [str(i) for i in range(12)]
    reviews[7]["starRating"] = 3
    path = write(tmp_path / "l2.json", json.dumps(doc, indent=2))
    text = path.read_text().splitlines()
    line = [i for i, ln in enumerate(text, 1) if ln == "    {"][7]  # the real array's record with index 7
    with pytest.raises(DataError, match=rf"l2\.json:{line}: review 7 \(index 7\): starRating must be"):
        read_laroseda(path)


RONEC_V1_BIO = """# global.columns = ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC RONEC:CLASS
# sent_id = 1
1\tIon\tIon\tPROPN\t_\t_\t0\troot\t_\t_\tB-PERSON
2\tPopescu\tPopescu\tPROPN\t_\t_\t1\tflat\t_\t_\tI-PERSON
3\tvine\tveni\tVERB\t_\t_\t1\tacl\t_\t_\tO
4\tla\tla\tADP\t_\t_\t5\tcase\t_\t_\tO
5\tCluj\tCluj\tPROPN\t_\t_\t3\tobl\t_\tSpaceAfter=No\tB-GPE

"""

RONEC_V1_NUMBERED = """# global.columns = ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC RONEC:CLASS
1\tIon\tIon\tPROPN\t_\t_\t0\troot\t_\t_\t1:PERSON
2\tPopescu\tPopescu\tPROPN\t_\t_\t1\tflat\t_\t_\t1
3-4\tvine-la\t_\t_\t_\t_\t_\t_\t_\t_\t_
3\tvine\tveni\tVERB\t_\t_\t1\tacl\t_\t_\t*
4\tla\tla\tADP\t_\t_\t5\tcase\t_\t_\t*
5\tCluj\tCluj\tPROPN\t_\t_\t3\tobl\t_\t_\t2:GPE;3:LOC
"""


def test_ronec_v1_conllu_plus_in_both_styles(tmp_path):
    from compresso.evaluation.data import read_ner_conllup

    expected = (["Ion", "Popescu", "vine", "la", "Cluj"], ["B-PERSON", "I-PERSON", "O", "O", "B-GPE"])
    for name, text in (("bio.conllup", RONEC_V1_BIO), ("numbered.conllup", RONEC_V1_NUMBERED)):
        (sent,) = read_ner_conllup(write(tmp_path / name, text))
        assert (sent.tokens, sent.tags) == expected, name
    no_header = "\n".join(RONEC_V1_BIO.splitlines()[1:]) + "\n"
    assert read_ner_conllup(write(tmp_path / "plain.conllu", no_header))[0].tags == expected[1]
    with pytest.raises(DataError, match=r"bad\.conllup:4: entity column 11: expected a BIO tag"):
        read_ner_conllup(write(tmp_path / "bad.conllup", RONEC_V1_BIO.replace("I-PERSON", "PERSON?")))
    # As a dataset folder: the type set is whatever the files use (here a type RONEC v2 lacks).
    write(tmp_path / "data" / "ronec" / "train.conllup", RONEC_V1_BIO.replace("B-GPE", "B-LANGUAGE") * 3)
    write(tmp_path / "data" / "ronec" / "dev.conllup", RONEC_V1_BIO)
    write(tmp_path / "data" / "ronec" / "test.conllup", RONEC_V1_NUMBERED)
    ner = DatasetCache(EvaluateConfig(data_dir=str(tmp_path / "data"))).task("ner")
    assert set(ner.labels) == {"O", "B-PERSON", "I-PERSON", "B-GPE", "B-LANGUAGE"}
    assert ner.sizes() == {"train": 3, "validation": 1, "test": 1}
    assert any("1 test tag(s) never seen in training, on 1 of 5 test tokens" in n and "B-GPE ×1" in n
               for n in ner.notes)


def test_one_class_tasks_are_refused(tmp_path):
    small_release(tmp_path, with_train=True)
    for name in ("ro_rrt-ud-train.conllu", "ro_rrt-ud-dev.conllu", "ro_rrt-ud-test.conllu"):
        path = tmp_path / "ro_rrt" / name
        lines = [ln.split("\t") for ln in path.read_text().split("\n")]
        path.write_text("\n".join("\t".join(c[:4] + ["_"] + c[5:]) if len(c) == 10 else "\t".join(c) for c in lines))
    cache = DatasetCache(EvaluateConfig(data_dir=str(tmp_path)))
    assert len(cache.task("upos").labels) == 5
    with pytest.raises(DataError, match=r"xpos: the data has 1 class \('_'\); a task needs at least two"):
        cache.task("xpos")
