"""The recipe: one YAML file that describes a whole run, parsed into validated, typed objects.

Every mistake a user can make in a recipe is caught here, before any work starts, and reported
as one line naming the file, the line, the key and what would be valid.
"""

from __future__ import annotations

import glob
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from langadapt import stages
from langadapt.errors import RecipeError
from langadapt.layout import RunLayout


# Which stage's model a setting may name, from the stage table (models of stages before it, and the base).
PretrainStart = Literal[stages.models_before("pretrain", base=False)]
SftStart = Literal[stages.models_before("sft")]
EvalStage = Literal[stages.models_before("eval")]
TranslatorStage = Literal[stages.models_before("translate")]

# Experiment trackers the training core can log to: accelerate's names (train/tracking.py knows their packages).
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
LM_EVAL_PREFIX = "lm_eval:"


def _value_kinds(annotation: Any) -> set:
    """The plain types a field annotation admits (``int | None`` -> {int, NoneType})."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _value_kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_value_kinds(a) for a in typing.get_args(annotation)))
    return {annotation}


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are validated on assignment.

    Numbers must be finite (``lr: .inf`` trained a model into NaN weights; ``epochs: .inf``
    overflowed later), and true/false is not a number (pydantic would take ``min_words: true``
    as 1).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool):
            kinds = _value_kinds(cls.model_fields[info.field_name].annotation)
            if (int in kinds or float in kinds) and bool not in kinds:
                raise ValueError("Input should be a number, not true/false")
        return value


# --------------------------------------------------------------------------- data sources


class Language(Section):
    code: str = Field("fa", pattern=r"^[a-z]{2,3}$", description="ISO 639 code, as fastText lid.176 names it")
    name: str = "Persian"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(value: Any) -> Any:
    """``2GB`` / ``500 MB`` / ``1.5GiB`` / ``300000`` -> bytes (other values are left to the field's type)."""
    if not isinstance(value, str):
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError("not a size (write a number of bytes or e.g. 500MB, 2GB, 1GiB)")
    unit = (m.group(2) or "").lower().removesuffix("b")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


class HubOptions(Section):
    """How any source (corpus, parallel, instructions, held-out, evaluation data) reads a Hugging Face
    dataset: a hub id such as ``HuggingFaceFW/fineweb-2`` or a local dataset repository folder
    (``README.md`` with ``configs:``, data files per config and split), loaded by ``datasets.load_dataset``
    (see ``langadapt.data.hub``). Access uses ``HF_TOKEN`` or the ``huggingface-cli login`` token;
    ``HF_HUB_OFFLINE=1`` reads the local cache."""

    split: str = Field("train", description="dataset split")
    config: str | None = Field(None, description="dataset config (subset), e.g. pes_Arab (FineWeb-2), 20231101.fa "
                               "(Wikipedia); None: the dataset's only or default config")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="files or globs inside the dataset repository, e.g. data/pes_Arab/train/*.parquet")
    revision: str | None = Field(None, description="branch, tag or commit of a hub dataset; None: main")
    streaming: bool | None = Field(None, description="read as a stream, never downloading the whole dataset "
                                   "(None: on for corpora, off for the other sources)")
    id_field: str | None = Field(None, description="field holding a record's id (None: its position)")
    max_documents: int | None = Field(None, ge=1, description="read at most this many records (documents)")
    max_bytes: int | None = Field(None, ge=1, description="stop after this many UTF-8 bytes of text, e.g. 2GB")
    max_tokens: int | None = Field(None, ge=1, description="stop after this many tokens of the base model's "
                                   "tokenizer")
    shuffle_buffer: int | None = Field(None, ge=1, description="shuffle with the recipe's seed: a stream in a "
                                       "buffer of this many records (and its files' order), a downloaded "
                                       "dataset whole")

    # The model whose tokenizer ``max_tokens`` counts with, set by the recipe (its base model).
    _tokens_with: str | None = PrivateAttr(None)

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value)

    def hub_keys_set(self) -> list[str]:
        """The Hugging Face dataset settings given (for refusing them on sources that are not datasets)."""
        return [k for k in HUB_KEYS if getattr(self, k) is not None]


HUB_KEYS = ("config", "data_files", "revision", "streaming", "id_field", "max_documents", "max_bytes", "max_tokens",
            "shuffle_buffer")


def only_for_datasets(source: HubOptions, kind: str, is_dataset: bool) -> None:
    given = source.hub_keys_set()
    if given and not is_dataset:
        raise ValueError(f"{', '.join(given)}: only for a Hugging Face dataset (format hf); {kind} of "
                         f"format '{source.format}' is read from its files as they are")


class CorpusSource(HubOptions):
    """A monolingual source for the clean stage (paper Table 1: one row per source)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["news", "poems", "wiki", "social", "web", "books", "other"] = "other"
    format: Literal["text", "jsonl", "parquet", "hf"] = "text"
    path: str = Field(description="file, folder or glob; for format hf a dataset id or local dataset folder")
    text_field: str = "text"
    doc_per: Literal["line", "lines", "file", "record"] = Field(
        "line", description="what one document is: a line (text), runs of consecutive lines up to doc_chars ended "
        "also by a blank line (text: poems, verses), a whole file (text), a record (jsonl, parquet, hf; for "
        "them 'line' means the same)")
    doc_chars: int = Field(2000, ge=100, le=1_000_000, description="doc_per lines: characters a run of lines may reach")

    @model_validator(mode="after")
    def _dataset_keys(self) -> CorpusSource:
        only_for_datasets(self, "a corpus source", self.format == "hf")
        return self

    @model_validator(mode="after")
    def _documents(self) -> CorpusSource:
        if self.format == "text" and self.doc_per == "record":
            raise ValueError(f"data source '{self.name}': doc_per 'record' needs records (format jsonl, parquet or "
                             "hf); a text file has lines: use doc_per line, lines or file")
        if self.format != "text" and self.doc_per in ("lines", "file"):
            raise ValueError(f"data source '{self.name}': doc_per '{self.doc_per}' groups lines of a text file; "
                             f"a {self.format} source has one document per record: use doc_per record")
        return self


class ReplaySource(CorpusSource):
    """Text in the base model's own language (usually English), mixed back into training against forgetting."""

    language: str = Field("en", pattern=r"^[a-z]{2,3}$", description="the language of this text (checked)")


