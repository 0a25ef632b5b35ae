"""The command lines the loop runs (each printed before it runs), their launchers, and a live line.

Self-play and the builders are ``unigap`` commands; training and merging are the host's unmodified
``llamafactory-cli train`` / ``export``.  Launchers:

* ``plain``: one process (the host itself switches to torchrun when it sees several GPUs);
* ``torchrun``: training through the host's own switch (``FORCE_TORCHRUN=1 NPROC_PER_NODE=n
  llamafactory-cli train``), self-play as ``torchrun --nproc_per_node n -m unigap selfplay``;
* ``accelerate``: ``accelerate launch --num_processes n [--config_file F] -m llamafactory.launcher``
  (the host's training entry) and ``-m unigap selfplay``.

A command's output goes to a log file beside its results; the terminal gets one live line per
stage (elapsed time, images/s or steps, ETA), then the stage's outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnigapError
from .journal import die

BIN = Path(sys.executable).parent
#: every command the loop starts: offline, no version nag
BASE_ENV = {"HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", "TOKENIZERS_PARALLELISM": "false"}


class StageError(UnigapError):
    """A stage's command failed (the message names the stage, the command and its log)."""


def _tool(name: str) -> str:
    beside = BIN / name
    return str(beside) if beside.exists() else name


@dataclass
class Command:
    """One command line with its extra environment (both printed)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        head = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (head + " " if head else "") + " ".join(shlex.quote(str(a)) for a in self.argv)


def unigap_command(args: Sequence[str], launcher: str = "plain", nproc: int = 1,
                   accelerate_config: str | None = None, port: int = 29571) -> Command:
    """``unigap ARGS`` under a launcher (self-play runs the same on any number of processes)."""
    if launcher == "plain" or (launcher != "accelerate" and nproc == 1):
        return Command([_tool("unigap"), *args])
    if launcher == "torchrun":
        return Command([_tool("torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(port),
                        "-m", "unigap", *args])
    head = [_tool("accelerate"), "launch", "--num_processes", str(nproc), "--main_process_port", str(port)]
    if accelerate_config:
        head += ["--config_file", accelerate_config]
    elif nproc > 1:
        head += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return Command([*head, "-m", "unigap", *args])


def train_command(yaml_path: str | os.PathLike, launcher: str = "plain", nproc: int = 1,
                  accelerate_config: str | None = None, port: int = 29581) -> Command:
    """The host's unmodified training entry on ``yaml_path`` under a launcher."""
    if launcher == "plain":
        return Command([_tool("llamafactory-cli"), "train", str(yaml_path)])
    if launcher == "torchrun":
        return Command([_tool("llamafactory-cli"), "train", str(yaml_path)],
                       {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(nproc), "MASTER_PORT": str(port)})
    head = [_tool("accelerate"), "launch", "--num_processes", str(nproc), "--main_process_port", str(port)]
    if accelerate_config:
        head += ["--config_file", accelerate_config]
    elif nproc > 1:
        head += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
    return Command([*head, "-m", "llamafactory.launcher", str(yaml_path)])


def export_command(yaml_path: str | os.PathLike) -> Command:
    return Command([_tool("llamafactory-cli"), "export", str(yaml_path)])


# ---------------------------------------------------------------------------------- live line
class Live:
    """One line per stage: rewritten in place on a terminal, printed once per stage otherwise."""

    def __init__(self, enabled: bool = True):
        self.tty = enabled and sys.stdout.isatty()
        self._last = 0.0

    def update(self, text: str) -> None:
        if self.tty and time.monotonic() - self._last > 0.5:
            self._last = time.monotonic()
            print("\r\033[K" + text, end="", flush=True)

    def done(self, text: str) -> None:
        if self.tty:
            print("\r\033[K", end="")
        print(text, flush=True)


def selfplay_progress(run_dir: Path, total_images: int, per_prompt: int) -> Callable[[float], str]:
    """Images/s and ETA of a self-play run, from the prompts it has published so far."""
    def probe(elapsed: float) -> str:
        parts = run_dir / "parts"
        done = (len(list(parts.glob("*.jsonl"))) if parts.is_dir() else 0) * per_prompt
        if (run_dir / "summary.json").is_file():
            done = total_images
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {(total_images - done) / rate:.0f}s" if rate > 0 and done < total_images else ""
        return f"{done}/{total_images} images, {rate:.1f} img/s{eta}"
    return probe


def train_progress(output_dir: Path) -> Callable[[float], str]:
    """Steps, loss and ETA of a training, from the host's ``trainer_log.jsonl``."""
    def probe(_elapsed: float) -> str:
        log = output_dir / "trainer_log.jsonl"
        if not log.is_file():
            return "starting"
        lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            return "starting"
        try:
            last = json.loads(lines[-1])
        except json.JSONDecodeError:
            return "running"
        loss = f", loss {last['loss']:.4f}" if isinstance(last.get("loss"), (int, float)) else ""
        return (f"step {last.get('current_steps')}/{last.get('total_steps')}{loss}, "
                f"ETA {last.get('remaining_time', '?')}")
    return probe


@contextlib.contextmanager
def _stop_child_with_us(proc: subprocess.Popen) -> Iterator[None]:
    """A SIGTERM (``kill``, ``timeout``, a scheduler) or Ctrl-C that stops the loop stops the running command
    too, instead of leaving it to run on unattended; the stage it was in is redone on the next run."""
    def stop(signum: int) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        stop(signal.SIGTERM)
        raise SystemExit(128 + signal.SIGTERM)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield
    except KeyboardInterrupt:
        stop(signal.SIGINT)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def run_command(cmd: Command, log_path: Path, *, stage: str, label: str, live: Live,
                probe: Callable[[float], str] | None = None, kill_when: Callable[[], bool] | None = None,
                child_env: Mapping[str, str] | None = None, cwd: str | None = None) -> float:
    """Run ``cmd`` (printed), its output to ``log_path``; returns its wall time.

    ``kill_when`` (the test hook of ``during``): polled while the command runs; when it returns True
    (or the command ends first) the command and this process are killed with SIGKILL.
    """
    print(f"$ {cmd.shell()}", flush=True)
    env = {**os.environ, **BASE_ENV, **cmd.env, **(child_env or {})}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for key in ("FORCE_TORCHRUN", "NPROC_PER_NODE"):
        if key not in cmd.env:
            env.pop(key, None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([str(a) for a in cmd.argv], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        with _stop_child_with_us(proc):
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if kill_when is not None and kill_when():
                    proc.kill()
                    proc.wait()
                    die()
                if probe is not None:
                    live.update(f"  {label}: {time.perf_counter() - start:.0f}s, {probe(time.perf_counter() - start)}")
    seconds = time.perf_counter() - start
    if kill_when is not None:
        die()  # the command ended before the probe fired: die before the journal records it
    if code:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        live.done("")
        print(tail, file=sys.stderr)
        raise StageError(f"stage {stage}: `{cmd.shell()}` failed (exit {code}); full output in {log_path}")
    return seconds


def write_yaml(path: Path, config: Mapping[str, Any]) -> Path:
    """A YAML file (atomic), keys in the order given."""
    import yaml

    from ..fsutil import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True))
    return path
