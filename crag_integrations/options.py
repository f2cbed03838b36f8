"""The adapters' options, framework-free: one pydantic model per stage, shared by both adapters.

A LangChain compressor and the LlamaIndex postprocessor of the same stage inherit the same
options class, so the same concept has the same field name, type, default and validation in
both frameworks; only the deliberate differences of each ecosystem are declared in its
adapter (``docs/adapters.md`` lists them). Every options class knows how to build its
*stage*: a :class:`~crag_integrations.pipeline.RerankGradeTrimPipeline`, a
:class:`~crag_integrations.crag.CragEvaluator` or a
:class:`~crag_integrations.crag.KnowledgeRefiner`, all of which return a
:class:`~crag_integrations.types.PipelineResult`. The stage is built from the fields on every
call (it is cheap and loads nothing), so an edited copy (``model_copy(update=...)``,
``model_validate``, unpickling, LlamaIndex's ``from_dict``) always behaves as its fields say;
it is also built once at construction so that bad settings fail there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Protocol

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializationInfo,
    model_validator,
)

from crag_integrations.backends import (
    SPEC_KEY,
    ModelRef,
    ScoringBackend,
    backend_from_spec,
    is_scoring_backend,
)
from crag_integrations.config import DType, EngineConfig
from crag_integrations.crag import (
    DEFAULT_LOWER,
    DEFAULT_UPPER,
    CragEvaluator,
    KnowledgeRefiner,
    StripMode,
)
from crag_integrations.pipeline import RerankGradeTrimPipeline
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.scoring import WindowPooling
from crag_integrations.types import NoEvidencePolicy, PipelineResult, ScoreScale

__all__ = [
    "CragOptions",
    "EngineOptions",
    "EvaluatorOptions",
    "FilterOptions",
    "RefinerOptions",
    "RerankOptions",
    "Stage",
    "StageOptions",
    "TrimOptions",
]


class Stage(Protocol):
    """What an adapter runs: texts in, a :class:`PipelineResult` out (sync and async)."""

    def run(self, query: str, texts: Sequence[str]) -> PipelineResult: ...

    async def arun(self, query: str, texts: Sequence[str]) -> PipelineResult: ...


def _frozen(default: Any, description: str, **constraints: Any) -> Any:
    # Per-field frozen rather than a frozen model: LlamaIndex query engines assign the
    # callback manager of a postprocessor, and that one field must stay writable.
    return Field(default=default, frozen=True, description=description, **constraints)


def _strict(default: Any, description: str, **constraints: Any) -> Any:
    # Numbers and flags are not coerced: top_n=True, top_n="2" or threshold="0" are
    # mistakes to report, not values to guess (NaN is refused by the roles' checks).
    return _frozen(default, description, strict=True, **constraints)


class StageOptions(BaseModel):
    """Base of every options class: strict, frozen fields, validated by building the stage."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def stage(self) -> Stage:
        """The model-free stage these options describe (built anew: never stale)."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _stage_is_valid(self) -> Any:
        self.stage()
        return self


def _validate_model(value: Any) -> ModelRef:
    """A ``model`` field's value: a name, an :class:`EngineConfig` (or its dict), a scoring
    backend (or the spec dict it dumps to)."""
    if isinstance(value, str | EngineConfig) or is_scoring_backend(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, Mapping):
        if SPEC_KEY in value:
            return backend_from_spec(value)
        try:
            return EngineConfig(**value)
        except TypeError as exc:  # an unknown or missing field: a validation error
            raise ValueError(str(exc)) from exc
    raise ValueError(
        "model must be a hub id, a local path, an EngineConfig or a ScoringBackend, "
        f"not {type(value).__name__}"
    )


def _dump_model(value: ModelRef, info: SerializationInfo) -> Any:
    """A ``model`` field as data: names as they are, configs as dicts, backends as their
    spec (``to_spec()``) where they have one. A backend without one stays the live object
    in Python mode and cannot be written as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, EngineConfig):
        return dataclasses.asdict(value)
    to_spec = getattr(value, "to_spec", None)
    spec = to_spec() if callable(to_spec) else None
    if spec is not None:
        return spec
    if info.mode_is_json():
        raise ValueError(
            f"model is a live scoring backend ({value!r}) with no data form, so it cannot be "
            "written as JSON; keep the options in Python (model_dump, pickle) or build them "
            "with a backend that has one (RemoteEngine over a URL)"
        )
    return value


