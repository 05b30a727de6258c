"""Fine-tune a backbone's top transformer layers once on the training preferences
(``embed.tune_layers``), so that every model's features carry what the users disagree about.

Why: a frozen sentence encoder averages away the cues that personal preferences turn on. On
DSP the users weigh which domain wrote a response, and a linear probe reads the domain from
MiniLM's features at ~52% (chance 20%). Training the top layers by Bradley–Terry under the
personalised head ``(g + e_u)·Wφ`` — every training user's comparisons, each user with its own
``e_u``, so the minority's preferences pull on φ too — is meant to make φ keep those cues.

Cost: the layers below run once; their output is kept per text (real tokens only, float16),
so an epoch is a forward and backward pass of the top layers alone over the training texts.
The epoch kept is the one whose features, with a lowrank head fitted afresh on them, score
best on a holdout of the TRAINING prompts; if no epoch beats the untuned features so, the
backbone is left as it was. Validation and test rows never reach this fit: the tuned backbone
is shared by vanilla, the teachers, the baselines and the student, so the comparison between
them stays fair.

Measured on DSP (BENCHMARKS.md, session 30): ~5,000 training comparisons raise the held-out
BT accuracy by 1-1.5 points but do not move vanilla on test, so the option is off by default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from pafo_ray.losses import bradley_terry_loss
from pafo_ray.models.adapter import Pairs, fit_bt, holdout_mask
from pafo_ray.models.backbone import TextEncoder, length_order, pool
from pafo_ray.models.heads import RewardHead

__all__ = ["TuneResult", "transformer_layers", "tune_top_layers"]


@dataclass
class TuneResult:
    layers: int  # top layers trained
    epoch: int  # the epoch kept (0: none beat the untuned backbone, which is kept)
    holdout_accuracy: float  # held-out BT accuracy of a head fitted on the tuned features
    frozen_holdout_accuracy: float  # the same on the untuned features
    train_rows: int
    texts: int
    seconds: float
    epoch_seconds: list


def transformer_layers(encoder: TextEncoder):
    """The backbone's transformer blocks (BERT family: ``encoder.layer``), or a clear error."""
    blocks = getattr(getattr(encoder.model, "encoder", None), "layer", None)
    if blocks is None:
        raise ValueError(f"embed.tune_layers supports encoder backbones of the BERT family "
                         f"(model.encoder.layer); {encoder.backbone!r} is a "
                         f"{type(encoder.model).__name__}")
    return blocks


class _Cached:
    """The lower layers' output per text and the pooled layers that do not change."""

    def __init__(self, encoder: TextEncoder, ids: list, low: int, batch_size: int = 64):
        self.encoder = encoder
        top = len(transformer_layers(encoder))
        self.layers = list(encoder.pooling_layers) or [top]
        self.low = low
        self.states: list = [None] * len(ids)
        fixed = [i for i in self.layers if i <= low]
        self.fixed_index = {layer: j for j, layer in enumerate(fixed)}
        self.fixed = torch.zeros(len(ids), len(fixed), encoder.model.config.hidden_size)
        order = length_order(ids)
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                rows = order[start:start + batch_size]
                enc = encoder.pad([ids[i] for i in rows])
                out = encoder.model(**enc, output_hidden_states=True).hidden_states
                for j, layer in enumerate(fixed):
                    self.fixed[rows, j] = pool(out[layer], enc["attention_mask"], encoder.pooling)
                lengths = enc["attention_mask"].sum(1)
                for k, row in enumerate(rows):
                    self.states[row] = out[low][k, :lengths[k]].to(torch.float16)

    @torch.no_grad()
    def every_text(self, batch: int = 256) -> torch.Tensor:
        """φ of all texts through the current top layers, without gradients."""
        return torch.cat([self.features(np.arange(i, min(i + batch, len(self.states))))
                          for i in range(0, len(self.states), batch)])

    def features(self, rows) -> torch.Tensor:
        """φ of texts ``rows`` through the current top layers -> ``[B, H]`` (or concat width)."""
        from transformers.masking_utils import create_bidirectional_mask

        enc = self.encoder
        states = [self.states[i] for i in rows]
        width = max(len(s) for s in states)
        h = torch.zeros(len(rows), width, states[0].shape[1])
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for k, s in enumerate(states):
            h[k, :len(s)] = s.float()
            mask[k, :len(s)] = 1
        attention = create_bidirectional_mask(config=enc.model.config, inputs_embeds=h,
                                              attention_mask=mask)
        pooled = {}
        for number, block in enumerate(transformer_layers(enc)[self.low:], start=self.low + 1):
            out = block(h, attention_mask=attention)
            h = out[0] if isinstance(out, tuple) else out
            if number in self.layers:
                pooled[number] = pool(h, mask, enc.pooling)
        index = torch.as_tensor(rows)
        parts = [pooled[i] if i > self.low else self.fixed[index, self.fixed_index[i]]
                 for i in self.layers]
        if enc.layer_combine == "concat" and len(parts) > 1:
            return torch.cat(parts, dim=-1)
        return torch.stack(parts).mean(dim=0)


