"""The processes serving one model together under `mlx.launch`: who they are, how rank 0 talks to
the others, and the watchdog that keeps any of them from waiting forever.

`join_world` runs early in `swallow-server` (after the settings, before the model): without
mlx.launch's environment it returns None and nothing here is touched. Under mlx.launch it joins
the group (ring over TCP or Thunderbolt, JACCL over RDMA, MPI), and rank 0's settings become every
rank's, so that all ranks build the same batches whatever config file each host has.

The channel: each engine step rank 0 sends the others what changed, as an `all_sum` of its size
(the others add 0), then, when it is not empty, an `all_sum` of the pickled payload. A plain decode
step costs one 4-byte all_sum. Everything runs on the engine's thread and stream, so these
collectives and the model's own come in the same order on every rank.
"""

import json
import logging
import os
import pickle
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("swallow.distributed")

# The environment mlx.launch (or mpirun) gives each rank, by backend.
BACKEND_SIGNS = (("jaccl", "MLX_IBV_DEVICES"), ("ring", "MLX_HOSTFILE"), ("nccl", "NCCL_HOST_IP"),
                 ("mpi", "OMPI_COMM_WORLD_SIZE"))
HEARTBEAT_S = 1.0  # rank 0 sends an empty step this often while idle
NEXT_ONLY = -1  # the size that means "one plain engine step, nothing else changed"
SLOT_BYTES = 1024  # each rank's entry when they tell each other who they are
EXIT_GRACE_S = 5.0  # after a rank is lost: the most rank 0 takes to exit, whatever hangs


class RankLost(BaseException):
    """A collective failed or a rank went silent: the ranks can no longer run in lockstep. A
    BaseException, so that the engine's per-step recovery (fail the batch, go on) doesn't catch it:
    the engine dies, rank 0 exits non-zero."""


def launched_backend() -> str | None:
    """The backend mlx.launch set this process up for; None when it was not launched so."""
    if "MLX_RANK" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        return None
    for backend, variable in BACKEND_SIGNS:
        if os.environ.get(variable):
            return backend
    return None  # MLX_RANK alone (a one-host hostfile): a single process


