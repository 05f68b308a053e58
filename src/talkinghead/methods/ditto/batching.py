"""A shared device worker that batches motion-model windows and renderer frames across streams.

With ``DittoPipeline(..., shared_batching=True)`` every `DittoStream` of the pipeline hands
its two device-heavy steps to one `SharedBatcher` thread instead of running them itself:

* **motion windows**: one DDIM sampling of an 80-frame LMDM window. The stream draws the
  window's noise (x_T, then one tensor per noisy step, in the order the sampler draws them
  alone) from its *own* generator before submitting, so the worker needs no generator and a
  stream's noise never depends on who else is in the batch. Windows of several streams (each
  with its own conditioning frame and conditions) are stacked and sampled in one call.
* **render requests**: warp + decode of one stream's batch of frames. Requests of the same
  source share one warp call with the source feature volume broadcast (stride 0, never copied
  per frame); the warp samples one volume per batch row, so different sources are warped in
  one call each ("grouped"), and the decoder, whose input is per frame anyway, runs once over
  the frames of every request.

The worker gathers: once a request is waiting it waits up to ``gather_ms`` for more of the
same kind (stopping early when every open stream has one waiting, or ``max_batch`` streams
do), takes the oldest of each stream (one per stream, streams in turn, so a busy stream
cannot starve the others), runs them, and hands each stream its part. It never waits on a
stream: results go into the request, which the stream's own thread collects, so a slow
consumer only slows itself. Each stream may have at most ``max_pending`` render requests
unfinished (its `submit_render` blocks beyond that). A stream that closes or aborts drops its
waiting requests. When a batched call raises, its requests are run again one by one, so an
error fails only the stream whose request caused it.

Determinism: a stream alone in the worker gets bit-identical results to a stream without
shared batching (the same noise, the same calls at the same batch size). Batched with others,
the networks' float reductions can differ with the batch size (oneDNN/MKL pick kernels by
shape), so results agree within float rounding: measured on CPU fp32, motion windows within
6e-6 (full-size LMDM, 10 steps) and frames within one grey level on about 5e-5 of the pixels
(tiny release); see docs/ditto.md, "Many sessions on one device".

CUDA graphs: with ``runtime="compile"`` and the motion model on CUDA, the worker runs it under
``torch.compile(mode="reduce-overhead")`` (a CUDA graph replays the many small kernel launches
of each denoiser call), padding each batch to a power of two so that few graphs are
captured. On a CPU they are skipped (logged, and in `SharedBatcher.cuda_graphs`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from talkinghead.diffusion import DDIMSampler
from talkinghead.diffusion.schedules import randn_like_generator
from talkinghead.errors import SettingsError
from talkinghead.stages import PipelineStopped, Stage

log = logging.getLogger(__name__)

WINDOW = "window"  # request kinds
RENDER = "render"
_IDLE_LOOK_S = 1.0  # an idle worker looks for streams dropped without close this often
_WAIT_POLL_S = 0.05  # a stream waiting for room re-checks this often (besides notifications)


@dataclass(frozen=True)
class BatchingConfig:
    """Settings of the shared batching worker (`DittoPipeline(..., shared_batching=...)`).

    ``max_batch``: most requests in one batched call, one per stream (motion windows; render
    requests, each a stream's ``batch_size`` frames). ``gather_ms``: how long the worker waits for other
    streams' requests once one is waiting (the extra latency a request may see; 0: run what
    is there). ``max_pending``: render requests a stream may have unfinished at the worker.
    """

    max_batch: int = 8
    gather_ms: float = 2.0
    max_pending: int = 4

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_pending"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(
                    f"shared batching: {name} must be an integer >= 1, not {value!r}"
                )
        if (
            isinstance(self.gather_ms, bool)
            or not isinstance(self.gather_ms, int | float)
            or not (0 <= self.gather_ms <= 1000)
        ):
            raise SettingsError(
                f"shared batching: gather_ms must be between 0 and 1000 ms, not {self.gather_ms!r}"
            )

    @classmethod
    def coerce(
        cls, value: bool | BatchingConfig | Mapping[str, Any] | None
    ) -> BatchingConfig | None:
        """``True``: the defaults; ``False``/``None``: off; a mapping: those fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, BatchingConfig):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise SettingsError(
                    f"shared batching: unknown setting(s) {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known))}"
                )
            return cls(**value)
        raise SettingsError(
            "shared_batching must be True, False, a BatchingConfig or a dict of its fields, "
            f"not {type(value).__name__}"
        )


