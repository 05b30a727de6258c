"""The personalized reward model r(u, x, y) = head(φ(x, y), e_u) and its saved form.

Saved folder (no pickle; one folder that loads anywhere)::

    config.json         model_type "pafo_reward" (transformers.AutoConfig reads it once
                        pafo_ray.models.hf_config is imported), format_version, the ModelConfig
                        fields, input_dim, num_users, pooling, backbone_dir, backbone_ref
    model.safetensors   head weights
    user_ids.json       the user ids, in embedding-row order
    user_groups.json    optional: each user's group (the run's final groups) -> the group
                        vectors of the fair cold start (pafo_ray.coldstart)
    group_vectors.json  optional: {group: [K] start offset}, each group's population fitted in
                        this head's basis by the distill stage (pafo_ray.coldstart)
    group_starts.json   optional: {group: [K] offset} where a new user placed in the group
                        starts, when validation chose another start than its group vector
                        (pafo_ray.coldstart.choose_group_starts)
    backbone/           finetune mode: the trained HF model + tokenizer (save_pretrained);
                        frozen mode: a copy of the frozen backbone when saved with
                        ``include_backbone=True`` — otherwise ``backbone_ref`` pins it by name
                        and revision (hub commit, or a fingerprint of a local folder), and a
                        load that resolves a different revision warns

Load it and score from Python (a local folder, ``s3://``/``gs://`` URI or a hub id)::

    model = RewardModel.from_pretrained("runs/demo/distill/student")
    rewards = model.score(["alice", "bob"], ["Q?", "Q?"], ["answer one", "answer two"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from pafo_ray.config import ModelConfig
from pafo_ray.models.backbone import TextEncoder, quiet_progress
from pafo_ray.models.heads import RewardHead

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before model_type, backbone_ref and user_groups.json
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
USERS_NAME = "user_ids.json"
GROUPS_NAME = "user_groups.json"
GROUP_VECTORS_NAME = "group_vectors.json"
GROUP_STARTS_NAME = "group_starts.json"
BACKBONE_DIR = "backbone"
COLD_START = ("mean", "population")
MODEL_TYPE = "pafo_reward"  # config.json's model_type (pafo_ray.models.hf_config registers it)
log = logging.getLogger(__name__)


def backbone_revision(path: str) -> str:
    """A pin for a resolved backbone folder: the hub commit of a cache snapshot
    (``.../snapshots/<commit>``), else ``sha256:`` of config.json and the files' names+sizes."""
    parts = Path(path).parts
    if len(parts) >= 2 and parts[-2] == "snapshots":
        return parts[-1]
    if not os.path.isdir(path):
        return ""
    digest = hashlib.sha256()
    config = Path(path) / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            digest.update(f"{name}:{os.path.getsize(full)}".encode())
    return "sha256:" + digest.hexdigest()[:16]


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
        # Unknown users: "mean" (the mean user embedding) or "population" (offset 0).
        self.cold_start = "mean"
        # user id -> group name (the run's final groups), for the fair cold start.
        self.user_groups: dict[str, str] = {}
        # group name -> [K] start offset of the fair cold start (fitted group populations).
        self.group_vectors: dict[str, list] = {}
        # group name -> [K] start chosen on validation where it is not the group's vector.
        self.group_starts: dict[str, list] = {}
        self.backbone_ref: Optional[dict] = None  # the pinned backbone a loaded model names
        self._loaded_backbone: Optional[str] = None  # backbone/ of the folder it loaded from
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
                               mlp_hidden=model_cfg.mlp_hidden, dropout=model_cfg.dropout,
                               base_hidden=model_cfg.base_hidden)

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
            name = self._loaded_backbone or cfg.backbone
            encoder = TextEncoder(name, pooling=cfg.pooling, max_length=cfg.max_length,
                                  template=cfg.template, pooling_layers=cfg.pooling_layers,
                                  layer_combine=cfg.layer_combine,
                                  ).to(self.head.user_embedding.weight.device)
            if encoder.hidden_size != self.input_dim:
                raise ValueError(f"backbone {cfg.backbone!r} gives {encoder.hidden_size}-wide "
                                 f"embeddings but this model was trained on {self.input_dim}")
            pinned = (self.backbone_ref or {}).get("revision")
            if pinned and not self._loaded_backbone:
                from pafo_ray.models.backbone import resolve_backbone

                found = backbone_revision(resolve_backbone(cfg.backbone))
                if found and found != pinned:
                    log.warning("backbone %r resolves to revision %s, but this model was saved "
                                "with %s: scores may differ", cfg.backbone, found, pinned)
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
            if embeddings is not None:
                every_phi = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
            else:  # all texts through the backbone at once, batched by token length
                every_phi = self.embed_texts(prompts, responses, batch_size=batch_size)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                index = self.user_index(user_ids[start:stop]).to(device)
                phi = every_phi[start:stop].to(device)
                rewards = self.forward_features(phi, index)
                if self.cold_start == "population" and bool((index < 0).any()):
                    zero = torch.zeros(len(index), self.head.rank, device=device)
                    rewards = torch.where(index < 0, self.head.score_vectors(phi, zero), rewards)
                out.append(rewards.float().cpu().numpy())
        finally:
            self.train(was_training)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str], responses: Sequence[str],
                    batch_size: int = 64) -> torch.Tensor:
        """φ ``[n, D]`` of (prompt, response) pairs through the model's backbone, on its device,
        in the order given (batched by token length: :meth:`TextEncoder.embed`)."""
        device = self.head.user_embedding.weight.device
        encoder = self._text_encoder()
        if encoder is not self.encoder:
            encoder.eval()  # a frozen-mode encoder is not a submodule of self
        phi = encoder.embed(list(prompts), list(responses), batch_size=batch_size)
        return torch.from_numpy(phi).to(device)

    # ---------------------------------------------------------------- groups

    def set_user_groups(self, groups: dict) -> None:
        """``{user_id: group name}``: the run's final groups (ids this model lacks are ignored)."""
        self.user_groups = {str(u): str(g) for u, g in groups.items()
                            if str(u) in self._rows and g is not None and g == g}

    def set_group_vectors(self, vectors: dict, source: str = "group vectors") -> None:
        """``{group: [K] offset}``: the cold start's group populations (see pafo_ray.coldstart)."""
        self.group_vectors = self._offsets(vectors, source)

    def set_group_starts(self, starts: dict, source: str = "group starts") -> None:
        """``{group: [K] offset}``: where a new user placed in the group starts, when that is
        not the group's vector (chosen on validation: pafo_ray.coldstart.choose_group_starts)."""
        self.group_starts = self._offsets(starts, source)

    def _offsets(self, vectors: dict, source: str) -> dict:
        rank = self.head.user_embedding.weight.shape[1]
        for group, vector in vectors.items():
            if len(vector) != rank:
                raise ValueError(f"{source}: group {group!r} has {len(vector)} values, the "
                                 f"user table is {rank} wide")
        return {str(g): [float(v) for v in vec] for g, vec in vectors.items()}

    def add_user(self, user_id: str, vector: torch.Tensor) -> int:
        """Append a user row holding ``vector [K]`` (its offset e_u); returns its row."""
        user_id = str(user_id)
        if user_id in self._rows:
            raise ValueError(f"user {user_id!r} already has an embedding row")
        old = self.head.user_embedding
        table = torch.cat([old.weight.detach(), vector.detach().reshape(1, -1).to(old.weight)])
        self.head.user_embedding = nn.Embedding.from_pretrained(table, freeze=False)
        self.head.num_users = table.shape[0]
        self.user_ids.append(user_id)
        self._rows[user_id] = len(self.user_ids) - 1
        return self._rows[user_id]

    def fit_user(self, user_id: str, prompts: Sequence[str], chosen: Sequence[str],
                 rejected: Sequence[str], **kwargs):
        """Fair cold start of a new user from answered comparisons: placed in the group whose
        vector explains them best, its offset fitted from there (pafo_ray.coldstart.fit_user)."""
        from pafo_ray.coldstart import fit_user

        return fit_user(self, user_id, prompts, chosen, rejected, **kwargs)

    def active_session(self, prompts: Sequence[str], responses_a: Sequence[str],
                       responses_b: Sequence[str], **kwargs):
        """Active cold start over a pool of pairs a new user could be asked: ``next()`` the
        pair the groups disagree on most, ``answer(i, prefers_a)``, ``add_user(id)``
        (pafo_ray.active.ActiveSession; kwargs: ``prior``, ``shrinkage``)."""
        from pafo_ray.active import ActiveSession

        return ActiveSession.from_texts(self, prompts, responses_a, responses_b, **kwargs)

    # ------------------------------------------------------------ save / load

    def save_pretrained(self, directory: str | Path, include_backbone: bool = False) -> Path:
        """Write config.json, model.safetensors, user_ids.json, user_groups.json (when groups are
        set) and backbone/ (finetune mode always; frozen mode when ``include_backbone``)."""
        from safetensors.torch import save_file

        from pafo_ray.models.backbone import resolve_backbone

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        backbone_dir = None
        pooling = self.model_cfg.pooling
        backbone_ref = None
        if self.encoder is not None:
            backbone_dir = BACKBONE_DIR
            pooling = self.encoder.pooling  # the resolved choice, not "auto"
            with quiet_progress():
                self.encoder.model.save_pretrained(directory / BACKBONE_DIR)
            self.encoder.tokenizer.save_pretrained(directory / BACKBONE_DIR)
        else:
            backbone_ref = self._pin_backbone()
            if include_backbone:
                target = directory / BACKBONE_DIR
                if self._loaded_backbone and Path(self._loaded_backbone).is_dir():
                    if Path(self._loaded_backbone).resolve() != target.resolve():
                        shutil.copytree(self._loaded_backbone, target, dirs_exist_ok=True)
                elif self._scoring_encoder:
                    with quiet_progress():
                        self._scoring_encoder[0].model.save_pretrained(target)
                    self._scoring_encoder[0].tokenizer.save_pretrained(target)
                else:
                    shutil.copytree(resolve_backbone(self.model_cfg.backbone), target,
                                    dirs_exist_ok=True)
                backbone_dir = BACKBONE_DIR
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / USERS_NAME).write_text(json.dumps(self.user_ids))
        if self.user_groups:
            (directory / GROUPS_NAME).write_text(json.dumps(self.user_groups))
        if self.group_vectors:
            (directory / GROUP_VECTORS_NAME).write_text(json.dumps(self.group_vectors))
        if self.group_starts:
            (directory / GROUP_STARTS_NAME).write_text(json.dumps(self.group_starts))
        config = {"model_type": MODEL_TYPE, "architectures": ["PafoRewardModel"],
                  "format_version": FORMAT_VERSION, "model": dataclasses.asdict(self.model_cfg),
                  "input_dim": self.input_dim, "num_users": len(self.user_ids),
                  "pooling": pooling, "backbone_dir": backbone_dir, "backbone_ref": backbone_ref}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        return directory

    def _pin_backbone(self) -> dict:
        """``{name, revision}`` of the frozen backbone (revision "" when it cannot be resolved)."""
        from pafo_ray.models.backbone import BackboneError, resolve_backbone

        if self.backbone_ref is not None:
            return dict(self.backbone_ref)
        try:
            revision = backbone_revision(resolve_backbone(self.model_cfg.backbone))
        except (BackboneError, OSError) as exc:
            log.warning("cannot pin backbone %r: %s", self.model_cfg.backbone, exc)
            revision = ""
        self.backbone_ref = {"name": self.model_cfg.backbone, "revision": revision}
        return dict(self.backbone_ref)

    @classmethod
    def from_pretrained(cls, source: str | Path, map_location: str | torch.device = "cpu", *,
                        revision: Optional[str] = None,
                        cache_dir: Optional[str] = None) -> "RewardModel":
        """Load a folder written by :meth:`save_pretrained`; scores match the saved model.

        ``source``: a local folder, an ``s3://``/``gs://``/``hdfs://`` URI (any pyarrow
        filesystem; copied to a temporary folder first), or a Hugging Face hub id (resolved by
        ``huggingface_hub.snapshot_download`` at ``revision``; from the local cache only when
        ``HF_HUB_OFFLINE`` is set).
        """
        source = str(source)
        if "://" in source:
            from pyarrow import fs as pafs

            from pafo_ray.storage import split_uri

            fs, path = split_uri(source)
            if fs.get_file_info(path.rstrip("/") + "/" + CONFIG_NAME).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{source} has no {CONFIG_NAME}; is it a saved RewardModel?")
            with tempfile.TemporaryDirectory(prefix="pafo-model-") as tmp:
                pafs.copy_files(path, tmp, source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
                # Load everything now: the temporary copy is gone afterwards.
                return cls._load_local(Path(tmp), map_location, eager_backbone=True)
        if os.path.isdir(source):
            return cls._load_local(Path(source), map_location)
        if os.path.exists(source) or source.startswith((".", "/")) or source.count("/") > 1:
            raise FileNotFoundError(f"{source} has no {CONFIG_NAME}; is it a saved RewardModel?")
        from huggingface_hub import constants, snapshot_download

        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true")
        try:
            folder = snapshot_download(source, revision=revision, cache_dir=cache_dir,
                                       local_files_only=bool(offline))
        except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, ...
            raise FileNotFoundError(
                f"{source!r} is not a local folder, not a URI, and not a hub model "
                f"{'in the local cache (HF_HUB_OFFLINE is set)' if offline else 'that loads'}: "
                f"{exc}") from exc
        return cls._load_local(Path(folder), map_location)

    @classmethod
    def _load_local(cls, directory: Path, map_location, eager_backbone: bool = False):
        from safetensors.torch import load_file

        if not (directory / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it a saved RewardModel?")
        config = json.loads((directory / CONFIG_NAME).read_text())
        if config.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(f"{directory / CONFIG_NAME}: format_version "
                             f"{config.get('format_version')!r}, this pafo_ray reads "
                             f"{list(READABLE_VERSIONS)}")
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        model_cfg = ModelConfig(**{k: v for k, v in config["model"].items() if k in known})
        user_ids = json.loads((directory / USERS_NAME).read_text())
        if len(user_ids) != config["num_users"]:
            raise ValueError(f"{directory / USERS_NAME} holds {len(user_ids)} ids, "
                             f"config.json says {config['num_users']}")
        encoder = None
        backbone = directory / config["backbone_dir"] if config.get("backbone_dir") else None
        if backbone is not None and (model_cfg.mode == "finetune" or eager_backbone):
            encoder = TextEncoder(str(backbone), pooling=config["pooling"],
                                  max_length=model_cfg.max_length, template=model_cfg.template,
                                  pooling_layers=model_cfg.pooling_layers,
                                  layer_combine=model_cfg.layer_combine)
        model = cls(model_cfg, config["input_dim"], user_ids, encoder)
        model.head.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=True)
        model.backbone_ref = config.get("backbone_ref")
        if backbone is not None and model_cfg.mode == "frozen" and encoder is None:
            model._loaded_backbone = str(backbone)  # the copy serves score(), loaded on first use
        if (directory / GROUPS_NAME).exists():
            model.set_user_groups(json.loads((directory / GROUPS_NAME).read_text()))
        if (directory / GROUP_VECTORS_NAME).exists():
            model.set_group_vectors(json.loads((directory / GROUP_VECTORS_NAME).read_text()),
                                    source=str(directory / GROUP_VECTORS_NAME))
        if (directory / GROUP_STARTS_NAME).exists():
            model.set_group_starts(json.loads((directory / GROUP_STARTS_NAME).read_text()),
                                   source=str(directory / GROUP_STARTS_NAME))
        return model.to(map_location)
