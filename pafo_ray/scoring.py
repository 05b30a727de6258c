"""Ray Data batch inference with a saved model: margins of rows, in an actor pool.

Used by ``margins`` (each teacher on every training/validation row) and ``evaluate``
(every method on the test rows). Each actor loads the model (and, in frozen mode, the
embedding cache) once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SCORE_COLUMNS = ["row_id", "user_id", "prompt", "chosen", "rejected", "chosen_text_id",
                 "rejected_text_id", "weight", "group", "split"]
TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def score_columns(cfg) -> list:
    """The columns a scorer reads: frozen mode scores cached vectors by text id, so it leaves
    the texts (most of a row's bytes) unread, and the rows it writes carry none."""
    if cfg.model.mode == "frozen":
        return [c for c in SCORE_COLUMNS if c not in TEXT_COLUMNS]
    return list(SCORE_COLUMNS)


class MarginScorer:
    """Adds ``<column>`` = each model's margin (chosen over rejected) to every batch.

    One actor holds every model of the call (``{column: model_uri}``): one pool instead of
    a chain of pools, which on a small machine would hold more actors than CPUs and hang.
    """

    def __init__(self, models: dict, pipeline: dict, device: str = "cpu"):
        import tempfile

        from pafo_ray.config import config_from_dict
        from pafo_ray.layout import RunLayout
        from pafo_ray.models import RewardModel
        from pafo_ray.storage import local_copy
        from pafo_ray.train.arrays import read_cache
        from pafo_ray.train.loop import PairScorer

        cfg = config_from_dict(pipeline)
        self.models = {}
        for column, uri in models.items():
            with tempfile.TemporaryDirectory() as tmp:
                model = RewardModel.from_pretrained(local_copy(uri, tmp)).to(device).eval()
            self.models[column] = (model, PairScorer(model))
        self.cache = (read_cache(RunLayout.of(cfg).embed_cache())
                      if cfg.model.mode == "frozen" else None)
        self.device = device

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        import torch

        from pafo_ray.train.arrays import Rows
        from pafo_ray.train.loop import score_rows

        for column, (model, scorer) in self.models.items():
            users = model.user_index(batch["user_id"].astype(str))
            rows = Rows(user_index=users, group_index=torch.zeros(len(batch), dtype=torch.long),
                        weight=torch.ones(len(batch)))
            if self.cache is not None:
                rows.chosen_index = self.cache.index_of(batch["chosen_text_id"].to_numpy(np.int64))
                rows.rejected_index = self.cache.index_of(
                    batch["rejected_text_id"].to_numpy(np.int64))
                batch[column] = score_rows(scorer, rows, self.cache, device=self.device)
            else:  # finetune: both texts of every row through the backbone, batched by length
                prompts = list(batch["prompt"])
                phi = model.embed_texts(prompts + prompts,
                                        list(batch["chosen"]) + list(batch["rejected"]))
                with torch.no_grad():
                    margins = scorer(users.to(phi.device), chosen_phi=phi[:len(batch)],
                                     rejected_phi=phi[len(batch):])
                batch[column] = margins.float().cpu().numpy()
            batch[f"{column}_unknown_user"] = (users < 0).numpy()
        return batch


def score_dataset(ds, models: dict, pipeline: dict, *, batch_size: int, num_actors: int,
                  num_gpus: float):
    """``ds`` with one margin column per entry of ``models`` ({column: model_uri})."""
    import ray
    import ray.data

    from pafo_ray.admission import capacity_from, pool_size

    # Leave a CPU for the read tasks that feed the pool (a full pool starves them: a hang).
    actors = pool_size(num_actors, 1.0, num_gpus, capacity_from(ray.cluster_resources()))
    return ds.map_batches(
        MarginScorer, batch_format="pandas", batch_size=batch_size,
        fn_constructor_kwargs=dict(models=models, pipeline=pipeline,
                                   device="cuda" if num_gpus > 0 else "cpu"),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=num_gpus or None)
