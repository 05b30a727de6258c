"""The built-in PersonalLLM-style synthetic preference data, a pure function of its config.

Responses carry K latent attributes ``a ∈ {-1, -0.5, 0, 0.5, 1}^K`` (formality, humour,
detail, caution, empathy, technicality, enthusiasm, structure — the first K are used).
Their text is English whose wording states those levels: one sentence per non-zero
attribute, drawn from a phrase bank per (attribute, level), after a neutral sentence about
the prompt's topic, so that a bag-of-words encoder can recover ``a``. The responses of one
prompt have distinct attribute vectors, hence distinct texts.

Users (:func:`pafo_ray.data.simulate.sample_population`): ``w_u = s_t ⊙ Dirichlet(c · p_t)``
for their type t (majority or minority), modes that order many pairs differently; utility
``u(user, response) = w_u · a``. Each comparison (prompt, unordered pair) is rated by
``raters_train`` (train) or ``raters_eval`` (val/test) distinct users drawn uniformly; the
label is the higher utility (``label_beta`` None) or Bradley–Terry
``P(chosen = a) = σ(β (u_a − u_b))``.

Rows are generated in blocks of prompts, each from its own seeded stream, so
:func:`write_generated` writes millions of rows with bounded memory and the files it writes,
concatenated, equal :func:`generate_table` for the same config.
"""

from __future__ import annotations

import glob
import math
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pafo_ray.config import GeneratorConfig
from pafo_ray.data import simulate

ATTRIBUTES = ("formality", "humour", "detail", "caution", "empathy", "technicality",
              "enthusiasm", "structure")
LEVEL_VALUES = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])  # attribute level codes 0..4
# Signed modes over ATTRIBUTES: the majority prizes formal, detailed answers, which the
# minority mildly dislikes; the minority prizes humour, warmth and enthusiasm; both like
# caution. The mode means order about half of the distinct response pairs differently.
MAJORITY_MODE = np.array([0.35, 0.05, 0.25, 0.15, 0.05, 0.10, -0.05, 0.10])
MINORITY_MODE = np.array([-0.10, 0.35, -0.05, 0.15, 0.20, -0.05, 0.20, 0.05])
TOKEN_PATTERN = r"[a-z]+"  # what vocabulary() splits on; every emitted word matches it
ROWS_PER_BLOCK = 200_000  # rows generated at once (bounds memory; independent of file size)

# One line per (attribute, level code): phrasings separated by "|". Levels 0 and 4 are
# strong, 1 and 3 mild; level 2 (neutral) writes no sentence.
_PHRASES = """
formality 4 | We respectfully submit the following considered assessment for your kind review. | Kindly permit us to set forth a formal account of the matter hereunder.
formality 3 | Please find a concise overview below. | Allow me to outline the principal points.
formality 1 | Here's the gist of it. | So, here is the deal.
formality 0 | Okay so basically, yeah, here goes nothing lol. | Alright buddy, gonna keep it super chill.
humour 4 | Fair warning, this answer contains a terrible pun and a dancing llama. | Buckle up, because even my jokes have jokes today.
humour 3 | With a little wink, let us dive in. | A tiny smile before we begin.
humour 1 | This deserves a measured and sober tone. | We will stay sober and composed here.
humour 0 | This is a grave matter that calls for complete solemnity. | Treat what follows with strict gravity and zero levity.
detail 4 | Below is an exhaustive walkthrough covering every edge case and background fact. | We examine each component in depth, with extensive supporting specifics.
detail 3 | Here is some useful background and a few specifics. | A bit of extra context helps here.
detail 1 | In short, the key point is simple. | Briefly, just the essentials.
detail 0 | Bottom line only, nothing more. | One line answer, end of story.
caution 4 | Please consult a qualified professional, since risks and exceptions may apply to you. | Proceed carefully, double check everything and weigh the possible downsides first.
caution 3 | It may be wise to verify this before acting. | Results can vary, so keep that in mind.
caution 1 | This usually works fine without much worry. | Go ahead, it is generally safe.
caution 0 | Just do it boldly, no second guessing required. | Forget the warnings and charge straight ahead.
empathy 4 | I truly understand how stressful this must feel, and you are not alone. | Your feelings are completely valid, and I am here for you.
empathy 3 | That sounds like a fair concern. | Good question, and thanks for asking.
empathy 1 | Feelings aside, here are the facts. | Setting emotions apart, consider the facts.
empathy 0 | Whether this upsets you is irrelevant to the answer. | Nobody cares how you feel about it, the facts stand.
technicality 4 | Formally, the underlying mechanism involves parameters, throughput and asymptotic complexity. | Technically, the specification defines an interface, a protocol and its invariants.
technicality 3 | A few technical terms appear, like variables and metrics. | Some domain terminology is used where it helps.
technicality 1 | In everyday words, it works like this. | Put simply, without jargon.
technicality 0 | Imagine explaining it to a small child with toys and pictures. | No fancy words at all, only the simplest language.
enthusiasm 4 | Wow, this is absolutely fantastic and I am thrilled to share it! | Amazing question, I love this topic so much!
enthusiasm 3 | This is a nice topic to explore. | Happy to help with this.
enthusiasm 1 | Here is a calm and even answer. | Nothing exciting, but it is useful.
enthusiasm 0 | Honestly this is dull, but fine, here it is. | Meh, whatever, it is a tedious subject.
structure 4 | The answer is organised as numbered steps, then a final summary. | Structure: one heading, three bullet points and a closing checklist.
structure 3 | The points follow in a simple order. | Two short sections follow.
structure 1 | The thoughts flow together in one paragraph. | It reads as a single connected passage.
structure 0 | Thoughts wander freely here, drifting between ideas without any order. | A loose ramble, no sections, just a stream of thought.
"""
_QUESTIONS = ("How should I think about; Can you explain; What is the best way to learn about; "
              "Could you give advice on; What do you know about; Why do people care about; "
              "How do I get started with; What are common mistakes with; Help me understand; "
              "Tell me about; What should a beginner know about; How would you summarise; "
              "What is your view on; Where do I begin with")
