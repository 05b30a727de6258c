"""The student's ``config.json`` as a Hugging Face ``PretrainedConfig`` (``model_type`` =
``pafo_reward``), registered with ``transformers.AutoConfig`` on import::

    import pafo_ray.models.hf_config  # noqa: F401  (registers the model type)
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained("runs/demo/distill/student")  # a PafoRewardConfig

The fields are the ones :class:`pafo_ray.models.RewardModel` writes: ``format_version``,
``model`` (the ModelConfig section), ``input_dim``, ``num_users``, ``pooling``,
``backbone_dir`` and ``backbone_ref``. Loading the weights goes through
``RewardModel.from_pretrained``; this class only makes the folder readable by the
transformers tooling (``AutoConfig``, the hub's model card, ``push_to_hub`` of a folder).
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from pafo_ray.models.reward_model import FORMAT_VERSION, MODEL_TYPE


class PafoRewardConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, format_version: int = FORMAT_VERSION, model: dict | None = None, input_dim: int = 0,
                 num_users: int = 0, pooling: str = "auto", backbone_dir: str | None = None,
                 backbone_ref: dict | None = None, **kwargs) -> None:
        self.format_version = format_version
        self.model = dict(model or {})
        self.input_dim = input_dim
        self.num_users = num_users
        self.pooling = pooling
        self.backbone_dir = backbone_dir
        self.backbone_ref = backbone_ref
        super().__init__(**kwargs)


def register() -> None:
    """Idempotent: ``AutoConfig.register`` refuses a second registration of the same type."""
    try:
        AutoConfig.register(MODEL_TYPE, PafoRewardConfig)
    except ValueError:
        pass


register()
