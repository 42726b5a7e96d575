"""The ranks as Ray actors: one process per rank, each memory-mapping its own rank directory from
its own node's disk. The only module of llama_np that imports ray (`pip install "llama_np[ray]"`).

    open_ray(model_dir, N)                  a local Ray instance, N actors on this machine
    open_ray(model_dir, N, address=ADDR)    the cluster that `ray start --head` / `ray start
                                            --address=ADDR` made: one rank per node (a placement
                                            group with strategy STRICT_SPREAD); the actor of rank k
                                            opens MODEL_DIR/rank-KK-of-NN at the same absolute path
                                            on its node: copy rank k's directory to node k (it needs
                                            no other), or put MODEL_DIR on a shared filesystem

How the partial outputs of each layer are summed (`reductions`), all giving the same bits:

    "compiled"  the default: the whole forward pass as one Ray compiled graph (ray.dag,
                experimental_compile), built once. Every rank sends its partial output to every
                rank through Ray's channels (shared memory on one node) and each rank sums the N
                parts itself, in rank order; the driver only sends the tokens and gathers the
                logits. No task is scheduled per call: the cheapest per sum (benchmarks/).
    "ranks"     the same graph as ordinary actor calls, the parts passed as object refs.
    "driver"    the driver gathers the N parts of every sum, adds them and sends h back: two
                round trips per layer (rank.forward_summed_here, the clearest to read).

Faults: a rank whose actor dies (killed, out of memory, its node gone) ends the forward pass with
a one-line error naming the rank, its node and pid, as soon as Ray reports the death. While the
driver waits, a watchdog thread asks every rank every `health_interval` seconds whether it is
alive (on a thread of the rank's own, so a busy rank answers); a rank silent for
`health_timeout` seconds is killed and named. After a fault the model refuses further work.
"""
from __future__ import annotations

import hashlib
import logging
import os
import site
import socket
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

logging.getLogger("ray.widgets.util").setLevel(logging.WARNING)   # in Jupyter, importing ray says what it
with warnings.catch_warnings():                                   # misses for rich output (ipywidgets)
    warnings.simplefilter("ignore")
    import ray
import ray.exceptions
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import ModelArgs
from ..errors import LlamaNpError
from ..precision import fp32_bytes, mem_available
from ..tokenizer import Tokenizer
from ..weights import TOKENIZER_FILE
from .llama import TensorParallelLlama
from .rank import RankRunner, forward_summed_here
from .ranks import check_same_model, find_rank_dirs, rank_dir_name, rank_info, read_rank_dir

REDUCTIONS = ("compiled", "ranks", "driver")
CONNECT_TIMEOUT = 5.0           # seconds to reach a cluster's address before saying it cannot be reached
PLACEMENT_TIMEOUT = 60.0        # seconds for the cluster to give every rank its own node
OPEN_TIMEOUT = 600.0            # seconds for the ranks to open (map) their directories


