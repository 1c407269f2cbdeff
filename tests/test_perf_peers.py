"""kdray.perf.peers: kdray and TextBrewer on the same tiny models and batches, both trained, a finite ratio."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from kdray.knowledge import needs_of, run_model
from kdray.perf import peers
from kdray.perf.pair import SHAPES, build_pair, synthetic_batches
from kdray.perf.sides import PAIRS, KdraySide, TextBrewerSide, textbrewer_missing

MISSING = textbrewer_missing()
needs_textbrewer = pytest.mark.skipif(MISSING is not None, reason=f"peer comparison needs TextBrewer: {MISSING}")


@needs_textbrewer
@pytest.mark.parametrize("pair", list(PAIRS))
def test_both_sides_train_on_the_same_batches_and_the_ratio_is_finite(pair: str) -> None:
    row = peers.compare(SHAPES["tiny"], PAIRS[pair], repeats=2, warmup=0)
    for first, last in (row.kdray_losses, row.peer_losses):
        assert math.isfinite(first) and math.isfinite(last)
        assert first != last  # the same first batch, scored before and after the timed steps
    assert math.isfinite(row.ratio) and row.ratio > 0
    assert row.kdray.repeats == row.peer.repeats == 2
    assert "torchdistill" in peers.format_table([row])


@needs_textbrewer
def test_textbrewer_computes_kdrays_feature_and_attention_losses_on_the_mapped_layers() -> None:
    """Same work: TextBrewer's hidden_mse / attention_mse matches equal kdray's feature / attention kinds."""
    pair = build_pair(SHAPES["tiny"], eager=True)
    spec = PAIRS["kd_hidden_attention"]
    batch = synthetic_batches(SHAPES["tiny"], 1)[0]
    batch["attention_mask"][0, -5:] = 0  # some padding, which both mask
    kdray = KdraySide(pair, pair.students[0], spec, torch.device("cpu"), peers.step_autocast(torch.device("cpu")))
    brewer = TextBrewerSide(pair, pair.students[1], spec, torch.device("cpu"), peers.step_autocast(torch.device("cpu")))
    for student in pair.students:
        student.eval()  # no dropout, so both sides see the same student outputs
    try:
        with torch.no_grad():
            _, losses = brewer.distiller.train_on_batch(batch, brewer.args)
            n = pair.shape.teacher_layers
            s_out = run_model(pair.students[0], batch, set(range(pair.shape.student_layers + 1)),
                              set(range(1, pair.shape.student_layers + 1)))
            t_out = run_model(pair.teacher, batch, set(range(n + 1)), set(range(1, n + 1)))
            feature = kdray.knowledge["feature"](s_out, t_out, batch)
            attention = kdray.knowledge["attention"](s_out, t_out, batch)
    finally:
        brewer.close()
    hidden = [v for k, v in losses.items() if "hidden_mse" in k]
    attn = [v for k, v in losses.items() if "attention_mse" in k]
    assert len(hidden) == len(attn) == len(pair.context.layer_map)
    assert float(sum(hidden)) / len(hidden) == pytest.approx(float(feature), rel=1e-4)
    assert float(sum(attn)) / len(attn) == pytest.approx(float(attention), rel=1e-4)


def test_a_missing_textbrewer_is_a_clear_skip_reason(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "textbrewer", None)  # import now raises ImportError
    reason = textbrewer_missing()
    assert reason is not None and "pip install -e .[peers]" in reason
    assert peers.main(["--shapes", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "peers skipped" in out and "torchdistill 1.1.5 not run" in out
    with pytest.raises(RuntimeError, match="textbrewer is not installed"):
        peers.compare(SHAPES["tiny"], PAIRS["vanilla_kd"])


def test_the_bf16_teacher_pair_changes_only_kdrays_teacher_forward() -> None:
    pair = build_pair(SHAPES["tiny"], eager=False)
    batch = synthetic_batches(SHAPES["tiny"], 1)[0]
    cpu = torch.device("cpu")
    rows = list(range(pair.shape.batch))
    for name, dtype in (("vanilla_kd_bf16_teacher", torch.bfloat16), ("vanilla_kd", torch.float32)):
        side = KdraySide(pair, pair.students[0], PAIRS[name], cpu, peers.step_autocast(cpu))
        assert side.teacher_fn(batch, rows, frozenset(), frozenset()).logits.dtype == dtype
        assert math.isfinite(float(side.step(batch).detach()))  # the fp32 student learns from the bf16 logits


def test_the_int8_teacher_pair_quantizes_only_kdrays_teacher() -> None:
    """vanilla_kd_int8_teacher: kdray's side runs an int8 copy of the teacher; TextBrewer's side (and the pair's
    teacher, which both students were built beside) keeps the fp32 one."""
    from kdray.teacher_precision import int8_engine, int8_linear_count

    if int8_engine() is None:
        pytest.skip("this torch build has no quantized engine")
    pair = build_pair(SHAPES["tiny"], eager=False)
    batch = synthetic_batches(SHAPES["tiny"], 1)[0]
    cpu = torch.device("cpu")
    side = KdraySide(pair, pair.students[0], PAIRS["vanilla_kd_int8_teacher"], cpu, peers.step_autocast(cpu))
    assert int8_linear_count(side.teacher) > 0 and int8_linear_count(pair.teacher) == 0
    rows = list(range(pair.shape.batch))
    logits = side.teacher_fn(batch, rows, frozenset(), frozenset()).logits
    with torch.no_grad():
        reference = pair.teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert logits.dtype == torch.float32 and not torch.equal(logits, reference)
    assert torch.allclose(logits, reference, atol=0.05 * float(reference.abs().max()))
    assert math.isfinite(float(side.step(batch).detach()))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_the_reduced_precision_hidden_attention_pairs_give_every_mapped_output(precision: str) -> None:
    """kd_hidden_attention_{bf16,int8}_teacher: kdray's teacher in the other precision still returns every mapped
    hidden state and attention map, close to the fp32 teacher's, and the fp32 student learns from them."""
    from kdray.teacher_precision import int8_engine

    if precision == "int8" and int8_engine() is None:
        pytest.skip("this torch build has no quantized engine")
    pair = build_pair(SHAPES["tiny"], eager=True)
    batch = synthetic_batches(SHAPES["tiny"], 1)[0]
    cpu = torch.device("cpu")
    side = KdraySide(pair, pair.students[0], PAIRS[f"kd_hidden_attention_{precision}_teacher"], cpu,
                     peers.step_autocast(cpu))
    needs = needs_of(side.knowledge, side.weights)
    assert needs.teacher_hidden and needs.teacher_attentions
    got = side.teacher_fn(batch, list(range(pair.shape.batch)), needs.teacher_hidden, needs.teacher_attentions)
    with torch.no_grad():
        reference = run_model(pair.teacher, batch, needs.teacher_hidden, needs.teacher_attentions)
    assert set(got.hidden) == set(needs.teacher_hidden) and set(got.attentions) == set(needs.teacher_attentions)
    for layer, maps in got.attentions.items():
        assert torch.allclose(maps.float(), reference.attentions[layer], atol=0.05)
    assert not torch.equal(got.logits.float(), reference.logits)  # another precision, not the fp32 teacher
    assert math.isfinite(float(side.step(batch).detach()))


