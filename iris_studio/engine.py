"""The studio's hold on the IRIS engine: one pipeline, runs on one compute thread, previews, cancel, speed.

Uses the engine's public API only (`iris.IrisPipeline`, `iris.PreviewEvent`, `iris.errors`, `iris.hub`).
A run is a generator of `Update`s: the UI drains it and streams each preview to the browser. Stop sets a
flag that the preview callback checks after every core iteration, raising `GenerationCancelled`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iris.limits import PREVIEW_FRACTION

from .speed import SpeedMemory, matrix_probe

TASKS = ("generate", "inpaint", "edit", "upscale", "control")
DEMO = "demo"
FAST = "fast"  # the bundled demo model's distilled student
GRID = "grid"  # the budget grid (iris.grid): one prompt and seed across budgets


class ComputeThread:
    """One long-lived daemon thread that runs every torch call of the studio, in order.

    Torch's CPU kernels run on OpenMP, whose workers spin between parallel regions only while the process owns
    no more OpenMP threads than cores: each thread that has run a parallel region keeps a pool of its own while
    it lives, and one more pool (a long-lived UI thread's, after the speed probe ran there) makes every region's
    workers sleep and wake instead: the demo model's studio runs took about 1.8x as long on two cores. One thread for
    all of it (loads, runs, the warm-up, the speed probe) keeps one pool.
    """

    def __init__(self, name: str = "iris-compute"):
        self._jobs: queue.Queue[tuple[Any, tuple, dict, queue.Queue]] = queue.Queue()
        self._working = False
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            fn, args, kwargs, reply = self._jobs.get()
            self._working = True
            try:
                reply.put((True, fn(*args, **kwargs)))
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                reply.put((False, err))
            finally:
                self._working = False

    @property
    def idle(self) -> bool:
        """Nothing running or queued (a hint: it can change as soon as it is read)."""
        return not self._working and self._jobs.empty()

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> queue.Queue:
        """Queue fn(*args, **kwargs); returns the queue its (ok, value or exception) pair arrives on."""
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._jobs.put((fn, args, kwargs, reply))
        return reply

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) on the compute thread, waited for (directly when called from it)."""
        if threading.current_thread() is self.thread:
            return fn(*args, **kwargs)
        ok, value = self.submit(fn, *args, **kwargs).get()
        if not ok:
            raise value
        return value


@dataclass
class ModelInfo:
    """What the UI shows about the loaded model."""

    name: str
    source: str
    resolution: int
    latent_factor: int
    max_iterations: int
    core_layers: int
    parameters: int  # every part: generator, VAE, text encoder, adapters
    random_weights: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)
    generator_parameters: int = 0

    @property
    def control_kinds(self) -> list[str]:
        """The control kinds this model has adapters for."""
        return sorted(a.removeprefix("control_") for a in self.adapters if a.startswith("control_"))


@dataclass
class Update:
    """One message of a run: a preview (maybe without a new image), the result, or the cancellation."""

    kind: str  # "preview" | "cell" (a budget-grid cell, in `result`) | "done" | "cancelled"
    label: str = ""
    progress: float = 0.0
    elapsed: float = 0.0
    eta: float | None = None
    image: Any = None  # a new preview image (PIL) or None
    result: Any = None  # IrisResult when kind == "done"
    previews: int = 0  # preview events seen so far


def is_variant(spec: str) -> bool:
    from iris import VARIANTS

    return spec.lower().removeprefix("iris-") in VARIANTS and not Path(spec).exists()