@dataclass
class KindStats:
    """What the worker ran for one kind of request."""

    batches: int = 0  # batched calls
    requests: int = 0
    multi_stream: int = 0  # calls holding requests of more than one stream
    most_streams: int = 0  # the most streams in one call
    retried: int = 0  # calls re-run request by request after an error


@dataclass
class BatchStats:
    window: KindStats = field(default_factory=KindStats)
    render: KindStats = field(default_factory=KindStats)


class _Request:
    """One stream's request; the worker (or the stream's close) resolves it once."""

    __slots__ = ("arrived", "client", "done", "error", "key", "kind", "payload", "result", "rows")

    def __init__(
        self, client: BatchClient, kind: str, key: tuple, payload: dict, rows: int
    ) -> None:
        self.client, self.kind, self.key, self.payload, self.rows = client, kind, key, payload, rows
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def resolve(self, result: Any = None, error: BaseException | None = None) -> bool:
        """Set the outcome unless one is set already (call under the batcher's lock)."""
        if self.done.is_set():
            return False
        self.result, self.error = result, error
        self.payload = {}  # the inputs are no longer needed
        self.done.set()
        return True

    def wait(self) -> Any:
        # Resolved by the worker, by the stream's close (if not taken yet) or by a dying worker.
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class RenderTicket:
    """A submitted render request: `result()` waits for its decoded images [b, 3, H, W]."""

    def __init__(self, request: _Request) -> None:
        self._request = request

    def result(self) -> torch.Tensor:
        return self._request.wait()


class BatchClient:
    """One stream's handle on the `SharedBatcher`; `close()` it when the stream ends."""

    def __init__(self, batcher: SharedBatcher, ident: int) -> None:
        self.batcher = batcher
        self.ident = ident
        self.pending: collections.deque[_Request] = collections.deque()  # not yet taken
        self.unfinished_renders = 0
        self.closed = False

    def sample_window(
        self,
        model: Any,
        sampler: DDIMSampler,
        cond_frame: torch.Tensor,
        cond: torch.Tensor,
        generator: torch.Generator | None,
        *,
        device: torch.device,
        graphs: bool = False,
    ) -> torch.Tensor:
        """One DDIM window ``[B, S, D]`` (on the CPU), as ``sampler(model, ...)`` would sample
        it alone with ``generator``; blocks until the worker has run it."""
        shape = (cond.shape[0], model.seq_frames, model.motion_feat_dim)
        # The sampler draws x_T, then one tensor per noisy step; drawn here in that order, from
        # this stream's generator alone, on the generator's device as the sampler draws them.
        gen_device = generator.device if generator is not None else device
        like = torch.empty(0, device=gen_device, dtype=cond.dtype)
        x_t = randn_like_generator(shape, generator, like)
        steps = sampler.coefficients.num_noise_steps if sampler.eta > 0 else 0
        noise = torch.stack([randn_like_generator(shape, generator, like) for _ in range(steps)])
        schedule = (tuple(sampler.time_pairs), sampler.eta, sampler.prediction, sampler.clip_x0)
        key = (id(model), schedule, str(device), cond.dtype, shape[1:], cond.shape[1:], graphs)
        payload = {
            "model": model,
            "sampler": sampler,
            "device": device,
            "graphs": graphs,
            "cond_frame": cond_frame,
            "cond": cond,
            "x_T": x_t,
            "noise": noise if steps else None,
        }
        request = self.batcher._submit(self, WINDOW, key, payload, shape[0])
        return request.wait()

    def submit_render(
        self,
        f_s: torch.Tensor,
        x_s: torch.Tensor,
        x_d: torch.Tensor,
        *,
        runtime: str,
        autocast: bool,
    ) -> RenderTicket:
        """Queue warp + decode of ``len(x_d)`` frames; blocks while this stream has
        ``max_pending`` render requests unfinished."""
        key = (runtime, autocast, str(x_d.device), tuple(f_s.shape[1:]))
        payload = {"f_s": f_s, "x_s": x_s, "x_d": x_d, "runtime": runtime, "autocast": autocast}
        return RenderTicket(self.batcher._submit(self, RENDER, key, payload, int(x_d.shape[0])))

    def close(self) -> None:
        """End of the stream: waiting requests are dropped, waiters get `PipelineStopped`."""
        self.batcher._disconnect(self)

    def close_later(self) -> None:
        """`close` at the worker's next look; lock-free, for a finalizer (the garbage collector
        may run it inside the batcher's own locked code, on any thread)."""
        self.batcher._dropped.append(self)


