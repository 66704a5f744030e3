"""Offline bilingual search over the knowledge base: BM25, then a re-ranking by cues.

Stage 1 scores each entry on three BM25 views, because users rarely phrase a question like the
KB does:
  * its best-matching single question/paraphrase (short texts, so a close paraphrase wins),
  * all its questions and paraphrases together (rewards entries whose wording overlaps broadly),
  * its answer and citations, at a lower weight (catches terms only the answer mentions).
Stage 2 re-ranks the best candidates by how much of the question they cover, whether they are
about the legal system the question names, and whether their answer states the kind of fact
asked for (assistant.query_cues).
Chinese is tokenised with jieba words plus character bigrams (bigrams survive segmentation
differences between the question and the KB), questions with a dictionary of the KB's own words
(assistant.segmenter); English with lowercase words, stop words removed and a light stemmer;
both get one token per bilingual lexicon concept (assistant.lexicon). The index is built once
per process per KB digest, from a token cache on disk.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from assistant import segmenter
from assistant.knowledge_base import Entry, KnowledgeBase
from assistant.lexicon import concept_tokens, without_concepts
from assistant.query_cues import (
    FactProfile,
    asked_facts,
    fact_profile,
    jurisdiction_cues,
    jurisdiction_fit,
)
from assistant.segmenter import Segmenter, for_vocabulary, full, vocabulary

# Weights of the three views. A grid over W_QUESTIONS in 0..1 and W_ANSWER in 0..1 on the eval set
# was flat (top-1 66/71 almost everywhere), so these are the a-priori choices, not a tuned optimum.
W_SENTENCE = 1.0
W_QUESTIONS = 0.5
W_ANSWER = 0.25
K1, B = 1.2, 0.75
# Stage 2 (re-ranking the CANDIDATES best BM25 entries), tuned on tests/data/assistant_eval.yaml
# only (`scripts/eval_assistant.py --grid`), never on the held-out set:
#   (COVERAGE_FLOOR + coverage) ** COVERAGE_POWER  favours entries that cover more of the
#       question's content words, so one rare shared word cannot carry an entry alone;
#   exp(W_JURISDICTION * (fit - 0.5))  fit in [0, 1] of the entry's legal systems against the
#       ones the question names (neutral entries and questions without a cue: factor 1);
#   1 + W_ASKED_FACT * support  support in [0, 1]: how fully the answer states the kind of
#       fact asked for (a date for "when", a period for "how long"...).
CANDIDATES = 30
COVERAGE_FLOOR, COVERAGE_POWER = 0.2, 2.0
W_ANSWER_COVERAGE = 0.75  # weight of words found only in the answer, in the coverage above
W_JURISDICTION = 1.0
W_ASKED_FACT = 1.5


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\S+", text))


_RUN = re.compile(
    r"(?P<han>[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)|(?P<word>[A-Za-z0-9]+(?:['’][A-Za-z]+)?)"
)
EN_STOP: frozenset[str] = _words(
    """a about above after again all also am an and any are as at be been being below between both
    but by can could did do does doing done during each few for from further had has have having he
    her here hers him his how i if in into is it its itself just may me might more most must my
    no nor not of off on once only or other our ours out over own please same shall she should so
    some such than that the their theirs them then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you
    your yours tell know explain mean means meaning s t"""
)
ZH_STOP: frozenset[str] = _words(
    """的 了 吗 呢 吧 啊 呀 是 在 和 与 及 或 或者 而 就 都 也 还 又 对 把 被 让 给 从 向 于
    以 之 其 我 我们 你 你们 他 她 它 他们 这 那 这个 那个 这些 那些 哪 哪些 哪个 什么 怎么
    怎么样 怎样 如何 为什么 是否 是不是 有没有 能否 能不能 可否 请问 请 一下 一个 有 没有
    会 要 么 啥 多少 几 必须 需要 应该 应当 可以 能够 能 情况 情况下 情形 时候 问题"""
)  # the modal and phrasing words match EN_STOP's can/must/should: they carry no topic
# Function characters: a bigram containing one ("是怎", "么工") carries phrasing, not topic, and
# would let "…是怎么工作的？" match any entry phrased the same way.
ZH_STOP_CHARS: frozenset[str] = frozenset("的了吗呢吧啊呀么怎什哪是否谁")
_BIGRAM = "\u00a7"  # prefix that keeps character bigrams apart from jieba words in the index

@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Light English stemmer: folds plurals, -ing/-ed/-ion/-e and US spellings onto one key.

    Crude on purpose: the same function runs on KB and query, so only consistency matters.
    """
    w = re.sub(r"iz(e|ed|es|ing|ation|ations)$", r"is\1", word)
    w = re.sub(r"ense(s|d)?$", r"ence\1", w)
    if len(w) <= 3:
        return w
    for suffix in ("ations", "ation", "ings", "ing", "ions", "ion", "ed", "ly"):
        # "ly" needs a longer stem, or "apply" and "only" would lose their ending.
        min_stem = 4 if suffix == "ly" else 3
        if w.endswith(suffix) and len(w) - len(suffix) >= min_stem:
            if suffix in ("ions", "ion") and w[-len(suffix) - 1] not in "ts":
                continue
            w = w[: -len(suffix)]
            if len(w) >= 4 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]
            break
    else:
        if w.endswith("ies") and len(w) > 4:
            w = w[:-3] + "y"
        elif w.endswith(("sses", "xes", "zes", "ches", "shes")):
            w = w[:-2]
        elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
    if w.endswith("e") and len(w) > 4:
        w = w[:-1]
    return w


