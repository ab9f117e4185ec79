"""Data-path throughput: `prepare` (images/s), our reader against torchvision's, raw vs PNG encoding.

Run from the repository root (offline is fine: Fashion-MNIST comes from the
Debian package dataset-fashion-mnist):

    .venv/bin/python benchmarks/bench_data.py [--work DIR]

1. prepare: real Fashion-MNIST 28 -> 32 px (70 000 images), and 5 000 synthetic
   images written in the real STL-10 binary format, 96 -> 64 px. Ray is started
   first and its workers warmed up, so the figures are the stage's own.
2. reader: one shuffled epoch of the prepared Fashion-MNIST at batch 64 through
   ``wgan.data.ShardReader`` against torchvision's ``FashionMNIST`` (ToTensor +
   Normalize) in a DataLoader at batch 64, both single-process, as a ratio.
3. encoding: the same images stored as raw bytes or PNG in zstd parquet: bytes
   on disk and decode speed to float tensors (why the contract says `raw`).
4. train input: seconds per epoch (first and later ones) as a train worker sees
   its shard (Ray Data's streaming_split, batch 64, local shuffle), streamed from
   the shards every epoch against held in the object store
   (``pipelines.train.training_dataset``), for 512 images and for all 70 000.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.datasets.utils import extract_archive

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.prepare import prepare  # noqa: E402
from tests.data_formats import write_stl10  # noqa: E402
from wgan.data import ShardReader, decode_images, load_manifest, shard_paths  # noqa: E402
from wgan.data.images import unpack_images  # noqa: E402
from wgan.data.reader import pixels_to_tensor  # noqa: E402
from pipelines.stage_options import PrepareOptions  # noqa: E402

FASHION_MNIST = Path(os.environ.get("WGANCTL_SYSTEM_DATASETS", "/usr/share/datasets")) / "fashion-mnist"
BATCH = 64


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_prepare(work: Path) -> Path:
    print("== prepare (Ray Data, local, %d CPUs) ==" % os.cpu_count())
    seconds, _ = timed(lambda: ray.init(include_dashboard=False, log_to_driver=False))
    print(f"ray.init: {seconds:.1f} s (not counted below)")
    prepare("fashion-mnist", options=PrepareOptions(size=32, limit=500), out=str(work / "warmup"), progress=False)  # starts the Ray workers

    fmnist = work / "fashion-mnist-32px"
    seconds, result = timed(lambda: prepare("fashion-mnist", options=PrepareOptions(size=32), out=str(fmnist), progress=False))
    count = result.manifest["count"]
    print(f"fashion-mnist 28->32 px, 1 ch: {count} images in {seconds:.2f} s = {count / seconds:,.0f} images/s "
          f"({len(result.manifest['shards'])} shards)")

    write_stl10(work / "stl10-src", train=1000, test=10, unlabeled=4000)
    seconds, result = timed(lambda: prepare("stl10", options=PrepareOptions(size=64, source_dir=str(work / "stl10-src")), out=str(work / "stl10-64px"), progress=False))
    count = result.manifest["count"]
    print(f"stl10 format 96->64 px, 3 ch:  {count} images in {seconds:.2f} s = {count / seconds:,.0f} images/s "
          f"({len(result.manifest['shards'])} shards)")
    return fmnist


def epoch_rate(batches: Callable[[], object]) -> float:
    seen = 0
    start = time.perf_counter()
    for images, _ in batches():
        seen += len(images)
    return seen / (time.perf_counter() - start)


def bench_reader(prepared: Path, work: Path) -> None:
    print(f"\n== reader: one shuffled epoch, batch {BATCH}, single process ==")
    root = work / "torchvision-root"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FASHION_MNIST.glob("*.gz"):
        extract_archive(str(gz), str(raw))
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    resize_normalize = transforms.Compose([transforms.Resize(32), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    def torchvision_loader(transform: transforms.Compose) -> Callable[[], object]:
        dataset = datasets.FashionMNIST(str(root), train=True, transform=transform)
        test = datasets.FashionMNIST(str(root), train=False, transform=transform)
        return lambda: DataLoader(torch.utils.data.ConcatDataset([dataset, test]), batch_size=BATCH, shuffle=True)

    ours = epoch_rate(lambda: ShardReader(str(prepared), batch_size=BATCH, seed=0))
    theirs = epoch_rate(torchvision_loader(normalize))
    theirs_resized = epoch_rate(torchvision_loader(resize_normalize))
    print(f"wgan.data.ShardReader (32 px, float NCHW [-1,1]):      {ours:>10,.0f} images/s")
    print(f"torchvision FashionMNIST ToTensor+Normalize (28 px):   {theirs:>10,.0f} images/s")
    print(f"torchvision + Resize(32) (same output as ours):        {theirs_resized:>10,.0f} images/s")
    print(f"ratio ours / torchvision: {ours / theirs:.1f}x  (with Resize(32): {ours / theirs_resized:.1f}x)")


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(out, format="PNG")
    return out.getvalue()


def decode_png(values: pa.Array) -> torch.Tensor:
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(value))) for value in values.to_pylist()])
    return pixels_to_tensor(pixels.reshape(*pixels.shape[:3], -1))


def bench_encoding(name: str, prepared: Path, work: Path) -> None:
    manifest = load_manifest(str(prepared))
    size, channels = manifest["size"], manifest["channels"]
    table = pa.concat_tables(pq.read_table(path) for path in shard_paths(str(prepared), manifest))
    pixels = unpack_images(table["image"], size, channels)
    png = table.set_column(0, "image", pa.array([png_bytes(p) for p in pixels], type=pa.binary()))
    sizes = {}
    for encoding, data in (("raw", table), ("png", png)):
        path = work / f"{name}-{encoding}.parquet"
        pq.write_table(data, path, compression="zstd")
        sizes[encoding] = path.stat().st_size
    rows = table.num_rows
    raw_s, _ = timed(lambda: [decode_images(b.column(0), size, channels) for b in pq.read_table(work / f"{name}-raw.parquet").to_batches(BATCH)])
    png_s, _ = timed(lambda: [decode_png(b.column(0)) for b in pq.read_table(work / f"{name}-png.parquet").to_batches(BATCH)])
    print(f"{name} ({rows} images, {size} px, {channels} ch): "
          f"raw {sizes['raw'] / 2**20:.1f} MiB, {rows / raw_s:,.0f} images/s | "
          f"png {sizes['png'] / 2**20:.1f} MiB, {rows / png_s:,.0f} images/s | "
          f"raw is {png_s / raw_s:.0f}x faster to decode, {sizes['raw'] / sizes['png']:.2f}x the bytes")


@ray.remote(num_cpus=0)
def _epoch_seconds(shard, epochs: int) -> list[float]:
    """What a train worker does with its shard: whole shuffled epochs of batch 64."""
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        for _ in shard.iter_batches(batch_size=BATCH, batch_format="pyarrow", drop_last=True,
                                    local_shuffle_buffer_size=2048, local_shuffle_seed=epoch):
            pass
        seconds.append(time.perf_counter() - start)
    return seconds


def bench_train_input(prepared: Path, work: Path) -> None:
    from pipelines.train import training_dataset

    print(f"\n== train input: seconds per epoch through a train worker's shard, batch {BATCH} ==")
    small = prepare("fashion-mnist", options=PrepareOptions(size=32, limit=512), out=str(work / "fmnist-512"), progress=False).out
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"{'images':>8} {'path':<28} {'epoch 1':>9} {'epochs 2-4':>11}")
    for directory in (small, str(prepared)):
        manifest = load_manifest(directory)
        later = {}
        for label, dataset in (
                ("streamed every epoch", ray.data.read_parquet(shard_paths(directory, manifest), columns=["image", "label"])),
                ("held (training_dataset)", ray.data.from_arrow(training_dataset(directory, manifest)))):
            shard = dataset.streaming_split(1, equal=True)[0]
            seconds = ray.get(_epoch_seconds.remote(shard, 4))
            later[label] = sum(seconds[1:]) / 3
            print(f"{manifest['count']:>8} {label:<28} {seconds[0]:>8.2f}s {later[label]:>10.2f}s")
        streamed, held = later.values()
        print(f"{'':>8} later epochs, streamed / held: {streamed / held:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    if not FASHION_MNIST.is_dir():
        sys.exit(f"{FASHION_MNIST} not found: apt-get install dataset-fashion-mnist")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        fmnist = bench_prepare(work)
        bench_reader(fmnist, work)
        print(f"\n== encoding: raw vs PNG in zstd parquet, decode to float tensors, batch {BATCH} ==")
        bench_encoding("fashion-mnist", fmnist, work)
        bench_encoding("stl10-format", work / "stl10-64px", work)
        bench_train_input(fmnist, work)


if __name__ == "__main__":
    main()