class ReplaySettings(Section):
    """A share of the training tokens taken from ``data.replay`` sources, mixed into the same rows."""

    sources: list[str] | None = Field(None, description="names from data.replay; None: all")
    share: float = Field(0.1, gt=0.0, le=0.9, description="share of the training tokens that are replay text")


class ParallelSource(HubOptions):
    """Target-language / English sentence pairs: a TSV, two line-aligned files, or a dataset."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    format: Literal["tsv", "pair", "hf"] = "tsv"
    path: str | None = Field(None, description="TSV file (format tsv) or dataset id/folder (format hf)")
    target: str | None = Field(None, description="target-language file (format pair)")
    english: str | None = Field(None, description="English file, line i translates line i of target (format pair)")
    target_column: int = Field(0, ge=0)
    english_column: int = Field(1, ge=0)
    target_field: str = "target"
    english_field: str = "english"
    checks: bool = Field(True, description="skip pairs whose sides are swapped, in the wrong language or far off the "
                         "source's length ratio, and refuse a source shifted by a line (false: only empty sides and "
                         "column counts)")
    max_bad_share: float = Field(0.05, ge=0.0, le=1.0, description="refuse the source when more than this share of its "
                                 "lines is skipped (probably misaligned or mis-declared)")

    @model_validator(mode="after")
    def _paths_for_format(self) -> ParallelSource:
        if self.format == "pair" and (self.target is None or self.english is None):
            raise ValueError("format 'pair' needs both 'target' and 'english' files")
        if self.format in ("tsv", "hf") and self.path is None:
            raise ValueError(f"format '{self.format}' needs 'path'")
        only_for_datasets(self, "a parallel source", self.format == "hf")
        return self


class InstructionSource(HubOptions):
    """Instruction data for the sft stage (and input of ``translate``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    format: Literal["alpaca", "dolly", "oasst", "sni", "messages", "pn_summary"]
    path: str = Field(description="file, folder, save_to_disk folder, hub dataset id or local dataset repository")
    language: str = Field(pattern=r"^[a-z]{2,3}$", description="'en' or the target language code")
    fields: dict[str, str] = Field({}, description="the format's field -> the dataset's, e.g. {instruction: inputs, "
                                   "output: targets}")
    max_records: int | None = Field(None, ge=1)
    task: str | None = Field(None, description="task label for records that name none (for sft.holdout_tasks)")
    prompt: str | None = Field(None, description="pn_summary: the summarization instruction (default: varied built-in phrasings)")
    examples: int = Field(0, ge=0, description="sni: positive examples shown before each input")


class HeldoutSource(HubOptions):
    """Held-out text from a dataset: the ``text_field`` of its records, one per line."""

    path: str = Field(description="hub dataset id or local dataset folder")
    format: Literal["hf"] = "hf"
    text_field: str = "text"


# A text file, or a mapping naming a dataset; told apart before validation (see _ModelEntry below).
HeldoutText = Annotated[
    Annotated[str, Tag("[file]")] | Annotated[HeldoutSource, Tag("[dataset]")],
    Discriminator(lambda v: "[file]" if isinstance(v, str) else "[dataset]"),
]


class Heldout(Section):
    """Held-out text for bits per character, measured before and after every training stage."""

    target: HeldoutText | None = Field(None, description="a UTF-8 text file, or {path: dataset, config, split, "
                                       "text_field, ...}")
    english: HeldoutText | None = None
    target_documents: str | None = Field(None, description="documents (JSONL records with 'text', or paragraphs "
                                         "separated by blank lines), each scored whole: later windows see the earlier text")
    english_documents: str | None = None
    max_chars: int = Field(20_000, ge=100, description="characters of each file used")


class Data(Section):
    corpus: list[CorpusSource] = []
    replay: list[ReplaySource] = Field([], description="original-language text for the training stages' replay")
    parallel: list[ParallelSource] = []
    instructions: list[InstructionSource] = []
    heldout: Heldout = Heldout()

    @model_validator(mode="after")
    def _unique_names(self) -> Data:
        for kind in ("corpus", "replay", "parallel", "instructions"):
            names = [s.name for s in getattr(self, kind)]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"data.{kind}: source names must be unique, repeated: {', '.join(dup)}")
        return self


# --------------------------------------------------------------------------- stages


