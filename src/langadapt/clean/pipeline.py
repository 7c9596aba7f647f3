"""The clean stage as datatrove passes, run by the local executor (N worker processes) or on Slurm.

Passes (each a datatrove pipeline, each task writing its own files):

1. ``filter`` (N tasks): read this task's pieces of the corpus, normalize, split into
   sentences, drop by rule (too_short, code, boilerplate, language), write the survivors to an
   intermediate shard and their exact-dedup signatures.
2. ``dups`` (N tasks, one per hash range): find every duplicate across all shards.
3. ``dedup`` (N tasks): read the shard back, drop the duplicates found, write the sentences
   (or, with near-dedup, a second shard and the MinHash signatures).
4. With ``near_dedup``: ``buckets`` (14 tasks), ``clusters`` (1 task), ``near`` (N tasks).

Everything lives in ``<out>/work/`` until the last pass has finished; then ``sentences/`` (and
``rejects/``) move into place in one rename each, the report is written, and the work folder
goes (the datatrove logs stay in ``<out>/logs/``). A killed run resumes: datatrove skips the
tasks whose completion files exist. The worker processes die with the process that started them,
even when it is killed with SIGKILL (see :func:`die_with_parent`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor
from loguru import logger

from langadapt.errors import LangadaptError
from langadapt.layout import DOCUMENTS

# --------------------------------------------------------------------------- workers die with the parent


def die_with_parent(parent: int) -> None:
    """Make this (forked) process end when ``parent`` does, however the parent ends.

    datatrove's pool workers and its manager process are plain forks: a SIGKILL of the clean
    process left them running (one for two minutes, 252 MB). Linux kills the child for us
    (PR_SET_PDEATHSIG, checked again after setting it in case the parent was already gone);
    elsewhere a thread polls the parent's pid.
    """
    import signal

    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


class _ForksDieWithParent:
    """While on, every process forked from this one (and from those, in turn) dies with its parent.

    datatrove forks its manager and pool inside ``run()`` with no initializer to hook, so the
    hook is a fork handler; handlers cannot be removed, so it is registered once and switched.
    """

    on = False
    registered = False
    parent = 0

    @classmethod
    def switch(cls, on: bool) -> None:
        if on and not cls.registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(before=cls._before, after_in_child=cls._after_in_child)
            cls.registered = True
        cls.on = on

    @classmethod
    def _before(cls) -> None:
        cls.parent = os.getpid()

    @classmethod
    def _after_in_child(cls) -> None:
        if cls.on:
            die_with_parent(cls.parent)


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor, with task logs kept in files and none on the console.

    The stage shows its own progress bar, which datatrove's per-task log lines would bury. A
    task that fails still raises: the user gets the error (one line for their own mistakes, such
    as a JSONL line that is not JSON), and the full log is in ``logs/<pass>/logs/``.
    """

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        from datatrove.utils.logging import setup_default_logger

        logger.enable("datatrove")
        console, sys.stderr = sys.stderr, _Discard()  # datatrove's task logger writes to sys.stderr
        try:
            return super()._run_for_rank(rank, local_rank, node_rank)
        finally:
            sys.stderr = console
            setup_default_logger()  # datatrove re-adds its console logger at the end of a task
            logger.disable("datatrove")

    def run(self):
        logger.disable("datatrove")
        _ForksDieWithParent.switch(True)
        try:
            return super().run()
        finally:
            _ForksDieWithParent.switch(False)
            logger.enable("datatrove")


@dataclass
class Job:
    """Everything one clean run needs, resolved from the recipe."""

    sources: Sequence  # CorpusSource
    resolve: Callable[[str], Path]
    lang: str
    cfg: object  # CleanConfig
    out_dir: Path
    datasets: list = field(default_factory=list)  # (index, source, data.hub.Opened) of the format hf sources
    seed: int = 0

    @property
    def work(self) -> Path:
        return self.out_dir / "work"

    @property
    def slurm(self) -> bool:
        return self.cfg.executor == "slurm"

    @property
    def workers(self) -> int:
        if self.cfg.workers:
            return self.cfg.workers
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1

    @property
    def tasks(self) -> int:
        return self.cfg.slurm.tasks if self.slurm else self.workers


@dataclass
class Pass:
    name: str
    title: str
    pipeline: list
    tasks: int
    workers: int


def build_passes(job: Job, plan: list) -> list[Pass]:
    """The datatrove pipelines of a run, in order."""
    logger.disable("datatrove")  # its constructors warn about settings this wiring gets right
    try:
        return _build_passes(job, plan)
    finally:
        logger.enable("datatrove")


