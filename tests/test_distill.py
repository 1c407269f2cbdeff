"""The training loop: selected kinds only, exact resume, cached == live teacher, run record on real RTE."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from kdray.checkpoint import load as load_checkpoint
from kdray.knowledge import KnowledgeContext, build_knowledge, run_model
from kdray.teacher_outputs import build_teacher_cache


# --------------------------------------------------------------------------- teacher-output cache (no GLUE needed)


def _tiny(seed: int, hidden: int = 32, layers: int = 4) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, num_labels=2, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def _rows(n: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 4 + i % 7
        ids = torch.randint(5, 100, (length,), generator=g)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long),
                     "token_type_ids": torch.zeros(length, dtype=torch.long), "labels": torch.tensor(i % 2)})
    return rows


def _pad(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    t = max(len(r["input_ids"]) for r in rows)
    out = {k: torch.zeros(len(rows), t, dtype=torch.long) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for i, r in enumerate(rows):
        for k in out:
            out[k][i, : len(r[k])] = r[k]
    out["labels"] = torch.stack([r["labels"] for r in rows])
    return out


def test_cached_teacher_gives_live_losses(tmp_path: Path) -> None:
    teacher, student = _tiny(0), _tiny(1, hidden=16, layers=2)
    data = _rows()
    cache = build_teacher_cache(teacher, data, _pad, {0, 2, 4}, tmp_path / "cache", batch_size=5)
    assert not list(tmp_path.glob(".*tmp"))  # built atomically
    ctx = KnowledgeContext(layer_map=((1, 2), (2, 4)), student_width=16, teacher_width=32)
    mods = build_knowledge(["response", "feature", "relation", "embedding"], ctx)
    rows = [3, 7, 0, 10]  # a different grouping and padding than at build time
    batch = _pad([data[i] for i in rows])
    s_out = run_model(student, batch, {0, 1, 2})
    with torch.no_grad():
        live = run_model(teacher, batch, {0, 2, 4})
    cached = cache.outputs(rows, batch["input_ids"].shape[1], {0, 2, 4}, torch.device("cpu"))
    assert cache.covers({0, 4}, set()) and not cache.covers({1}, set()) and not cache.covers({2}, {2})
    for name, mod in mods.items():
        a, b = mod(s_out, live, batch).item(), mod(s_out, cached, batch).item()
        assert a == pytest.approx(b, rel=5e-3, abs=1e-4), name
    # the cache stores fp16 and is reused rather than rebuilt
    assert cache.logits.dtype.name == "float16"
    again = build_teacher_cache(_tiny(9), data, _pad, {0, 2, 4}, tmp_path / "cache")
    assert (again.logits == cache.logits).all()


def test_the_cache_stores_the_relation_teacher_term(tmp_path: Path) -> None:
    """Per row and consecutive cached layers, ‖h_aᵀ h_b‖² of its stored states: a cached relation step reads it
    instead of computing it, with the same loss; a cache built before it existed still serves every kind."""
    from kdray.knowledge.relation import chain_fsp_sq

    teacher, student = _tiny(0), _tiny(1, hidden=16, layers=2)
    data = _rows()
    cache = build_teacher_cache(teacher, data, _pad, {0, 2, 4}, tmp_path / "cache", batch_size=5)
    assert cache.fsp_pairs == [(0, 2), (2, 4)] and cache.fsp_sq.shape == (len(data), 2)
    ctx = KnowledgeContext(layer_map=((1, 2), (2, 4)), student_width=16, teacher_width=32)
    relation = build_knowledge(["relation"], ctx)["relation"]
    rows = [3, 7, 0, 10]
    batch = _pad([data[i] for i in rows])
    seq_len = batch["input_ids"].shape[1]
    s_out = run_model(student, batch, {0, 1, 2})
    cached = cache.outputs(rows, seq_len, {0, 2, 4}, torch.device("cpu"))
    mask = batch["attention_mask"].float().unsqueeze(-1)
    for pair in ((0, 2), (2, 4)):
        (want,) = chain_fsp_sq([cached.hidden[pair[0]] * mask, cached.hidden[pair[1]] * mask])
        torch.testing.assert_close(cached.fsp_sq[pair], want, rtol=1e-4, atol=1e-3)
    with_term = relation(s_out, cached, batch)
    cached.fsp_sq.clear()
    assert with_term.item() == pytest.approx(relation(s_out, cached, batch).item(), rel=1e-5)
    assert cache.outputs(rows, seq_len, {0, 2}, torch.device("cpu")).fsp_sq.keys() == {(0, 2)}
    assert not cache.outputs(rows, seq_len - 1, {0, 2, 4}, torch.device("cpu")).fsp_sq  # rows cut: not theirs
    cache.load_to(torch.device("cpu"))  # the device-resident copy serves it too
    torch.testing.assert_close(cache.outputs(rows, seq_len, {0, 2, 4}, torch.device("cpu")).fsp_sq[(2, 4)],
                               want)
    (tmp_path / "cache" / "fsp_sq.npy").unlink()  # as a cache built before the term was stored
    from kdray.teacher_outputs import TeacherOutputCache

    old = TeacherOutputCache(tmp_path / "cache")
    assert not old.outputs(rows, seq_len, {0, 2, 4}, torch.device("cpu")).fsp_sq


def test_cached_attention_maps_give_the_live_attention_loss(tmp_path: Path) -> None:
    """Attention maps stored per row over its real tokens serve the attention kind as a live forward does,
    from the memory map and from a device-resident copy, and only for the layers the cache holds."""
    import json as json_module

    teacher, student = _tiny(0), _tiny(1, hidden=16, layers=2)
    data = _rows()
    cache = build_teacher_cache(teacher, data, _pad, {2, 4}, tmp_path / "cache", batch_size=5, attention_layers={2, 4})
    lengths = [len(r["input_ids"]) for r in data]
    assert cache.heads == 2 and cache.attention_layers == {2, 4}
    assert cache.attention[4].shape == (2 * sum(n * n for n in lengths),)  # no padding stored
    assert cache.covers({2}, {2, 4}) and not cache.covers({2}, {1})
    ctx = KnowledgeContext(layer_map=((1, 2), (2, 4)), student_width=16, teacher_width=32)
    attention = build_knowledge(["attention"], ctx)["attention"]
    rows = [3, 7, 0, 10]  # padded to 10 tokens: rows of 7, 4, 4 and 7 real tokens
    batch = _pad([data[i] for i in rows])
    seq_len = batch["input_ids"].shape[1]
    s_out = run_model(student, batch, set(), {1, 2})
    with torch.no_grad():
        live = run_model(teacher, batch, set(), {2, 4})
    cached = cache.outputs(rows, seq_len, set(), torch.device("cpu"), {2, 4})
    for layer in (2, 4):
        for i, r in enumerate(rows):
            n = lengths[r]
            torch.testing.assert_close(cached.attentions[layer][i, :, :n, :n], live.attentions[layer][i, :, :n, :n],
                                       atol=1e-3, rtol=0)  # fp16 storage
            assert not cached.attentions[layer][i, :, n:].any() and not cached.attentions[layer][i, :, :, n:].any()
    assert attention(s_out, cached, batch).item() == pytest.approx(attention(s_out, live, batch).item(), rel=5e-3)
    resident = build_teacher_cache(teacher, data, _pad, {2, 4}, tmp_path / "cache", attention_layers={2, 4})
    resident.load_to(torch.device("cpu"))
    again = resident.outputs(rows, seq_len, set(), torch.device("cpu"), {2, 4})
    assert all(torch.equal(again.attentions[l], cached.attentions[l]) for l in (2, 4))
    # a cache built before attention maps were cached (no such keys in its meta) covers no attention layer
    plain = build_teacher_cache(teacher, data, _pad, {2, 4}, tmp_path / "plain", batch_size=5)
    assert "attention_layers" not in json_module.loads((tmp_path / "plain" / "meta.json").read_text())
    assert plain.covers({2, 4}, set()) and not plain.covers({2}, {2})


def test_concurrent_cache_builds_wait_for_the_first(tmp_path: Path) -> None:
    """A trial that finds another building the same cache waits for it and reuses it (no second teacher pass)."""
    import threading

    from kdray.io import locked

    data, folder = _rows(), tmp_path / "cache"
    teacher, calls = _tiny(0), []
    forward = teacher.forward
    teacher.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    done: list[object] = []
    with locked(folder.with_name(f".{folder.name}.lock")):  # another trial is building it
        waiter = threading.Thread(target=lambda: done.append(build_teacher_cache(teacher, data, _pad, {0, 4}, folder)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not done  # blocked on the lock
        build_teacher_cache(_tiny(0), data, _pad, {0, 4}, tmp_path / "elsewhere")
        (tmp_path / "elsewhere").rename(folder)  # the other trial's build lands
    waiter.join(timeout=30)
    assert done and not calls  # reused, the waiting trial never ran its teacher


def test_resident_cache_gathers_what_the_memory_map_gives(tmp_path: Path) -> None:
    """The device-resident copy (what a GPU run uses) and the host memory map serve identical batches."""
    data = _rows(12)
    host = build_teacher_cache(_tiny(0), data, _pad, {0, 2, 4}, tmp_path / "cache", batch_size=5)
    resident = build_teacher_cache(_tiny(0), data, _pad, {0, 2, 4}, tmp_path / "cache")
    resident.load_to(torch.device("cpu"))
    assert not host.resident and resident.resident and not host.keep_on(torch.device("cpu"))
    for rows, seq_len in (([3, 7, 0, 10], 10), ([6, 5], 6)):  # padded, and truncated below some lengths
        a = host.outputs(rows, seq_len, {0, 4}, torch.device("cpu"))
        b = resident.outputs(rows, seq_len, {0, 4}, torch.device("cpu"))
        assert torch.equal(a.logits, b.logits) and a.hidden.keys() == b.hidden.keys() == {0, 4}
        for layer in (0, 4):
            assert a.hidden[layer].shape == (len(rows), seq_len, 32)
            assert torch.equal(a.hidden[layer], b.hidden[layer])
            lengths = [len(data[r]["input_ids"]) for r in rows]
            for i, n in enumerate(lengths):  # zero past each row's end, the row's own tokens before it
                assert not a.hidden[layer][i, n:].any() and a.hidden[layer][i, : min(n, seq_len)].abs().sum() > 0
            flat = torch.from_numpy(host.hidden[layer][host.offsets[rows[0]] : host.offsets[rows[0]] + min(lengths[0], seq_len)].copy())
            assert torch.equal(a.hidden[layer][0, : len(flat)], flat.float())


def test_predict_in_length_order_matches_row_by_row() -> None:
    """Evaluation batches rows by length (less padding) but returns them in dataset order with the same loss."""
    from kdray.knowledge import task_loss
    from kdray.loop_data import predict

    model, data = _tiny(3), _rows(11)
    batches: list[list[int]] = []
    pad = lambda rows: batches.append([len(r["input_ids"]) for r in rows]) or _pad(rows)  # noqa: E731
    preds, labels, loss = predict(model, data, pad, 4, torch.device("cpu"), is_regression=False)
    # longest first, at most 4 rows, closed before padding exceeds 10% (a 7 after 10,9,8 would make 6 of 40)
    assert batches == [[10, 9, 8], [7, 7, 6, 6], [5, 5, 4, 4]]
    with torch.no_grad():
        logits = [run_model(model, _pad([r])).logits for r in data]
    assert preds == [int(l.argmax(-1)) for l in logits]
    assert labels == [int(r["labels"]) for r in data]
    expected = sum(float(task_loss(l, r["labels"].view(1), False)) for l, r in zip(logits, data)) / len(data)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_longest_first_batches_bound_the_padding() -> None:
    """Full batches for even lengths; a long tail closes batches early instead of padding every row to it."""
    from kdray.loop_data import longest_first_batches

    def lengths(ns: list[int], batch_size: int) -> list[list[int]]:
        items = [{"input_ids": [0] * n} for n in ns]
        return [[ns[j] for j in b] for b in longest_first_batches(items, batch_size)]

    assert lengths([20] * 10, 4) == [[20] * 4, [20] * 4, [20] * 2]
    # SST-2's shape: one long phrase among short ones gets a batch of its own
    assert lengths([52, 14, 13, 13, 12, 8, 8], 4) == [[52], [14, 13, 13, 12], [8, 8]]
    assert lengths([10, 9, 8, 7], 4) == [[10, 9, 8], [7]]
    for batch in lengths([64, 60, 57, 50, 41, 40, 33, 30, 29, 12, 11, 3], 8):
        assert len(batch) == 1 or len(batch) * batch[0] - sum(batch) <= 0.1 * len(batch) * batch[0]


def test_reward_set_collated_once_scores_like_predict() -> None:
    """The reward set keeps its batches from construction on and gives predict's mean loss every time."""
    from kdray.loop_data import RewardSet, predict

    model, data, calls = _tiny(3), _rows(11), []
    reward_set = RewardSet(data, lambda rows: calls.append(len(rows)) or _pad(rows), 4, torch.device("cpu"))
    assert calls == [3, 4, 4]
    model.train()
    first, second = reward_set.loss(model, False), reward_set.loss(model, False)
    assert calls == [3, 4, 4] and model.training  # no collation after construction; the mode is restored
    assert first == second == pytest.approx(predict(model, data, _pad, 4, torch.device("cpu"), False)[2], rel=1e-6)