class SlurmSettings(Section):
    """How the clean stage runs under Slurm (datatrove's SlurmPipelineExecutor), for ``executor: slurm``."""

    partition: str = Field(description="Slurm partition the job arrays are submitted to")
    time: str = Field("24:00:00", pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$", description="time limit of each array task")
    tasks: int = Field(64, ge=1, le=100_000, description="array tasks of the reading/filtering and dedup passes")
    cpus_per_task: int = Field(1, ge=1, le=512, description="CPUs of each array task (one task is one process)")
    mem_per_cpu_gb: int = Field(2, ge=1, le=1024, description="memory per CPU, GB")
    qos: str | None = Field(None, description="Slurm QOS; None: the cluster default")
    job_name: str = Field("langadapt-clean", pattern=r"^[A-Za-z0-9_.-]+$", description="prefix of the job names, one per pass")
    venv_path: str | None = Field(None, description="activate script sourced in each job, e.g. /path/venv/bin/activate")
    env_command: str | None = Field(None, description="shell command run in each job before Python (instead of venv_path)")
    sbatch_args: dict[str, str | int] = Field({}, description="extra #SBATCH options, e.g. {account: myproj}")
    max_array_size: int = Field(1001, ge=1, description="the cluster's MaxArraySize")
    poll_seconds: int = Field(30, ge=1, le=3600, description="how often `langadapt clean` checks the jobs while waiting")


class CleanConfig(Section):
    """Stage 1 (paper 3.1): documents to clean, unique target-language sentences."""

    enabled: bool = True
    min_words: int = Field(5, ge=1, le=1000, description="drop sentences with fewer whitespace-separated words (paper: 5)")
    lang_threshold: float = Field(0.70, ge=0.0, le=1.0, description="keep sentences whose target-language probability "
                                  "(fastText lid.176) is at least this (paper: 0.70)")
    digits: Literal["keep", "latin", "persian"] = Field(
        "keep", description="keep: digits as written (Persian: Arabic-Indic become Persian); latin: 0-9; persian: ۰-۹")
    boilerplate_keywords: list[str] | None = Field(None, description="None: the shipped Persian+English list")
    boilerplate_urls: bool = Field(True, description="also drop sentences holding a URL, www address or e-mail address")
    code_markers: list[str] | None = Field(None, description="None: the shipped list")
    near_dedup: bool = Field(False, description="also drop near-duplicates (datatrove MinHash) after exact dedup")
    near_dedup_ngrams: int = Field(2, ge=1, le=20, description="word n-gram size of the MinHash shingles")
    rejects: bool = Field(False, description="write dropped sentences with their reason to rejects/")
    output_format: Literal["jsonl", "parquet"] = Field("jsonl", description="format of the sentences/ shards")
    workers: int | None = Field(None, ge=1, le=4096, description="local: worker processes (None: one per CPU core); "
                                "slurm: array tasks running at once (None: no limit)")
    executor: Literal["local", "slurm"] = Field("local", description="datatrove executor: local processes or Slurm job arrays")
    slurm: SlurmSettings | None = Field(None, description="settings for executor: slurm")

    @model_validator(mode="after")
    def _slurm_settings(self) -> CleanConfig:
        if self.executor == "slurm" and self.slurm is None:
            raise ValueError("executor 'slurm' needs a 'slurm:' section with at least 'partition'")
        return self


class TokenizerConfig(Section):
    """Stage 2 (paper 4.1): train target-language pieces, merge them, resize the embeddings."""

    enabled: bool = True
    new_pieces: int = Field(20_000, ge=1, description="SentencePiece vocabulary size (paper: 20,000); lowered, "
                            "with a warning, to what a small sample supports")
    model_type: Literal["bpe", "unigram"] = "bpe"
    sample_sentences: int = Field(1_000_000, ge=1, description="cleaned sentences drawn at random to train on")
    character_coverage: float = Field(0.9995, gt=0.0, le=1.0)
    seed: int | None = Field(None, description="None: the recipe's seed")
    init: Literal["mean", "calibrated", "plain"] = Field(
        "mean", description="new rows: mean (of the rows of the base tokens that spell the token); calibrated (the "
        "mean, and each new token's logit raised by its log frequency in the corpus, so new tokens start with the "
        "probability they have in the text instead of an even share: much lower bits per character before any "
        "training, but after align mean is as good on the target and loses less English; bench/README.md); or "
        "plain (the model's random init, as in the paper)")
    normalize: bool = Field(True, description="the merged tokenizer rewrites the characters the clean stage "
                            "normalizes (Persian: Arabic yeh/kaf to Persian, Arabic-Indic digits), so raw text costs "
                            "what clean text does; English and other scripts keep their ids")
    pre_tokenizer: Literal["extend", "keep"] = Field(
        "extend", description="byte-level bases: extend puts a target-word pattern in front of the base's split "
        "(words with a zero-width non-joiner stay one pre-token: fewer tokens); keep leaves the base's pattern, "
        "which llama.cpp applies to an exported GGUF exactly (bench/README.md, GGUF section)")
    pad_to_multiple_of: int | None = Field(None, ge=1)
    add_pad_token: bool = Field(False, description="add <pad> when the base has no padding token or pads with EOS")
    merged_vocab_size: int | None = Field(
        None, ge=1, description="expected rows after the merge, for `plan` before the tokenizer has run"
    )


class LoraSettings(Section):
    r: int = Field(8, ge=1, description="LoRA rank (paper: 8)")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (paper: 32, scale alpha/r = 4)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear': every linear layer of every block, found from the model"
    )