class SharedBatcher:
    """The worker: one thread, started when a request arrives, ending when no stream is open.

    ``render_networks(runtime, example)`` returns the ``(warp, decode)`` callables a runtime
    runs (`DittoPipeline._render_networks`).
    """

    def __init__(
        self,
        config: BatchingConfig,
        render_networks: Callable[[str, tuple[torch.Tensor, ...]], tuple[Callable, Callable]],
    ) -> None:
        self.config = config
        self._networks = render_networks
        self._cv = threading.Condition()
        self._clients: dict[int, BatchClient] = {}
        self._dropped: collections.deque[BatchClient] = collections.deque()  # to close
        self._next_id = 0
        self._turn = 0  # round-robin offset, advanced every batch
        self._thread: threading.Thread | None = None
        self._stats = BatchStats()
        self._graphed: dict[int, Any] = {}  # id(model) -> CUDA-graphed model, or None: eager
        self.cuda_graphs = "not requested"  # what happened to runtime="compile"'s CUDA graphs

    # ---- streams

    def connect(self) -> BatchClient:
        with self._cv:
            self._reap()
            client = BatchClient(self, self._next_id)
            self._next_id += 1
            self._clients[client.ident] = client
            self._cv.notify_all()
            return client

    @property
    def streams(self) -> int:
        """Streams connected now."""
        with self._cv:
            self._reap()
            return len(self._clients)

    @property
    def stats(self) -> BatchStats:
        """A copy of the counters (batches, requests, multi-stream batches per kind)."""
        with self._cv:
            return BatchStats(
                KindStats(**vars(self._stats.window)), KindStats(**vars(self._stats.render))
            )

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        with self._cv:
            return self._thread is not None and self._thread.is_alive()

    def _submit(
        self, client: BatchClient, kind: str, key: tuple, payload: dict, rows: int
    ) -> _Request:
        with self._cv:
            if kind == RENDER:
                while client.unfinished_renders >= self.config.max_pending and not client.closed:
                    self._cv.wait(_WAIT_POLL_S)
            if client.closed:
                raise PipelineStopped("the stream was closed")
            request = _Request(client, kind, key, payload, rows)
            client.pending.append(request)
            if kind == RENDER:
                client.unfinished_renders += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ditto-batcher", daemon=True)
                self._thread.start()
            self._cv.notify_all()
            return request

    def _disconnect(self, client: BatchClient) -> None:
        with self._cv:
            self._close(client)

    def _reap(self) -> None:
        """Close the clients dropped without `close` (called with the lock held)."""
        while self._dropped:
            self._close(self._dropped.popleft())

    def _close(self, client: BatchClient) -> None:
        if not client.closed:
            client.closed = True
            self._clients.pop(client.ident, None)
            stopped = PipelineStopped("the stream was closed")
            for request in client.pending:
                request.resolve(error=stopped)
            client.pending.clear()
            self._cv.notify_all()

    # ---- the worker thread

    def _run(self) -> None:
        batch: list[_Request] = []
        try:
            while True:
                with self._cv:
                    batch = self._next_batch()
                    if not batch:
                        self._thread = None
                        return
                self._execute(batch)
                batch = []
        except BaseException as exc:  # never leave a stream waiting on a dead worker
            log.exception("the shared batching worker failed")
            with self._cv:
                self._thread = None
                for request in [*batch, *(r for c in self._clients.values() for r in c.pending)]:
                    request.resolve(error=exc)
                    request.client.pending.clear()
                self._cv.notify_all()
            raise

    def _oldest(self) -> _Request | None:
        heads = [c.pending[0] for c in self._clients.values() if c.pending]
        return min(heads, key=lambda r: r.arrived) if heads else None

    def _next_batch(self) -> list[_Request]:
        """Wait for work and gather a batch (called with the lock held); [] to stop."""
        cfg = self.config
        while True:
            self._reap()
            first = self._oldest()
            if first is None:
                if not self._clients:
                    return []
                self._cv.wait(_IDLE_LOOK_S)
                continue
            # The window opens now, when the worker is free: the streams whose results it
            # just handed back are about to submit again and can join.
            deadline = time.monotonic() + cfg.gather_ms / 1000

            def matches(r: _Request, first: _Request = first) -> bool:
                return r.kind == first.kind and r.key == first.key

            while not first.done.is_set():
                self._reap()
                ready = sum(any(matches(r) for r in c.pending) for c in self._clients.values())
                remaining = deadline - time.monotonic()
                if ready >= min(cfg.max_batch, len(self._clients)) or remaining <= 0:
                    break
                self._cv.wait(remaining)
            if first.done.is_set():  # its stream closed meanwhile
                continue
            return self._take(matches)

    def _take(self, matches: Callable[[_Request], bool]) -> list[_Request]:
        """Up to ``max_batch`` matching requests, each stream's oldest, streams in turn.

        One request per stream: a stream's calls then have the batch sizes it has alone, so a
        stream alone in the worker gets bit-identical results.
        """
        clients = list(self._clients.values())
        if clients:
            self._turn %= len(clients)
            clients = clients[self._turn :] + clients[: self._turn]
            self._turn += 1
        batch: list[_Request] = []
        for client in clients:
            request = next((r for r in client.pending if matches(r)), None)
            if request is not None and len(batch) < self.config.max_batch:
                client.pending.remove(request)
                batch.append(request)
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        run = self._sample if batch[0].kind == WINDOW else self._render
        retried = False
        try:
            outcomes: list[tuple[Any, BaseException | None]] = [(r, None) for r in run(batch)]
        except Exception as exc:
            if len(batch) == 1:
                outcomes = [(None, exc)]
            else:  # find the request that failed: run each alone, so only its stream fails
                retried = True
                outcomes = []
                for request in batch:
                    try:
                        outcomes.append((run([request])[0], None))
                    except Exception as one:
                        outcomes.append((None, one))
        with self._cv:
            stats = self._stats.window if batch[0].kind == WINDOW else self._stats.render
            streams = len({r.client.ident for r in batch})
            stats.batches += 1
            stats.requests += len(batch)
            stats.multi_stream += streams > 1
            stats.most_streams = max(stats.most_streams, streams)
            stats.retried += retried
            for request, (result, error) in zip(batch, outcomes, strict=True):
                request.resolve(result, error)
                if request.kind == RENDER:
                    request.client.unfinished_renders -= 1
            self._cv.notify_all()

    # ---- the batched calls

    def _sample(self, batch: list[_Request]) -> list[torch.Tensor]:
        first = batch[0].payload
        model, sampler, device = first["model"], first["sampler"], first["device"]
        rows = [r.rows for r in batch]

        def stack(name: str, dim: int = 0) -> torch.Tensor:
            parts = [r.payload[name] for r in batch]
            return (parts[0] if len(parts) == 1 else torch.cat(parts, dim)).to(device)

        inputs = [stack("cond_frame"), stack("cond"), stack("x_T")]
        noise = stack("noise", 1) if first["noise"] is not None else None
        denoiser = self._graphed_model(model, device) if first["graphs"] else None
        cond_frame, cond, x_t = inputs
        if denoiser is None:
            out = sampler(model, cond_frame, cond, x_T=x_t, step_noise=noise)
        else:
            try:
                out = self._sample_graphed(denoiser, sampler, inputs, noise)
            except Exception as exc:
                # Eagerly: if that works, the graphs were the problem (e.g. a failed capture):
                # run eagerly from now on; if not, the request's own error is raised.
                out = sampler(model, cond_frame, cond, x_T=x_t, step_noise=noise)
                log.warning("CUDA graphs for the motion model failed (%s); running it eagerly", exc)
                self._graphed[id(model)] = None
                self.cuda_graphs = f"failed: {exc}"
        return [w.cpu() for w in out[: sum(rows)].split(rows)]

    def _graphed_model(self, model: Any, device: torch.device) -> Any:
        """The model under CUDA graphs, or None (not on CUDA, or its capture failed)."""
        if torch.device(device).type != "cuda":
            if self.cuda_graphs == "not requested":
                self.cuda_graphs = (
                    f"skipped: the motion model runs on {device}; CUDA graphs need CUDA"
                )
                log.info("CUDA graphs for the motion model %s", self.cuda_graphs)
            return None
        if id(model) not in self._graphed:
            self._graphed[id(model)] = _GraphedDenoiser(model)
            self.cuda_graphs = "on"
        return self._graphed[id(model)]

    def _sample_graphed(
        self,
        denoiser: _GraphedDenoiser,
        sampler: DDIMSampler,
        inputs: list[torch.Tensor],
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        # A graph is captured per input shape: pad to a power of two (repeating the last row,
        # whose result is discarded) so at most log2(max_batch) + 1 graphs exist.
        n = inputs[0].shape[0]
        size = 1 << (n - 1).bit_length()
        if size > n:
            inputs = [torch.cat([x, x[-1:].expand(size - n, *x.shape[1:])]) for x in inputs]
            if noise is not None:
                noise = torch.cat([noise, noise[:, -1:].expand(-1, size - n, *noise.shape[2:])], 1)
        cond_frame, cond, x_t = inputs
        return sampler(denoiser, cond_frame, cond, x_T=x_t, step_noise=noise)

    @torch.inference_mode()
    def _render(self, batch: list[_Request]) -> list[torch.Tensor]:
        first = batch[0].payload
        runtime, autocast = first["runtime"], first["autocast"]
        groups: dict[tuple, list[_Request]] = {}
        for request in batch:
            groups.setdefault(_volume_key(request.payload["f_s"]), []).append(request)
        order: list[_Request] = []
        features = []
        for key, group in groups.items():
            x_s = _cat([r.payload["x_s"] for r in group])
            x_d = _cat([r.payload["x_d"] for r in group])
            if key[0] == "volume":  # one source: its volume broadcast over the group's frames
                volume = group[0].payload["f_s"][:1]
                f_s = volume.expand(len(x_d), *volume.shape[1:]) if len(x_d) > 1 else volume
            else:  # per-frame volumes (video sources): stacked as they are
                f_s = _cat([r.payload["f_s"] for r in group])
            warp, _ = self._networks(runtime, (f_s[:1], x_s[:1], x_d[:1]))
            with torch.autocast("cuda", torch.float16, enabled=autocast):
                features.append(warp(f_s, x_s, x_d))
            order += group
        _, decode = self._networks(runtime, ())
        with torch.autocast("cuda", torch.float16, enabled=autocast):
            images = decode(_cat(features))
        parts = dict(zip(map(id, order), images.split([r.rows for r in order]), strict=True))
        return [parts[id(r)] for r in batch]


class _GraphedDenoiser:
    """The motion model under ``torch.compile(mode="reduce-overhead")``: CUDA graphs."""

    def __init__(self, model: Any) -> None:
        self.seq_frames, self.motion_feat_dim = model.seq_frames, model.motion_feat_dim
        self._compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)

    def __call__(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, t: torch.Tensor
    ):
        torch.compiler.cudagraph_mark_step_begin()
        pred_noise, x_start = self._compiled(x, cond_frame, cond, t)
        # The graph's outputs live in its memory pool and are overwritten by the next replay.
        return pred_noise.clone(), x_start.clone()


