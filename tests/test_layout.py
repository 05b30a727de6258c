"""The run directory has one owner and the code one direction (DESIGN §9, STYLE).

Static checks over the source (no Ray, no torch): no import cycle among the modules of
``pafo_ray/`` and ``tuning/`` (imports inside functions count: they are cycles too, only
later); no lower layer (``train/``, ``models/``, ``data/``) importing a higher one
(``stages/``, ``cli``); no module but :mod:`pafo_ray.layout` (and :mod:`pafo_ray.storage`, the
generic I/O it builds on) spelling a stage's folder or ``summary.json`` in a run-directory
path call; the CLI's stage subcommands are the registry's. Then the layout's own behaviour
on a small local run directory.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pafo_ray", "tuning")
LOWER = ("pafo_ray.train", "pafo_ray.models", "pafo_ray.data")
HIGHER = ("pafo_ray.stages", "pafo_ray.cli")
# RunDir methods and storage helpers whose arguments are path parts under the run.
PATH_CALLS = {"uri", "fs_path", "exists", "read_json", "write_json", "read_bytes", "write_bytes",
              "remove", "local_dir", "marker", "is_complete", "mark_complete", "start",
              "upload_dir", "download_dir"}
OWNERS = {"pafo_ray.layout", "pafo_ray.storage"}


def _modules() -> dict:
    """``{module name: parsed tree}`` of every source file of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = ast.parse(path.read_text(), filename=str(path))
    return out


def _imports(name: str, tree: ast.AST, known: set) -> set:
    """The known modules ``name`` imports anywhere in its file (top level or in a function)."""
    found = set()
    package = name if name in {"pafo_ray", "tuning"} else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, tree, known) for name, tree in modules.items()}


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_import_graph_sees_real_imports():
    """The checks below are only as good as the graph: it must hold known edges."""
    graph = _graph()
    assert "pafo_ray.layout" in graph["pafo_ray.stages.base"]
    assert "pafo_ray.train.jobs" in graph["pafo_ray.stages.teachers"]  # from pkg import module
    assert "pafo_ray.train.inmemory" in graph["tuning.search"]         # inside a function
    assert len(graph) > 40


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_lower_layer_imports_a_higher_one():
    bad = [(name, target) for name, targets in _graph().items()
           if name.startswith(LOWER) for target in targets if target.startswith(HIGHER)]
    assert bad == []


def test_only_the_layout_spells_stage_folders_in_run_paths():
    from pafo_ray.layout import SCRATCH, STAGE_FOLDERS, SUMMARY, USERS

    spelled = set(STAGE_FOLDERS) | {SCRATCH, SUMMARY, USERS}
    bad = []
    for name, tree in _modules().items():
        if name in OWNERS:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in PATH_CALLS:
                continue
            for arg in node.args:
                if isinstance(arg, ast.Constant) and arg.value in spelled:
                    bad.append(f"{name}:{node.lineno} {called}({arg.value!r}, ...)")
    assert bad == []


def test_no_module_reads_a_summary_by_its_file_name():
    bad = [f"{name}:{node.lineno}" for name, tree in _modules().items() if name not in OWNERS
           for node in ast.walk(tree)
           if isinstance(node, ast.Constant) and node.value == "summary.json"]
    assert bad == []


def test_cli_stage_subcommands_are_the_registry():
    from pafo_ray.cli import TOOLS, make_parser
    from pafo_ray.layout import STAGE_FOLDERS
    from pafo_ray.stages.registry import ORDER

    sub = next(a for a in make_parser()._actions if a.dest == "command")
    commands = list(sub.choices)
    stages = [c for c in commands if c not in TOOLS]
    assert set(commands) - set(stages) == set(TOOLS)
    assert stages == ORDER
    assert tuple(ORDER) == STAGE_FOLDERS


def test_registry_is_the_runners_order_and_dependencies():
    """Every dependency comes earlier in the order, and each stage has a module."""
    import importlib

    from pafo_ray.stages.registry import ORDER, STAGES

    for position, stage in enumerate(STAGES):
        assert all(ORDER.index(dep) < position for dep in stage.depends), stage.name
        module = importlib.import_module(f"pafo_ray.stages.{stage.name}")
        assert module.NAME == stage.name and callable(module.run)
        assert not hasattr(module, "DEPENDS"), f"{stage.name}: dependencies live in the registry"


def test_every_layout_path_is_in_its_table():
    """A newcomer finds where any artifact lives in the module docstring."""
    import inspect

    import pafo_ray.layout as L

    verbs = ("has_", "write_", "read_", "save_", "fetch_", "parts_of", "local_path")
    named = [name for name, member in vars(L.RunLayout).items()
             if inspect.isfunction(member) and not name.startswith(("_",) + verbs)]
    assert len(named) >= 25
    missing = [name for name in named if f"{name}(" not in L.__doc__]
    assert missing == []