class TrainSettings(Section):
    """Settings every training stage shares (the training core reads these)."""

    max_steps: int | None = Field(None, ge=1, description="optimizer steps; None: one pass over the data (epochs)")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1, description="sequences per micro-batch per process")
    grad_accum: int = Field(1, ge=1)
    seq_len: int = Field(256, ge=8)
    lr: float = Field(1e-4, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    train_rows: Literal["all", "new", "none"] = Field(
        "all", description="embeddings/head rows that train: all (paper), new only, or none (LoRA alone)")
    embedding_lr: float | str | None = Field(
        None, description="learning rate of the embeddings and head: a number, or a scale of lr such as '0.1x'; "
        "None: lr")
    replay: ReplaySettings | None = Field(None, description="mix data.replay text into the training rows")
    pack_across_documents: bool = Field(False, description="true: blocks are a plain concatenation (attention and "
                                        "positions run across documents); false: they restart at every document")
    save_every: int = Field(0, ge=0, description="checkpoint every N optimizer steps (0: only at the end)")
    eval_every: int = Field(0, ge=0, description="held-out bits per character every N steps (0: start and end only)")
    log_every: int = Field(1, ge=1)
    max_examples: int | None = Field(None, ge=1, description="cap on training examples (sentences/pairs/instructions)")
    # Fast paths (train/core.py): none changes what is computed beyond floating-point rounding.
    fused_loss: bool = Field(True, description="output head + cross-entropy a chunk of tokens at a time, never the "
                             "full logits (less memory; plain loss for models it does not know, and under FSDP/ZeRO-3)")
    loss_chunk: int = Field(1024, ge=16, description="tokens per chunk of the fused loss")
    gradient_checkpointing: bool = Field(False, description="recompute each block's activations in backward: "
                                         "much less memory, about a third more compute")
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="attention kernels; auto: the model's default (PyTorch SDPA for most); "
        "flash_attention_2 needs the flash-attn package and a GPU")
    fused_optimizer: bool = Field(True, description="fused AdamW kernel on a GPU (ignored on the CPU)")
    compile: bool = Field(False, description="torch.compile each transformer block (compiles for a minute first)")

    @model_validator(mode="after")
    def _embedding_lr(self) -> TrainSettings:
        e = self.embedding_lr
        if e is None:
            return self
        if isinstance(e, str) and not re.fullmatch(r"\d+(\.\d*)?([eE]-?\d+)?x", e.strip()):
            raise ValueError(f"embedding_lr: give a learning rate (2e-5) or a scale of lr ending in x ('0.1x'), not {e!r}")
        if self.embedding_learning_rate() <= 0 or not math.isfinite(self.embedding_learning_rate()):
            raise ValueError(f"embedding_lr: must be above 0 (got {e!r})")
        if self.train_rows == "none":
            raise ValueError("embedding_lr: this stage trains no embeddings or head (train_rows: none); remove "
                             "embedding_lr or train rows")
        return self

    def embedding_learning_rate(self) -> float | None:
        """The embeddings' and head's learning rate (``embedding_lr`` resolved), or None: the same as ``lr``."""
        e = self.embedding_lr
        if e is None:
            return None
        if isinstance(e, str):
            return float(e.strip()[:-1]) * self.lr
        return float(e)


class BilingualSettings(TrainSettings):
    """Align step 2: a target-language sentence followed by its English translation."""

    enabled: bool = True
    order: Literal["target_first", "english_first"] = "target_first"
    separator: str = "\n"
    reverse_share: float = Field(0.0, ge=0.0, le=1.0, description="share of examples in the other order")
    sources: list[str] | None = Field(None, description="names from data.parallel; None: all")


class AlignConfig(Section):
    """Stage 3 (paper 4.2.1): embeddings and head only, monolingual then bilingual."""

    enabled: bool = True
    monolingual: TrainSettings = TrainSettings()
    bilingual: BilingualSettings = BilingualSettings()


class PretrainConfig(TrainSettings):
    """Stage 4 (paper 4.2.2): LoRA on every linear layer plus embeddings and head."""

    enabled: bool = True
    start_from: PretrainStart = "align"
    lora: LoraSettings = LoraSettings()


class SftConfig(TrainSettings):
    """Stage 5 (paper 3.2, 4.2.2): bilingual instruction tuning, loss on responses only."""

    enabled: bool = True
    start_from: SftStart = "pretrain"
    lora: LoraSettings | None = Field(LoraSettings(), description="null: embeddings and head only (paper's noLoRA)")
    sources: list[str] | None = Field(None, description="names from data.instructions; None: all")
    target_instructions: bool = Field(True, description="false: English + translation instructions only (Table 6)")
    translation_share: float = Field(0.24, ge=0.0, lt=1.0, description="share of translation instructions (paper ~24%)")
    translation_sources: list[str] | None = Field(None, description="names from data.parallel; None: all")
    holdout_tasks: list[str] = Field(["multiple_choice", "sentiment"], description="task names kept out of training")
    limit_target: int | None = Field(None, ge=1, description="use only N target-language instructions (Table 8: 100)")
    task_map: dict[str, str] = Field({}, description="extra task names -> labels for holdout_tasks, e.g. task1312_amazonreview_polarity_classification: sentiment")
    translation_prompts: str | None = Field(None, description="JSON file of translation phrasings for a target language without built-in ones")
    template: Literal["auto", "default"] = Field("auto", description="auto: the tokenizer's chat template if it has one; default: langadapt's")
    pack: bool = Field(True, description="true: whole conversations packed into seq_len blocks (none split across blocks, none attends to another; fewer, fuller rows); false: one conversation per row, padded")
    samples: int | list[str] = Field(3, description="after training, answer N demo instructions from the data (half in the target language), or these prompts")
    sample_max_new_tokens: int = Field(96, ge=1)
    keep_base: bool = Field(False, description="starting from an adapter (pretrain): keep base/, the adapter merged "
                            "into its base, as a model folder (~ a full copy) and save this stage's adapter on it; "
                            "false: the adapter is saved on the start adapter's own base, holding both LoRAs")


