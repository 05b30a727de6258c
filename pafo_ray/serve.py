"""``pafo-ray serve``: the student behind HTTP on Ray Serve.

One deployment (:class:`RewardServer`, a FastAPI ingress) with ``@serve.batch`` request
batching, replicas or autoscaling from the ``serve`` config section. Routes::

    POST /score       {"user_id": "u1", "prompt": "Q?", "responses": ["a", "b"]}
                      -> {"rewards": [r_a, r_b]}
    POST /get_reward  OpenRLHF's remote reward model:
                      {"query": [prompt+response, ...], "prompts": [prompt, ...]?,
                       "user_ids": [...]?, "labels": [...]?} -> {"rewards": [...]}
    GET  /healthz     -> {"users": n, "model_type": "pafo_reward"}

User ids on ``/get_reward``: OpenRLHF sends ``query`` (the prompt followed by the response)
and ``prompts``; it has no user field, but it forwards the dataset's ``--label_key`` column as
``labels``. So the user of item i is ``user_ids[i]`` when the body has ``user_ids``, else
``labels[i]`` (train with ``--label_key user_id``), else unknown (the cold-start rule,
``serve.cold_start``). The response is ``query[i]`` with its prompt ``prompts[i]`` cut off the
front; a query that does not start with its prompt is a 400. OpenRLHF releases before
``prompts``/``labels`` were added send ``{"query": [...]}`` alone: each query is then scored as
one text (prompt "", response = the query), so the model's template separator between prompt
and response is missing — the same tokens for whitespace-insensitive tokenizers (WordPiece:
builtin-tiny, MiniLM), not necessarily for byte-level BPE ones.

Rewards are the student's raw per-user rewards ``r(u, x, y)``, not centred: only differences
for one user and prompt are meaningful (a per-user constant cancels in every margin). Centre
per prompt group (GRPO does) or let the trainer normalise.

Malformed requests get a 4xx with a message naming the field; the replica never dies of one.
``build_app`` is the import path for a Serve config file or a KubeRay RayService
(cluster/rayservice.yaml): ``import_path: pafo_ray.serve:build_app`` with ``args`` = serve
fields.
"""

# No ``from __future__ import annotations`` here: FastAPI must see ``Request`` itself on the
# route methods (Serve's ingress wraps them, and string annotations then resolve to nothing).
import dataclasses
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from ray import serve

from pafo_ray.config import ConfigError, ServeConfig, _bind

log = logging.getLogger(__name__)
api = FastAPI(title="pafo_ray reward model")


class RequestError(ValueError):
    """A malformed request: answered with ``status`` and the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _strings(body: dict, key: str, *, required: bool = True) -> list | None:
    value = body.get(key)
    if value is None:
        if required:
            raise RequestError(f"field {key!r} is missing")
        return None
    if not isinstance(value, list):
        raise RequestError(f"field {key!r} must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise RequestError(f"{key}[{i}] must be a string, got {type(item).__name__}")
    return [str(v) for v in value]


def parse_score(body: Any, max_items: int) -> list:
    """``/score`` body -> ``[(user, prompt, response), ...]`` or :class:`RequestError`."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    user, prompt = body.get("user_id"), body.get("prompt")
    if not isinstance(user, (str, int)) or isinstance(user, bool):
        raise RequestError("field 'user_id' must be a string")
    if not isinstance(prompt, str):
        raise RequestError("field 'prompt' must be a string")
    responses = _strings(body, "responses")
    if not responses:
        raise RequestError("field 'responses' must hold at least one response")
    if len(responses) > max_items:
        raise RequestError(f"{len(responses)} responses; at most {max_items} per request", 413)
    return [(str(user), prompt, r) for r in responses]