class Engine:
    """Holds one IrisPipeline; runs tasks one at a time on its compute thread with live previews."""

    def __init__(self, model: str | None = DEMO, device: str = "cpu", compile: bool = False):
        self.spec = model or DEMO
        self.device = device
        self.compile = compile  # torch.compile every model loaded (`IrisPipeline.compile`)
        self.notice: str | None = None  # shown as a banner (random weights, fallback after a failed load)
        self._pipe: Any = None
        self._info: ModelInfo | None = None
        self._run_lock = threading.Lock()  # one run (or load) at a time
        self._flags_lock = threading.Lock()
        self._active: set[threading.Event] = set()
        self._background: set[threading.Event] = set()  # warm-up runs, stopped by any user run
        self.compute = ComputeThread()
        self.speed = SpeedMemory(self._probe)  # measured speed by work size, scaled by the machine's load now

    def _probe(self) -> float:
        """The speed probe's torch GEMM, on the compute thread; while that thread is busy (a model loading, a
        run finishing) the last reading instead, if there is one, rather than waiting for it."""
        last = self.speed.last_load()
        if last is not None and not self.compute.idle and threading.current_thread() is not self.compute.thread:
            return last
        return self.compute.call(matrix_probe)

    # ------------------------------------------------------------------------------------------ models
    def _build(self, spec: str, device: str) -> tuple[Any, str | None]:
        from iris import IrisPipeline
        from iris.hub import demo_model_path

        spec = (spec or DEMO).strip()
        if spec.lower() in (DEMO, "default", ""):
            folder = demo_model_path()
            if not (folder / "config.json").is_file():
                pipe = IrisPipeline.from_variant("nano").to(device)
                return pipe, (
                    f"The bundled demo model is not installed ({folder}). Running a **random-weight "
                    "nano model** instead: it shows how the app works, but its images are noise. "
                    "Pick a trained model under Settings → Model."
                )
            return IrisPipeline.from_pretrained(None, device=device), None
        if spec.lower() == FAST:
            folder = demo_model_path(fast=True)
            if not (folder / "config.json").is_file():
                from iris.errors import ModelLoadError

                raise ModelLoadError(f"the fast (distilled) demo model is not installed ({folder})")
            return IrisPipeline.from_pretrained(folder, device=device), None
        if is_variant(spec):
            pipe = IrisPipeline.from_variant(spec).to(device)
            return pipe, (
                f"Running the **{spec}** variant with **random weights**: its images are noise. "
                "Pick a trained model under Settings → Model."
            )
        return IrisPipeline.from_pretrained(spec, device=device), None

    def load(self, spec: str | None = None, device: str | None = None) -> ModelInfo:
        """Load a model ("demo", a folder, a hub id or a variant name). Raises iris errors on failure and
        keeps the current model then. Waits for a running generation to finish first."""
        spec = (spec if spec is not None else self.spec) or DEMO
        device = device or self.device
        pipe, notice = self.compute.call(self._build, spec, device)
        if self.compile:
            pipe.compile()  # lazy: the first run at each size compiles (the warm-up's, at the default size)
        with self._run_lock:
            self._pipe, self.spec, self.device, self.notice = pipe, spec, device, notice
            self._info = self._describe(pipe)
            self.speed.clear()
        return self._info

    def load_or_fallback(self, spec: str | None = None, device: str | None = None) -> ModelInfo:
        """Start-up loading: on failure fall back to the demo (or random nano) and say why in the notice."""
        from iris.errors import IrisError

        try:
            return self.load(spec, device)
        except (IrisError, OSError) as err:  # named as asked, or as the engine holds it (never "None")
            failed = f"Could not load model {(spec if spec is not None else self.spec) or DEMO!r}: {err}"
        try:
            info = self.load(DEMO, "cpu")
        except (IrisError, OSError):
            info = self.load("nano", "cpu")
        self.notice = failed + ("\n\n" + self.notice if self.notice else "") + "\n\nUsing the default model instead."
        return info

    @staticmethod
    def _describe(pipe: Any) -> ModelInfo:
        cfg = pipe.config
        s = cfg.sampler
        return ModelInfo(
            name=cfg.name,
            source=str(pipe.source),
            resolution=int(cfg.resolution),
            latent_factor=int(pipe.latent_factor),
            max_iterations=int(cfg.generator.max_iterations),
            core_layers=int(cfg.generator.core_layers),
            parameters=int(sum(pipe.num_parameters().values())),
            generator_parameters=int(pipe.num_parameters()["generator"]),
            random_weights=str(pipe.source).startswith("random:"),
            defaults={
                "steps": s.steps,
                "iterations": s.iterations,
                "guidance": s.guidance,
                "sampler": s.sampler,
                "shift": s.shift,
                "regional": s.regional,
                "compose": s.compose,
            },
            adapters=list(cfg.adapters),
        )

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self.load_or_fallback(self.spec, self.device)
        return self._pipe

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            self.pipe  # noqa: B018 - loads
        assert self._info is not None
        return self._info

    def warmup(self) -> None:
        """Two tiny runs: the first so the user's first run does not pay for lazy initialisation (it would
        pay it anyway, so it is not interrupted), the second to measure speed for the time estimate (any user
        run stops it). With `compile` the first run takes two steps, so that it compiles the core for both
        batch sizes a run at the default size uses (a guided step runs two images, an unguided one one)."""
        kwargs = {"prompt": "", "steps": 2 if self.compile else 1, "iterations": 2, "seed": 0,
                  "guidance": self.info.defaults["guidance"]}
        try:
            for record in (False, True):
                updates = list(
                    self.run("generate", kwargs, interval=0.0, preview_fraction=None, record=record, background=record)
                )
                if not updates or updates[-1].kind != "done":
                    return
        except Exception:  # noqa: BLE001 - warm-up is best effort
            pass

    # -------------------------------------------------------------------------------------------- runs
    def cancel(self) -> bool:
        """Ask every active run to stop at its next core iteration. True if one was running."""
        with self._flags_lock:
            for flag in self._active:
                flag.set()
            return bool(self._active)

    @property
    def busy(self) -> bool:
        with self._flags_lock:
            return bool(self._active)

    def run(
        self,
        task: str,
        kwargs: dict[str, Any],
        *,
        interval: float = 0.08,
        preview_fraction: float | None = PREVIEW_FRACTION,
        record: bool = True,
        background: bool = False,
    ) -> Iterator[Update]:
        """Run `pipe.<task>(**kwargs)` on the compute thread; yield previews at most every `interval` seconds,
        then a final "done" (with the IrisResult) or "cancelled" update. Engine errors are re-raised here.
        A `background` run (the warm-up) gives way: any other run stops it."""
        from iris.errors import GenerationCancelled

        if task not in (*TASKS, GRID):
            raise ValueError(f"unknown task {task!r}")
        pipe = self.pipe
        flag = threading.Event()
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        if task == GRID:  # every budget of a grid in turn; each finished cell is streamed as a "cell" update
            from iris.grid import budget_grid

            kwargs = {**kwargs, "on_cell": lambda cell, index, total: events.put(("cell", (cell, index, total)))}
            fn = lambda **kw: budget_grid(pipe, **kw)  # noqa: E731
        else:
            fn = getattr(pipe, task, None)
        if fn is None:
            from iris.errors import IrisError

            raise IrisError(f"this engine version has no {task} task")

        def on_preview(event: Any) -> None:
            if flag.is_set():
                raise GenerationCancelled(f"stopped at {event.label}")
            events.put(("preview", event))

        def work() -> None:
            try:
                with self._run_lock:
                    if flag.is_set():
                        raise GenerationCancelled("stopped before it started")
                    result = fn(**kwargs, on_preview=on_preview, preview_fraction=preview_fraction)
                events.put(("done", result))
            except GenerationCancelled as err:
                events.put(("cancelled", err))
            except BaseException as err:  # noqa: BLE001 - handed to the UI thread
                events.put(("error", err))

        with self._flags_lock:
            if not background:
                for other in self._background:
                    other.set()
            self._active.add(flag)
            if background:
                self._background.add(flag)
        sampler = kwargs.get("sampler") or self.info.defaults["sampler"]
        steps, iterations, expected = 0, 0, 0  # a grid's progress comes from its cells
        pace = None  # the expected seconds per core iteration, for the ETA before a pace is seen
        load = self.speed.load() if record or self.speed.known else 1.0  # the budget line's probe, if recent
        if task != GRID:
            steps = int(kwargs.get("steps") or self.info.defaults["steps"])
            iterations = int(kwargs.get("iterations") or self.info.defaults["iterations"])
            expected = pipe.cost(steps, iterations, kwargs.get("guidance"), sampler).calls * iterations
            if task != "upscale":
                pace = self._expected_pace(kwargs, load)
        start = time.perf_counter()
        self.compute.submit(work)
        finished = False
        try:
            last_emit = -1e9
            pending = None
            count = 0
            last = None
            first_at = 0.0  # seconds from the start to the first core iteration (text encoding, set-up)
            while True:
                kind, payload = events.get()
                if kind == "cell":
                    cell, index, total = payload
                    yield Update("cell", label=cell.label, progress=(index + 1) / total,
                                 elapsed=time.perf_counter() - start, result=cell, previews=count)
                    continue
                if kind == "preview":
                    count += 1
                    last = payload
                    if payload.image is not None:
                        pending = payload.image
                    now = time.perf_counter()
                    if count == 1:
                        first_at = now - start
                    if now - last_emit >= interval:
                        exact = sampler == "heun" and task != "upscale"  # heun repeats step numbers
                        yield self._preview_update(payload, count, expected if exact else 0, pending, now - start,
                                                   first_at, pace)
                        pending = None
                        last_emit = now
                    continue
                finished = True
                elapsed = time.perf_counter() - start
                if kind == "done":
                    if record:
                        after = self.speed.load(fresh=True)
                        self._record(payload, kwargs, steps, iterations, sampler, (load + after) / 2)
                    yield Update(
                        "done",
                        label="done",
                        progress=1.0,
                        elapsed=elapsed,
                        eta=0.0,
                        result=payload,
                        previews=count,
                    )
                elif kind == "cancelled":
                    label = last.label if last is not None else "before the first iteration"
                    yield Update(
                        "cancelled",
                        label=label,
                        progress=count / expected if expected else 0.0,
                        elapsed=elapsed,
                        image=pending,
                        previews=count,
                    )
                else:
                    raise payload
                return
        finally:
            if not finished:  # the consumer went away (browser closed, generator closed): stop the worker
                flag.set()
            with self._flags_lock:
                self._active.discard(flag)
                self._background.discard(flag)

    def _preview_update(self, event: Any, count: int, expected: int, image: Any, elapsed: float,
                        first_at: float = 0.0, expected_pace: float | None = None) -> Update:
        """A preview update; its ETA is the time per core iteration measured since the first one (the set-up
        before it, text encoding and the first call's warm-up, does not repeat) times the iterations left,
        plus the decode still to come. After the first iteration, when no pace is seen yet, it is the
        remembered speed under the load measured at the start (`expected_pace`), or else an upper bound: all
        the time so far, set-up included."""
        progress = count / expected if 0 < count <= expected else float(event.progress)
        progress = min(max(progress, 1e-6), 1.0)
        left = count * (1 - progress) / progress  # core iterations still to run
        if count >= 2 and elapsed > first_at:
            pace = (elapsed - first_at) / (count - 1)
        else:
            pace = expected_pace if expected_pace is not None else elapsed / max(count, 1)
        eta = pace * left
        load = self.speed.last_load()
        if self.speed.known and load is not None:
            eta += self.speed.overhead(load) * 0.5
        return Update(
            "preview",
            label=event.label,
            progress=progress,
            elapsed=elapsed,
            eta=eta,
            image=image,
            previews=count,
        )

    # ------------------------------------------------------------------------------------------- speed
    def _expected_pace(self, kwargs: dict[str, Any], load: float) -> float | None:
        """Remembered seconds per core iteration for a run's size and guidance; None when unknown (or when
        the values are bad: the engine itself will say so)."""
        try:
            guidance = kwargs.get("guidance")
            guidance = self.info.defaults["guidance"] if guidance is None else float(guidance)
            width, height = kwargs.get("width"), kwargs.get("height")
            image = kwargs.get("image", kwargs.get("control_image"))
            if not (width or height) and hasattr(image, "size"):  # an image task works at its input's size
                width, height = image.size
            units = self._units(int(width) if width else None, int(height) if height else None, guidance)
            return self.speed.per_iteration(units, load) if units > 0 else None
        except (TypeError, ValueError, OverflowError):
            return None

    def _units(self, width: int | None, height: int | None, guidance: float) -> float:
        """Work per core pass: megapixels x the text branches the engine evaluates at this guidance."""
        res = self.info.resolution
        branches = self.pipe.cost(1, 1, guidance, "euler").nfe
        return ((width or res) * (height or res) / 1e6) * branches

    def _record(self, result: Any, kwargs: dict[str, Any], steps: int, iterations: int, sampler: str,
                load: float) -> None:
        t = getattr(result, "timings", {}) or {}
        sampling_s, total_s = t.get("sampling_s"), t.get("total_s")
        params = getattr(result, "params", {}) or {}
        if not sampling_s or result is None or params.get("task", "generate") == "upscale":
            return
        if t.get("drafts", 1) > 1:  # a composed image is a batch of drafts: not the pace of one image
            return
        guidance = float(params.get("guidance", kwargs.get("guidance") or self.info.defaults["guidance"]))
        units = self._units(params.get("width"), params.get("height"), guidance)
        per_iter = sampling_s / (self.pipe.cost(steps, iterations, guidance, sampler).calls * iterations)
        overhead = max(0.0, (total_s or sampling_s) - sampling_s)
        self.speed.record(units, per_iter, overhead, load)

    def estimate(
        self,
        steps: int,
        iterations: int,
        guidance: float,
        width: int | None = None,
        height: int | None = None,
        sampler: str | None = None,
        task: str = "generate",
        options: dict[str, Any] | None = None,
    ) -> float | None:
        """Estimated seconds for a run of `task` on width x height px (its input's size; the output's for
        generate and control), from measured speed under the machine's load now (the last load measured
        while a run is going) and the denoising runs the task makes (`iris.editing.task_work`: an edit's
        strength, an upscale's scale and tiles). None before the first measurement."""
        from iris.editing import task_work

        if not self.speed.known:
            return None
        load = self.speed.last_load() if self.busy else None
        load = load if load is not None else self.speed.load()
        res = self.info.resolution
        runs = task_work(self.pipe, task, width or res, height or res, steps, iterations, guidance, sampler,
                         **(options or {}))
        core = sum(n * self.speed.per_iteration(self._units(w, h, guidance), load) for n, w, h in runs)
        return core + self.speed.overhead(load) * max(1, len(runs))

    def budget(
        self,
        steps: int,
        iterations: int,
        guidance: float,
        width: int | None = None,
        height: int | None = None,
        sampler: str | None = None,
        task: str = "generate",
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """NFE, effective depth and estimated time of a budget, as the engine counts them."""
        cost = self.pipe.cost(steps, iterations, guidance, sampler)
        return {
            "nfe": cost.nfe,
            "depth": cost.effective_depth,
            "seconds": self.estimate(steps, iterations, guidance, width, height, sampler, task, options),
        }