# The layout's behaviour on a local run directory ------------------------------------------
@pytest.fixture
def layout(tmp_path):
    from pafo_ray.layout import RunLayout

    return RunLayout(str(tmp_path / "runs"), "r1")


def test_paths_are_the_run_directory_on_disk(layout, tmp_path):
    root = tmp_path / "runs" / "r1"
    assert layout.prepared_rows("train") == str(root / "prepare" / "data" / "split=train")
    assert layout.grouped_rows("val", ["minority"]) == [
        str(root / "groups" / "data" / "split=val" / "group=minority")]
    assert layout.teacher_model("vanilla") == str(root / "teachers" / "vanilla")
    assert layout.embed_cache() == str(root / "embed" / "cache")
    assert layout.ray_storage("tune") == str(root / "_ray" / "tune")
    assert layout.report() == str(root / "evaluate" / "report.md")


def test_parts_of_a_path_and_refusal_outside_the_run(layout):
    assert layout.parts_of(layout.tuned_baseline_model("groupdro")) == (
        "tune", "baselines", "groupdro")
    assert layout.parts_of(layout.root) == ()
    with pytest.raises(ValueError, match="not under the run directory"):
        layout.parts_of(layout.root + "-other/x")


def test_remote_paths_keep_the_query_and_round_trip():
    from pafo_ray.layout import RunLayout

    remote = RunLayout("s3://bucket/runs?endpoint_override=localhost:9&scheme=http", "r1")
    uri = remote.margin_rows("extra")
    assert uri == "s3://bucket/runs/r1/margins/rows/split=extra?endpoint_override=localhost:9&scheme=http"
    assert remote.parts_of(uri) == ("margins", "rows", "split=extra")


def test_typed_readers_of_other_stages_summaries(layout):
    import pandas as pd

    layout.write_summary("teachers", {"jobs": {"vanilla": {"metrics": {"val_accuracy": 0.7}}}})
    layout.write_summary("groups", {"groups": {"train": {"minority": 3, "majority": 9}},
                                    "how": "user support"})
    layout.write_summary("tune", {"chosen": None, "plot": "pareto_front.png"})
    teachers = layout.teachers_summary()
    assert teachers.jobs["vanilla"]["metrics"]["val_accuracy"] == 0.7 and teachers.fallbacks == {}
    groups = layout.groups_summary()
    assert groups.row_counts("train") == {"minority": 3, "majority": 9}
    assert groups.row_counts("val") == {} and groups.users_moved is None
    tune = layout.tune_summary()
    assert tune.chosen is None and tune.baseline_searches == {} and tune.plot == "pareto_front.png"
    assert layout.baselines_jobs() is None
    layout.write_users("prepare", pd.DataFrame({"user_id": ["b", "a", "c"], "rows": [1, 2, 3]}))
    assert layout.user_ids() == ["a", "b", "c"]
    assert list(layout.users("prepare")["rows"]) == [1, 2, 3]


def test_the_training_entry_points_share_one_builder():
    """The workers' job set-up, train_student and train_vanilla get model and rows from one
    builder, and both kinds of Ray Train worker (one trainer a job, pooled) from that set-up;
    none seeds, builds a model or tensors rows itself."""
    modules = _modules()

    def calls(module, function):
        node = next(n for n in ast.walk(modules[module])
                    if isinstance(n, ast.FunctionDef) and n.name == function)
        return {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", None)
                for c in ast.walk(node) if isinstance(c, ast.Call)}

    forbidden = {"manual_seed", "from_config", "build_rows", "user_map"}
    for module, function in [("pafo_ray.train.worker", "set_up_job"),
                             ("pafo_ray.train.inmemory", "train_student"),
                             ("pafo_ray.train.inmemory", "train_vanilla")]:
        called = calls(module, function)
        assert "build_model_and_rows" in called and not called & forbidden, function
    for module, function in [("pafo_ray.train.ray_train", "train_func"),
                             ("pafo_ray.train.pooled", "_train_job")]:
        called = calls(module, function)
        assert "set_up_job" in called and not called & forbidden, function
        assert "build_model_and_rows" not in called, function


def test_layout_files_and_folders_on_s3(monkeypatch, tmp_path):
    """The URI-taking verbs reach the same objects as RunDir's parts on an object store."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    from pafo_ray.layout import RunLayout

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1"
                     ).create_bucket(Bucket="layout")
        layout = RunLayout(f"s3://layout/runs?endpoint_override=127.0.0.1:{port}&scheme=http",
                           "r1")
        model = tmp_path / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        layout.save_folder(str(model), layout.teacher_model("minority"))
        assert layout.has_teacher("minority") and not layout.has_teacher("majority")
        copy = layout.fetch_folder(layout.teacher_model("minority"), str(tmp_path / "copy"))
        assert (Path(copy) / "config.json").read_text() == "{}"
        layout.write_file(layout.tune_file("front.csv"), b"a,b\n")
        assert layout.read_bytes("tune", "front.csv") == b"a,b\n"
        assert layout.local_path(layout.evaluate_dir()) is None
    finally:
        server.stop()