class EvalModel(Section):
    """An extra model column: a local model (``path``) or an OpenAI-compatible endpoint (``base_url`` + ``model``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", description="column name in the tables")
    path: str | None = Field(None, description="hub id, model folder, adapter folder or .gguf file")
    base_url: str | None = Field(None, description="API: e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="API: the served model name")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="API: environment variable holding the key (null: none)")
    concurrency: int = Field(4, ge=1, le=256, description="API: requests in flight at once")

    @model_validator(mode="after")
    def _one_kind(self) -> EvalModel:
        if (self.path is None) == (self.base_url is None):
            raise ValueError(f"model '{self.name}' needs either 'path' (a local model) or 'base_url' and 'model' (an API)")
        if self.base_url is not None and not self.model:
            raise ValueError(f"model '{self.name}': an API model needs 'model' (the served model name)")
        return self


# A string or a mapping, told apart before validation so a mistake in a mapping is reported as itself
# (not as "should be a valid string"); the bracketed tag keeps it out of the key shown to the user.
_ModelEntry = Annotated[
    Annotated[str, Tag("[name]")] | Annotated[EvalModel, Tag("[model]")],
    Discriminator(lambda v: "[name]" if isinstance(v, str) else "[model]"),
]


class TranslationProtocol(Section):
    """Paper Table 7: target-language tasks again with the instruction (and the input) translated to English."""

    enabled: bool = False
    variants: list[Literal["instruction", "instruction+input"]] = Field(["instruction", "instruction+input"], min_length=1)
    translator: Literal["self", "file", "task"] = Field(
        "self", description="self: the evaluated model translates; file: a given translation file; "
        "task: the task's own English instruction (instruction variant only)")
    file: str | None = Field(None, description="translator 'file': JSONL {source, english} or TSV source<TAB>english")
    models: list[str] | None = Field(None, description="model/stage names to run it for; None: every evaluated model")
    max_new_tokens: int = Field(160, ge=1, description="translator 'self': token limit per translated text")

    @model_validator(mode="after")
    def _translator(self) -> TranslationProtocol:
        if self.translator == "file" and not self.file:
            raise ValueError("translator 'file' needs 'file'")
        if self.translator == "task" and "instruction+input" in self.variants:
            raise ValueError("translator 'task' can only translate the instruction; use 'self' or 'file' for instruction+input")
        return self


class EvalConfig(Section):
    """Stage 6 (paper 5): five tasks in two languages."""

    enabled: bool = True
    tasks: list[str] = Field(["demo"], description="built-in task suite names (demo, parsinlu, paper), task YAML files, "
                             "or lm-evaluation-harness tasks as lm_eval:<task> (e.g. lm_eval:belebele_pes_Arab)")
    lm_eval_include: list[str] = Field([], description="folders of lm-evaluation-harness task YAML files for lm_eval: "
                                       "tasks (its TaskManager include_path); relative to the recipe")
    select: list[str] | None = Field(None, description="keep only these tasks: names (sentiment) or ids (fa/sentiment)")
    mode: Literal["loglik", "generate"] = Field("loglik", description="classification by option log-likelihood or by generating and parsing")
    batch_size: int = Field(8, ge=1, le=4096, description="prompts per model call (API models send eval.models[].concurrency at once)")
    max_examples: int | None = Field(None, ge=1, description="cap on examples per task (a seeded sample)")
    max_examples_per_task: dict[str, int] = Field({}, description="per-task caps by name or id, e.g. {summarization: 8}")
    stages: list[EvalStage] | None = Field(
        None, description="which models of the run to evaluate; None: base and every enabled align/pretrain/sft")
    models: list[_ModelEntry] = Field([], description="extra models: a model id/folder, or {name, path} / {name, base_url, model, api_key_env}")
    few_shot: int | None = Field(None, ge=0, description="demonstrations per prompt; None: each task's own (0 in the built-ins)")
    max_new_tokens: int | None = Field(None, ge=1, description="cap on each task's generation length")
    repetition_penalty: float = Field(1.1, ge=1.0, le=3.0, description="generation: HF repetition penalty (1.0: none)")
    prompt_format: Literal["auto", "chat", "plain"] = Field("auto", description="auto: chat template when the tokenizer has one")
    max_length: int = Field(2048, ge=32, description="prompt tokens kept (the left is cut beyond this)")
    share_prefix: bool = Field(True, description="score all options of a prompt from one pass over the prompt")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    paths: dict[str, str] = Field({}, description="suite path variables, e.g. {parsinlu: /data/parsinlu}")
    protocol: TranslationProtocol = TranslationProtocol()
    report: bool = Field(True, description="write report.html and report.md beside the results")

    @model_validator(mode="after")
    def _checks(self) -> EvalConfig:
        for k, v in self.max_examples_per_task.items():
            if v < 1:
                raise ValueError(f"max_examples_per_task.{k} must be at least 1")
        names = [m if isinstance(m, str) else m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("eval.models: model names must be unique")
        for t in self.tasks:
            if t.startswith(LM_EVAL_PREFIX) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", t[len(LM_EVAL_PREFIX):]):
                raise ValueError(f"eval.tasks: '{t}' is not lm_eval:<task name> (for example lm_eval:belebele_pes_Arab)")
        dup = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if dup:
            raise ValueError(f"eval.tasks: {', '.join(dup)} listed twice")
        return self


class TranslateConfig(Section):
    """Build target-language instructions by machine translation (runs before sft), then clean them."""

    enabled: bool = True
    sources: list[str] = Field([], description="names from data.instructions to translate; []: every source not in the target language")
    translator: Literal["hf", "openai", "stage"] = "stage"
    stage: TranslatorStage = Field(
        "pretrain", description="translator 'stage': which stage's model translates (translate runs before sft)")
    model: str | None = Field(None, description="hf: hub id or local folder of a seq2seq or causal model; openai: the served model name")
    base_url: str | None = Field(None, description="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key (unset: no key sent)")
    batch_size: int = Field(8, ge=1, le=4096, description="texts per generate() call (hf, stage) or concurrent requests (openai)")
    source_code: str | None = Field(None, description="hf seq2seq: the model's code for English (NLLB eng_Latn, M2M100 en); None: 'en' if the tokenizer knows it")
    target_code: str | None = Field(None, description="hf seq2seq: the model's code for the target (NLLB pes_Arab, M2M100 fa); None: language.code if the tokenizer knows it")
    unit: Literal["line", "field"] = Field("line", description="line: each line translated alone (sentence-level models, small LLMs); field: each whole field at once")
    max_new_tokens: int = Field(256, ge=1, le=32768, description="cap on generated tokens per text")
    retries: int = Field(4, ge=0, le=20, description="openai: retries of a failed request before the record is left for the next resume")
    backoff: float = Field(1.0, ge=0.0, le=600.0, description="openai: seconds before the first retry, doubled after each")
    timeout: float = Field(120.0, gt=0.0, le=3600.0, description="openai: seconds to wait for one answer")
    wording_rules: bool = Field(True, description="drop records whose answer depends on English wording (spelling, rhyme, grammar, ...)")
    lang_threshold: float = Field(0.5, ge=0.0, le=1.0, description="drop translations whose target-language probability is lower")
    min_length_ratio: float = Field(0.3, gt=0.0, le=100.0, description="drop translations shorter than this times the source (characters)")
    max_length_ratio: float = Field(3.0, gt=0.0, le=100.0, description="drop translations longer than this times the source (characters)")
    repeat_threshold: int = Field(4, ge=2, le=1000, description="drop translations repeating a phrase this many times in a row (source does not)")
    max_records: int | None = Field(None, ge=1, description="translate at most this many records per source")

    @model_validator(mode="after")
    def _translator_settings(self) -> TranslateConfig:
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError(f"translate.min_length_ratio ({self.min_length_ratio}) must be below max_length_ratio ({self.max_length_ratio})")
        if self.translator == "hf" and not self.model:
            raise ValueError("translate.model: translator 'hf' needs a model (a hub id or a local folder)")
        if self.translator == "openai" and not self.base_url:
            raise ValueError("translate.base_url: translator 'openai' needs the endpoint (e.g. http://127.0.0.1:8000/v1)")
        if self.translator == "openai" and not self.model:
            raise ValueError("translate.model: translator 'openai' needs the name of the model the endpoint serves")
        return self


# --------------------------------------------------------------------------- the recipe


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name: outputs go to <output_dir>/<name>/")
    base_model: str = Field(description="Hugging Face id, a save_pretrained folder, a .gguf file, or smollm2-135m-instruct")
    base_config: str | None = Field(None, description="config.json for `plan` without network or weights")
    language: Language = Language()
    output_dir: str = "runs"
    seed: int = 0
    report_to: list[Literal[TRACKERS]] = Field(  # type: ignore[valid-type]
        [], description="experiment trackers every training call (align, pretrain, sft) logs to through accelerate: "
        "tensorboard (event files in <stage>/tensorboard/<call>/), wandb, mlflow, ...; []: metrics.jsonl only")
    data: Data = Data()
    clean: CleanConfig | None = None
    tokenizer: TokenizerConfig | None = None
    align: AlignConfig | None = None
    pretrain: PretrainConfig | None = None
    translate: TranslateConfig | None = None
    sft: SftConfig | None = None
    eval: EvalConfig | None = None

    # Set by load_recipe, not by the user.
    source_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _tokens_of_the_base(self) -> Recipe:
        # a source's max_tokens counts tokens of the base model's tokenizer
        for source in self.data_sources():
            source._tokens_with = self.base_model
        return self

    def data_sources(self) -> list[HubOptions]:
        """Every source of ``data`` (corpus, parallel, instructions, held-out datasets)."""
        d = self.data
        held = [h for h in (d.heldout.target, d.heldout.english) if isinstance(h, HeldoutSource)]
        return [*d.corpus, *d.parallel, *d.instructions, *held]

    def enabled(self, stage: str) -> bool:
        section = getattr(self, stage, None)
        return section is not None and section.enabled

    def enabled_stages(self) -> list[str]:
        return [s for s in stages.ORDER if self.enabled(s)]

    def inputs_of(self, stage: str) -> tuple[str, ...]:
        """Earlier stages whose output ``stage`` reads, given this recipe's settings."""
        return stages.get(stage).inputs(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def layout(self) -> RunLayout:
        """Where this run's outputs live (``langadapt.layout``)."""
        return RunLayout(self.run_dir)

    def model_path(self, stage: str) -> str:
        """The model a stage produced (its ``adapter/`` or ``model/`` folder); 'base': the base model."""
        if stage == "base":
            return self.base_model
        return str(self.layout.require_model(stage, self.name))

    def resolve(self, path: str) -> Path:
        """Input paths are relative to the recipe file's folder."""
        p = Path(os.path.expanduser(path))
        if p.is_absolute() or self.source_path is None:
            return p
        return self.source_path.parent / p


# --------------------------------------------------------------------------- loading


MAX_YAML_VALUES = 200_000
"""Values (keys' values, list items) one YAML file may expand to; the paper's recipe has about 300."""
MAX_YAML_DEPTH = 64


def _compose_with_lines(text: str, path: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML keeping the line of every key, so errors can point at it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(e, "problem", None) or str(e)
        raise RecipeError(f"not valid YAML: {reason}", path=path, line=line) from None
    except RecursionError:  # PyYAML's composer recurses once per level of [[[...]]]
        raise RecipeError(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels", path=path) from None
    lines: dict[tuple, int] = {}
    constructor = yaml.constructor.SafeConstructor()
    count = 0
    open_nodes: set[int] = set()

    def walk(n: yaml.Node, loc: tuple) -> Any:
        # An alias is the same node object again, so a few hundred bytes of nested aliases expand
        # into millions of values (a 650-byte "billion laughs" ran for minutes), and an alias to
        # an enclosing node never ends: both are refused while walking.
        nonlocal count
        count += 1
        if count > MAX_YAML_VALUES:
            raise RecipeError(f"'{loc[0] if loc else '(top level)'}' expands to more than {MAX_YAML_VALUES:,} values "
                              "(aliases repeating aliases?); a recipe needs far fewer",
                              path=path, line=lines.get(loc[:1]) or n.start_mark.line + 1)
        if len(loc) > MAX_YAML_DEPTH:
            raise RecipeError(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels", path=path, line=n.start_mark.line + 1)
        if isinstance(n, (yaml.MappingNode, yaml.SequenceNode)):
            if id(n) in open_nodes:
                raise RecipeError("an alias refers to a mapping or list that contains it (endless nesting)",
                                  path=path, line=n.start_mark.line + 1)
            open_nodes.add(id(n))
            try:
                return walk_collection(n, loc)
            finally:
                open_nodes.discard(id(n))
        lines[loc] = n.start_mark.line + 1
        return constructor.construct_object(n, deep=True)

    def walk_collection(n: yaml.Node, loc: tuple) -> Any:
        lines[loc] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = k.value
                if key in out:
                    raise RecipeError(f"key '{'.'.join(map(str, loc + (key,)))}' appears twice", path=path, line=k.start_mark.line + 1)
                lines[loc + (key,)] = k.start_mark.line + 1
                out[key] = walk(v, loc + (key,))
            return out
        return [walk(v, loc + (i,)) for i, v in enumerate(n.value)]

    if node is None:
        return {}, lines
    return walk(node, ()), lines


def _field_names(model: type[BaseModel]) -> list[str]:
    return [n for n, f in model.model_fields.items() if not f.exclude]


def _section_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the key at ``loc`` (for listing valid keys)."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        nxt = None
        stack = [field.annotation]
        while stack:  # the last model class in the annotation, through unions and Annotated
            c = stack.pop(0)
            if isinstance(c, type) and issubclass(c, BaseModel):
                nxt = c
            stack += typing.get_args(c)
        if nxt is None:
            return None
        model = nxt
    return model


def _describe(err: dict) -> tuple[tuple, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "list[str]"))))
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _section_at(loc[:-1])
        valid = ", ".join(_field_names(parent)) if parent else ""
        return loc, f"unknown key '{key}'" + (f" (valid keys here: {valid})" if valid else "")
    if kind == "missing":
        return loc, f"missing required key '{key}'"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith(key.split(".")[0] + "."):
        return loc, msg  # the validator already named the key
    return loc, f"{key}: {msg}{shown}"


def parse_recipe(data: dict, *, path: str = "<recipe>", lines: dict[tuple, int] | None = None) -> Recipe:
    """Validate a recipe dict; raise RecipeError with one line for the first problem."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of keys to values", path=path, line=1)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        loc, msg = _describe(e.errors()[0])
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        raise RecipeError(msg, path=path, line=line) from None
    return recipe


def load_recipe(path: str | os.PathLike, *, check_files: bool = True) -> Recipe:
    """Read, parse and validate a recipe file. Raises RecipeError (one line) on any mistake."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError("recipe file not found" if not p.exists() else "recipe path is not a file", path=str(path))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe is not UTF-8 text ({e.reason} at byte {e.start})", path=str(path)) from None
    data, lines = _compose_with_lines(text, str(path))
    recipe = parse_recipe(data, path=str(path), lines=lines)
    recipe.source_path = p.resolve()
    check_consistency(recipe, path=str(path), lines=lines)
    if check_files:
        check_inputs_exist(recipe, path=str(path), lines=lines)
        check_output_dir(recipe, path=str(path), lines=lines)
    return recipe