def test_the_cached_pair_reads_kdrays_teacher_from_its_cache(tmp_path) -> None:
    """kd_hidden_attention_cached: kdray's side builds its teacher-output cache (attention maps included) over the
    pair's batches, then its steps run no teacher forward and score the live side's loss on the same student."""
    pair = build_pair(SHAPES["tiny"], eager=True)
    batches = synthetic_batches(SHAPES["tiny"], 3)
    cpu = torch.device("cpu")
    live = KdraySide(pair, pair.students[0], PAIRS["kd_hidden_attention"], cpu, peers.step_autocast(cpu))
    cached = KdraySide(pair, pair.students[0], PAIRS["kd_hidden_attention_cached"], cpu, peers.step_autocast(cpu))
    assert cached.cache(batches, str(tmp_path / "cache")) > 0
    pair.students[0].eval()  # no dropout: both sides' losses come from the same student outputs
    calls = []
    forward = pair.teacher.forward
    pair.teacher.forward = lambda *a, **k: calls.append(k) or forward(*a, **k)
    for batch in batches[1:]:
        rows = cached._rows_of[id(batch)]
        needs = (frozenset(cached.knowledge["feature"].needs().teacher_hidden),
                 frozenset(cached.knowledge["attention"].needs().teacher_attentions))
        from_cache, from_teacher = cached.teacher_fn(batch, rows, *needs), live.teacher_fn(batch, rows, *needs)
        assert len(calls) == 1  # only the live side ran the teacher
        calls.clear()
        s_out = run_model(pair.students[0], batch, set(range(pair.shape.student_layers + 1)),
                          set(range(1, pair.shape.student_layers + 1)))
        for kind in ("response", "feature", "attention"):
            with torch.no_grad():
                a = float(cached.knowledge[kind](s_out, from_cache, batch))
                b = float(live.knowledge[kind](s_out, from_teacher, batch))
            assert a == pytest.approx(b, rel=5e-3, abs=1e-5), kind  # fp16 storage; response is ~0 here