_TOPICS = ("personal budgeting; sourdough baking; container gardening; marathon training; "
           "learning the guitar; home composting; job interviews; public speaking; "
           "raising chickens; bird watching; watercolour painting; saving for retirement; "
           "learning spanish; meal planning; rock climbing; remote work; houseplant care; "
           "car maintenance; cold brew coffee; chess openings; knitting sweaters; "
           "buying a used bike; writing a novel; sleep hygiene; running a podcast; "
           "home brewing; photography lighting; moving to a new city; negotiating salary; "
           "learning to swim; basic first aid; bread machines; solar panels; urban cycling; "
           "woodworking joints; hiking safety; camping gear; learning to code; "
           "spreadsheet formulas; kitchen knives; ferment vegetables; adopting a dog; "
           "training a puppy; caring for cats; aquarium fish; beekeeping; stargazing; "
           "yoga routines; strength training; quitting sugar; reading more books; "
           "journaling habits; time management; decluttering a home; wedding planning; "
           "travel insurance; packing light; learning to drive; tax returns; credit scores; "
           "renting an apartment; mortgage options; home insulation; rainwater harvesting; "
           "pottery wheels; calligraphy; birthday parties; board game nights; "
           "volunteering locally; mentoring juniors; writing cover letters; "
           "starting a small business; online privacy; password managers; backing up photos; "
           "choosing a laptop; smartphone batteries; noise cancelling headphones; "
           "learning piano; singing lessons; jigsaw puzzles")
_CONTEXTS = ("for a small apartment; on a tight budget; during winter; while working full time; "
             "as a student; in a busy city; with little free time; after moving abroad; "
             "with two young kids; in a rural area; at the age of sixty; for the first time; "
             "without a car; in a shared house; on weekends only; after an injury; "
             "with a partner; in a hot climate; while travelling often; near the coast; "
             "with limited space; alongside night shifts; as a retiree; in a noisy building; "
             "with a small team; during exams; on a gap year; as a new parent; "
             "in a cold climate; while studying online; at a slow pace; for a family of four")
_AUDIENCES = ("I am a complete beginner.; I have tried before and failed.; "
              "I am fairly experienced already.; I need an answer quickly.; "
              "I am asking for a friend.; I am a retired teacher.; I work as a nurse.; "
              "I am a teenager.; I run a small shop.; I am just curious.; "
              "I want to do it properly.; I am short on money.; I am an engineer.; "
              "I am quite anxious about it.; I enjoy learning new things.; "
              "I am planning ahead.; I have a deadline next week.; I am a visual learner.; "
              "I prefer practical tips.; I care about the environment.; "
              "I am writing a report.; I have a disability.; I am very busy.; "
              "I love a challenge.")
_CLOSINGS = ("; Thanks in advance.; Any tips are welcome.; Please be honest.; "
             "Keep it useful.; I appreciate the help.; What would you do?; Where do I start?")
_FILLERS = ("This reply is about {topic}.", "Regarding {topic}, here is the answer.",
            "On the subject of {topic}, some thoughts follow.", "The question concerns {topic}.")


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(";"))


QUESTIONS, TOPICS, CONTEXTS = _split(_QUESTIONS), _split(_TOPICS), _split(_CONTEXTS)
AUDIENCES, CLOSINGS = _split(_AUDIENCES), _split(_CLOSINGS)
_VARIANTS = 2