# --------------------------------------------------------------------------- cross-key checks

def check_consistency(recipe: Recipe, *, path: str, lines: dict[tuple, int]) -> None:
    """Refuse combinations no run could satisfy (a stage needing a disabled stage's output, ...)."""

    def fail(loc: tuple, msg: str) -> None:
        raise RecipeError(msg, path=path, line=lines.get(loc) or lines.get(loc[:1]))

    for stage in recipe.enabled_stages():
        for need in recipe.inputs_of(stage):
            if not recipe.enabled(need):
                how = "is disabled" if getattr(recipe, need) is not None else "is not in the recipe"
                chosen = getattr(getattr(recipe, stage), "start_from", None) == need  # the user picked it
                key = f"{stage}.start_from" if chosen else stage
                fail((stage,), f"{key}: stage '{stage}' needs the output of stage '{need}', which {how}; "
                     f"enable '{need}'" + (f" or change {stage}.start_from" if chosen else ""))
    if recipe.enabled("clean") and not recipe.data.corpus:
        fail(("clean",), "clean: data.corpus lists no sources; add at least one corpus source")
    if recipe.enabled("align") and recipe.align.bilingual.enabled and not recipe.data.parallel:
        fail(("align", "bilingual"), "align.bilingual: data.parallel lists no sources; add one or set align.bilingual.enabled: false")
    if recipe.enabled("align") and recipe.align.bilingual.enabled:
        pknown = {s.name for s in recipe.data.parallel}
        for i, name in enumerate(recipe.align.bilingual.sources or []):
            if name not in pknown:
                fail(("align", "bilingual", "sources", i), f"align.bilingual.sources: '{name}' is not a name in "
                     f"data.parallel (known: {', '.join(sorted(pknown)) or 'none'})")
    if recipe.enabled("sft"):
        known = {s.name for s in recipe.data.instructions}
        for i, name in enumerate(recipe.sft.sources or []):
            if name not in known:
                fail(("sft", "sources", i), f"sft.sources: '{name}' is not a name in data.instructions (known: {', '.join(sorted(known)) or 'none'})")
        pknown = {s.name for s in recipe.data.parallel}
        for i, name in enumerate(recipe.sft.translation_sources or []):
            if name not in pknown:
                fail(("sft", "translation_sources", i), f"sft.translation_sources: '{name}' is not a name in data.parallel (known: {', '.join(sorted(pknown)) or 'none'})")
        if not recipe.data.instructions and recipe.sft.translation_share == 0:
            fail(("sft",), "sft: no instruction sources in data.instructions and translation_share is 0; nothing to train on")
    if recipe.enabled("translate"):
        by_name = {s.name: s for s in recipe.data.instructions}
        lang = recipe.language.code
        for i, name in enumerate(recipe.translate.sources):
            if name not in by_name:
                fail(("translate", "sources", i), f"translate.sources: '{name}' is not a name in data.instructions")
            if by_name[name].language == lang:
                fail(("translate", "sources", i), f"translate.sources: '{name}' is already in the target language "
                     f"'{lang}'; name sources in another language")
        if not recipe.translate.sources and all(s.language == lang for s in recipe.data.instructions):
            fail(("translate",), f"translate: data.instructions has no source in another language than '{lang}' to "
                 "translate; add one (for example an English Alpaca file) or disable translate")
    if recipe.enabled("eval"):
        _check_eval(recipe, fail)
    replay_names = [s.name for s in recipe.data.replay]
    for loc, settings in training_settings(recipe):
        if settings.replay is None:
            continue
        if not replay_names:
            fail(loc + ("replay",), f"{'.'.join(loc)}.replay: data.replay lists no sources; add the original-language "
                 "text to mix back in (for example English text), or remove replay")
        for i, name in enumerate(settings.replay.sources or []):
            if name not in replay_names:
                fail(loc + ("replay", "sources", i), f"{'.'.join(loc)}.replay.sources: '{name}' is not a name in "
                     f"data.replay (known: {', '.join(replay_names)})")


