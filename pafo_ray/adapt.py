"""``pafo-ray adapt``: add new users to a saved student from their answered comparisons.

    pafo-ray adapt MODEL ANSWERS OUTPUT [--user ID] [--place group|population|mean]
                   [--shrinkage 1.0] [--vectors-only]

``MODEL``: a student folder, ``s3://``/``gs://`` URI or hub id. ``ANSWERS``: parquet (file or
folder) or JSON lines with ``prompt, chosen, rejected`` (the user's answers: ``chosen`` is the
response the user preferred) and ``user_id`` — or no ``user_id`` and ``--user ID`` (one new
user). Each user of the file is placed by the fair cold start (pafo_ray.coldstart: the group
posterior, that group's start, its offset fitted with shrinkage toward it). ``OUTPUT``: a
student folder with those users added (the backbone copied when the source folder had one),
or with ``--vectors-only`` a JSON file ``{user: {"vector", "group", "posterior", "answers"}}``
(the model untouched). A user the model already has is an error (it is not refitted).
"""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("prompt", "chosen", "rejected")


class AdaptInputError(ValueError):
    """The answers file lacks a column or holds a bad value (file, row, field named)."""


def read_answers(path: str, user: str | None = None) -> dict:
    """``{user_id: (prompts, chosen, rejected)}`` from the answers file(s), in file order."""
    from pafo_ray.score import ScoreInputError, _files, _read

    try:
        fs, files, kind = _files(path)
    except ScoreInputError as exc:
        raise AdaptInputError(str(exc)) from exc
    out: dict = {}
    for file in files:
        try:
            frame = _read(fs, file, kind).to_pandas()
        except (OSError, ValueError) as exc:  # ArrowInvalid: a JSON parse error, a bad file
            raise AdaptInputError(f"{file}: cannot read it: {exc}") from exc
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise AdaptInputError(f"{file}: missing column(s) {missing}; an answer needs "
                                  f"{list(COLUMNS)} (chosen = the response the user preferred)")
        if user is None and "user_id" not in frame.columns:
            raise AdaptInputError(f"{file}: no user_id column; give the new user's id with --user")
        for column in COLUMNS + (() if user is not None else ("user_id",)):
            bad = [i for i, v in enumerate(frame[column])
                   if not isinstance(v, (str, int)) or isinstance(v, bool)
                   or (column != "user_id" and not isinstance(v, str))]
            if bad:
                raise AdaptInputError(f"{file}: row {bad[0]}: field {column!r} must be "
                                      f"{'an id' if column == 'user_id' else 'text'}, got "
                                      f"{frame[column].iloc[bad[0]]!r}")
        ids = [user] * len(frame) if user is not None else frame["user_id"].astype(str).tolist()
        for i, uid in enumerate(ids):
            p, c, r = out.setdefault(str(uid), ([], [], []))
            p.append(frame["prompt"].iloc[i])
            c.append(frame["chosen"].iloc[i])
            r.append(frame["rejected"].iloc[i])
    if not out:
        raise AdaptInputError(f"{path}: no answers")
    return out


def adapt(model_source: str, answers: str, output: str, *, user: str | None = None,
          place: str = "group", shrinkage: float = 1.0, prior: str = "share",
          vectors_only: bool = False) -> dict:
    """Place every user of ``answers`` in the student; write ``output``; a summary per user."""
    from pafo_ray.models import RewardModel

    model = RewardModel.from_pretrained(model_source)
    # Before any scoring builds an encoder: did the source folder carry its backbone?
    had_backbone = model._loaded_backbone is not None or bool(model._scoring_encoder)
    by_user = read_answers(answers, user)
    known = sorted(u for u in by_user if u in model._rows)
    if known:
        raise AdaptInputError(f"user(s) {known[:5]} already have an embedding row in "
                              f"{model_source}; adapt adds new users only")
    summary = {}
    for uid, (prompts, chosen, rejected) in by_user.items():
        placed = model.fit_user(uid, prompts, chosen, rejected, place=place, shrinkage=shrinkage,
                                prior=prior)
        summary[uid] = {"vector": [round(float(v), 6) for v in placed.vector],
                        "group": placed.group, "answers": len(prompts),
                        "posterior": {g: round(p, 6) for g, p in placed.posterior.items()}}
    if vectors_only:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(summary, indent=1))
    else:
        model.save_pretrained(output, include_backbone=had_backbone)
    return summary
