"""GLUE data layer: real files, official layouts written by the test, metrics, selection, cache, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from kdray.config import DataConfig
from kdray.glue import (
    GlueDataError,
    compute_metrics,
    describe_tasks,
    get_task,
    load_task,
    make_collator,
    prepare_data,
    primary_score,
    select_rows,
)
from kdray.models import load_tokenizer, resolve_model

OFFICIAL_ROWS = {
    "cola": {"train": 8551, "validation": 1043},
    "sst2": {"train": 67349, "validation": 872},
    "mrpc": {"train": 3668, "validation": 408},
    "stsb": {"train": 5749, "validation": 1500},
    "rte": {"train": 2490, "validation": 277},
    "wnli": {"train": 635, "validation": 71},
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("minilm-l6"))


@pytest.mark.parametrize("task", sorted(OFFICIAL_ROWS))
def test_real_glue_tasks_load_with_official_row_counts(glue_dir: Path, task: str) -> None:
    splits = load_task(task, source="local", data_dir=glue_dir)
    assert {k: len(v) for k, v in splits.items()} == OFFICIAL_ROWS[task]
    spec = get_task(task)
    assert set(spec.text_keys) | {"label", "idx"} == set(splits["train"].column_names)
    labels = splits["train"]["label"]
    if spec.is_regression:
        assert 0.0 <= min(labels) and max(labels) <= 5.0 and any(x != int(x) for x in labels)
    else:
        assert set(labels) == set(range(spec.num_labels))


def test_qnli_dev_keeps_stray_quotes(glue_dir: Path) -> None:
    dev = load_task("qnli", source="local", data_dir=glue_dir, splits=["validation"])["validation"]
    assert len(dev) == 5463
    assert any(s.startswith('"') for s in dev["sentence"]), "QUOTE_NONE must keep leading quotes"
    assert set(dev["label"]) == {0, 1}


def test_rte_string_labels_map_to_hub_ids(glue_dir: Path) -> None:
    first = (glue_dir / "RTE" / "train.tsv").read_text().splitlines()[1].split("\t")
    row = load_task("rte", source="local", data_dir=glue_dir)["train"][0]
    assert row["label"] == ["entailment", "not_entailment"].index(first[3])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_qqp_and_mnli_official_layouts(tmp_path: Path) -> None:
    _write(tmp_path / "QQP" / "train.tsv",
           "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t1\t2\tHow?\tWhy?\t0\n2\t3\t4\t\"Who\tWhom\t1\n")
    _write(tmp_path / "QQP" / "dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n3\t5\t6\tA?\tB?\t1\n")
    qqp = load_task("qqp", source="local", data_dir=tmp_path)
    assert qqp["train"]["question1"] == ["How?", '"Who'] and qqp["train"]["label"] == [0, 1]
    header = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
    _write(tmp_path / "MNLI" / "train.tsv", header + "0\t1\t1n\tgov\tx\tx\tx\tx\tP one\tH one\tneutral\tneutral\n")
    dev_header = header.replace("label1\t", "label1\tlabel2\t")
    for name, gold in (("dev_matched.tsv", "contradiction"), ("dev_mismatched.tsv", "entailment")):
        _write(tmp_path / "MNLI" / name, dev_header + f"0\t1\t1n\tgov\tx\tx\tx\tx\tP\tH\t{gold}\t{gold}\t{gold}\n")
    mnli = load_task("mnli", source="local", data_dir=tmp_path)
    assert set(mnli) == {"train", "validation_matched", "validation_mismatched"}
    assert mnli["train"][0]["premise"] == "P one" and mnli["train"][0]["label"] == 1
    assert mnli["validation_matched"][0]["label"] == 2 and mnli["validation_mismatched"][0]["label"] == 0


def test_qnli_train_layout(tmp_path: Path) -> None:
    _write(tmp_path / "QNLI" / "train.tsv", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tnot_entailment\n")
    assert load_task("qnli", source="local", data_dir=tmp_path, splits=["train"])["train"]["label"] == [1]


@pytest.mark.parametrize(
    "files, match",
    [
        ({}, "missing folder"),
        ({"RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n"}, "empty file"),
        ({"RTE/train.tsv": "index\tsentence1\tlabel\n0\ta\tentailment\n"}, "missing column 'sentence2'"),
        ({"RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n"}, "unparsable label 'maybe'"),
        ({"RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\n"}, "tab-separated columns"),
        ({"RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"}, "missing file"),
    ],
)
def test_bad_local_files_give_one_clear_error(tmp_path: Path, files: dict[str, str], match: str) -> None:
    (tmp_path / "RTE").mkdir(exist_ok=True) if files else None
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(GlueDataError, match=match) as info:
        load_task("rte", source="local", data_dir=tmp_path)
    assert str(tmp_path) in str(info.value)


def test_unparsable_stsb_score_names_file_and_line(tmp_path: Path) -> None:
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = _write(tmp_path / "STS-B" / "train.tsv", header + "0\tg\tf\t2012\t1\ts\ts\ta\tb\tfive\n")
    with pytest.raises(GlueDataError, match=rf"{path}:2: unparsable similarity score 'five'"):
        load_task("stsb", source="local", data_dir=tmp_path, splits=["train"])


def test_unknown_task_and_offline_hub_errors() -> None:
    with pytest.raises(GlueDataError, match="unknown GLUE task 'squad'; known tasks: cola"):
        get_task("squad")
    with pytest.raises(GlueDataError, match="data.source=local"):
        load_task("rte", source="hub")


def test_metrics_equal_sklearn_and_scipy() -> None:
    rng = np.random.default_rng(0)
    preds, gold = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert compute_metrics("mrpc", preds, gold) == {"f1": f1_score(gold, preds), "accuracy": accuracy_score(gold, preds)}
    assert compute_metrics("cola", preds, gold) == {"matthews_correlation": matthews_corrcoef(gold, preds)}
    scores, truth = rng.uniform(0, 5, 200), rng.uniform(0, 5, 200)
    got = compute_metrics("stsb", scores, truth)
    assert got == pytest.approx({"pearson": pearsonr(scores, truth)[0], "spearman": spearmanr(scores, truth)[0]})
    assert primary_score("stsb", got) == pytest.approx((got["pearson"] + got["spearman"]) / 2)
    mnli = {"validation_matched_accuracy": 0.8, "validation_mismatched_accuracy": 0.7}
    assert primary_score("mnli", mnli) == pytest.approx(0.75)


def test_selection_is_deterministic_disjoint_and_holdout_stable() -> None:
    small = DataConfig(max_train_samples=100)
    train_a, hold_a = select_rows(2490, small, seed=0)
    train_b, hold_b = select_rows(2490, small, seed=0)
    _, hold_full = select_rows(2490, DataConfig(), seed=0)
    assert (train_a == train_b).all() and (hold_a == hold_b).all()
    assert len(train_a) == 100 and len(hold_a) == 124
    assert not set(train_a) & set(hold_a)
    assert (hold_a == hold_full).all(), "the reward set must not depend on max_train_samples"
    assert len(select_rows(100_000, DataConfig(), seed=0)[1]) == 1000  # holdout_max caps it


def test_prepare_tokenizes_once_and_pads_dynamically(glue_dir: Path, tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    data = DataConfig(source="local", dir=str(glue_dir), max_train_samples=40, max_eval_samples=16)
    first = prepare_data("mrpc", tokenizer, data, 64, seed=1)
    assert len(first.train) == 40 and len(first.dev["validation"]) == 16 and len(first.holdout) == 183
    calls = []
    import kdray.glue.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "tokenize_split", lambda *a, **k: calls.append(a))
    second = prepare_data("mrpc", tokenizer, data, 64, seed=1)
    assert not calls, "second run must load the tokenization cache"
    assert second.train["input_ids"] == first.train["input_ids"]
    batch = make_collator(tokenizer)([second.train[i] for i in range(8)])
    width = max(second.train[i]["length"] for i in range(8))
    assert batch["input_ids"].shape == (8, width) and batch["labels"].dtype.is_floating_point is False


def test_describe_tasks_counts_local_rows(glue_dir: Path) -> None:
    rows = {r["name"]: r for r in describe_tasks(glue_dir)}
    assert len(rows) == 9
    assert rows["rte"]["local_rows"] == {"train": 2490, "validation": 277}
    assert rows["cola"]["local_rows"] == {"train": 8551, "validation": 1043}
    assert rows["qnli"]["local_rows"] == {"validation": 5463}
    assert rows["mnli"]["splits"] == ["train", "validation_matched", "validation_mismatched"]