def _volume_key(f_s: torch.Tensor) -> tuple:
    """Requests whose volume is one source broadcast (or a single frame) group by its storage."""
    if f_s.shape[0] == 1 or f_s.stride(0) == 0:
        return ("volume", f_s.data_ptr(), f_s.stride()[1:], f_s.dtype, str(f_s.device))
    return ("frames",)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def render_stages(renderer: Any, client: BatchClient) -> list[Stage]:
    """A stream renderer's stages with warp + decode run by the shared worker.

    ``renderer`` is the pipeline's `_Renderer`: ``prepare`` (stitching, on this stream's
    thread) makes the request, the worker warps and decodes, ``crops`` and ``paste`` finish
    the frames on this stream's thread again.
    """

    def submit(item: tuple[int, Any]) -> list[tuple[int, RenderTicket]]:
        start, f_s, x_s, x_d = renderer.prepare(item)
        ticket = client.submit_render(
            f_s, x_s, x_d, runtime=renderer.cfg.runtime, autocast=renderer.autocast
        )
        return [(start, ticket)]

    def paste(item: tuple[int, RenderTicket]) -> list[Any]:
        start, ticket = item
        return [renderer.paste((start, renderer.crops(ticket.result())))]

    return [Stage("prepare", submit), Stage("paste", paste)]


__all__ = [
    "BatchClient",
    "BatchStats",
    "BatchingConfig",
    "KindStats",
    "RenderTicket",
    "SharedBatcher",
    "render_stages",
]