@dataclass
class World:
    group: object  # mx.distributed.Group
    backend: str
    timeout: float
    ranks: list = field(default_factory=list)  # [{"rank", "host", "pid", ...}] once gathered

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    def describe(self) -> dict:
        """What /health says of the world."""
        return {"world_size": self.size, "backend": self.backend, "rank": self.rank,
                "timeout_s": self.timeout, "ranks": self.ranks}

    # ---- collectives -----------------------------------------------------------------

    def share_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's bytes on every rank (the others pass None)."""
        import mlx.core as mx
        import numpy as np

        n = len(data) if data is not None else 0
        n = int(mx.distributed.all_sum(mx.array([n], dtype=mx.int32), group=self.group).item())
        if n <= 0:
            return b""
        mine = mx.array(np.frombuffer(data, dtype=np.uint8)) if data is not None else mx.zeros(n, dtype=mx.uint8)
        return bytes(np.array(mx.distributed.all_sum(mine, group=self.group)))

    def gather(self, entry: dict) -> list[dict]:
        """Every rank's `entry` (JSON, under SLOT_BYTES), in rank order, on every rank."""
        import mlx.core as mx
        import numpy as np

        raw = json.dumps(entry).encode()[:SLOT_BYTES]
        slots = np.zeros((self.size, SLOT_BYTES), dtype=np.uint8)
        slots[self.rank, :len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        summed = np.array(mx.distributed.all_sum(mx.array(slots), group=self.group))
        return [json.loads(bytes(row).rstrip(b"\0")) for row in summed]

    def introduce(self, **facts) -> list[dict]:
        """Each rank's host, pid and `facts`, on every rank (kept for /health and the log)."""
        self.ranks = self.gather({"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), **facts})
        return self.ranks


def join_world(settings, given: list[str] | None = None):
    """(World or None, the settings to run with). Under mlx.launch: joins the group and takes rank
    0's settings, for exactly one model (`given`: the --model values), loaded for good: no other
    models, no keep-alive. Raises ValueError with a message for the user when this can't be served so."""
    backend = launched_backend()
    if backend is None:
        return None, settings
    import mlx.core as mx

    from server.config import split_alias

    if settings.models or len(given or []) > 1:  # [[models]] or several --model: not split
        raise ValueError("under mlx.launch the server serves exactly one model (one --model, no [[models]] "
                         "in config.toml); configure a single model to serve it across processes")
    if given:
        alias, spec = split_alias(given[0])
        settings = settings.model_copy(update={"model": spec, "served_model_name": alias or settings.served_model_name})
    settings = settings.model_copy(update={"discover_cached_models": False, "keep_alive": -1.0})
    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except RuntimeError as e:
        raise ValueError(f"could not join the {backend} group mlx.launch set up: {e}") from e
    if group.size() == 1:
        return None, settings
    world = World(group, backend, settings.distributed_timeout)
    shared = world.share_bytes(settings.model_dump_json().encode() if world.rank == 0 else None)
    settings = type(settings).model_validate_json(shared)
    if settings.prompt_cache_disk_mb:  # snapshots hold one rank's shard: not kept under distribution
        settings = settings.model_copy(update={"prompt_cache_disk_mb": 0})
    world.timeout = settings.distributed_timeout
    log.info("distributed: rank %d of %d (%s backend); rank 0 serves HTTP, the others run the engine in step",
             world.rank, world.size, backend)
    return world, settings


class Channel:
    """Rank 0's messages to the others: a list of operations per engine step."""

    def __init__(self, world: World, watchdog: "Watchdog"):
        self.world = world
        self.watchdog = watchdog
        self.last_sent = time.monotonic()

    def send(self, ops: list, what: str = "an engine step") -> None:
        import mlx.core as mx

        with self.watchdog.guard(f"{what} (telling the other ranks)"):
            try:
                if ops == [("next",)]:
                    mx.distributed.all_sum(mx.array([NEXT_ONLY], dtype=mx.int32), group=self.world.group).item()
                else:
                    self.world.share_bytes(pickle.dumps(ops, protocol=pickle.HIGHEST_PROTOCOL) if ops else None)
            except RuntimeError as e:
                raise RankLost(f"a rank was lost while sending {what}: {e}") from e
        self.last_sent = time.monotonic()

    def receive(self) -> list:
        import mlx.core as mx
        import numpy as np

        group = self.world.group
        with self.watchdog.guard("waiting for rank 0's next step", heartbeat=True):
            try:
                n = int(mx.distributed.all_sum(mx.zeros(1, dtype=mx.int32), group=group).item())
                if n == NEXT_ONLY:
                    return [("next",)]
                if n <= 0:
                    return []  # a heartbeat
                data = mx.distributed.all_sum(mx.zeros(n, dtype=mx.uint8), group=group)
                return pickle.loads(bytes(np.array(data)))
            except RuntimeError as e:
                raise RankLost(f"rank 0 was lost: {e}") from e


class Watchdog:
    """Bounds every wait on the other ranks: a section that runs past its limit calls `on_timeout`
    (once, from the watchdog's thread) with what it was waiting for. A collective can't be
    interrupted, so `on_timeout` ends the process (os._exit), after rank 0 has failed its requests."""

    def __init__(self, timeout: float, on_timeout):
        self.timeout = timeout
        self.on_timeout = on_timeout
        self._section: tuple | None = None  # (what, deadline)
        self._fired = False
        threading.Thread(target=self._watch, name="swallow-watchdog", daemon=True).start()

    @contextmanager
    def guard(self, what: str, limit: float | None = None, heartbeat: bool = False):
        # a rank waiting for rank 0 also waits out rank 0's idle heartbeat
        limit = (limit or self.timeout) + (HEARTBEAT_S if heartbeat else 0)
        self._section = (what, time.monotonic() + limit, limit)
        try:
            yield
        finally:
            self._section = None

    def _watch(self) -> None:
        while not self._fired:
            time.sleep(0.2)
            section = self._section
            if section is not None and time.monotonic() > section[1]:
                self._fired = True
                self.on_timeout(f"no answer within {section[2]:.0f} s while {section[0]}")


def exit_soon(status: int, after: float = EXIT_GRACE_S) -> None:
    """Ends the process in `after` seconds whatever is still running (a thread stuck in a collective
    keeps a normal exit from finishing)."""

    def end():
        time.sleep(after)
        logging.shutdown()
        os._exit(status)

    threading.Thread(target=end, name="swallow-exit", daemon=True).start()


def device_name() -> str:
    import mlx.core as mx

    try:
        return str(mx.device_info().get("device_name") or mx.default_device())
    except (AttributeError, RuntimeError, TypeError):  # an MLX without device_info
        return str(mx.default_device())