def query_units(text: str, seg: Segmenter | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """Content units of a question for the coverage score: (unit, its character bigrams).

    Units are English stems and Chinese jieba words of 2+ characters (stop words dropped).
    Coverage is counted on units, not raw index tokens, because the bigrams that straddle word
    boundaries ("习里" in "联邦学习里") are noise that no entry contains. A lexicon concept
    ("数据保护影响评估", "DPIA") is one unit, so an entry that writes it another way covers it.
    """
    text, concepts = without_concepts(text)
    units: list[tuple[str, tuple[str, ...]]] = [(c, ()) for c in concepts]
    for match in _RUN.finditer(text):
        han = match.group("han")
        if han:
            for word in (seg or full()).lcut(han):
                if len(word) >= 2 and word not in ZH_STOP:
                    bigrams = tuple(_BIGRAM + word[i : i + 2] for i in range(len(word) - 1))
                    units.append((word, bigrams))
        else:
            word = match.group("word").lower().replace("’", "'").split("'")[0]
            if word and word not in EN_STOP:
                units.append((stem(word), ()))
    return list(dict.fromkeys(units))


def tokenize(text: str, seg: Segmenter | None = None) -> list[str]:
    """Index/query tokens for mixed Chinese/English text (order kept, duplicates kept).

    Words, Chinese bigrams and one token per lexicon concept mentioned (see assistant.lexicon).
    `seg` cuts Chinese runs into words (default: jieba's full dictionary).
    """
    tokens: list[str] = concept_tokens(text)
    for match in _RUN.finditer(text):
        han = match.group("han")
        if han:
            if len(han) == 1:
                if han not in ZH_STOP:
                    tokens.append(han)
                continue
            tokens.extend(w for w in (seg or full()).lcut_for_search(han) if w not in ZH_STOP)
            tokens.extend(
                _BIGRAM + han[i : i + 2]
                for i in range(len(han) - 1)
                if han[i] not in ZH_STOP_CHARS and han[i + 1] not in ZH_STOP_CHARS
            )
        else:
            word = match.group("word").lower().replace("’", "'")
            word = word.split("'")[0]
            if word and word not in EN_STOP:
                tokens.append(stem(word))
    return tokens


class BM25:
    """Okapi BM25 over pre-tokenised documents, scored with numpy over an inverted index."""

    def __init__(self, docs: Sequence[Sequence[str]]) -> None:
        self.n_docs = len(docs)
        lengths = np.array([len(d) for d in docs], dtype=float)
        avg = float(lengths.mean()) if len(docs) and lengths.mean() > 0 else 1.0
        norm = K1 * (1 - B + B * lengths / avg)
        vocab: dict[str, int] = {}
        term_ids: list[int] = []
        doc_ids: list[int] = []
        counts: list[int] = []
        for i, doc in enumerate(docs):
            for token, tf in Counter(doc).items():
                term_ids.append(vocab.setdefault(token, len(vocab)))
                doc_ids.append(i)
                counts.append(tf)
        terms = np.array(term_ids, dtype=np.int64)
        order = np.argsort(terms, kind="stable")
        terms, ids = terms[order], np.array(doc_ids, dtype=np.int64)[order]
        tf = np.array(counts, dtype=float)[order]
        weights = tf * (K1 + 1) / (tf + norm[ids])
        df = np.bincount(terms, minlength=len(vocab))
        idf = np.log(1 + (self.n_docs - df + 0.5) / (df + 0.5))
        bounds = np.concatenate(([0], np.cumsum(df))).tolist()
        self.idf: dict[str, float] = dict(zip(vocab, idf.tolist(), strict=True))
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {
            token: (ids[bounds[j] : bounds[j + 1]], weights[bounds[j] : bounds[j + 1]])
            for token, j in vocab.items()
        }

    def unseen_idf(self) -> float:
        """The idf a token that occurs nowhere would have (df = 0)."""
        return math.log(1 + (self.n_docs + 0.5) / 0.5)

    def scores(self, query: Iterable[str]) -> np.ndarray:
        """BM25 score of every document for a tokenised query (repeated tokens count once)."""
        out = np.zeros(self.n_docs)
        for token in set(query):
            hit = self._postings.get(token)
            if hit is not None:
                out[hit[0]] += self.idf[token] * hit[1]
        return out


@dataclass(frozen=True)
class Hit:
    """One ranked entry with the evidence the confidence score is computed from."""

    entry: Entry
    score: float  # combined BM25 score, used for ranking
    coverage: float  # idf-weighted share of the query's content words the entry contains
    question_coverage: float  # the same, counting only the entry's questions and paraphrases
    strength: float  # score in units of the largest possible idf, comparable across KB sizes


class SearchIndex:
    """BM25 views of a knowledge base; build once with `get_index`, then call `search`."""

    def __init__(self, kb: KnowledgeBase, cache_dir: Path | None = None) -> None:
        self.kb = kb
        tokens = _load_tokens(kb, cache_dir)
        if tokens is None:
            tokens = _tokenize_kb(kb)
            _save_tokens(kb, cache_dir, tokens)
        sentences, owner, answers = tokens["sentences"], tokens["owner"], tokens["answers"]
        questions: list[list[str]] = [[] for _ in kb.entries]
        for doc, i in zip(sentences, owner, strict=True):
            questions[i].extend(doc)
        # For coverage: stems per side, and raw text per side for Chinese substring checks.
        self._q_vocab = [set(q) for q in questions]
        self._a_vocab = [set(a) for a in answers]
        self._q_text = [" ".join(_question_texts(e)).lower() for e in kb.entries]
        self._a_text = [" ".join([*e.answer.values(), *e.citations]).lower() for e in kb.entries]
        self._owner = np.array(owner, dtype=np.int64)
        self._seg = for_vocabulary(
            tokens["zh_vocab"], f"assistant-jieba-v{TOKENIZER_VERSION}-{kb.digest[:24]}.txt",
            cache_dir,
        )
        self._codes = [frozenset(e.jurisdiction) for e in kb.entries]
        self._facts = [FactProfile(strength) for strength in tokens["facts"]]
        self._sentences = BM25(sentences)
        self._questions = BM25(questions)
        self._answers = BM25(answers)

    def search(self, question: str, k: int = 5) -> list[Hit]:
        """The k best entries for a question, best first (empty if nothing matches at all).

        Stage 1 scores every entry with BM25; stage 2 re-ranks the best CANDIDATES by how much
        of the question they cover, whether they are about the legal system the question names,
        and whether their answer states the kind of fact the question asks for.
        """
        query = tokenize(question, self._seg)
        n = len(self.kb.entries)
        if not query or n == 0:
            return []
        best_sentence = np.zeros(n)
        np.maximum.at(best_sentence, self._owner, self._sentences.scores(query))
        total = (
            W_SENTENCE * best_sentence
            + W_QUESTIONS * self._questions.scores(query)
            + W_ANSWER * self._answers.scores(query)
        )
        order = np.argsort(-total, kind="stable")[:CANDIDATES]
        candidates = [int(i) for i in order if total[i] > 0]
        units = [(u, bg, self._weight(u, bg)) for u, bg in query_units(question, self._seg)]
        weight_sum = sum(w for _, _, w in units) or 1.0
        unit_idf = self._questions.unseen_idf()
        cues, asked = jurisdiction_cues(question), asked_facts(question)
        ranked = []
        for i in candidates:
            in_q = sum(w for u, bg, w in units if self._contains(i, u, bg, question_side=True))
            in_a = sum(
                w
                for u, bg, w in units
                if not self._contains(i, u, bg, question_side=True)
                and self._contains(i, u, bg, question_side=False)
            )
            coverage = (in_q + in_a) / weight_sum
            # Answers are long and mention many generic words, so they count less for ranking.
            rank_coverage = (in_q + W_ANSWER_COVERAGE * in_a) / weight_sum
            score = float(total[i]) * self._rerank_factor(i, rank_coverage, cues, asked)
            ranked.append((score, i, coverage, in_q / weight_sum))
        ranked.sort(key=lambda r: -r[0])
        return [
            Hit(
                self.kb.entries[i],
                score,
                coverage=coverage,
                question_coverage=q_coverage,
                strength=float(total[i]) / unit_idf,
            )
            for score, i, coverage, q_coverage in ranked[:k]
        ]

    def _rerank_factor(
        self, i: int, coverage: float, cues: frozenset[str], asked: frozenset[str]
    ) -> float:
        """Multiplier on entry i's BM25 score from coverage, jurisdiction and asked fact."""
        factor = (COVERAGE_FLOOR + coverage) ** COVERAGE_POWER
        if cues:
            recall, precision = jurisdiction_fit(cues, self._codes[i])
            factor *= math.exp(W_JURISDICTION * ((recall + precision) / 2 - 0.5))
        if asked:
            factor *= 1.0 + W_ASKED_FACT * self._facts[i].support(asked)
        return factor

    def _contains(self, i: int, unit: str, bigrams: tuple[str, ...], question_side: bool) -> bool:
        """Whether entry i mentions a unit: a stem among its tokens, a Chinese word verbatim."""
        if bigrams:  # a Chinese word: substring test, immune to differing segmentation
            return unit in (self._q_text[i] if question_side else self._a_text[i])
        return unit in (self._q_vocab[i] if question_side else self._a_vocab[i])

    def _idf(self, token: str) -> float:
        """idf on the question view, else the answer view; tokens found nowhere weigh most."""
        idf = self._questions.idf.get(token)
        if idf is None:
            idf = self._answers.idf.get(token, self._questions.unseen_idf())
        return idf

    def _weight(self, unit: str, bigrams: tuple[str, ...]) -> float:
        """A unit's weight: its own idf if indexed, else the mean idf of its bigrams."""
        if unit in self._questions.idf or unit in self._answers.idf or not bigrams:
            return self._idf(unit)
        return sum(self._idf(b) for b in bigrams) / len(bigrams)


def _question_texts(entry: Entry) -> list[str]:
    """The entry's questions and paraphrases, both languages."""
    texts = [*entry.question.values()]
    for lang in entry.paraphrases:
        texts.extend(entry.paraphrases[lang])
    return texts


def _tokenize_kb(kb: KnowledgeBase) -> dict[str, Any]:
    """Tokens of every question/paraphrase (with owning entry) and of every answer, and the
    Chinese vocabulary questions are segmented with."""
    sentences: list[list[str]] = []
    owner: list[int] = []
    answers: list[list[str]] = []
    for i, e in enumerate(kb.entries):
        texts = _question_texts(e)
        sentences.extend(tokenize(t) for t in texts)
        owner.extend([i] * len(texts))
        answers.append(tokenize(" ".join([*e.answer.values(), *e.citations])))
    zh_vocab = vocabulary(t for e in kb.entries for t in [*_question_texts(e), *e.answer.values()])
    facts = [dict(fact_profile(e).strength) for e in kb.entries]  # regexes: cached with tokens
    return {
        "sentences": sentences, "owner": owner, "answers": answers, "zh_vocab": zh_vocab,
        "facts": facts,
    }  # fmt: skip


# Bump when tokenize() changes, so stale token caches are ignored.
TOKENIZER_VERSION = 7


def _cache_file(kb: KnowledgeBase, cache_dir: Path | None) -> Path:
    directory = cache_dir if cache_dir is not None else segmenter.cache_dir()
    return directory / f"assistant-tokens-v{TOKENIZER_VERSION}-{kb.digest[:24]}.json"


def _load_tokens(kb: KnowledgeBase, cache_dir: Path | None) -> dict[str, Any] | None:
    """Tokenised KB from the disk cache (JSON, keyed by KB digest), or None if absent/bad.

    Tokenising the bilingual entries with jieba's full dictionary (and profiling their facts)
    would cost most of the cold start; the cache turns it into one file read. JSON (not
    pickle) so a cache file cannot run code.
    """
    try:
        data = json.loads(_cache_file(kb, cache_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("digest") != kb.digest
        or len(data.get("answers", ())) != len(kb.entries)
        or len(data.get("sentences", ())) != len(data.get("owner", ()))
        or not isinstance(data.get("zh_vocab"), dict)
        or len(data.get("facts", ())) != len(kb.entries)
    ):
        return None
    return data


def _save_tokens(kb: KnowledgeBase, cache_dir: Path | None, tokens: dict[str, Any]) -> None:
    """Write the token cache atomically; a read-only or full disk just means no cache."""
    path = _cache_file(kb, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"digest": kb.digest, **tokens}, ensure_ascii=False), "utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


_INDEXES: dict[str, SearchIndex] = {}
_INDEX_LOCK = threading.Lock()


def get_index(kb: KnowledgeBase) -> SearchIndex:
    """The search index for this KB, built on first use and cached per process by KB digest."""
    index = _INDEXES.get(kb.digest)
    if index is None:
        with _INDEX_LOCK:
            index = _INDEXES.get(kb.digest)
            if index is None:
                index = SearchIndex(kb)
                _INDEXES[kb.digest] = index
    return index