def parse_get_reward(body: Any, max_items: int) -> list:
    """OpenRLHF's ``/get_reward`` body -> ``[(user, prompt, response), ...]``."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    queries = _strings(body, "query")
    prompts = _strings(body, "prompts", required=False)
    if prompts is None:  # older OpenRLHF: query only; each query is one whole text
        prompts = [""] * len(queries)
    if len(queries) != len(prompts):
        raise RequestError(f"{len(queries)} queries but {len(prompts)} prompts")
    if len(queries) > max_items:
        raise RequestError(f"{len(queries)} queries; at most {max_items} per request", 413)
    users = _strings(body, "user_ids", required=False)
    source = "user_ids"
    if users is None:
        users, source = _strings(body, "labels", required=False), "labels"
    if users is None:
        users = [""] * len(queries)  # no user: the cold-start rule
    elif len(users) != len(queries):
        raise RequestError(f"{len(users)} {source} but {len(queries)} queries")
    items = []
    for i, (query, prompt) in enumerate(zip(queries, prompts)):
        if not query.startswith(prompt):
            raise RequestError(f"query[{i}] does not start with prompts[{i}]")
        items.append((users[i], prompt, query[len(prompt):]))
    return items


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except Exception as exc:  # JSONDecodeError, UnicodeDecodeError
        raise HTTPException(400, f"the body is not JSON: {exc}") from exc


@serve.deployment
@serve.ingress(api)
class RewardServer:
    """One replica: the student, loaded once; requests scored together by ``@serve.batch``."""

    def __init__(self, model: str, cold_start: str = "mean", max_items: int = 1024,
                 max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005,
                 device: str = "cpu"):
        import torch

        from pafo_ray.models import RewardModel

        torch.set_num_threads(1)
        self.model = RewardModel.from_pretrained(model).to(device).eval()
        self.model.cold_start = cold_start
        # Load the backbone now (frozen mode loads it on first use): the replica reports ready
        # only when it can answer, and the first request does not pay for the load.
        self.model.score([""], ["warm up"], ["warm up"])
        self.model.unknown_users_seen = 0
        self.max_items = max_items
        self.batched.set_max_batch_size(max_batch_size)
        self.batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def batched(self, requests: list) -> list:
        """Each request is a list of (user, prompt, response); one forward pass for all."""
        items = [item for request in requests for item in request]
        users, prompts, responses = (list(column) for column in zip(*items))
        rewards = self.model.score(users, prompts, responses).tolist()
        out, start = [], 0
        for request in requests:
            out.append(rewards[start:start + len(request)])
            start += len(request)
        return out

    async def _answer(self, request: Request, parse) -> dict:
        body = await _json(request)
        try:
            items = parse(body, self.max_items)
        except RequestError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        try:
            return {"rewards": await self.batched(items)}
        except Exception as exc:  # a scoring failure answers 500; the replica lives on
            log.exception("scoring failed")
            raise HTTPException(500, f"scoring failed: {type(exc).__name__}: {exc}") from exc

    @api.post("/score")
    async def score(self, request: Request) -> dict:
        return await self._answer(request, parse_score)

    @api.post("/get_reward")
    async def get_reward(self, request: Request) -> dict:
        return await self._answer(request, parse_get_reward)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"users": len(self.model.user_ids), "model_type": "pafo_reward"}


def deployment_options(cfg: ServeConfig) -> dict:
    """Replicas (or autoscaling) and resources of one replica, from the serve section."""
    options: dict = {"max_ongoing_requests": cfg.max_ongoing_requests,
                     "ray_actor_options": {"num_cpus": cfg.num_cpus_per_replica,
                                           "num_gpus": cfg.num_gpus_per_replica}}
    if cfg.autoscaling:
        if not 0 <= cfg.min_replicas <= cfg.max_replicas or cfg.max_replicas < 1:
            raise ConfigError(f"serve: need 0 <= min_replicas ({cfg.min_replicas}) <= "
                              f"max_replicas ({cfg.max_replicas}), max_replicas >= 1")
        options["autoscaling_config"] = {"min_replicas": cfg.min_replicas,
                                         "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        if cfg.num_replicas < 1:
            raise ConfigError(f"serve.num_replicas must be >= 1, got {cfg.num_replicas}")
        options["num_replicas"] = cfg.num_replicas
    return options


def application(cfg: ServeConfig, model: str):
    """The bound Serve application for ``model`` (a folder, URI or hub id)."""
    if cfg.max_batch_size < 1 or cfg.max_items < 1:
        raise ConfigError("serve.max_batch_size and serve.max_items must be >= 1")
    return RewardServer.options(**deployment_options(cfg)).bind(
        model, cold_start=cfg.cold_start, max_items=cfg.max_items,
        max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s,
        device="cuda" if cfg.num_gpus_per_replica > 0 else "cpu")


def build_app(args: dict):
    """Serve's application builder (``import_path: pafo_ray.serve:build_app``): ``args`` are
    ``serve`` section fields; ``model`` is required."""
    cfg = _bind(ServeConfig, dict(args or {}), "serve")
    if not cfg.model:
        raise ConfigError("serve.model is required: the student's folder, URI or hub id")
    return application(cfg, cfg.model)


def run(cfg, blocking: bool = True):
    """``pafo-ray serve``: start Serve's proxy on serve.host:port and deploy the student."""
    from pafo_ray.layout import RunLayout
    from pafo_ray.ray_session import init_ray

    model = cfg.serve.model or RunLayout.of(cfg).student_model("student")
    app = application(cfg.serve, model)
    init_ray(cfg.run.ray)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    log.info("serving %s at http://%s:%d%s (%s)", model, cfg.serve.host, cfg.serve.port,
             cfg.serve.route_prefix, dataclasses.asdict(cfg.serve))
    return serve.run(app, name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix,
                     blocking=blocking)
