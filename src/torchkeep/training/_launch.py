"""``torchkeep train --nproc N``: start torchrun's elastic agent (``torch.distributed.run``) in this process.

It runs ``python -m torchkeep train ...`` in N worker processes (per node), exactly what
``torchrun --nproc-per-node N -m torchkeep train ...`` runs: the same workers, the same restarts on failure
(``--max-restarts``), the same multi-node rendezvous (``--nnodes``, ``--rdzv-endpoint``). What this adds:
failures end in one line (the failed rank, its exit code; a rendezvous that times out says who was missing)
instead of the agent's traceback.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from torchkeep.errors import TorchkeepError, UsageError

__all__ = ["LaunchResult", "launch"]


@dataclass
class LaunchResult:
    """How a launched group ended: ``exit_code`` 0 when every worker of the last attempt succeeded."""

    exit_code: int
    failed_rank: int | None = None
    message: str = ""


def torchrun_args(
    worker_args: list[str], *, nproc: int, nnodes: int = 1, node_rank: int | None = None,
    rdzv_endpoint: str | None = None, max_restarts: int = 0, join_timeout: float = 600.0,
) -> list[str]:
    """The ``torchrun`` command line (without the program name) that runs ``torchkeep train worker_args``."""
    if nproc < 1 or nnodes < 1:
        raise UsageError("--nproc and --nnodes must be at least 1")
    args = ["--nproc-per-node", str(nproc), "--nnodes", str(nnodes), "--max-restarts", str(max_restarts)]
    if nnodes == 1 and rdzv_endpoint is None:
        args.append("--standalone")  # a free local port, no endpoint to give
    else:
        if rdzv_endpoint is None:
            raise UsageError(
                f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (the same on every node)",
                fix="e.g. --rdzv-endpoint node0.example:29400",
            )
        args += ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-conf", f"join_timeout={join_timeout:g}"]
        if node_rank is not None:
            args += ["--node-rank", str(node_rank)]
    return [*args, "--module", "torchkeep", "train", *worker_args]


def launch(
    worker_args: list[str], *, nproc: int, nnodes: int = 1, node_rank: int | None = None,
    rdzv_endpoint: str | None = None, max_restarts: int = 0, join_timeout: float = 600.0,
) -> LaunchResult:
    """Run ``torchkeep train worker_args`` in ``nproc`` processes under torchrun's elastic agent.

    Raises:
        TorchkeepError: the rendezvous timed out (another node never joined) or failed.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError
    from torch.distributed.run import get_args_parser, run

    argv = torchrun_args(
        worker_args, nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
        max_restarts=max_restarts, join_timeout=join_timeout,
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own choice, without its warning
    # the agent's INFO lines stay quiet; its warnings (a worker failed, the group restarts) are shown
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        after = f" after {max_restarts} restart{'s' if max_restarts != 1 else ''}" if max_restarts else ""
        return LaunchResult(code if code > 0 else 1, rank, f"rank {rank} {how}{after}; the run stopped")
    except RendezvousTimeoutError:
        raise TorchkeepError(
            f"rendezvous timed out: not all {nnodes} nodes joined {rdzv_endpoint} within {join_timeout:g}s",
            fix=f"start the same command on every node (--nnodes {nnodes}, same --rdzv-endpoint), "
            "or raise --rdzv-timeout",
        ) from None
    except RendezvousError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchkeepError(f"rendezvous failed at {rdzv_endpoint}: {first}", fix="check --rdzv-endpoint") from None
    return LaunchResult(0)