class RankActor(RankRunner):
    """A RankRunner in a Ray actor. It opens its directory in `open` (not in the constructor) so that a
    bad directory comes back as that call's error, and answers `ping` on a thread of its own."""

    def __init__(self):
        # Ray's compiled graphs import torch in every actor where it is installed (to move GPU
        # tensors): seconds and hundreds of MB per rank for nothing, as ranks pass NumPy arrays.
        sys.modules.setdefault("torch", None)

    def open(self, rank_dir: str, rank: int, world_size: int, fp32: str) -> dict:
        RankRunner.__init__(self, rank_dir, rank, world_size, fp32)
        return {"info": self.info, "node": ray.util.get_node_ip_address(), "host": socket.gethostname(),
                "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def tokenizer_bytes(self) -> bytes | None:
        path = Path(self.info.path) / TOKENIZER_FILE
        return path.read_bytes() if path.is_file() else None

    @ray.method(concurrency_group="health")
    def ping(self) -> bool:
        return True


_RemoteRank = ray.remote(concurrency_groups={"health": 1})(RankActor)


def open_ray(model_dir, world_size: int, address: str | None = None, fp32: str = "auto",
             reductions: str = "compiled", health_interval: float = 5.0, health_timeout: float = 60.0
             ) -> TensorParallelLlama:
    """TensorParallelLlama over N Ray actors (see the module docstring)."""
    if reductions not in REDUCTIONS:
        raise LlamaNpError(f"reductions must be one of {', '.join(REDUCTIONS)}, got {reductions!r}")
    if address is None:                      # everything is on this machine: check it before Ray starts
        paths = find_rank_dirs(model_dir, world_size)
        ranks = [read_rank_dir(path, k, world_size) for k, path in enumerate(paths)]
        check_same_model([rank_info(path, k, world_size, w, c) for k, (path, (_, w, c)) in enumerate(zip(paths, ranks))])
        if fp32 == "auto":                   # the ranks share this machine's memory: one decision for all
            fp32 = "on" if sum(fp32_bytes(w) for _, w, _ in ranks) <= mem_available() // 2 else "off"
        start_local_ray()
    else:                                    # the ranks' directories are on their nodes
        paths = [Path(model_dir).absolute() / rank_dir_name(k, world_size) for k in range(world_size)]
        connect(address)
    ranks = RayRanks(paths, world_size, address, fp32, reductions, health_interval, health_timeout)
    try:
        return TensorParallelLlama(ranks, ranks.tokenizer())
    except BaseException:
        ranks.close()
        raise


def _quiet_ray_logging() -> None:
    """Our lines only: Ray's loggers and deprecation warnings say nothing below CRITICAL, and the
    driver does not print the errors the cluster reports (such as "A worker died ...", which Ray
    writes to stdout, into the middle of the generated text): the ranks' faults are ours to report,
    in one line."""
    for name in ("ray", "ray.dag", "ray.experimental"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"ray(\..*)?")
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    if worker is not None and hasattr(worker, "print_to_stdstream"):
        worker.print_to_stdstream = lambda data, ignore_prefix=False: None


def start_local_ray() -> None:
    """A Ray instance on this machine for the ranks (or the one this process already started)."""
    if not ray.is_initialized():
        try:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.CRITICAL, runtime_env=_this_code())
        except Exception as e:               # no room in /tmp, ports taken, ...
            raise LlamaNpError(f"could not start a local Ray instance: {_first_line(e)}") from None
    _quiet_ray_logging()


def _this_code() -> dict | None:
    """Ray's workers import llama_np from the installed packages or the current directory (Ray puts
    it on their path); when this process runs llama_np from elsewhere (a source tree), point the
    workers at that tree too, so that both sides run the same code."""
    root = Path(__file__).resolve().parents[2]
    usual = [Path.cwd()] + [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()]]
    if any(root == p.resolve() for p in usual):
        return None
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}}


def connect(address: str) -> None:
    """Join the cluster at `address` (HOST:PORT of the head node's GCS, as `ray start --head` prints it)."""
    if ray.is_initialized():
        _quiet_ray_logging()
        return
    if address.startswith("ray://"):
        raise LlamaNpError(f"--ray {address}: Ray Client addresses are not supported; run llama-np on a node of "
                           f"the cluster and give the head's HOST:PORT (`ray start --head` prints it)")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LlamaNpError(f"--ray {address!r}: expected HOST:PORT of the cluster's head node (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise LlamaNpError(f"cannot reach the Ray cluster at {address}: {e.strerror or e} (is `ray start --head` "
                           f"running there?)") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.CRITICAL)
    except Exception as e:                   # wrong port, another service, version mismatch, ...
        raise LlamaNpError(f"cannot connect to the Ray cluster at {address}: {_first_line(e)}") from None
    _quiet_ray_logging()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