def _build_passes(job: Job, plan: list) -> list[Pass]:
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactFindDedups

    from langadapt.clean import filters as F
    from langadapt.clean.blocks import (CorpusReader, JoinDocuments, ShardReader, SplitSentences, Tally,
                                        rejects_writer, shard_writer)
    from langadapt.clean.dedup import MINHASH_BUCKETS, SentenceSignature, exact_config

    cfg, w = job.cfg, job.work
    rej = str(w / "rejects") if cfg.rejects else None
    n, workers = job.tasks, (min(job.workers, job.tasks) if not job.slurm else job.workers)
    final_out = str(w / DOCUMENTS)
    boiler = F.DEFAULT_BOILERPLATE if cfg.boilerplate_keywords is None else cfg.boilerplate_keywords
    markers = F.DEFAULT_CODE_MARKERS if cfg.code_markers is None else cfg.code_markers
    dedup_cfg = exact_config()

    from langadapt.clean.hub import HubCorpusReader

    # the local files' pieces, then each Hugging Face dataset read by datatrove's reader, in every task
    readers = [CorpusReader(list(job.sources), plan, progress_dir=str(w / "progress"), rejects_dir=rej)]
    readers += [HubCorpusReader(source, i, opened, seed=job.seed, progress_dir=str(w / "progress"))
                for i, source, opened in job.datasets]
    passes = [Pass("filter", "read, split, filter", [
        *readers,
        SplitSentences(job.lang, cfg.digits),
        F.MinWordsFilter(cfg.min_words, exclusion_writer=rejects_writer(rej, "too_short")),
        F.CodeFilter(markers, exclusion_writer=rejects_writer(rej, "code")),
        F.BoilerplateFilter(job.lang, boiler, urls=cfg.boilerplate_urls, exclusion_writer=rejects_writer(rej, "boilerplate")),
        F.LanguageFilter(job.lang, cfg.lang_threshold, exclusion_writer=rejects_writer(rej, "language")),
        shard_writer(str(w / "filtered"), "jsonl", work=True),
        SentenceSignature(str(w / "sigs"), dedup_cfg, finder_workers=n),
    ], n, workers)]
    passes.append(Pass("dups", "find duplicates", [ExactFindDedups(str(w / "sigs"), str(w / "dups"), dedup_cfg)],
                       n, workers))
    dedup = [
        ShardReader(str(w / "filtered")),
        Tally("exact_in"),
        ExactDedupFilter(str(w / "dups"), dedup_cfg, exclusion_writer=rejects_writer(rej, "duplicate")),
        Tally("exact_out"),
    ]
    if not cfg.near_dedup:
        passes.append(Pass("dedup", "drop duplicates", dedup + [Tally("out"), JoinDocuments(), shard_writer(final_out, cfg.output_format)],
                           n, workers))
        return passes

    from datatrove.pipeline.dedup.minhash import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                                  MinhashDedupSignature)

    from langadapt.clean.dedup import SpaceWordTokenizer, minhash_config

    mh = minhash_config(cfg.near_dedup_ngrams)
    passes.append(Pass("dedup", "drop duplicates", dedup + [
        shard_writer(str(w / "exact"), "jsonl", work=True),
        MinhashDedupSignature(str(w / "mh_sigs"), config=mh, language=SpaceWordTokenizer()),
    ], n, workers))
    passes.append(Pass("buckets", "near duplicates: buckets",
                       [MinhashDedupBuckets(str(w / "mh_sigs"), str(w / "mh_buckets"), config=mh)],
                       MINHASH_BUCKETS, min(workers, MINHASH_BUCKETS)))
    passes.append(Pass("clusters", "near duplicates: clusters",
                       [MinhashDedupCluster(str(w / "mh_buckets"), str(w / "mh_remove"), config=mh)], 1, 1))
    passes.append(Pass("near", "drop near duplicates", [
        ShardReader(str(w / "exact")),
        Tally("near_in"),
        MinhashDedupFilter(str(w / "mh_remove"), exclusion_writer=rejects_writer(rej, "near_duplicate")),
        Tally("out"),
        JoinDocuments(),
        shard_writer(final_out, cfg.output_format),
    ], n, workers))
    return passes


def make_executors(job: Job, passes: list[Pass]) -> list:
    logs = job.work / "logs"
    executors = []
    for p in passes:
        if job.slurm:
            from datatrove.executor.slurm import SlurmPipelineExecutor

            s = job.cfg.slurm
            executors.append(SlurmPipelineExecutor(
                p.pipeline, tasks=p.tasks, time=s.time, partition=s.partition, cpus_per_task=s.cpus_per_task,
                mem_per_cpu_gb=s.mem_per_cpu_gb, workers=job.cfg.workers or -1, job_name=f"{s.job_name}-{p.name}",
                qos=s.qos, env_command=s.env_command, venv_path=s.venv_path, sbatch_args=dict(s.sbatch_args),
                max_array_size=s.max_array_size, depends=executors[-1] if executors else None,
                logging_dir=str(logs / p.name), skip_completed=True,
                slurm_logs_folder=str(logs / p.name / "slurm_logs"),
            ))
        else:
            executors.append(QuietLocalExecutor(
                p.pipeline, tasks=p.tasks, workers=p.workers, logging_dir=str(logs / p.name), skip_completed=True,
                # fork: workers start in milliseconds instead of re-importing everything (forkserver);
                # the children only run the pipeline and log to files, so the progress-bar threads
                # of this process have nothing they could be holding for them
                start_method="fork",
            ))
    return executors


