"""The live teacher's precision (``train.teacher_precision``): the run's own, another autocast, or int8 on CPUs.

Why int8: a frozen teacher only runs forwards, and on CPUs without native bf16 (AVX2-only x86, where a bf16
matmul falls back to a slow loop) the one reduced precision with fast kernels is int8. torch's dynamic
quantization swaps every ``nn.Linear`` for one with int8 weights that quantizes its input per batch and
runs fbgemm/oneDNN int8 GEMMs, returning fp32. Measured on a 2-core AVX2 EPYC: the MRPC teacher scores
MRPC's dev set in 0.71-0.76x its fp32 time; students distilled from it on real MRPC score the same as from
the fp32 teacher within seed noise (results/int8_teacher).

torch marks this API (``torch.ao.quantization.quantize_dynamic``) deprecated in favour of torchao, whose
int8 path has no fast CPU kernel here (24-29x slower than fp32, measured with torchao 0.18); kdray pins
torch <= 2.14.1, where it works, and the tests fail the day it stops working.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from kdray.training import Autocast, amp_dtype, autocast_for

# engines with x86 int8 GEMM kernels, in torch's order of preference
_ENGINES = ("x86", "fbgemm", "onednn")


def live_teacher(teacher: nn.Module, precision: str, autocast: Autocast,
                 device: torch.device) -> tuple[nn.Module, Autocast]:
    """The teacher a step runs live, and its autocast, for ``train.teacher_precision``.

    ``same`` keeps the run's autocast; ``fp32``/``bf16``/``fp16`` give the teacher its own; ``int8`` runs an
    int8 copy (:func:`quantize_teacher`) on fp32 activations. Call it after the student (built from the
    teacher's layers) and the teacher-output cache (built in fp32) exist, so only the live forward changes.
    """
    if precision == "same":
        return teacher, autocast
    if precision == "int8":
        return quantize_teacher(teacher), autocast_for(device, None)
    return teacher, autocast_for(device, amp_dtype(precision, device))


def int8_engine() -> str | None:
    """The quantized engine this torch build offers on this CPU, or None when it has none."""
    supported = torch.backends.quantized.supported_engines
    return next((engine for engine in _ENGINES if engine in supported), None)


def int8_unavailable() -> str | None:
    """Why this torch build cannot run an int8 teacher (None when it can): the one message every check prints."""
    if int8_engine() is not None:
        return None
    return ("train.teacher_precision: int8: this torch build has no quantized engine for x86 "
            f"(it offers {torch.backends.quantized.supported_engines}); use fp32 here")


def quantize_teacher(teacher: nn.Module) -> nn.Module:
    """A copy of the frozen ``teacher`` whose Linear layers run int8 GEMMs (dynamic quantization, CPU only).

    Weights are quantized per output channel: on the MRPC teacher's dev set that flipped 4.9% of its
    predictions against 7.8% per tensor, and moved its soft targets at temperature 4 by a mean KL of
    3.8e-4 against 9.0e-4, scoring that dev set in 0.71-0.76x fp32's time against 0.66-0.69x (two runs, 2 cores).

    Embeddings, LayerNorms, softmax and the attention products stay fp32; outputs (logits, hidden
    states, attention maps) are fp32 tensors, so every knowledge kind reads them as from the fp32 teacher.
    """
    if next(teacher.parameters()).device.type != "cpu":
        raise ValueError("train.teacher_precision: int8 runs on CPUs only (torch's dynamic int8 quantization); "
                         "on a GPU use bf16 or fp16")
    unavailable = int8_unavailable()
    if unavailable:
        raise RuntimeError(unavailable)
    torch.backends.quantized.engine = int8_engine()
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # the deprecation notices named in the module docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(teacher, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                     inplace=False)
    quantized.eval()
    quantized.requires_grad_(False)
    return quantized


def int8_linear_count(model: nn.Module) -> int:
    """How many of ``model``'s Linear layers run int8 (a check that a teacher really is quantized)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in model.modules())
