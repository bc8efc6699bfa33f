"""What the demos share: each party running the ``cctrain`` CLI as its own process, the
consortium's keys and signatures, the local enclave, parallel uploads, the referee's table.

This is the demos' plumbing, not part of cctrain: a real party runs the same ``cctrain``
commands by hand or from its own scripts (or uses the Python SDK, ``cctrain.client``); the
operator's steps (writing the policy, merging the signatures, starting the enclave and its
ranks) go through the operator's Python API, ``cctrain.operator``. Each
demo (``python examples/<demo>/demo.py``) puts this folder on ``sys.path`` to import it; to
copy a demo elsewhere, copy this file next to its folder.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cctrain import operator as op
from cctrain.local import LocalEnclave, LocalWorker

#: The virtual environment's scripts, where ``cctrain`` is installed next to this Python.
BIN = Path(sys.executable).parent


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def cctrain(
    *args: str, cwd: Path, check: bool = True, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cctrain ARGS`` in ``cwd`` (``home``: the party's ``CCTRAIN_HOME``); unless
    ``check=False``, a failure ends the demo with the command's output."""
    env = dict(os.environ, CCTRAIN_HOME=str(home)) if home is not None else None
    proc = subprocess.run(
        [str(BIN / "cctrain"), *args], cwd=cwd, text=True, capture_output=True, env=env
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"cctrain {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def arguments(doc: str | None, *, workdir: str) -> argparse.ArgumentParser:
    """The demo's command line: ``--workdir`` (default ``workdir``), described by the first
    line of its docstring."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(workdir))
    return ap


def fresh_workdir(path: Path) -> Path:
    """``path``, absolute and empty (a previous run's files are removed)."""
    work = path.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def keygen(work: Path, parties: Iterable[str]) -> None:
    """Each party's keys in its own folder, ``work/<party>/<party>.key`` and ``.pub.json``."""
    for pid in parties:
        (work / pid).mkdir()
        cctrain("keygen", pid, "--out", str(work / pid), cwd=work)


def write_policy(
    template: Path,
    work: Path,
    parties: Iterable[str],
    values: Mapping[str, str],
    path: Path,
    *,
    ranks: int = 1,
) -> Path:
    """The operator writes the policy (``cctrain.operator``): the template's text with every
    party's public keys (``@<party>.signing@``, ``@<party>.hpke@``, read from the
    ``<party>.pub.json`` each party sent), an expiry a week from now (``@EXPIRES@``) and
    ``values``; ``ranks > 1`` adds ``[cluster] ranks``. Validated before it is written."""
    text = template.read_text()
    for pid in parties:
        pub = op.public_keys(work / pid / f"{pid}.pub.json")
        text = text.replace(f"@{pid}.signing@", pub.signing_key)
        text = text.replace(f"@{pid}.hpke@", pub.hpke_key)
    expires = (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=7)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    for k, v in {"@EXPIRES@": expires, **values}.items():
        text = text.replace(k, v)
    builder = op.PolicyBuilder.from_toml(text)
    if ranks > 1:  # data-parallel on several attested enclave ranks (docs/cluster.md)
        builder.set("cluster.ranks", ranks)
    builder.write(path)
    return path


def collect_signatures(
    work: Path, policy: Path, envelope: Path, parties: Sequence[str]
) -> op.MergeResult:
    """Every party signs ``policy`` on its own (``cctrain policy sign``, into its own
    folder); the operator merges the signatures into ``envelope`` (``cctrain.operator.merge``)."""
    signed = []
    for pid in parties:
        own = work / pid / envelope.name
        cctrain(
            "policy", "sign", str(policy), "--key", f"{pid}/{pid}.key", "--envelope", str(own),
            cwd=work,
        )  # fmt: skip
        signed.append(own)
    result = op.merge(signed)
    result.signed.save(envelope)
    result.signed.require_complete()
    return result


def local_enclave(work: Path, envelope: Path, *, suffix: str = "", ranks: int = 1) -> LocalEnclave:
    """The enclave on the simulated TEE, as a local process (``with ... as enclave``), its
    state and log in ``work``. ``ranks > 1``: it is rank 0 of a cluster, serving the
    rendezvous the workers (:func:`cluster_workers`) join."""
    say(
        "the operator starts the enclave (simulated TEE)"
        if ranks == 1
        else f"the operator starts the enclave as rank 0 of {ranks} (simulated TEE, --cluster-listen)"
    )
    return op.local_enclave(
        envelope,
        state_dir=work / f"enclave-state{suffix}",
        log=work / f"enclave{suffix}.log",
        extra_args=("--cluster-listen", "127.0.0.1:0") if ranks > 1 else (),
    )


def cluster_workers(
    work: Path, envelope: Path, enclave: LocalEnclave, ranks: int, *, suffix: str = ""
) -> list[LocalWorker]:
    """Ranks 1..ranks-1, each its own `cctrain-enclave worker` process, started (they wait
    for rank 0 to start training, then attest to every rank)."""
    workers = []
    for r in range(1, ranks):
        assert enclave.cluster_rendezvous is not None
        w = op.local_worker(
            envelope,
            rank=r,
            rendezvous=enclave.cluster_rendezvous,
            state_dir=work / f"rank{r}-state{suffix}",
            log=work / f"rank{r}{suffix}.log",
        )
        w.start()
        workers.append(w)
    if workers:
        say(
            f"{len(workers)} worker rank(s) join rank 0's rendezvous at {enclave.cluster_rendezvous}"
        )
    return workers


def session(pid: str, work: Path, address: str, envelope: Path) -> tuple[str, ...]:
    """The options that make a command ``pid``'s, against the attested enclave."""
    return (
        "--enclave",
        address,
        "--policy",
        str(envelope),
        "--key",
        str(work / pid / f"{pid}.key"),
        "--allow-simulated",
    )


def upload_in_parallel(
    work: Path,
    providers: Sequence[str],
    args: Callable[[str], Sequence[str]],
    *,
    echo: bool = False,
) -> None:
    """Every provider runs ``cctrain upload ARGS(pid) --no-progress`` at once, each in its
    own folder with its own ``CCTRAIN_HOME``; ``echo`` prints what each says."""
    procs = [
        subprocess.Popen(
            [str(BIN / "cctrain"), "upload", *args(pid), "--no-progress"],
            cwd=work / pid,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, CCTRAIN_HOME=str(work / pid / ".cctrain")),
        )
        for pid in providers
    ]
    for pid, proc in zip(providers, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"upload by {pid} failed:\n{out}{err}")
        if echo:
            print(f"    {pid}: {out.strip()}")


def watch(work: Path, party: Sequence[str]) -> list[dict[str, Any]]:
    """``cctrain watch`` until training ends: the progress events, in order (``party``: a
    :func:`session`)."""
    out = cctrain("watch", *party, "--format", "json", cwd=work).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def fetch_release(work: Path, party: Sequence[str], out: Path) -> None:
    """``cctrain release fetch`` into ``out``, printing what it verified."""
    fetched = cctrain("release", "fetch", *party, "--out", str(out), cwd=work)
    for line in fetched.stdout.splitlines():
        print(f"    {line}")


# --------------------------------------------------------------------------- the referee


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """The share of rows of ``x`` whose predicted class (``argmax``) is ``y``."""
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def print_accuracy_table(
    title: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    last_column: str,
    last_cell: Callable[[Mapping[str, Any]], str],
    justify: Literal["left", "right"] = "left",
) -> None:
    """One line a model: its name, training rows, accuracy and ``last_cell(row)``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("model")
    table.add_column("training rows", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column(last_column, justify=justify)
    for r in rows:
        table.add_row(str(r["model"]), str(r["rows"]), f"{r['accuracy']:.3f}", last_cell(r))
    Console().print(table)


def write_results(work: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    (work / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