# --------------------------------------------------------------------------- running, with progress


class _Watcher:
    """Polls task completions (and bytes read in the first pass) and moves a rich progress bar."""

    def __init__(self, job: Job, passes: list[Pass], total_bytes: int, console=None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.job, self.passes, self.total_bytes = job, passes, max(1, total_bytes)
        self.progress = Progress(TextColumn("[bold]clean[/bold] {task.description}"), BarColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self.ids = {p.name: self.progress.add_task(p.title, total=p.tasks, detail="", start=False) for p in passes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.progress.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.refresh()
        self.progress.__exit__(*exc)

    def done(self, p: Pass) -> int:
        folder = self.job.work / "logs" / p.name / "completions"
        return len(os.listdir(folder)) if folder.is_dir() else 0

    def refresh(self) -> None:
        for p in self.passes:
            tid = self.ids[p.name]
            done = self.done(p)
            if done and not self.progress.tasks[tid].started:
                self.progress.start_task(tid)
            detail = f"{done}/{p.tasks} tasks"
            if p.name == "filter":
                read = 0
                folder = self.job.work / "progress"
                for f in folder.glob("[0-9]*") if folder.is_dir() else ():
                    try:
                        read += int(f.read_text() or 0)
                    except (OSError, ValueError):
                        pass
                if read and not self.progress.tasks[tid].started:
                    self.progress.start_task(tid)
                detail += f", {read / 1e6:,.1f}/{self.total_bytes / 1e6:,.1f} MB"
            self.progress.update(tid, completed=done, detail=detail)

    def start(self, p: Pass) -> None:
        tid = self.ids[p.name]
        if not self.progress.tasks[tid].started:
            self.progress.start_task(tid)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.refresh()


def run_passes(job: Job, passes: list[Pass], *, total_bytes: int, console=None) -> None:
    """Run every pass to completion (locally in order, or submitted to Slurm and waited for)."""
    executors = make_executors(job, passes)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with _Watcher(job, passes, total_bytes, console) as watcher:
        if not job.slurm:
            for p, ex in zip(passes, executors):
                watcher.start(p)
                ex.run()
                incomplete = ex.get_incomplete_ranks(skip_completed=True)
                if incomplete:
                    raise LangadaptError(f"clean: pass '{p.name}' left {len(incomplete)} task(s) unfinished; "
                                         f"see {job.work / 'logs' / p.name / 'logs'}")
        else:
            executors[-1].run()  # submits every pass, each depending on the one before
            _wait_for_slurm(job, passes, executors)


def _wait_for_slurm(job: Job, passes: list[Pass], executors: list) -> None:
    """Block until every pass's tasks have completed; fail if the jobs left the queue unfinished."""
    poll = job.cfg.slurm.poll_seconds
    while True:
        left = {p.name: len(ex.get_incomplete_ranks(skip_completed=True)) for p, ex in zip(passes, executors)}
        if not any(left.values()):
            return
        ids = [str(ex.job_id) for ex in executors if ex.job_id not in (None, -1)]
        if ids and not _slurm_jobs_queued(ids):
            time.sleep(min(poll, 5))  # completion files may land just after the job leaves the queue
            left = {p.name: len(ex.get_incomplete_ranks(skip_completed=True)) for p, ex in zip(passes, executors)}
            if any(left.values()):
                unfinished = ", ".join(f"{k}: {v}" for k, v in left.items() if v)
                raise LangadaptError(f"clean: the Slurm jobs ended with unfinished tasks ({unfinished}); see the logs "
                                     f"in {job.work / 'logs'}; run the same command again to resume")
            return
        time.sleep(poll)


def _slurm_jobs_queued(ids: list[str]) -> bool:
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: keep waiting
    if out.returncode != 0:
        # squeue refuses ids it no longer knows: then none of them is queued
        return "Invalid job id" not in out.stderr
    return bool(out.stdout.strip())


def finish(job: Job) -> None:
    """Move the outputs into place (one rename each), keep the logs, drop the intermediates."""
    from langadapt.files import atomic_path

    for name in (DOCUMENTS, "rejects"):
        src, dst = job.work / name, job.out_dir / name
        if name == "rejects" and not job.cfg.rejects:
            continue
        if not src.exists():
            if dst.exists():  # moved by a run killed while finishing
                continue
            src.mkdir(parents=True)  # nothing survived (or nothing was rejected): an empty folder
        with atomic_path(dst) as tmp:
            os.replace(src, tmp)
    logs = job.out_dir / "logs"
    if (job.work / "logs").exists():
        if logs.exists():
            shutil.rmtree(logs)
        os.replace(job.work / "logs", logs)
    shutil.rmtree(job.work, ignore_errors=True)
