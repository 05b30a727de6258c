"""What end-to-end fine-tuning of the backbone costs on this machine (``model.mode=finetune``).

    python -m benchmarks.finetune_cost [--backbone minilm] [--max-length 128] [--texts 256]

Times training steps of the backbone alone — forward pass, mean pooling, a scalar loss,
backward pass and an AdamW step — on real DSP texts (prompt + response, as the embed stage
templates them), batches of ``--batch-size`` padded to their longest text, torch threads = all
cores; the first step is a warm-up. Prints texts/s, and from it the seconds one epoch of one
model would take on a DSP run's training texts (``--run-texts``: each of ~5,500 training
comparisons has two texts) and a run of ``--models`` models × ``--epochs`` epochs. The head
and the pair loss are left out: next to the backbone they cost nothing, so this is a lower
bound on the stage's time.
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.embed import DSP, TEMPLATE, dsp_texts, mean_pool


def step_rate(model, tokenizer, texts: list, max_length: int, batch_size: int,
              lr: float = 2e-5) -> float:
    """Texts/s of full training steps of ``model`` over ``texts`` (the first batch: warm-up)."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    if len(batches) < 2:
        raise ValueError(f"need at least 2 batches of {batch_size} texts, got {len(texts)} texts")
    began, timed = None, 0
    for i, batch in enumerate(batches):
        if i == 1:
            began = time.perf_counter()
        encoded = tokenizer(batch, truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt", return_token_type_ids=False)
        hidden = model(**encoded).last_hidden_state
        loss = mean_pool(hidden, encoded["attention_mask"]).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            timed += len(batch)
    return timed / (time.perf_counter() - began)


def main(argv=None) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from pafo_ray.models.backbone import quiet_progress, resolve_backbone

    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--max-length", type=int, default=128, help="the pipeline's default")
    p.add_argument("--texts", type=int, default=256, help="DSP texts timed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--run-texts", type=int, default=11_000,
                   help="training texts of one model's epoch (DSP suite: ~5,500 comparisons × 2)")
    p.add_argument("--models", type=int, default=10,
                   help="models a run trains (vanilla, teachers, baselines, student)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data", default=str(DSP), help="the DSP file")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    prompts, responses = dsp_texts(args.data, args.texts)
    texts = [TEMPLATE.format(prompt=q, response=r) for q, r in zip(prompts, responses)]
    path = resolve_backbone(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    with quiet_progress():
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    rate = step_rate(model, tokenizer, texts, args.max_length, args.batch_size)
    epoch = args.run_texts / rate
    run = epoch * args.models * args.epochs
    print(f"{args.backbone}, {args.texts} DSP texts at max_length {args.max_length}, batch "
          f"{args.batch_size}, {cores} torch threads: {rate:.1f} texts/s (forward, backward, "
          f"AdamW step)")
    print(f"one epoch of one model on {args.run_texts:,} texts: {epoch:,.0f} s; a run of "
          f"{args.models} models × {args.epochs} epochs: {run / 3600:.1f} h; 3 seeds: "
          f"{3 * run / 3600:.1f} h")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
