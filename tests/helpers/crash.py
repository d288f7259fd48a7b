"""Running ``pipeline`` commands as killable processes, without paying the import cost each time.

A forkserver process imports the CLI and its heavy dependencies (torch, open_clip, duckdb,
faiss) once; each command is a fresh process forked from it that runs ``pipeline ARGS`` exactly
as the console script does, with its output in a log file. :func:`start` returns the
``multiprocessing.Process``: ``kill()`` sends it SIGKILL, so it dies as a killed ``pipeline``
would: no ``finally``, no ``atexit``, open files and transactions left as they are.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys

import click  # noqa: F401  (preloaded in the server)
import duckdb  # noqa: F401
import faiss  # noqa: F401
import open_clip  # noqa: F401
import torch  # noqa: F401

import pipeline.cli  # noqa: F401
import pipeline.stages.attributes  # noqa: F401
import pipeline.stages.classify  # noqa: F401
import pipeline.stages.index_images  # noqa: F401
import stores.removal  # noqa: F401

_CTX = None


def _noop() -> None:
    pass


def context():
    """The forkserver context, started (and its imports done) before this returns."""
    global _CTX
    if _CTX is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        warm = ctx.Process(target=_noop)
        warm.start()
        warm.join()
        _CTX = ctx
    return _CTX


def _main(args: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    torch.set_num_threads(1)
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not tqdm's multiprocessing lock: a killed process would leak its semaphore
    from pipeline.cli import cli

    cli.main(args, prog_name="pipeline")  # exits with the command's status


def start(args: list[str], log: str) -> mp.Process:
    proc = context().Process(target=_main, args=([str(a) for a in args], str(log)), daemon=False)
    proc.start()
    return proc


def cpu_seconds() -> float:
    """CPU seconds (user + system) of every command process run so far: the forkserver reaps
    them, so their times add up in its children's times (Linux /proc)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks  # utime stime cutime cstime
