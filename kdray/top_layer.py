"""A BERT classifier forward whose top encoder layer computes the [CLS] row only.

A sequence classifier's logits read one row of the top layer: the pooler takes ``hidden[:, 0]``. The other
T − 1 rows of that layer (their query, attention output, feed-forward and LayerNorms) feed nothing when no
selected kind reads the top layer's hidden states or any attention map, as in vanilla KD, finetune, the
reward-set scoring and dev evaluation. Keys and values still come from every token, so the [CLS] row, the
pooled vector and the logits are those of the full forward (to float tolerance; in train mode dropout draws
masks for the rows it computes only, the same distribution for the row that counts). At MiniLM's shapes this
skips about 5/6 of the top layer, forward and backward: a third of a 3-layer student's encoder, a sixth of a
6-layer teacher's (issue #18: TextBrewer and any full forward compute those rows).

Used only where it is exactly the model's own computation: a bare ``BertForSequenceClassification`` (not
DDP-wrapped or compiled, which must run their own forward), encoder-only, with a pooler. Everything else
falls back to the model's forward (:func:`prunable`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
import transformers
from transformers import BertForSequenceClassification

try:
    from transformers.masking_utils import create_bidirectional_mask
except ImportError:  # pragma: no cover - transformers 4.x before masking_utils
    create_bidirectional_mask = None

#: tested on transformers 5.x; pyproject admits 4.40+, whose BERT layers take other masks and outputs, so
#: there every model keeps its own forward
SUPPORTED = create_bidirectional_mask is not None and int(transformers.__version__.split(".")[0]) >= 5


def prunable(model: nn.Module, hidden: frozenset[int] | set[int], attentions: frozenset[int] | set[int]) -> bool:
    """Whether :func:`cls_top_forward` gives ``model``'s logits and the asked ``hidden`` layers exactly."""
    if attentions or not SUPPORTED or type(model) is not BertForSequenceClassification:
        return False
    cfg = model.config
    if cfg.is_decoder or getattr(cfg, "add_cross_attention", False) or model.bert.pooler is None:
        return False
    return len(model.bert.encoder.layer) not in hidden and _has_bert_layout(model.bert.encoder.layer[-1])


def _has_bert_layout(layer: nn.Module) -> bool:
    """The submodules :func:`_cls_row_layer` calls, as transformers 5.x's BertLayer has them: a release that
    renames them gets the model's own forward, not an AttributeError mid-run."""
    attn = getattr(getattr(layer, "attention", None), "self", None)
    parts = [getattr(attn, name, None) for name in ("query", "key", "value", "dropout")]
    return (all(isinstance(p, nn.Module) for p in parts) and hasattr(attn, "attention_head_size")
            and isinstance(getattr(layer.attention, "output", None), nn.Module)
            and callable(getattr(layer, "feed_forward_chunk", None)))


def _cls_row_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One BERT layer's output at position 0 only: the [CLS] query attends to every key and value."""
    attn = layer.attention.self
    b, t, _ = hidden.shape
    d = attn.attention_head_size
    query = attn.query(hidden[:, :1]).view(b, 1, -1, d).transpose(1, 2)
    key = attn.key(hidden).view(b, t, -1, d).transpose(1, 2)
    value = attn.value(hidden).view(b, t, -1, d).transpose(1, 2)
    if mask is not None and mask.shape[-2] != 1:
        mask = mask[..., :1, :]
    context = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=attn.dropout.p if attn.training else 0.0,
        scale=getattr(attn, "scaling", d ** -0.5))
    context = context.transpose(1, 2).reshape(b, 1, -1)
    return layer.feed_forward_chunk(layer.attention.output(context, hidden[:, :1]))


def cls_top_forward(
    model: BertForSequenceClassification, inputs: dict[str, torch.Tensor], hidden: frozenset[int] | set[int],
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """(logits, the asked hidden layers below the top) from one forward that skips the top layer's other rows.

    ``hidden`` uses HF ``hidden_states`` numbering (0 = embedding output); :func:`prunable` must hold.
    """
    bert = model.bert
    h = bert.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
    mask = create_bidirectional_mask(config=bert.config, inputs_embeds=h, attention_mask=inputs.get("attention_mask"))
    kept = {0: h} if 0 in hidden else {}
    layers = bert.encoder.layer
    for i, layer in enumerate(layers[:-1], start=1):
        out = layer(h, mask)
        h = out[0] if isinstance(out, tuple) else out
        if i in hidden:
            kept[i] = h
    cls_row = _cls_row_layer(layers[-1], h, mask)
    logits = model.classifier(model.dropout(bert.pooler(cls_row)))
    return logits, kept