def _phrase_table() -> np.ndarray:
    """Sentences by [attribute, level code, variant] (object [8, 5, 2]; "" for level 2)."""
    table = np.full((len(ATTRIBUTES), len(LEVEL_VALUES), _VARIANTS), "", dtype=object)
    for line in _PHRASES.strip().splitlines():
        head, *phrasings = (part.strip() for part in line.split("|"))
        name, level = head.split()
        assert len(phrasings) == _VARIANTS, line
        table[ATTRIBUTES.index(name), int(level)] = phrasings
    return table


PHRASES = _phrase_table()
MAX_PROMPTS = len(QUESTIONS) * len(TOPICS) * len(CONTEXTS) * len(AUDIENCES) * len(CLOSINGS)


def vocabulary() -> list[str]:
    """Every lowercase word (``TOKEN_PATTERN``) the generator can emit, sorted."""
    texts = [*PHRASES.ravel(), *QUESTIONS, *TOPICS, *CONTEXTS, *AUDIENCES, *CLOSINGS, *_FILLERS]
    return sorted({w for t in texts for w in re.findall(TOKEN_PATTERN, t.lower().replace("{topic}", ""))})


def _check(cfg: GeneratorConfig) -> int:
    """Validate the config; return the comparisons per prompt."""
    def bad(field: str, expected: str) -> ValueError:
        return ValueError(f"generator.{field}={getattr(cfg, field)!r}: expected {expected}")

    if not 2 <= cfg.num_attributes <= len(ATTRIBUTES):
        raise bad("num_attributes", f"2..{len(ATTRIBUTES)}")
    if not 2 <= cfg.responses_per_prompt <= len(LEVEL_VALUES) ** cfg.num_attributes:
        raise bad("responses_per_prompt", f"2..{len(LEVEL_VALUES) ** cfg.num_attributes} "
                  "(distinct attribute vectors)")
    all_pairs = cfg.responses_per_prompt * (cfg.responses_per_prompt - 1) // 2
    if cfg.pairs_per_prompt is not None and not 1 <= cfg.pairs_per_prompt <= all_pairs:
        raise bad("pairs_per_prompt", f"None or 1..{all_pairs} (all pairs of the responses)")
    if not 1 <= cfg.num_prompts <= MAX_PROMPTS:
        raise bad("num_prompts", f"1..{MAX_PROMPTS} (distinct prompt texts)")
    if cfg.rows_per_file < 1:
        raise bad("rows_per_file", "at least 1")
    simulate.check_population(cfg.num_users, cfg.minority_fraction, cfg.dirichlet_concentration,
                              cfg.raters_train, cfg.raters_eval, cfg.label_beta,
                              cfg.val_fraction, cfg.test_fraction, prefix="generator.")
    return all_pairs if cfg.pairs_per_prompt is None else cfg.pairs_per_prompt


def estimate_rows(cfg: GeneratorConfig) -> int:
    """Rows the config yields: pairs · (train prompts · raters_train + eval prompts · raters_eval)."""
    pairs = _check(cfg)
    n_val, n_test = simulate.split_counts(cfg.num_prompts, cfg.val_fraction, cfg.test_fraction)
    n_train = cfg.num_prompts - n_val - n_test
    return pairs * (n_train * cfg.raters_train + (n_val + n_test) * cfg.raters_eval)


def generator_users(cfg: GeneratorConfig) -> simulate.Population:
    """The simulated users (ground truth weights over the first K attributes)."""
    _check(cfg)
    k = cfg.num_attributes
    return simulate.sample_population(
        cfg.num_users, cfg.minority_fraction, MAJORITY_MODE[:k], MINORITY_MODE[:k],
        cfg.dirichlet_concentration, np.random.default_rng([cfg.seed, 0]), ATTRIBUTES[:k])


def _prompt_parts(prompt_index: np.ndarray, seed: int) -> list[np.ndarray]:
    """Slot choices of each prompt: an affine bijection of the index onto all combinations."""
    multiplier = 1_000_003
    while math.gcd(multiplier, MAX_PROMPTS) != 1:
        multiplier += 2
    offset = int(np.random.default_rng([seed, 3]).integers(MAX_PROMPTS))
    code = (prompt_index.astype(np.int64) * multiplier + offset) % MAX_PROMPTS
    parts = []
    for bank in (TOPICS, QUESTIONS, CONTEXTS, AUDIENCES, CLOSINGS):
        parts.append(code % len(bank))
        code = code // len(bank)
    return parts