def training_settings(recipe: Recipe) -> list[tuple[tuple, TrainSettings]]:
    """(recipe location, settings) of every enabled training call: align's two steps, pretrain, sft."""
    out = []
    for stage in stages.TRAINING:
        if not recipe.enabled(stage):
            continue
        section = getattr(recipe, stage)
        if isinstance(section, TrainSettings):
            out.append(((stage,), section))
        else:  # align: a monolingual and a bilingual step
            out += [((stage, k), v) for k, v in section if isinstance(v, TrainSettings)
                    and getattr(v, "enabled", True)]
    return out


def eval_columns(recipe: Recipe) -> list[str]:
    """The names of the models the eval stage evaluates: the run's stages, then the extra models."""
    cfg = recipe.eval
    names = list(cfg.stages) if cfg.stages is not None else \
        ["base"] + [s for s in stages.TRAINING if recipe.enabled(s)]
    for m in cfg.models:
        names.append((Path(m.rstrip("/")).name or m) if isinstance(m, str) else m.name)
    return names


def _check_eval(recipe: Recipe, fail) -> None:
    cfg = recipe.eval
    for i, s in enumerate(cfg.stages or []):
        if s != "base" and not recipe.enabled(s):
            fail(("eval", "stages", i), f"eval.stages lists '{s}', which is not enabled in the recipe")
    names = eval_columns(recipe)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        fail(("eval", "models"), f"eval: two models are both called {', '.join(dup)}; give extra models distinct names")
    unknown = sorted(set(cfg.protocol.models or []) - set(names)) if cfg.protocol.enabled else []
    if unknown:
        fail(("eval", "protocol", "models"), f"eval.protocol.models names {', '.join(unknown)}, which is not an "
             f"evaluated model (evaluated: {', '.join(names)})")


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def check_inputs_exist(recipe: Recipe, *, path: str, lines: dict[tuple, int]) -> None:
    """Every input file named in the recipe must exist (hub dataset ids excepted)."""

    def need(loc: tuple, value: str, *, hub_ok: bool = False, file: bool = False) -> None:
        p = recipe.resolve(value)
        if file and p.is_dir():
            raise RecipeError(f"{'.'.join(str(x) for x in loc)}: expected a file, found a folder: {value} (resolved to {p})",
                              path=path, line=lines.get(loc))
        if p.exists() or glob.glob(str(p)):
            return
        if hub_ok and _looks_like_hub_id(value):
            return
        key = ".".join(str(x) for x in loc)
        raise RecipeError(f"{key}: input not found: {value} (resolved to {p}; paths are relative to the recipe's folder)",
                          path=path, line=lines.get(loc))

    d = recipe.data
    for kind in ("corpus", "replay"):
        for i, s in enumerate(getattr(d, kind)):
            need(("data", kind, i, "path"), s.path, hub_ok=s.format == "hf")
    for i, s in enumerate(d.parallel):
        for key in ("path", "target", "english"):
            v = getattr(s, key)
            if v is not None:
                need(("data", "parallel", i, key), v, hub_ok=s.format == "hf", file=s.format != "hf")
    for i, s in enumerate(d.instructions):
        need(("data", "instructions", i, "path"), s.path, hub_ok=True)
    for key in ("target", "english", "target_documents", "english_documents"):
        v = getattr(d.heldout, key)
        if isinstance(v, HeldoutSource):
            need(("data", "heldout", key, "path"), v.path, hub_ok=True)
        elif v is not None:
            need(("data", "heldout", key), v, file=True)
    if recipe.base_config is not None:
        need(("base_config",), recipe.base_config, file=True)
    if recipe.eval is not None:
        for i, folder in enumerate(recipe.eval.lm_eval_include):
            need(("eval", "lm_eval_include", i), folder)
            if not recipe.resolve(folder).is_dir():
                raise RecipeError(f"eval.lm_eval_include: expected a folder of lm-eval task YAML files, found a file: "
                                  f"{folder}", path=path, line=lines.get(("eval", "lm_eval_include", i)))


def check_output_dir(recipe: Recipe, *, path: str, lines: dict[tuple, int]) -> None:
    """``output_dir`` and the run folder in it must be folders, or not exist yet (a file there failed at the first write)."""
    for p in (recipe.run_dir, *recipe.run_dir.parents):
        if p.exists() and not p.is_dir():
            raise RecipeError(f"output_dir: {p} is a file, not a folder; outputs go to <output_dir>/<name>/ "
                              "(paths relative to where you run the command)", path=path,
                              line=lines.get(("output_dir",)) or lines.get(("name",)))


def check_against_base(recipe: Recipe, base_vocab: int) -> None:
    """Checks that need the base model's vocabulary size (known once its config is read)."""
    tok = recipe.tokenizer
    if recipe.enabled("tokenizer") and tok.merged_vocab_size is not None and tok.merged_vocab_size < base_vocab:
        raise RecipeError(f"tokenizer.merged_vocab_size: {tok.merged_vocab_size:,} is smaller than the base "
                          f"vocabulary ({base_vocab:,}); a merge only adds tokens",
                          path=str(recipe.source_path) if recipe.source_path else None)
