"""The personalized reward model r(u, x, y) = head(φ(x, y), e_u) and its saved form.

Saved folder (no pickle)::

    config.json         format_version, the ModelConfig fields, input_dim, num_users, pooling,
                        backbone_dir ("backbone" in finetune mode, else null)
    model.safetensors   head weights
    user_ids.json       the user ids, in embedding-row order
    backbone/           finetune mode only: the trained HF model + tokenizer (save_pretrained)

Load it and score from Python::

    model = RewardModel.from_pretrained("runs/demo/distill/student")
    rewards = model.score(["alice", "bob"], ["Q?", "Q?"], ["answer one", "answer two"])
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from pafo_ray.config import ModelConfig
from pafo_ray.models.backbone import TextEncoder, quiet_progress
from pafo_ray.models.heads import RewardHead

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
USERS_NAME = "user_ids.json"
BACKBONE_DIR = "backbone"


class RewardModel(nn.Module):
    """Optional ``TextEncoder`` (finetune mode) + ``RewardHead`` + the user-id -> row map."""

    def __init__(self, model_cfg: ModelConfig, input_dim: int, user_ids: Sequence[str],
                 encoder: Optional[TextEncoder] = None) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.input_dim = int(input_dim)
        self.user_ids = [str(u) for u in user_ids]
        self._rows = {u: i for i, u in enumerate(self.user_ids)}
        if len(self._rows) != len(self.user_ids):
            raise ValueError("user_ids holds duplicates; each user needs exactly one embedding row")
        self.unknown_users_seen = 0
        if model_cfg.mode == "finetune":
            if encoder is None:
                raise ValueError("model.mode='finetune' needs a TextEncoder "
                                 "(use RewardModel.from_config to build one)")
            if encoder.hidden_size != self.input_dim:
                raise ValueError(f"encoder hidden size {encoder.hidden_size} != "
                                 f"input_dim {self.input_dim}")
            self.encoder: Optional[TextEncoder] = encoder
            self._scoring_encoder: list[TextEncoder] = []
        else:
            self.encoder = None
            # Frozen mode: an encoder only serves score(); kept out of parameters and state_dict.
            self._scoring_encoder = [encoder] if encoder is not None else []
        self.head = RewardHead(self.input_dim, len(self.user_ids), head=model_cfg.head,
                               rank=model_cfg.rank, population_term=model_cfg.population_term,
                               mlp_hidden=model_cfg.mlp_hidden, dropout=model_cfg.dropout)

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, user_ids: Sequence[str],
                    input_dim: Optional[int] = None) -> "RewardModel":
        """Build a fresh model: finetune mode loads the backbone; frozen mode needs input_dim
        (the width of the cached embeddings)."""
        if model_cfg.mode == "finetune":
            encoder = TextEncoder(model_cfg.backbone, pooling=model_cfg.pooling,
                                  max_length=model_cfg.max_length, template=model_cfg.template,
                                  pooling_layers=model_cfg.pooling_layers,
                                  layer_combine=model_cfg.layer_combine)
            return cls(model_cfg, encoder.hidden_size, user_ids, encoder)
        if input_dim is None:
            raise ValueError("frozen mode needs input_dim (the embedding width of the cache)")
        return cls(model_cfg, input_dim, user_ids)

    # ----------------------------------------------------------------- users

    def user_index(self, user_ids: Iterable) -> torch.LongTensor:
        """User ids -> ``[B]`` embedding rows; unknown ids map to −1 and are counted."""
        rows = [self._rows.get(str(u), -1) for u in user_ids]
        self.unknown_users_seen += sum(1 for r in rows if r < 0)
        return torch.tensor(rows, dtype=torch.long)

    # --------------------------------------------------------------- forward

    def forward_features(self, phi: torch.Tensor, user_index: torch.Tensor) -> torch.Tensor:
        """``phi [B, D]``, ``user_index [B]`` -> rewards ``[B]``."""
        return self.head(phi, user_index)

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       user_index: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, T]``, ``attention_mask [B, T]``, ``user_index [B]`` -> rewards ``[B]``."""
        if self.encoder is None:
            raise RuntimeError("forward_tokens needs model.mode='finetune' (a trainable encoder); "
                               "in frozen mode pass embeddings to forward_features")
        return self.head(self.encoder(input_ids, attention_mask), user_index)

    def forward(self, user_index: torch.Tensor, phi: Optional[torch.Tensor] = None,
                input_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                user_only: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rewards ``[B]`` from ``phi`` or from tokens. Call this (not the forward_* methods) on a
        DDP-wrapped model so DDP sees the forward pass. ``user_only [B]`` bool: rows whose
        gradient reaches only the user embeddings (see :meth:`RewardHead.forward`)."""
        if phi is None:
            if input_ids is None or attention_mask is None:
                raise ValueError("pass phi, or input_ids and attention_mask")
            if self.encoder is None:
                raise RuntimeError("token inputs need model.mode='finetune' (a trainable "
                                   "encoder); in frozen mode pass embeddings as phi")
            phi = self.encoder(input_ids, attention_mask)
            if user_only is not None and bool(user_only.any()):
                phi = torch.where(user_only.unsqueeze(-1), phi.detach(), phi)
        return self.head(phi, user_index, user_only)

    # --------------------------------------------------------------- scoring

    def _text_encoder(self) -> TextEncoder:
        if self.encoder is not None:
            return self.encoder
        if not self._scoring_encoder:
            cfg = self.model_cfg
            encoder = TextEncoder(cfg.backbone, pooling=cfg.pooling, max_length=cfg.max_length,
                                  template=cfg.template, pooling_layers=cfg.pooling_layers,
                                  layer_combine=cfg.layer_combine,
                                  ).to(self.head.user_embedding.weight.device)
            if encoder.hidden_size != self.input_dim:
                raise ValueError(f"backbone {cfg.backbone!r} gives {encoder.hidden_size}-wide "
                                 f"embeddings but this model was trained on {self.input_dim}")
            self._scoring_encoder.append(encoder)
        return self._scoring_encoder[0]

    @torch.no_grad()
    def score(self, user_ids: Sequence, prompts: Sequence[str], responses: Sequence[str], *,
              embeddings: Optional[np.ndarray] = None, batch_size: int = 64) -> np.ndarray:
        """Rewards ``float32 [n]`` for ``(user_ids[i], prompts[i], responses[i])``, in eval mode.

        ``embeddings [n, D]`` (φ, e.g. from the embedding cache) skip the backbone. Unknown users
        get the mean user embedding and are added to ``unknown_users_seen``.
        """
        n = len(user_ids)
        if len(prompts) != n or len(responses) != n:
            raise ValueError(f"score needs equal lengths: {n} users, {len(prompts)} prompts, "
                             f"{len(responses)} responses")
        if embeddings is not None and tuple(np.shape(embeddings)) != (n, self.input_dim):
            raise ValueError(f"embeddings must be [{n}, {self.input_dim}], "
                             f"got {list(np.shape(embeddings))}")
        was_training = self.training
        self.eval()
        device = self.head.user_embedding.weight.device
        out = []
        try:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                index = self.user_index(user_ids[start:stop]).to(device)
                if embeddings is not None:
                    phi = torch.as_tensor(np.asarray(embeddings[start:stop], dtype=np.float32))
                    rewards = self.forward_features(phi.to(device), index)
                else:
                    encoder = self._text_encoder()
                    if encoder is not self.encoder:
                        encoder.eval()  # a frozen-mode encoder is not a submodule of self
                    enc = encoder.tokenize(prompts[start:stop], responses[start:stop])
                    phi = encoder(enc["input_ids"].to(device), enc["attention_mask"].to(device))
                    rewards = self.forward_features(phi, index)
                out.append(rewards.float().cpu().numpy())
        finally:
            self.train(was_training)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    # ------------------------------------------------------------ save / load

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors, user_ids.json (and backbone/ in finetune mode)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        backbone_dir = None
        pooling = self.model_cfg.pooling
        if self.encoder is not None:
            backbone_dir = BACKBONE_DIR
            pooling = self.encoder.pooling  # the resolved choice, not "auto"
            with quiet_progress():
                self.encoder.model.save_pretrained(directory / BACKBONE_DIR)
            self.encoder.tokenizer.save_pretrained(directory / BACKBONE_DIR)
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / USERS_NAME).write_text(json.dumps(self.user_ids))
        config = {"format_version": FORMAT_VERSION, "model": dataclasses.asdict(self.model_cfg),
                  "input_dim": self.input_dim, "num_users": len(self.user_ids),
                  "pooling": pooling, "backbone_dir": backbone_dir}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path,
                        map_location: str | torch.device = "cpu") -> "RewardModel":
        """Load a folder written by :meth:`save_pretrained`; scores match the saved model."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it a saved RewardModel?")
        config = json.loads((directory / CONFIG_NAME).read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory / CONFIG_NAME}: format_version "
                             f"{config.get('format_version')!r}, this pafo_ray reads {FORMAT_VERSION}")
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        model_cfg = ModelConfig(**{k: v for k, v in config["model"].items() if k in known})
        user_ids = json.loads((directory / USERS_NAME).read_text())
        if len(user_ids) != config["num_users"]:
            raise ValueError(f"{directory / USERS_NAME} holds {len(user_ids)} ids, "
                             f"config.json says {config['num_users']}")
        encoder = None
        if config.get("backbone_dir"):
            encoder = TextEncoder(str(directory / config["backbone_dir"]), pooling=config["pooling"],
                                  max_length=model_cfg.max_length, template=model_cfg.template,
                                  pooling_layers=model_cfg.pooling_layers,
                                  layer_combine=model_cfg.layer_combine)
        model = cls(model_cfg, config["input_dim"], user_ids, encoder)
        model.head.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=True)
        return model.to(map_location)
