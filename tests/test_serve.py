"""``pafo-ray serve``: a real local Ray Serve app answering real HTTP on 127.0.0.1.

Small on purpose (one replica, a tiny student, a few dozen requests): the app is shut down
at the end, and Serve runs inside the test session's Ray.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from pafo_ray.config import ConfigError, ServeConfig
from pafo_ray.models import RewardModel, build_tiny_backbone
from pafo_ray.serve import RequestError, build_app, parse_get_reward, parse_score

WORDS = ["hello", "world", "answer", "question", "short", "formal"]
USERS = ["alice", "bob"]
# Serve's controller kills a proxy that is not ready within 5 s: on a loaded CI machine a new
# worker process takes longer. Set before the session's Ray starts (its processes inherit it).
for _key in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
    os.environ.setdefault(_key, "60")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body, raw: bytes | None = None) -> tuple:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def openrlhf_remote_rm_fn(api_url: str, queries, prompts=None, labels=None):
    """The client side of OpenRLHF's remote reward model, as openrlhf/utils/remote_rm_utils.py
    does it: ``requests.post(json=...)``, ``raise_for_status``, the ``rewards`` key of the JSON
    answer, ``torch.tensor`` of it. Older releases send ``{"query"}`` only, newer ones
    ``{"query", "prompts", "labels"}`` (``labels`` = the dataset's ``--label_key`` column)."""
    import requests

    data = {"query": queries} if prompts is None else {
        "query": queries, "prompts": prompts, "labels": labels}
    response = requests.post(url=api_url, json=data,
                             headers={"Content-Type": "application/json"}, timeout=180)
    response.raise_for_status()
    response = response.json()
    assert "rewards" in response, f"rewards not in {response}"
    return torch.tensor(response.get("rewards"))


def test_parsers_name_the_field():
    assert parse_score({"user_id": "a", "prompt": "p", "responses": ["x", "y"]}, 8) == [
        ("a", "p", "x"), ("a", "p", "y")]
    for body, match in [([], "JSON object"), ({"prompt": "p", "responses": ["x"]}, "user_id"),
                        ({"user_id": "a", "prompt": 3, "responses": ["x"]}, "prompt"),
                        ({"user_id": "a", "prompt": "p", "responses": "x"}, "responses"),
                        ({"user_id": "a", "prompt": "p", "responses": ["x", None]}, r"responses\[1\]"),
                        ({"user_id": "a", "prompt": "p", "responses": []}, "at least one")]:
        with pytest.raises(RequestError, match=match):
            parse_score(body, 8)
    with pytest.raises(RequestError, match="at most 2") as info:
        parse_score({"user_id": "a", "prompt": "p", "responses": ["x"] * 3}, 2)
    assert info.value.status == 413
    body = {"query": ["Q? yes", "Q2 no"], "prompts": ["Q?", "Q2"], "labels": ["a", "b"]}
    assert parse_get_reward(body, 8) == [("a", "Q?", " yes"), ("b", "Q2", " no")]
    assert parse_get_reward({**body, "user_ids": ["c", "d"]}, 8)[1][0] == "d"
    assert parse_get_reward({"query": ["Qx"], "prompts": ["Q"]}, 8) == [("", "Q", "x")]
    # Older OpenRLHF: the query alone, scored as one text for the cold-start user.
    assert parse_get_reward({"query": ["Q? yes"]}, 8) == [("", "", "Q? yes")]
    with pytest.raises(RequestError, match=r"query\[1\] does not start with prompts\[1\]"):
        parse_get_reward({"query": ["Q? yes", "no"], "prompts": ["Q?", "Q2"]}, 8)
    with pytest.raises(RequestError, match="1 labels but 2 queries"):
        parse_get_reward({**body, "labels": ["a"]}, 8)
    with pytest.raises(ConfigError, match="serve.model is required"):
        build_app({})
    with pytest.raises(ConfigError, match="serve.replicas"):
        build_app({"model": "x", "replicas": 2})


@pytest.mark.ray
@pytest.mark.slow
def test_serve_app_answers_real_http(ray_session, tmp_path):
    from ray import serve

    from pafo_ray.serve import application

    backbone = build_tiny_backbone(tmp_path / "bert", vocab=WORDS)
    from pafo_ray.config import ModelConfig

    torch.manual_seed(0)
    model = RewardModel.from_config(ModelConfig(backbone=backbone, rank=4), USERS, input_dim=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "student", include_backbone=True)
    prompts = ["hello question", "formal question", "world"]
    responses = [["short answer", "formal answer"], ["hello"], ["answer world", "short", "x"]]

    def expected(user, prompt, resp):
        return model.score([user] * len(resp), [prompt] * len(resp), resp)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        cfg = ServeConfig(max_batch_size=4, batch_wait_timeout_s=0.05, num_cpus_per_replica=0.5,
                          max_items=8)
        serve.run(application(cfg, str(tmp_path / "student")), name="pafo-test",
                  route_prefix="/")
        status, out = _post(f"{url}/score", {"user_id": "alice", "prompt": prompts[0],
                                             "responses": responses[0]})
        assert status == 200, out
        np.testing.assert_allclose(out["rewards"], expected("alice", prompts[0], responses[0]),
                                   rtol=1e-5, atol=1e-6)
        # Concurrent requests are batched together and each gets its own rewards back.
        jobs = [(u, i) for u in USERS + ["stranger"] for i in range(3)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda job: _post(f"{url}/score", {
                "user_id": job[0], "prompt": prompts[job[1]], "responses": responses[job[1]]}),
                jobs))
        for (user, i), (status, out) in zip(jobs, answers):
            assert status == 200, out
            np.testing.assert_allclose(out["rewards"], expected(user, prompts[i], responses[i]),
                                       rtol=1e-5, atol=1e-6)
        # OpenRLHF's remote reward model: query = prompt + response, users from labels.
        body = {"query": [prompts[0] + " short answer", prompts[2] + " x"],
                "prompts": [prompts[0], prompts[2]], "labels": ["bob", "alice"]}
        status, out = _post(f"{url}/get_reward", body)
        assert status == 200, out
        want = model.score(["bob", "alice"], [prompts[0], prompts[2]], [" short answer", " x"])
        np.testing.assert_allclose(out["rewards"], want, rtol=1e-5, atol=1e-6)
        # OpenRLHF's own client code path (requests + response["rewards"] + torch.tensor), in
        # both request shapes it has used; labels carry the users.
        got = openrlhf_remote_rm_fn(f"{url}/get_reward", body["query"], body["prompts"],
                                    body["labels"])
        assert got.shape == (2,) and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
        old_shape = openrlhf_remote_rm_fn(f"{url}/get_reward", body["query"])
        # Unknown user (mean-user rule) and the whole query as one text: with WordPiece the
        # template's blank line is whitespace, so the tokens are those of prompt + response.
        stranger = model.score(["", ""], [prompts[0], prompts[2]], [" short answer", " x"])
        np.testing.assert_allclose(old_shape.numpy(), stranger, rtol=1e-5, atol=1e-6)
        # Malformed requests: 4xx with a message; the replica keeps answering.
        bad = [(None, b"{not json", 400, "not JSON"),
               ({"user_id": "alice", "prompt": "p"}, None, 400, "responses"),
               ({"user_id": "alice", "prompt": "p", "responses": [1.5]}, None, 400, "responses[0]"),
               ({"user_id": "alice", "prompt": "p", "responses": ["x"] * 9}, None, 413, "at most 8"),
               ({"query": ["a"], "prompts": ["b"]}, None, 400, "does not start")]
        for body, raw, code, message in bad:
            route = "get_reward" if body and "query" in body else "score"
            status, out = _post(f"{url}/{route}", body, raw)
            assert status == code and message in out["detail"], (status, out)
        with urllib.request.urlopen(f"{url}/healthz", timeout=30) as resp:
            assert json.loads(resp.read()) == {"users": 2, "model_type": "pafo_reward"}
    finally:
        serve.shutdown()