#: The ``model`` field's type: validated and dumped by the functions above, because a
#: scoring backend is checked by its members without reading them (``isinstance`` on a
#: runtime protocol would read ``head`` on Python < 3.12, i.e. load a model or call a server).
ModelField = Annotated[
    ModelRef,
    PlainValidator(_validate_model),
    PlainSerializer(_dump_model, return_type=Any),
]


class EngineOptions(StageOptions):
    """The model of a one-model stage and the engine options users know from
    ``HuggingFaceCrossEncoder`` / ``SentenceTransformerRerank`` (``model_name``, ``device``).

    ``model`` may also be an :class:`EngineConfig`, or a scoring backend (such as
    :class:`~crag_integrations.ray.remote.RemoteEngine`, a served model) that the stage then
    scores on; the engine options must then be left at their defaults (set them on the
    ``EngineConfig``, or on the server).

    Serialisation: ``model_dump()`` writes an ``EngineConfig`` as a dict and a backend as its
    spec when it has one (``RemoteEngine`` over a URL: ``{"scoring_backend": "crag-http",
    "url": ..., "model": ...}``), which validates back to an equal backend, so LangChain's
    ``model_dump`` and LlamaIndex's ``to_dict`` / ``to_json`` round-trip. A backend without a
    spec (a Ray Serve handle, a local engine object) stays the live object in Python mode
    (``model_dump``, ``model_copy``, pickle); ``model_dump_json()`` then fails saying so,
    and LlamaIndex's ``to_json`` fails in ``json.dumps`` (``Object of type RemoteEngine is
    not JSON serializable``).
    """

    model: ModelField = Field(
        frozen=True,
        validation_alias=AliasChoices("model", "model_name"),
        description="Hub id, local checkpoint directory, an EngineConfig, or a scoring "
        "backend such as a RemoteEngine (model_name= is accepted too).",
    )
    revision: str | None = _frozen(None, "Hub revision (branch, tag or commit).")
    device: str | None = _frozen(
        "auto", "'auto' (CUDA, then MPS, then CPU; None means the same) or a torch device."
    )
    dtype: DType = _frozen("auto", "'auto', 'float32', 'float16' or 'bfloat16'.")
    max_length: int | None = _strict(
        None, "Tokens per window (None: the model's limit); longer texts are windowed."
    )
    token_budget: int | None = _strict(None, "Max padded tokens per forward pass.")
    trust_remote_code: bool = _strict(False, "Allow custom modelling code from checkpoints.")
    local_files_only: bool | None = _strict(
        None, "Never reach the network (None: follow HF_HUB_OFFLINE)."
    )
    cache_dir: str | None = _frozen(None, "Hugging Face cache directory.")

    def engine_config(self) -> EngineConfig:
        """The :class:`EngineConfig` of this stage's model (a backend's own ``config``: for
        a remote engine, the served engine's, asked of the server once)."""
        if isinstance(self.model, str):
            return EngineConfig(model=self.model, **self._engine_options())
        self._engine_options()
        if isinstance(self.model, EngineConfig):
            return self.model
        return self.model.config

    def _engine_options(self) -> dict[str, Any]:
        """The engine options; refused when set beside an EngineConfig or a backend."""
        options = {name: getattr(self, name) for name in _ENGINE_DEFAULTS}
        if options["device"] is None:  # sentence-transformers' spelling of "pick one"
            options["device"] = "auto"
        if not isinstance(self.model, str):
            changed = sorted(k for k, v in options.items() if v != _ENGINE_DEFAULTS[k])
            if changed:
                what = "an EngineConfig" if isinstance(self.model, EngineConfig) else "a backend"
                raise ValueError(
                    f"model is {what}, so set {', '.join(changed)} on it rather than "
                    "here (or pass the model as a hub id or path)"
                )
        return options

    def role_model(self) -> EngineConfig | ScoringBackend:
        """What this stage's roles run on: the :class:`EngineConfig`, or the backend."""
        if isinstance(self.model, str | EngineConfig):
            return self.engine_config()
        self._engine_options()
        return self.model