def _distinct_levels(num_prompts: int, responses: int, k: int, rng) -> np.ndarray:
    """Attribute level codes [num_prompts, responses, k], distinct within each prompt."""
    base = len(LEVEL_VALUES)
    codes = rng.integers(0, base ** k, size=(num_prompts, responses))  # one code per vector
    while True:  # redraw only the repeated codes: ends even when responses == base ** k
        order = np.argsort(codes, axis=1, kind="stable")
        ranked = np.take_along_axis(codes, order, axis=1)
        repeated = np.zeros(codes.shape, dtype=bool)
        np.put_along_axis(repeated, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        if not repeated.any():
            return (codes[..., None] // base ** np.arange(k)) % base
        codes[repeated] = rng.integers(0, base ** k, size=int(repeated.sum()))


def _block(cfg: GeneratorConfig, first: int, stop: int, block_index: int, pairs: int,
           population: simulate.Population, prompt_split: np.ndarray) -> pa.Table:
    rng = np.random.default_rng([cfg.seed, 1, block_index])
    n_prompts, r, k = stop - first, cfg.responses_per_prompt, cfg.num_attributes
    topic, question, context, audience, closing = _prompt_parts(np.arange(first, stop), cfg.seed)
    prompts = [f"{QUESTIONS[q]} {TOPICS[t]} {CONTEXTS[c]}? {AUDIENCES[a]} {CLOSINGS[e]}".rstrip()
               for q, t, c, a, e in zip(question, topic, context, audience, closing)]

    levels = _distinct_levels(n_prompts, r, k, rng).reshape(-1, k)  # [n_prompts*r, k]
    variant = rng.integers(0, _VARIANTS, size=levels.shape)
    order = np.argsort(rng.random(levels.shape), axis=1)  # sentence order per response
    sentences = PHRASES[np.arange(k), levels, variant]
    sentences = np.take_along_axis(sentences, order, axis=1)
    filler = rng.integers(0, len(_FILLERS), size=len(levels))
    response_topic = np.repeat(topic, r)
    texts = [" ".join([_FILLERS[f].format(topic=TOPICS[t]), *filter(None, row)])
             for f, t, row in zip(filler, response_topic, sentences.tolist())]

    first_item, second_item = np.triu_indices(r, 1)
    if pairs < len(first_item):  # a random subset of the pairs, per prompt
        chosen_pairs = np.argsort(rng.random((n_prompts, len(first_item))), axis=1)[:, :pairs]
    else:
        chosen_pairs = np.broadcast_to(np.arange(pairs), (n_prompts, pairs))
    base = (np.arange(n_prompts) * r)[:, None]
    item_a = (base + first_item[chosen_pairs]).ravel()
    item_b = (base + second_item[chosen_pairs]).ravel()
    comparison_prompt = np.repeat(np.arange(n_prompts), pairs)
    comparison_split = prompt_split[first:stop][comparison_prompt]

    rated = simulate.rate_pairs(
        LEVEL_VALUES[levels], population.weights, item_a, item_b,
        np.where(comparison_split == 0, cfg.raters_train, cfg.raters_eval), cfg.label_beta, rng)
    return simulate.preference_table(
        rated, pa.array(prompts, pa.string()), pa.array(texts, pa.string()),
        comparison_prompt, comparison_split, population)


def iter_blocks(cfg: GeneratorConfig):
    """Yield the generated rows block by block (pyarrow Tables, in order)."""
    pairs = _check(cfg)
    population = generator_users(cfg)
    prompt_split = simulate.assign_splits(cfg.num_prompts, cfg.val_fraction, cfg.test_fraction,
                                          np.random.default_rng([cfg.seed, 2]))
    per_block = max(1, ROWS_PER_BLOCK // (pairs * max(cfg.raters_train, cfg.raters_eval)))
    for block_index, first in enumerate(range(0, cfg.num_prompts, per_block)):
        stop = min(first + per_block, cfg.num_prompts)
        yield _block(cfg, first, stop, block_index, pairs, population, prompt_split)


def generate_table(cfg: GeneratorConfig) -> pa.Table:
    """All rows in one Table: user_id, prompt, chosen, rejected, split, user_type, utility_margin."""
    return pa.concat_tables(list(iter_blocks(cfg)))


def write_generated(cfg: GeneratorConfig, out_dir: str) -> list[str]:
    """Write the rows as ``part-00000.parquet``… of at most ``cfg.rows_per_file`` rows each.

    Memory holds one block plus one file's worth of rows. Returns the paths written, in order.
    ``part-*.parquet`` files already in ``out_dir`` are removed first (a stale part of an
    earlier, larger run would otherwise be read with this one).
    """
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "part-*.parquet")):
        os.remove(stale)
    paths: list[str] = []
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(table: pa.Table) -> None:
        path = os.path.join(out_dir, f"part-{len(paths):05d}.parquet")
        pq.write_table(table, path)
        paths.append(path)

    for block in iter_blocks(cfg):
        pending.append(block)
        pending_rows += block.num_rows
        while pending_rows >= cfg.rows_per_file:
            table = pa.concat_tables(pending)
            flush(table.slice(0, cfg.rows_per_file))
            rest = table.slice(cfg.rows_per_file)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        flush(pa.concat_tables(pending))
    return paths
