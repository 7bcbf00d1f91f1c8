"""The harness-level text path: a BERT-family encoder in the loop for any model.

Why: fixed MMSA `text` features are BERT states of the *complete* sentence, so a dropped token
is a zero vector whose neighbours still carry it, [CLS]/[SEP] keep the whole sentence at rate
1.0, and the counterfactual text keeps full context. Models that fine-tune BERT officially
(CIDer, DLF, EMT-DLFR, LNLN, ...) re-encode the corrupted ids instead; `--text-encoder` does that
for any model, outside the model code:

- the model is built on a spec whose text width is the encoder's, and the encoder becomes its
  submodule `text_encoder` (saved in the checkpoint, excluded from `n_parameters`);
- a forward pre-hook on the (outermost) model replaces every batch's `text` by the encoder's
  last hidden states of that batch's ids, which the harness already corrupted: `[UNK]` (100)
  for missing tokens, `[MASK]` (103) in the counterfactual text. `Batch.text_layers` gets all
  hidden states (embeddings first, last layer last) for models that fuse several layers;
- the optimizer gets the encoder in its own groups at the model's official encoder rate
  (`text_lr`, weight decay `text_weight_decay` except on biases and LayerNorm weights);
- `prepare` sees the training split's text encoded by the pre-trained encoder, so class
  statistics (MACI's confounders) live in the same space.

A model whose training passes do not all go through `model(batch)` names its other entry points
in the class attribute `batch_entries` (EMT-DLFR's and LNLN's `losses(clean, corrupted)`, which
encode both views themselves): the path wraps each, so every `Batch` argument is encoded from
its own ids, with gradient, exactly as at `forward`. A batch the path produced is not encoded
again (a derived `Batch`, e.g. with counterfactual ids, is). A model that bypasses
`model(batch)` without declaring its entry points would train without the encoder; the first
training step detects that and refuses in one line. Models set the encoder's optimisation
officially with `text_lr`, `text_weight_decay` and `text_no_decay` (the parameter-name parts
exempt from weight decay; default biases and LayerNorm weights).
Records carry `text_path`: `fixed-features` or the encoder's name.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from mer_bench.data.batch import Batch
from mer_bench.data.schema import DataSpec, Split
from mer_bench.errors import UserError

FIXED = "fixed-features"
ENV = "MER_BENCH_TEXT_ENCODER"
DEFAULT_TEXT_LR = 5e-5  # MMSA's and CIDer's BERT fine-tuning rate
DEFAULT_TEXT_WD = 1e-3
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def resolve_text_encoder(value: str | None) -> str | None:
    """`--text-encoder` value, else `$MER_BENCH_TEXT_ENCODER`; "none"/"" -> fixed features."""
    name = value if value is not None else os.environ.get(ENV)
    if name is None or str(name).strip().lower() in ("", "none", FIXED):
        return None
    name = str(name).strip()
    if name == "table":
        raise UserError("the 'table' encoder has no weights to fine-tune; use 'minilm' or a directory")
    return name


def text_path(encoder: str | None) -> str:
    """The record's `text_path`: `fixed-features`, or the encoder's name."""
    return encoder or FIXED


class InLoopEncoder(nn.Module):
    """(ids, attention mask) -> every hidden state of a local BERT-family model."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from mer_bench.data.encoders import load_encoder  # lazy: pulls in transformers

        loaded = load_encoder(name)
        model = getattr(loaded, "model", None)
        if not isinstance(model, nn.Module):
            raise UserError(f"text encoder {name!r} has no trainable model; use 'minilm' or a directory")
        self.bert = model.train()
        self.dim = int(loaded.dim)
        self.name = name

    def forward(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.bert(input_ids=ids, attention_mask=attn, output_hidden_states=True)
        keep = attn.unsqueeze(-1).to(out.last_hidden_state.dtype)  # padding rows -> 0
        return tuple(h * keep for h in out.hidden_states)


def encoder_spec(spec: DataSpec, encoder: InLoopEncoder) -> DataSpec:
    """The spec a model is built on when `encoder` feeds its text."""
    if not spec.has_text_ids:
        raise UserError("--text-encoder needs token ids (text_bert) in the data")
    return replace(spec, dims=(encoder.dim, *spec.dims[1:]))


def _chain(model: nn.Module) -> list[nn.Module]:
    """`model` and the bases it wraps, outermost first."""
    chain = [model]
    while isinstance(getattr(chain[-1], "base", None), nn.Module):
        chain.append(chain[-1].base)
    return chain


def _innermost(model: nn.Module) -> nn.Module:
    return _chain(model)[-1]


_ENCODED = "_text_encoded_from"  # set on batches the path produced: the ids they came from


def encode_batch(encoder: InLoopEncoder, batch: Batch) -> Batch:
    """`batch` with `text` and `text_layers` from its (corrupted) ids; a batch this path
    produced is returned as it is (its ids were encoded already)."""
    if batch.text_ids is None or batch.text_attn is None:
        raise UserError("--text-encoder needs token ids in every batch")
    if getattr(batch, _ENCODED, None) is batch.text_ids:
        return batch
    layers = encoder(batch.text_ids, batch.text_attn)
    out = batch.with_(text=layers[-1], text_layers=layers)
    setattr(out, _ENCODED, batch.text_ids)
    return out


def _encode_batches(encoder: InLoopEncoder, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Every `Batch` among the arguments encoded, each distinct batch once."""
    done: dict[int, Batch] = {}

    def enc(x: Any) -> Any:
        if not isinstance(x, Batch):
            return x
        if id(x) not in done:
            done[id(x)] = encode_batch(encoder, x)
        return done[id(x)]

    return tuple(enc(a) for a in args), {k: enc(v) for k, v in kwargs.items()}


def _wrap_entries(model: nn.Module, encoder: InLoopEncoder, calls: list[int]) -> None:
    """Wrap the `batch_entries` each level of `model` declares (passes outside forward)."""
    for level in _chain(model):
        for name in getattr(type(level), "batch_entries", ()):
            method = getattr(level, name)

            def entry(*args: Any, _method=method, **kwargs: Any) -> Any:
                calls[0] += 1
                args, kwargs = _encode_batches(encoder, args, kwargs)
                return _method(*args, **kwargs)

            setattr(level, name, entry)


@torch.no_grad()
def encode_split(encoder: InLoopEncoder, split: Split, device: str, batch_size: int = 128) -> Split:
    """The split with its `text` replaced by the encoder's last hidden states (no gradient)."""
    if split.text_bert is None:
        raise UserError("--text-encoder needs token ids (text_bert) in the data")
    was = encoder.training
    encoder.eval()
    out = np.zeros((*split.text_bert.shape[::2], encoder.dim), dtype=np.float32)
    for s in range(0, len(split.text_bert), batch_size):
        ids = torch.as_tensor(split.text_bert[s : s + batch_size, 0], dtype=torch.long, device=device)
        attn = torch.as_tensor(split.text_bert[s : s + batch_size, 1], dtype=torch.long, device=device)
        out[s : s + batch_size] = encoder(ids, attn)[-1].float().cpu().numpy()
    encoder.train(was)
    return replace(split, text=out)


def attach_text_encoder(model: nn.Module, encoder: InLoopEncoder) -> nn.Module:
    """Put `encoder` in `model`'s loop (see the module docstring); returns `model`."""
    model.text_encoder = encoder
    calls = [0]

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args and isinstance(args[0], Batch):
            calls[0] += 1
            args = (encode_batch(module.text_encoder, args[0]), *args[1:])
        return args, kwargs

    model.register_forward_pre_hook(hook, with_kwargs=True)
    _wrap_entries(model, encoder, calls)
    base = _innermost(model)
    lr = float(getattr(base, "text_lr", DEFAULT_TEXT_LR))
    wd = float(getattr(base, "text_weight_decay", DEFAULT_TEXT_WD))
    no_decay = tuple(getattr(base, "text_no_decay", NO_DECAY))
    configure, prepare, prepare_eval, step = (
        model.configure_optimizer, model.prepare, model.prepare_eval, model.train_step,
    )

    def configure_optimizer() -> torch.optim.Optimizer:
        opt = configure()
        enc_ids = {id(p) for p in encoder.parameters()}
        for group in opt.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in enc_ids]
        named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
        for decay in (True, False):
            params = [p for n, p in named if any(x in n for x in no_decay) != decay]
            if params:
                opt.add_param_group({"params": params, "lr": lr, "weight_decay": wd if decay else 0.0})
        return opt

    def device() -> str:
        return str(next(encoder.parameters()).device)

    def train_step(clean: Batch, corrupted: Batch, optimizer: torch.optim.Optimizer) -> dict:
        before = calls[0]
        refusal = UserError(
            f"{type(base).__name__} computes its training passes outside model(batch) and "
            "declares no batch_entries; --text-encoder cannot put the encoder in its loop"
        )
        try:
            out = step(clean, corrupted, optimizer)
        except RuntimeError as e:  # e.g. raw fixed-width text reaching encoder-width layers
            if calls[0] == before:
                raise refusal from e
            raise
        if calls[0] == before:
            raise refusal
        return out

    model.configure_optimizer = configure_optimizer
    model.prepare = lambda train, cf_vocab=None: prepare(encode_split(encoder, train, device()), cf_vocab)
    model.prepare_eval = lambda split: prepare_eval(encode_split(encoder, split, device()))
    model.train_step = train_step
    return model


def build_with_text_encoder(name: str, spec: DataSpec, task: str, encoder: str | None, **hp: Any):
    """`build_model`, with the named encoder in the loop when `encoder` is set."""
    from mer_bench.models import build_model

    if encoder is None:
        return build_model(name, spec, task, **hp)
    enc = InLoopEncoder(encoder)
    return attach_text_encoder(build_model(name, encoder_spec(spec, enc), task, **hp), enc)