class RayRanks:
    """The N rank actors and how a forward pass runs over them (the group TensorParallelLlama uses)."""

    def __init__(self, paths: list[Path], world_size: int, address: str | None, fp32: str, reductions: str,
                 health_interval: float, health_timeout: float):
        self.world_size, self.address, self.reductions = world_size, address, reductions
        self.failed: str | None = None            # after a fault: the error every later call repeats
        self.health_interval, self.health_timeout = health_interval, health_timeout
        self.hung: dict[int, str] = {}            # rank -> why the watchdog killed it
        self.pg, self.dag, self.actors, self.nodes = None, None, [], []
        self._tmp = None
        self._waiting = threading.Event()
        self._closed = threading.Event()
        try:
            self.actors = self._start_actors(world_size)
            opened = self._open_ranks(paths, fp32)
            self.nodes = [{k: v for k, v in o.items() if k != "info"} for o in opened]
            infos = [o["info"] for o in opened]
            check_same_model(infos)
            self.info = infos[0]
            self.config = ModelArgs.from_dict(self.info.args)
            if reductions == "compiled":
                self.dag = self._compile()
                self._warm_up()
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._watch, name="llama_np-rank-watchdog", daemon=True).start()

    # ---------------------------------------------------------------- starting
    def _start_actors(self, n: int) -> list:
        """N actors: on this machine (num_cpus=0, so that any N fit), or one per node of the cluster."""
        if self.address is None:
            threads = max(1, (os.cpu_count() or 1) // n)
            return [_RemoteRank.options(num_cpus=0, runtime_env=_threads_env(threads)).remote() for _ in range(n)]
        alive = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= 1]
        if len(alive) < n:
            raise LlamaNpError(f"the Ray cluster at {self.address} has {len(alive)} node(s) with a free CPU; "
                               f"{n} ranks need {n} nodes (one rank per node)")
        self.pg = placement_group([{"CPU": 1}] * n, strategy="STRICT_SPREAD")
        try:
            ray.get(self.pg.ready(), timeout=PLACEMENT_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise LlamaNpError(f"the Ray cluster at {self.address} could not give each of the {n} ranks a node of "
                               f"its own within {PLACEMENT_TIMEOUT:.0f} s (STRICT_SPREAD placement)") from None
        node_of_bundle = placement_group_table(self.pg)["bundles_to_node_id"]
        cpus = {node["NodeID"]: int(node["Resources"].get("CPU", 1)) for node in alive}
        return [_RemoteRank.options(num_cpus=1, runtime_env=_threads_env(cpus.get(node_of_bundle[k], 1)),
                                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, k)).remote()
                for k in range(n)]

    def _open_ranks(self, paths: list[Path], fp32: str) -> list[dict]:
        """Every rank opens its directory; the first rank that cannot says why, naming itself."""
        refs = [actor.open.remote(str(path), k, self.world_size, fp32) for k, (actor, path) in
                enumerate(zip(self.actors, paths))]
        opened = []
        for k, ref in enumerate(refs):
            try:
                opened.append(ray.get(ref, timeout=OPEN_TIMEOUT))
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(e.cause, LlamaNpError) else _first_line(e)
                raise LlamaNpError(f"rank {k} of {self.world_size}: {cause}") from None
            except (ray.exceptions.RayError, TimeoutError) as e:
                raise LlamaNpError(f"rank {k} of {self.world_size} did not start: {_first_line(e)}") from None
        return opened

    def _compile(self):
        """The forward pass as a compiled graph: (tokens, start_pos, cache_id) in, N logits slices out."""
        from ray.dag import InputNode, MultiOutputNode

        with InputNode() as inp:
            logits = self._graph(lambda actor, method, *args: getattr(actor, method).bind(*args), inp[0], inp[1], inp[2])
            dag = MultiOutputNode(logits)
        return dag.experimental_compile(_submit_timeout=OPEN_TIMEOUT)

    def _warm_up(self) -> None:
        """One tiny pass through the compiled graph: Ray sets up its channels on the first execution (and
        a rank that dies during that setup can take the driver down with it), so do it before any work."""
        self.new_cache(-1, 1, 1)
        self._wait(self.dag.execute(np.zeros((1, 1), np.int64), 0, -1), compiled=True)
        self.free_cache(-1)

    def _graph(self, call, tokens, start_pos, cache_id) -> list:
        """The forward pass with the sums on the ranks: each step of each rank takes the N parts of the
        step before. call(actor, method, *args) is .remote (object refs) or .bind (graph nodes)."""
        parts = [call(actor, "embed", tokens, start_pos, cache_id) for actor in self.actors]     # (B, T, D/N)
        for i in range(self.config.n_layers):
            parts = [call(actor, "attention_of", i, *parts) for actor in self.actors]           # (B, T, D)
            parts = [call(actor, "feed_forward_of", i, *parts) for actor in self.actors]        # (B, T, D)
        return [call(actor, "logits_of", *parts) for actor in self.actors]                      # (B, T, V/N)

    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer: rank 0's file when this machine has it, else its bytes from rank 0."""
        if self.info.tokenizer_sha256 is None:
            return None
        local = Path(self.info.path) / TOKENIZER_FILE
        if local.is_file() and hashlib.sha256(local.read_bytes()).hexdigest() == self.info.tokenizer_sha256:
            return Tokenizer(local)
        self._tmp = tempfile.TemporaryDirectory(prefix="llama_np-tokenizer-")
        path = Path(self._tmp.name) / TOKENIZER_FILE
        path.write_bytes(self._wait(self.actors[0].tokenizer_bytes.remote()))
        return Tokenizer(path)

    # ---------------------------------------------------------------- running
    def forward(self, tokens, start_pos: int, cache_id: int) -> list:
        if self.reductions == "compiled":
            return self._wait(self.dag.execute(tokens, start_pos, cache_id), compiled=True)
        if self.reductions == "ranks":
            return self._wait(self._graph(lambda actor, method, *args: getattr(actor, method).remote(*args),
                                          ray.put(tokens), start_pos, cache_id))
        return forward_summed_here(self.call_all, self.config.n_layers, tokens, start_pos, cache_id)

    def call_all(self, method: str, *args) -> list:
        """Run a RankRunner method on every rank -> the results in rank order."""
        args = [ray.put(a) if hasattr(a, "nbytes") else a for a in args]     # one copy of h for N ranks
        return self._wait([getattr(actor, method).remote(*args) for actor in self.actors])

    def new_cache(self, cache_id: int, batch_size: int, max_seq_len: int) -> None:
        self.call_all("new_cache", cache_id, batch_size, max_seq_len)

    def free_cache(self, cache_id: int) -> None:
        if self.failed is None and not self._closed.is_set():
            for actor in self.actors:                  # no wait: the ranks free it in their own time
                actor.free_cache.remote(cache_id)

    def _wait(self, refs, compiled: bool = False):
        """ray.get of object refs (or of a compiled graph's refs, which wait without a time limit
        here: the watchdog bounds the wait instead); a fault becomes a one-line error."""
        if self.failed is not None:
            raise LlamaNpError(self.failed)
        if self._closed.is_set():
            raise LlamaNpError("the tensor-parallel model was closed")
        self._waiting.set()
        try:
            return ray.get(refs, timeout=-1) if compiled else ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, LlamaNpError):      # bad input a rank found: the model is still fine
                raise LlamaNpError(str(e.cause)) from None
            self.failed = self._fault(e)
        except ray.exceptions.RayError as e:
            self.failed = self._fault(e)
        finally:
            self._waiting.clear()
        self.close()
        raise LlamaNpError(self.failed)

    def _fault(self, error: BaseException) -> str:
        """The one line that says which rank failed and how (asking every rank whether it is alive)."""
        dead = []
        for k, actor in enumerate(self.actors):
            try:
                ray.get(actor.ping.remote(), timeout=self.health_timeout)
            except (ray.exceptions.RayError, TimeoutError):
                dead.append(k)
        if not dead:
            return f"the tensor-parallel forward pass failed: {_first_line(error)}"
        k = dead[0]
        node = self.nodes[k] if k < len(self.nodes) else {}
        where = f" (pid {node.get('pid')} on {node.get('host')} {node.get('node')})" if node else ""
        what = self.hung.get(k) or f"died ({_death_cause(error)})"
        others = f"; ranks {', '.join(map(str, dead))} are all gone" if len(dead) > 1 else ""
        return f"tensor-parallel rank {k} of {self.world_size}{where} {what}{others}"

    def _watch(self) -> None:
        """The watchdog (see the module docstring): runs while a forward pass is awaited."""
        while not self._closed.wait(self.health_interval):
            if not self._waiting.is_set():
                continue
            pings = [actor.ping.remote() for actor in self.actors]
            for k, ref in enumerate(pings):
                try:
                    ray.get(ref, timeout=self.health_timeout)
                except ray.exceptions.GetTimeoutError:
                    if self._waiting.is_set() and not self._closed.is_set():
                        self.hung[k] = f"stopped answering (no reply in {self.health_timeout:g} s; stopped it)"
                        ray.kill(self.actors[k])
                except ray.exceptions.RayError:
                    pass                                # dead: the driver's wait reports it

    def close(self) -> None:
        """Stop the ranks: the compiled graph, the actors, the placement group."""
        if self._closed.is_set():
            return
        self._closed.set()
        for step in (lambda: self.dag.teardown(kill_actors=True) if self.dag is not None else None,
                     lambda: [ray.kill(actor) for actor in self.actors],
                     lambda: remove_placement_group(self.pg) if self.pg is not None else None):
            try:
                step()
            except Exception:                           # already gone
                pass
        if self._tmp is not None:
            self._tmp.cleanup()


def _threads_env(threads: int) -> dict | None:
    """Ray starts actors with OMP_NUM_THREADS=1: give the BLAS of a rank the cores it may use."""
    if threads <= 1:
        return None
    value = str(threads)
    return {"env_vars": {"OMP_NUM_THREADS": value, "OPENBLAS_NUM_THREADS": value, "MKL_NUM_THREADS": value}}


def _death_cause(error: BaseException) -> str:
    """Why Ray says an actor died, in a few words ("it was killed by `ray.kill`", "its worker
    process has died")."""
    text = " ".join(str(error).split())
    if "The actor is dead because " in text:
        return text.split("The actor is dead because ", 1)[1].split(". ", 1)[0].rstrip(".")
    return _first_line(error)