@pytest.mark.parametrize("kinds", [["finetune"], ["finetune", "response", "feature"]], ids=["no_teacher_kind", "teacher_ran"])
def test_step_returns_the_state_of_its_own_forward(kinds: list[str]) -> None:
    """A phase's last step gives the selector both final-layer [CLS] vectors of its batch, before the update,
    whether or not a selected kind ran the teacher."""
    from kdray.step import distill_step, teacher_source

    def no_dropout(m: BertForSequenceClassification) -> BertForSequenceClassification:
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        return m

    teacher, student = no_dropout(_tiny(0)), no_dropout(_tiny(1, hidden=16, layers=2)).train()
    ctx = KnowledgeContext(layer_map=((1, 2), (2, 4)), student_width=16, teacher_width=32)
    knowledge = build_knowledge(["finetune", "response", "feature"], ctx)
    batch, rows = _pad(_rows(5)), list(range(5))
    with torch.no_grad():
        s_expected = run_model(student, batch, {2}).hidden[2][:, 0].clone()
        t_expected = run_model(teacher, batch, {4}).hidden[4][:, 0]
    optimizer = torch.optim.SGD([*student.parameters(), *knowledge.parameters()], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    out = distill_step(student, student, knowledge, list(knowledge), {k: 1.0 for k in kinds}, batch, rows,
                       teacher_source(teacher, None, torch.device("cpu")), optimizer, scheduler,
                       torch.amp.GradScaler("cpu", enabled=False), 1.0, state_layers=(2, 4))
    assert set(out.losses) == set(kinds)
    torch.testing.assert_close(out.student_cls, s_expected)
    torch.testing.assert_close(out.teacher_cls, t_expected)
    assert not out.student_cls.requires_grad
    with torch.no_grad():  # the step did update the student: the state is the pre-update one
        assert not torch.allclose(run_model(student, batch, {2}).hidden[2][:, 0], s_expected)
    plain = distill_step(student, student, knowledge, list(knowledge), {k: 1.0 for k in kinds}, batch, rows,
                         teacher_source(teacher, None, torch.device("cpu")), optimizer, scheduler,
                         torch.amp.GradScaler("cpu", enabled=False), 1.0)
    assert plain.teacher_cls is None and plain.student_cls is None


# --------------------------------------------------------------------------- the loop on real RTE with tiny-bert


def _config(glue_dir: Path, out: Path, **over):
    from conftest import rte_run

    return rte_run(glue_dir, out, **over)


class _Spy:
    """Counts teacher forwards and what they asked for.

    A forward is counted where it starts, at the embeddings, so the logits-only forward of kdray.top_layer
    (which runs the layers itself, asking for nothing more) counts like the model's own forward.
    """

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._asked: dict = {}

    def wrap(self, model):
        original = model.forward

        def forward(*args, **kwargs):
            self._asked = {k: kwargs.get(k) for k in ("output_hidden_states", "output_attentions")}
            return original(*args, **kwargs)

        def started(*_):
            self.calls.append(self._asked or {"output_hidden_states": False, "output_attentions": False})
            self._asked = {}

        model.forward = forward
        model.base_model.embeddings.register_forward_pre_hook(started)
        return model


def _spied_teacher(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    import kdray.run_setup as run_setup

    spy = _Spy()
    real = run_setup.load_teacher
    monkeypatch.setattr(run_setup, "load_teacher", lambda path, spec, **kw: spy.wrap(real(path, spec, **kw)))
    return spy


def test_finetune_only_never_runs_the_teacher(glue_dir: Path, tiny_teacher: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdray.distill import train

    spy = _spied_teacher(monkeypatch)
    train(_config(glue_dir, tmp_path / "ft", **{"selector.name": "finetune", "train.max_steps": 2}), teacher_path=tiny_teacher)
    assert spy.calls == []
    spy.calls.clear()
    train(_config(glue_dir, tmp_path / "kd", **{"selector.name": "vanilla_kd", "train.max_steps": 2}), teacher_path=tiny_teacher)
    assert len(spy.calls) == 2  # one per step, logits only
    assert not any(c["output_hidden_states"] or c["output_attentions"] for c in spy.calls)
    spy.calls.clear()
    weights = {"finetune": 1.0, "response": 0.0, "feature": 0.0, "relation": 0.0}
    train(_config(glue_dir, tmp_path / "fixed", **{"selector.name": "fixed", "selector.weights": weights,
                                                   "train.max_steps": 2}), teacher_path=tiny_teacher)
    assert spy.calls == []


def test_cached_attention_maps_replace_the_live_teacher(glue_dir: Path, tiny_teacher: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With the attention kind in the pool its maps join the teacher-output cache: once the cache exists a run
    never runs the teacher; at ``train.teacher_cache_attention_gib: 0`` the steps run it live, and the run says why."""
    from kdray.distill import train

    spy = _spied_teacher(monkeypatch)
    over = {"train.teacher_cache": True, "selector.name": "all", "train.max_steps": 2,
            "knowledge.pool": ["finetune", "response", "feature", "attention"]}
    train(_config(glue_dir, tmp_path / "build", **over), teacher_path=tiny_teacher)
    assert spy.calls and all(c["output_attentions"] for c in spy.calls)  # the build asked for the maps
    spy.calls.clear()
    train(_config(glue_dir, tmp_path / "cached", **over), teacher_path=tiny_teacher)
    assert spy.calls == []
    capsys.readouterr()
    train(_config(glue_dir, tmp_path / "live", **over, **{"train.teacher_cache_attention_gib": 0}),
          teacher_path=tiny_teacher)
    assert "train.teacher_cache_attention_gib=0" in capsys.readouterr().out
    steps = [c for c in spy.calls if c["output_attentions"]]
    assert len(steps) >= 2  # the cache built without maps, then one live forward per step asking for them


@pytest.mark.slow  # three short runs on real RTE per case: ~15 s idle, ~50 s on a loaded 2-core box
@pytest.mark.parametrize("over", [
    {"selector.phase_steps": 4},  # the cut at step 3 falls inside a phase
    # the cut falls on a phase end: the next decision's state came from step 3's training forward, which a
    # resume cannot repeat, so the checkpoint must carry it (a learning actor-critic also trains on it)
    {"selector.phase_steps": 3, "selector.name": "actor_critic", "selector.episodes": 0,
     "selector.stage2": "learning", "selector.replay_batch": 1},
], ids=["inside_phase", "actor_critic_at_phase_end"])
def test_resume_matches_uninterrupted_run(glue_dir: Path, tiny_teacher: str, tmp_path: Path, over: dict) -> None:
    from kdray.distill import train

    over = {"train.max_steps": 6, **over}
    full = train(_config(glue_dir, tmp_path / "full", **over), teacher_path=tiny_teacher)

    class Stop(Exception):
        pass

    def stop_at_3(metrics: dict) -> None:
        if metrics["step"] == 3:
            raise Stop

    cfg = _config(glue_dir, tmp_path / "cut", **over, **{"train.eval_every": 3, "train.checkpoint_every": 3})
    with pytest.raises(Stop):
        train(cfg, teacher_path=tiny_teacher, report=stop_at_3)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint")["step"] == 3
    resumed = train(cfg, teacher_path=tiny_teacher, resume_from=str(tmp_path / "cut" / "checkpoint"))
    a = load_checkpoint(tmp_path / "full" / "checkpoint")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint")
    for key in a["student"]:
        assert torch.equal(a["student"][key], b["student"][key]), key
    for key in a["knowledge"]:  # the feature / relation projections
        assert torch.equal(a["knowledge"][key], b["knowledge"][key]), key
    assert [t["weight"] for t in full.traces] == [t["weight"] for t in resumed.traces]
    assert [t["q_value"] for t in full.traces] == pytest.approx([t["q_value"] for t in resumed.traces], nan_ok=True)
    assert resumed.dev_score == full.dev_score and resumed.train_steps == full.train_steps == 6
    assert resumed.holdout_score == full.holdout_score and 0.0 <= full.holdout_score <= 1.0


def test_end_to_end_writes_run_record_and_traces(glue_dir: Path, tiny_teacher: str, tmp_path: Path) -> None:
    from kdray.distill import train

    cfg = _config(glue_dir, tmp_path / "run", **{"train.teacher_cache": True, "selector.name": "all"})
    result = train(cfg, teacher_path=tiny_teacher)
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["method"] == "all" and record["train_steps"] == 8 and record["teacher_cache"] is True
    assert 0.0 <= record["dev_score"] <= 1.0 and "accuracy" in record["dev_metrics"]
    assert record["knowledge_pool"] == ["finetune", "response", "feature", "relation"]
    traces = pd.read_parquet(tmp_path / "run" / "traces.parquet")
    assert len(traces) == 3 * 4  # phases at steps 3, 6, 8; one row per kind
    assert set(traces["weight"]) == {1.0} and traces["reward_set_loss"].notna().all()
    assert (tmp_path / "run" / "selector.pt").is_file()
    assert result.samples_per_second > 0 and result.selector_seconds > 0


@pytest.mark.slow  # one inductor compile of a 2-layer student: ~50 s idle on 2 cores, the training itself ~1 s
def test_compile_trains_the_student_through_the_compiled_module(glue_dir: Path, tiny_teacher: str, tmp_path: Path) -> None:
    """train.compile=true: the training forward runs through torch.compile's module and the loss stays finite."""
    import math

    from torch._dynamo.utils import counters

    from kdray.distill import train
    from kdray.run_setup import set_up

    # 16 tokens truncate every RTE pair to one shape: one compile, no dynamic-shape recompile
    over = {"selector.name": "finetune", "knowledge.pool": ["finetune"], "train.max_steps": 3,
            "train.max_seq_length": 16, "train.eval_every": 1, "train.compile": True}
    cfg = _config(glue_dir, tmp_path / "compiled", **over)
    models = set_up(cfg, tiny_teacher).models
    assert isinstance(models.forward, torch._dynamo.eval_frame.OptimizedModule)
    assert models.forward._orig_mod is models.student
    torch._dynamo.reset()
    counters.clear()
    reports: list[dict] = []
    result = train(cfg, teacher_path=tiny_teacher, report=reports.append)
    assert counters["stats"]["unique_graphs"] >= 1  # the loop's forward was captured and compiled
    assert [r["step"] for r in reports] == [1, 2, 3]
    assert all(math.isfinite(r["train_loss"]) for r in reports) and 0.0 <= result.dev_score <= 1.0
    eager = set_up(_config(glue_dir, tmp_path / "eager", **{**over, "train.compile": False}), tiny_teacher).models
    assert eager.forward is eager.student