#: The engine options and their defaults, read off the fields (not restated).
_ENGINE_DEFAULTS: dict[str, Any] = {
    name: field.default for name, field in EngineOptions.model_fields.items() if name != "model"
}


class RerankOptions(EngineOptions):
    """Sort by a one-logit cross-encoder, drop below ``score_threshold``, cut to ``top_n``."""

    top_n: int | None = _strict(3, "Keep at most this many (None: all).")
    score_threshold: float | None = _strict(
        None, "Minimum raw logit (logit 0 is probability 0.5), applied before top_n."
    )

    @property
    def role(self) -> Reranker:
        """The :class:`Reranker` these options describe."""
        return Reranker(
            model=self.role_model(), top_n=self.top_n, score_threshold=self.score_threshold
        )

    @property
    def pipeline(self) -> RerankGradeTrimPipeline:
        """The :class:`RerankGradeTrimPipeline` these options run (built now; loads nothing)."""
        return self.stage()

    def stage(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(reranker=self.role)


class FilterOptions(EngineOptions):
    """Drop what a relevance grader grades not relevant."""

    threshold: float = _strict(0.5, "Minimum relevance probability to keep, in [0, 1].")
    relevant_labels: tuple[str, ...] | None = _frozen(
        None, "Label names that mean relevant (None: the grader's rules)."
    )

    @property
    def role(self) -> RelevanceGrader:
        """The :class:`RelevanceGrader` these options describe."""
        return RelevanceGrader(
            model=self.role_model(),
            threshold=self.threshold,
            relevant_labels=self.relevant_labels,
        )

    @property
    def pipeline(self) -> RerankGradeTrimPipeline:
        """The :class:`RerankGradeTrimPipeline` these options run (built now; loads nothing)."""
        return self.stage()

    def stage(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(grader=self.role)


class TrimOptions(EngineOptions):
    """Replace each text by its evidence spans (a token classifier)."""

    threshold: float = _strict(0.2, "Token evidence probability cut-off, in [0, 1].")
    doc_stride: int = _strict(256, "Tokens of overlap between windows of long texts.", ge=0)
    min_span_chars: int = _strict(10, "Drop spans shorter than this.", ge=0)
    merge_gap_chars: int = _strict(20, "Merge spans at most this many characters apart.", ge=0)
    separator: str = _frozen(" ... ", "Joins the spans into the new text.")
    evidence_labels: tuple[str, ...] | None = _frozen(
        None, "Token labels that mark evidence (None: all but 'outside')."
    )
    on_no_evidence: NoEvidencePolicy = _frozen(
        "keep", "'keep' a text without evidence whole, or 'drop' it."
    )
    window_pooling: WindowPooling = _frozen(
        "max", "'max': windows read on their own, as the seed's .process(); 'mean': averaged."
    )

    @property
    def role(self) -> EvidenceHighlighter:
        """The :class:`EvidenceHighlighter` these options describe."""
        return EvidenceHighlighter(
            model=self.role_model(),
            threshold=self.threshold,
            doc_stride=self.doc_stride,
            min_span_chars=self.min_span_chars,
            merge_gap_chars=self.merge_gap_chars,
            separator=self.separator,
            evidence_labels=self.evidence_labels,
            window_pooling=self.window_pooling,
        )

    @property
    def pipeline(self) -> RerankGradeTrimPipeline:
        """The :class:`RerankGradeTrimPipeline` these options run (built now; loads nothing)."""
        return self.stage()

    def stage(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(highlighter=self.role, on_no_evidence=self.on_no_evidence)


class CragOptions(StageOptions):
    """Rerank, then filter, then trim, in one pass; optionally decide the CRAG action.

    Each stage is configured by the single-stage class of the same adapter (at least one is
    required). The trimmer's ``on_no_evidence`` applies.
    """

    reranker: RerankOptions | None = _frozen(None, "The rerank stage, or None.")
    relevance_filter: FilterOptions | None = _frozen(None, "The filter stage, or None.")
    trimmer: TrimOptions | None = _frozen(None, "The trim stage, or None.")
    action_upper: float | None = _strict(
        None, "CRAG 'correct' threshold on relevance probability (None: no action).", ge=0, le=1
    )
    action_lower: float | None = _strict(
        None, "CRAG 'incorrect' threshold on relevance probability (None: no action).", ge=0, le=1
    )

    @property
    def pipeline(self) -> RerankGradeTrimPipeline:
        """The :class:`RerankGradeTrimPipeline` these options run (built now; loads nothing)."""
        return self.stage()

    def stage(self) -> RerankGradeTrimPipeline:
        if self.reranker is None and self.relevance_filter is None and self.trimmer is None:
            raise ValueError(
                f"{type(self).__name__} needs at least one of reranker, relevance_filter or "
                "trimmer; with none it would return its input unchanged"
            )
        return RerankGradeTrimPipeline(
            reranker=self.reranker.role if self.reranker is not None else None,
            grader=self.relevance_filter.role if self.relevance_filter is not None else None,
            highlighter=self.trimmer.role if self.trimmer is not None else None,
            on_no_evidence=self.trimmer.on_no_evidence if self.trimmer is not None else "keep",
            action_upper=self.action_upper,
            action_lower=self.action_lower,
        )


class EvaluatorOptions(EngineOptions):
    """Score every text with the CRAG evaluator and decide the query's action."""

    upper: float = _strict(DEFAULT_UPPER, "Score at or above which one text makes 'correct'.")
    lower: float = _strict(DEFAULT_LOWER, "Score below which every text must fall: 'incorrect'.")
    scale: ScoreScale = _frozen("probability", "'probability' (any head) or 'logit'.")
    relevant_labels: tuple[str, ...] | None = _frozen(
        None, "For multi-class graders, the label names that mean relevant."
    )
    drop_incorrect: bool = _strict(False, "Drop the texts whose own band is 'incorrect'.")

    @property
    def evaluator(self) -> CragEvaluator:
        """The :class:`CragEvaluator` these options run (built now; loads nothing)."""
        return self.stage()

    def stage(self) -> CragEvaluator:
        return CragEvaluator(
            model=self.role_model(),
            upper=self.upper,
            lower=self.lower,
            scale=self.scale,
            relevant_labels=self.relevant_labels,
            drop_incorrect=self.drop_incorrect,
        )


class RefinerOptions(EngineOptions):
    """CRAG knowledge refinement: keep each text's relevant strips."""

    mode: StripMode = _frozen("sentences", "'sentences', 'sentence_groups' or 'words'.")
    group_size: int = _strict(3, "Sentences per strip for 'sentence_groups'.", ge=1)
    window_words: int = _strict(50, "Words per strip for 'words'.", ge=1)
    threshold: float | None = _strict(0.5, "Minimum strip score on `scale` (None: off).")
    top_k: int | None = _strict(None, "Strips kept over all texts (None: no cap).", ge=0)
    separator: str = _frozen(" ", "Joins a text's kept strips.")
    scale: ScoreScale = _frozen("probability", "'probability' (any head) or 'logit'.")
    relevant_labels: tuple[str, ...] | None = _frozen(
        None, "For multi-class graders, the label names that mean relevant."
    )
    on_no_evidence: NoEvidencePolicy = _frozen(
        "keep", "'keep' a text with no kept strip whole, or 'drop' it."
    )

    @property
    def refiner(self) -> KnowledgeRefiner:
        """The :class:`KnowledgeRefiner` these options run (built now; loads nothing)."""
        return self.stage()

    def stage(self) -> KnowledgeRefiner:
        return KnowledgeRefiner(
            model=self.role_model(),
            mode=self.mode,
            group_size=self.group_size,
            window_words=self.window_words,
            threshold=self.threshold,
            top_k=self.top_k,
            separator=self.separator,
            scale=self.scale,
            relevant_labels=self.relevant_labels,
            on_no_evidence=self.on_no_evidence,
        )