def tune_top_layers(encoder: TextEncoder, ids: list, pairs: Pairs, num_users: int, *,
                    layers: int, epochs: int = 4, lr: float = 2e-4, rank: int = 8,
                    user_shrinkage: float = 1e-3, holdout_fraction: float = 0.1,
                    prompts_per_step: int = 8, seed: int = 0) -> TuneResult:
    """Train ``encoder``'s top ``layers`` blocks in place on ``pairs`` (training rows only;
    indices into ``ids``, the token ids of the texts they compare); the best epoch on the
    holdout of training prompts is kept, or the untuned weights if none beats them."""
    began = time.time()
    blocks = transformer_layers(encoder)
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"embed.tune_layers={layers}: {encoder.backbone!r} has {len(blocks)} "
                         f"transformer layers (give 1..{len(blocks)}, or 0 for off)")
    if len(pairs.chosen) == 0:
        raise ValueError("embed.tune_layers needs training rows; the train split is empty")
    low = len(blocks) - layers
    pooled = list(encoder.pooling_layers) or [len(blocks)]
    if max(pooled) <= low:
        raise ValueError(f"embed.tune_layers={layers} trains layers {low + 1}..{len(blocks)}, but "
                         f"model.pooling_layers={pooled} pools none of them")
    torch.manual_seed(seed)
    encoder.eval()
    cached = _Cached(encoder, ids, low)
    frozen = cached.every_text()
    mean, std = frozen.mean(0), frozen.std(0).clamp(min=1e-6)
    holdout = holdout_mask(np.asarray(pairs.prompt), holdout_fraction, seed)
    if holdout.all():
        holdout[:] = False

    def fit_head(features: torch.Tensor) -> float:
        """Held-out BT accuracy of a lowrank head fitted on ``features`` (training prompts)."""
        return fit_bt(features, pairs, num_users, None, rank=rank, epochs=30, lr=3e-3,
                      weight_decay=1e-2, user_shrinkage=user_shrinkage, holdout=holdout,
                      seed=seed)[2]

    frozen_accuracy = fit_head(frozen)
    top = blocks[low:]
    head = RewardHead(frozen.shape[1], num_users, head="lowrank", rank=rank, population_term=True)
    optimizer = torch.optim.AdamW([
        {"params": top.parameters(), "lr": lr, "weight_decay": 0.0},
        {"params": head.parameters(), "lr": 3e-3, "weight_decay": 1e-2}])
    chosen, rejected, user = (np.asarray(getattr(pairs, k), dtype=np.int64)
                              for k in ("chosen", "rejected", "user"))
    prompt = np.asarray(pairs.prompt)
    train_prompts = np.unique(prompt[~holdout])
    held = np.flatnonzero(holdout)
    rng = np.random.default_rng([seed, 19])
    original = {k: v.detach().clone() for k, v in top.state_dict().items()}
    best = (original, 0, frozen_accuracy)
    epoch_seconds = []

    def margins(rows: np.ndarray) -> torch.Tensor:
        texts = np.unique(np.concatenate([chosen[rows], rejected[rows]]))
        phi = (cached.features(texts) - mean) / std
        at = {t: i for i, t in enumerate(texts)}
        c = torch.as_tensor([at[t] for t in chosen[rows]])
        r = torch.as_tensor([at[t] for t in rejected[rows]])
        u = torch.as_tensor(user[rows])
        return head(phi[c], u) - head(phi[r], u)

    for epoch in range(1, epochs + 1):
        start = time.time()
        top.train()
        order = rng.permutation(train_prompts)
        for step in range(0, len(order), prompts_per_step):
            rows = np.flatnonzero(np.isin(prompt, order[step:step + prompts_per_step]) & ~holdout)
            loss = bradley_terry_loss(margins(rows)).mean()
            loss = loss + user_shrinkage * head.user_embedding(
                torch.as_tensor(user[rows])).pow(2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        top.eval()
        if len(held):
            # Like with like: a head fitted afresh on this epoch's features, as on the untuned.
            accuracy = fit_head(cached.every_text())
            if accuracy > best[2]:
                best = ({k: v.detach().clone() for k, v in top.state_dict().items()}, epoch,
                        accuracy)
        epoch_seconds.append(round(time.time() - start, 2))
    if not len(held):  # no holdout to choose on: the last epoch
        best = ({k: v.detach().clone() for k, v in top.state_dict().items()}, epochs,
                float("nan"))
    top.load_state_dict(best[0])
    encoder.eval()
    return TuneResult(layers, best[1], best[2], frozen_accuracy, int((~holdout).sum()),
                      len(ids), round(time.time() - began, 2), epoch_seconds)
