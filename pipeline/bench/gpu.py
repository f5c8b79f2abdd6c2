"""`mocopipe bench gpu`: one command that says whether a GPU is fed and used, as one JSON line.

Sections, all in one process and one run (each figure next to its baseline from this run):

    synthetic   MoCo v2 ResNet-50 steps at 224 px, bf16 autocast + channels_last, on random
                uint8 views pushed through the device augment: img/s and peak memory.
    compile     the same with both encoders under `torch.compile`: img/s, compile time and the
                speed-up over `synthetic`.
    ddp         the model under DDP on a one-rank NCCL process group (gloo on CPU): shuffle BN
                vs SyncBN, img/s each, and their ratio.
    ingest      the same steps fed by the real ingest: synthetic ~110 KB JPEGs written as tar
                shards on local disk (`shards write`), `ShardReader`s in worker processes
                (tar parse, DCT-downscaled decode, crop/flip x2) -> shared-memory uint8
                batches -> device augment -> step: img/s, `ingest_vs_synthetic` and
                `gpu_idle_frac` (the share of the run the step loop waited for data), once
                with the plain hand-off and once through `DevicePrefetcher` (`*_prefetch`).

`--dry-run` runs exactly this code on the CPU with tiny shapes and a few steps (ResNet-18 of
width 8 at 32 px, gloo, torch.compile with the "eager" backend), so the command cannot rot:
`make test` runs it. Only torch, numpy, Pillow/simplejpeg and webdataset are imported (no Ray,
MLflow or S3 client), so it runs on a bare GPU node; `make gpu-check` installs what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, MocoConfig, ModelConfig, \
    OptimConfig, StorageConfig

TARGET_IMG_S = 2500.0  # MoCo v2 ResNet-50 at 224 px on one H100 (issue 17)


@dataclass(frozen=True)
class GpuBenchSpec:
    """Shapes and step counts of one `bench gpu` run."""

    arch: str = "resnet50"
    width: int = 64
    image_size: int = 224
    batch: int = 256
    warmup: int = 10
    steps: int = 30
    readers: int = 12  # reader processes for the ingest section
    images: int = 6144  # JPEG files in the ingest section's shards
    unique_images: int = 512  # distinct JPEGs among them (generating is slow; decoding is not)
    jpeg_side: tuple[int, int] = (500, 375)
    compile_backend: str = "inductor"
    queue_size: int = 65536

    @classmethod
    def dry_run(cls) -> GpuBenchSpec:
        return cls(arch="resnet18", width=8, image_size=32, batch=8, warmup=1, steps=2,
                   readers=2, images=48, unique_images=16, jpeg_side=(64, 48),
                   compile_backend="eager", queue_size=64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # note: timing needs the GPU's queue drained


class _Stepper:
    """A MoCo v2 training step on uint8 views: device augment -> bf16 forward -> SGD."""

    def __init__(self, spec: GpuBenchSpec, device: torch.device, *, bn: str = "shuffle",
                 compile_backend: str | None = None, ddp: bool = False) -> None:
        from pipeline.augment import BatchAugment
        from pipeline.model import build_method
        from pipeline.train.optim import build_optimizer

        torch.manual_seed(0)
        model_cfg = ModelConfig(arch=spec.arch, width=spec.width,  # type: ignore[arg-type]
                                small_images=spec.image_size <= 64)
        moco_cfg = MocoConfig(queue_size=spec.queue_size, bn=bn)  # type: ignore[arg-type]
        model = build_method(model_cfg, moco_cfg, in_channels=3, seed=0).to(device)
        self.cuda = device.type == "cuda"
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if compile_backend:
            # Both encoders, so their parameter names stay equal for the momentum update.
            model.encoder_q = torch.compile(model.encoder_q, backend=compile_backend)
            model.encoder_k = torch.compile(model.encoder_k, backend=compile_backend)
        self.model = model
        self.optimizer = build_optimizer(model, OptimConfig(), lr=0.03)
        if ddp:
            from pipeline import dist

            self.model = dist.wrap_ddp(model)
        self.augment = BatchAugment(AugmentConfig(), 3)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.device = device

    def __call__(self, v1: torch.Tensor, v2: torch.Tensor) -> None:
        x1 = self.augment(v1.to(self.device, non_blocking=True), self.gen)
        x2 = self.augment(v2.to(self.device, non_blocking=True), self.gen)
        if self.cuda:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            loss, _ = self.model(x1, x2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _random_views(spec: GpuBenchSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (spec.batch, 3, spec.image_size, spec.image_size)
    v = torch.randint(0, 256, (2, *shape), generator=g, dtype=torch.uint8)
    return v[0].to(device), v[1].to(device)


def _timed(step: Callable[[], Any], spec: GpuBenchSpec, device: torch.device
           ) -> tuple[float, float]:
    """(img/s over `spec.steps` timed steps after `spec.warmup`, seconds of the warm-up)."""
    t0 = time.perf_counter()
    for _ in range(spec.warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(spec.steps):
        step()
    _sync(device)
    return spec.batch * spec.steps / (time.perf_counter() - t0), warm_s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _one_rank_group(device: torch.device) -> Iterator[str]:
    """A real process group of one rank (NCCL on CUDA, gloo on CPU) on loopback."""
    import torch.distributed as tdist

    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                             rank=0, world_size=1)
    try:
        yield backend
    finally:
        tdist.destroy_process_group()


# ----------------------------------------------------------------------------- ingest


def _reader_main(rank_readers: int, index: int, spec: GpuBenchSpec, dataset: str,
                 out: Any, stop: Any) -> None:
    """One reader process: its slice of each epoch's plan -> shared-memory uint8 batches."""
    from pipeline.ingest.reader import ShardReader
    from pipeline.shards.manifest import read_manifest
    from pipeline.shards.plan import plan_epoch
    from pipeline.storage import Storage

    torch.set_num_threads(1)
    data = DataConfig(train=dataset, image_size=spec.image_size, channels=3)
    ingest = IngestConfig(readers_per_worker=rank_readers, shuffle_window=256)
    reader = ShardReader(storage=StorageConfig(), data=data, augment=AugmentConfig(),
                         ingest=ingest, dataset_uri=dataset, batch_size=spec.batch)
    shards = read_manifest(Storage(StorageConfig()), dataset).shard_counts()
    epoch = 0
    while not stop.is_set():
        plan = plan_epoch(shards, seed=0, epoch=epoch, world_size=1, per_rank_batch=spec.batch,
                          readers_per_rank=rank_readers).ranks[0].readers[index]
        reader.start(plan, 0)
        for _ in range(plan.batches):
            b = reader.next_batch()
            if stop.is_set():
                return
            out.put((torch.from_numpy(b["view1"]), torch.from_numpy(b["view2"])))
        epoch += 1


