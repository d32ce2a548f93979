"""Multi-process launch for the training stages: `torch.distributed.run` (torchrun), never our own launcher.

A stage (goae.pipeline.stage with torchrun=True) calls `maybe_torchrun(params, sys.argv)` before any work. With
`train.gpus * train.nnodes > 1` and no torchrun environment yet, the script replaces itself (os.execv,
same pid, so DVC's signals reach torchrun, which forwards them to the workers) with

    python -m torch.distributed.run --nproc_per_node=<train.gpus> --nnodes=<train.nnodes> <rdzv> <script> ...

and torchrun starts one worker per GPU; each worker re-runs the script, sees LOCAL_RANK/WORLD_SIZE and
carries on (goae.train.loop.init_distributed joins the group). Otherwise it returns and the stage runs as
one plain Python process. The exit status is torchrun's (non-zero when any worker fails).

Rendezvous (<rdzv>):
- one node: `--standalone` (a free local port, no configuration).
- several nodes: run the same `dvc repro` / `python stages/<stage>.py` on every node, with the same
  params.yaml and a filesystem shared by all nodes for the stage outs and `.goae-state/` (rank 0 writes
  checkpoints, every rank reads them on resume), and either
    GOAE_RDZV_ENDPOINT=host:port   (c10d rendezvous; any node's address; GOAE_RDZV_ID names the job,
                                   default 'goae'), or
    MASTER_ADDR, MASTER_PORT (default 29500) and NODE_RANK (0..nnodes-1)   (static rendezvous).
  GOAE_TORCHRUN_ARGS adds raw torchrun options (e.g. "--max_restarts=3"), split on whitespace.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

TORCHRUN_ENV = ("LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")


def inside_torchrun(env=os.environ) -> bool:
    return any(k in env for k in TORCHRUN_ENV)


def torchrun_command(gpus: int, nnodes: int, script_argv: list[str], env=os.environ) -> list[str]:
    """The argv that runs `script_argv` (script path + its arguments) under torch.distributed.run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", f"--nnodes={nnodes}"]
    if env.get("GOAE_RDZV_ENDPOINT"):
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={env['GOAE_RDZV_ENDPOINT']}",
                f"--rdzv_id={env.get('GOAE_RDZV_ID', 'goae')}"]
    elif nnodes > 1:
        if not env.get("MASTER_ADDR") or "NODE_RANK" not in env:
            raise RuntimeError(f"train.nnodes={nnodes}: set GOAE_RDZV_ENDPOINT=host:port (c10d), or MASTER_ADDR "
                               "and NODE_RANK (static rendezvous) on every node; see goae/launch.py")
        cmd += [f"--master_addr={env['MASTER_ADDR']}", f"--master_port={env.get('MASTER_PORT', '29500')}",
                f"--node_rank={env['NODE_RANK']}"]
    else:
        cmd.append("--standalone")
    cmd += shlex.split(env.get("GOAE_TORCHRUN_ARGS", ""))
    return cmd + [str(script_argv[0]), *map(str, script_argv[1:])]


def maybe_torchrun(params, script_argv: list[str]) -> None:
    """Re-exec the current stage script under torchrun when params ask for several processes.

    `params`: a goae.config.Params or the path of params.yaml. A params file that does not parse is
    left to the stage itself (which reports the bad key), so this never hides a config error."""
    if not hasattr(params, "train"):
        if inside_torchrun():
            return
        from goae.config import ConfigError, load_params
        try:
            params = load_params(params)
        except ConfigError:
            return
    gpus, nnodes = int(params.train.gpus), int(params.train.nnodes)  # read in every process (declared keys)
    if inside_torchrun() or gpus * nnodes <= 1:
        return
    if not Path(script_argv[0]).is_file():
        raise FileNotFoundError(f"maybe_torchrun: script {script_argv[0]} not found (run the stage as a file)")
    cmd = torchrun_command(gpus, nnodes, list(script_argv))
    print(f"[launch] {gpus} process(es) per node x {nnodes} node(s): {shlex.join(cmd)}", flush=True)
    sys.stderr.flush()
    os.execv(sys.executable, cmd)  # never returns; the process exits with torchrun's status