def _write_jpeg_shards(spec: GpuBenchSpec, root: str) -> str:
    from pipeline.shards.synthetic import write_jpeg_folder
    from pipeline.shards.writer import write_shards
    from pipeline.storage import Storage

    folder, dataset = os.path.join(root, "jpegs"), os.path.join(root, "shards")
    w, h = spec.jpeg_side
    unique = write_jpeg_folder(os.path.join(root, "unique"), spec.unique_images, width=w,
                               height=h)
    os.makedirs(folder)
    for i in range(spec.images):
        os.link(unique[i % len(unique)], os.path.join(folder, f"img_{i:06d}.jpg"))
    per_shard = max(spec.batch, spec.images // max(1, spec.readers))
    write_shards(folder, dataset, storage=Storage(StorageConfig()), samples_per_shard=per_shard,
                 workers=min(8, os.cpu_count() or 1), labels="none", progress=False,
                 summary=False)
    return dataset


def _ingest_section(spec: GpuBenchSpec, device: torch.device, stepper: _Stepper,
                    v1: torch.Tensor, v2: torch.Tensor, synthetic_img_s: float,
                    say: Callable[[str], None]) -> dict[str, float]:
    import torch.multiprocessing as mp

    say(f"ingest: {spec.images} JPEGs -> shards -> {spec.readers} reader processes")
    with tempfile.TemporaryDirectory(prefix="mocopipe-bench-gpu-") as root:
        t0 = time.perf_counter()
        dataset = _write_jpeg_shards(spec, root)
        write_s = time.perf_counter() - t0
        ctx = mp.get_context("spawn")  # CUDA is initialised: never fork
        out, stop = ctx.Queue(maxsize=2 * spec.readers), ctx.Event()
        procs = [ctx.Process(target=_reader_main, daemon=True,
                             args=(spec.readers, i, spec, dataset, out, stop))
                 for i in range(spec.readers)]
        for p in procs:
            p.start()
        try:
            direct = _feed(spec, device, stepper, _from_queue(out), prefetch=False)
            prefetched = _feed(spec, device, stepper, _from_queue(out), prefetch=True)
        finally:
            stop.set()
            for p in procs:  # stateless readers of a temp dir, maybe blocked on a full queue
                p.terminate()
                p.join(timeout=10)
    return {"ingest_img_s": direct[0],
            "ingest_vs_synthetic": round(direct[0] / synthetic_img_s, 3),
            "gpu_idle_frac": direct[1],
            "ingest_prefetch_img_s": prefetched[0],
            "ingest_prefetch_vs_synthetic": round(prefetched[0] / synthetic_img_s, 3),
            "gpu_idle_frac_prefetch": prefetched[1],
            "ingest_shard_write_s": round(write_s, 1)}


def _from_queue(out: Any) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        v1, v2 = out.get(timeout=300)
        yield {"view1": v1, "view2": v2}


def _feed(spec: GpuBenchSpec, device: torch.device, stepper: _Stepper,
          batches: Iterator[dict[str, torch.Tensor]], *, prefetch: bool) -> tuple[float, float]:
    """(img/s, share of the time spent waiting for the next batch) over warm-up + timed steps.

    prefetch=False is the plain hand-off (`.to(device)` of pageable memory in the step);
    prefetch=True goes through `DevicePrefetcher` (pinned copies on a side stream, ahead).
    """
    from pipeline.ingest.prefetch import DevicePrefetcher

    pre = DevicePrefetcher(batches, device, depth=2) if prefetch else None
    it = iter(pre) if pre is not None else ((b, None) for b in batches)
    try:
        def step() -> float:
            t = time.perf_counter()
            batch, _ = next(it)
            waited = time.perf_counter() - t
            stepper(batch["view1"], batch["view2"])
            return waited

        for _ in range(spec.warmup):
            step()
        _sync(device)
        t0 = time.perf_counter()
        waits = [step() for _ in range(spec.steps)]
        _sync(device)
        wall = time.perf_counter() - t0
    finally:
        if pre is not None:
            pre.close()
    return round(spec.batch * spec.steps / wall, 1), round(sum(waits) / wall, 3)


def _compile_section(spec: GpuBenchSpec, device: torch.device, eager: _Stepper,
                     v1: torch.Tensor, v2: torch.Tensor, synthetic: float,
                     say: Callable[[str], None]) -> dict[str, Any]:
    say(f"compile: torch.compile(backend={spec.compile_backend!r})")
    compiled = _Stepper(spec, device, compile_backend=spec.compile_backend)
    img_s, warm_s = _timed(lambda: compiled(v1, v2), spec, device)
    return {"compiled_img_s": round(img_s, 1), "compile_speedup": round(img_s / synthetic, 3),
            "compile_warmup_s": round(warm_s, 1)}  # the first steps include compiling


def _ddp_section(spec: GpuBenchSpec, device: torch.device, eager: _Stepper,
                 v1: torch.Tensor, v2: torch.Tensor, synthetic: float,
                 say: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with _one_rank_group(device) as backend:
        res = {}
        for bn in ("shuffle", "sync"):
            if bn == "sync" and device.type != "cuda":
                continue  # SyncBatchNorm needs CUDA tensors
            say(f"ddp: {bn} BN on {backend}")
            stepper = _Stepper(spec, device, bn=bn, ddp=True)
            res[bn], _ = _timed(lambda s=stepper: s(v1, v2), spec, device)
            del stepper
        out.update(ddp_backend=backend, ddp_shuffle_bn_img_s=round(res["shuffle"], 1))
        if "sync" in res:
            out.update(ddp_sync_bn_img_s=round(res["sync"], 1),
                       sync_vs_shuffle_bn=round(res["sync"] / res["shuffle"], 3))
    return out


# ----------------------------------------------------------------------------- main


def bench_gpu(*, dry_run: bool = False, spec: GpuBenchSpec | None = None,
              sections: tuple[str, ...] = ("synthetic", "compile", "ddp", "ingest"),
              say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the sections and return one JSON-able dict (see the module docstring)."""
    spec = spec or (GpuBenchSpec.dry_run() if dry_run else GpuBenchSpec())
    if dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise ValueError("bench gpu: no CUDA device here (use --dry-run to check the code on CPU)")
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dry_run": dry_run, "arch": spec.arch,
        "image_size": spec.image_size, "batch": spec.batch, "steps": spec.steps,
        "dtype": "bfloat16" if device.type == "cuda" else "float32",
        "channels_last": device.type == "cuda", "target_img_s": TARGET_IMG_S}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    v1, v2 = _random_views(spec, device)
    say("synthetic: MoCo v2 steps on random views")
    eager = _Stepper(spec, device)
    synthetic, _ = _timed(lambda: eager(v1, v2), spec, device)
    result["synthetic_img_s"] = round(synthetic, 1)
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["meets_target"] = synthetic >= TARGET_IMG_S
    for name, section in (("compile", _compile_section), ("ddp", _ddp_section),
                          ("ingest", _ingest_section)):
        if name not in sections:
            continue
        try:  # one failing section must not cost the figures of the others
            result.update(section(spec, device, eager, v1, v2, synthetic, say))
        except Exception as exc:  # noqa: BLE001 - reported in the JSON line, exit code 1
            result[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
    if device.type == "cuda":
        result["peak_mem_gib_all"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def format_report(r: dict[str, Any]) -> str:
    return json.dumps(r)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.bench.gpu [--dry-run]`: for a bare GPU node without the CLI's deps."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipeline.bench.gpu")
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args)


def add_arguments(p: Any) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="the same code on CPU with tiny shapes and a few steps")
    p.add_argument("--batch", type=int, default=0, help="images per step (default 256)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per section (default 30)")
    p.add_argument("--readers", type=int, default=0, help="reader processes (default 12)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: "
                   "compile,ddp,ingest")


def run(args: Any) -> int:
    spec = GpuBenchSpec.dry_run() if args.dry_run else GpuBenchSpec()
    changes = {k: v for k, v in (("batch", args.batch), ("steps", args.steps),
                                 ("readers", args.readers)) if v}
    for k, v in changes.items():
        if v < 1:
            raise ValueError(f"--{k}: {v} must be >= 1")
    spec = dataclasses.replace(spec, **changes)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {"compile", "ddp", "ingest"}
    if unknown:
        raise ValueError(f"--skip: unknown section(s) {sorted(unknown)}")
    sections = tuple(s for s in ("synthetic", "compile", "ddp", "ingest") if s not in skip)
    result = bench_gpu(dry_run=args.dry_run, spec=spec, sections=sections,
                       say=lambda m: print(f"[bench gpu] {m}", flush=True))
    print(format_report(result), flush=True)
    return 1 if any(k.endswith("_error") for k in result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
