"""Training pipeline: data sources, deterministic batches, every stage, exact resume, DDP, export."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iris import IrisPipeline
from iris.config import GeneratorConfig, IrisConfig, SamplerConfig, TextConfig, VAEConfig
from iris.train.config import DataConfig, TrainConfig
from iris.train.data import BatchStream, bucket_size, build_dataset
from iris.train.trainer import Trainer

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 40)}


def tiny_config() -> IrisConfig:
    return IrisConfig(
        name="iris-test",
        resolution=32,
        vae=VAEConfig(channels=(8, 8, 8)),
        text=TextConfig(kind="tiny", dim=32, max_length=16, layers=1, heads=2),
        generator=GeneratorConfig(dim=32, heads=2, text_dim=32, afno_blocks=2, window=4, train_iterations=(1, 3),
                                  backprop_iterations=1),
        sampler=SamplerConfig(steps=1, iterations=2, guidance=2.0),
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    IrisPipeline.from_config(tiny_config(), seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny model whose generator is off its zero init (as after base training), for adapter stages."""
    folder = tmp_path_factory.mktemp("base")
    pipe = IrisPipeline.from_config(tiny_config(), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    pipe.save_pretrained(folder)
    return folder


def square_image(color: tuple[int, int, int], size: int = 40) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[:] = color
    a[size // 4 : size // 2, size // 4 : size // 2] = 255
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for name, rgb in COLORS.items():
        square_image(rgb).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"a white square on {name}")
    return root


def run_cfg(model: Path, out: Path, stage: str, data: DataConfig, **kw) -> TrainConfig:
    base = dict(stage=stage, model=str(model), out_dir=str(out), steps=6, batch_size=4, log_every=1, save_every=0,
                sample_every=0, export_dtype="float32", data=data)
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.optim.warmup_steps = 1
    cfg.optim.lr = 2e-3
    return cfg


# ------------------------------------------------------------------------------------------- data sources


def test_image_folder_reads_captions(image_folder):
    ds = build_dataset(DataConfig(source="folder", path=str(image_folder), size=32))
    assert len(ds) == 4
    captions = sorted(ds.load(i, random.Random(0))["caption"] for i in range(4))
    assert captions == sorted(f"a white square on {n}" for n in COLORS)
    sample = ds.load(0, random.Random(0))
    assert sample["image"].shape == (3, 32, 32)
    assert -1 <= float(sample["image"].min()) <= float(sample["image"].max()) <= 1


def test_class_folders_give_labels(tmp_path):
    for name, rgb in COLORS.items():
        (tmp_path / name).mkdir()
        for j in range(2):
            square_image(rgb).save(tmp_path / name / f"{j}.png")
    ds = build_dataset(DataConfig(source="classes", path=str(tmp_path), size=16))
    assert ds.classes == sorted(COLORS)
    labels = {ds.records[i].label: ds.records[i].caption for i in range(len(ds))}
    assert labels == dict(enumerate(sorted(COLORS)))


def test_jsonl_manifest_scores_and_filter(tmp_path, image_folder):
    lines = [json.dumps({"path": str(image_folder / f"{n}.png"), "caption": n, "class": i, "score": float(i)})
             for i, n in enumerate(COLORS)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    ds = build_dataset(DataConfig(source="jsonl", path=str(tmp_path / "m.jsonl"), size=16))
    assert [r.score for r in ds.records] == [0.0, 1.0, 2.0, 3.0]
    kept = build_dataset(DataConfig(source="jsonl", path=str(tmp_path / "m.jsonl"), size=16, min_score=2.0))
    assert [r.caption for r in kept.records] == list(COLORS)[2:]
    (tmp_path / "bad.jsonl").write_text('{"caption": "no path"}\n')
    with pytest.raises(ValueError, match="path"):
        build_dataset(DataConfig(source="jsonl", path=str(tmp_path / "bad.jsonl")))


def test_tar_shards(tmp_path, image_folder):
    for shard, names in enumerate((list(COLORS)[:2], list(COLORS)[2:])):
        with tarfile.open(tmp_path / f"shard-{shard:04d}.tar", "w") as tar:
            for n in names:
                tar.add(image_folder / f"{n}.png", arcname=f"{n}.png")
                meta = tmp_path / f"{n}.json"
                meta.write_text(json.dumps({"caption": f"shard caption {n}", "score": 1.5}))
                tar.add(meta, arcname=f"{n}.json")
    (tmp_path / "extra.txt").write_text("a txt caption wins")
    with tarfile.open(tmp_path / "shard-0002.tar", "w") as tar:
        tar.add(image_folder / "red.png", arcname="k/extra.png")
        tar.add(tmp_path / "extra.txt", arcname="k/extra.txt")
        tar.add(tmp_path / "extra.txt", arcname="k/orphan.txt")  # no image: skipped
    ds = build_dataset(DataConfig(source="tar", path=str(tmp_path), size=16))
    assert len(ds) == 5
    captions = sorted(ds.record(i).caption for i in range(len(ds)))
    assert captions == sorted([f"shard caption {n}" for n in COLORS] + ["a txt caption wins"])
    assert ds.load(0, random.Random(0))["image"].shape == (3, 16, 16)
    assert ds.record(4).source == (image_folder / "red.png").read_bytes()  # the exact bytes, read from the shard
    assert len(build_dataset(DataConfig(source="tar", path=str(tmp_path), size=16, min_score=1.0))) == 4


def test_tar_shards_stream_from_disk_in_bounded_memory(tmp_path):
    """300 shards of incompressible images (about 30 MB): building the dataset must not hold the shards' bytes
    (it keeps offsets, not data), and batches are read from disk."""
    import gc
    import pickle

    rng = np.random.default_rng(0)
    image = tmp_path / "noise.png"
    for shard in range(300):
        with tarfile.open(tmp_path / f"s-{shard:04d}.tar", "w") as tar:
            for k in range(2):
                Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(image)  # ~49 KB
                tar.add(image, arcname=f"{shard}-{k}.png")
    image.unlink()
    total = sum(p.stat().st_size for p in tmp_path.glob("*.tar"))
    gc.collect()

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024

    before = rss()
    ds = build_dataset(DataConfig(source="tar", path=str(tmp_path), size=32))
    grown = rss() - before
    assert len(ds) == 600 and grown < total / 3, (grown, total)
    stream = BatchStream(ds, batch_size=8, seed=0)
    for step in range(5):
        assert stream.batch(step)["image"].shape == (8, 3, 32, 32)
    assert sum(v.nbytes for v in ds.index.values()) < 100 * len(ds)
    clone = pickle.loads(pickle.dumps(ds))  # as DataLoader workers get it: reopens its own files
    assert clone.record(7).source == ds.record(7).source


def emoji_font_or_skip() -> None:
    from iris.train.emoji import find_emoji_font

    try:
        find_emoji_font()
    except FileNotFoundError:
        pytest.skip("emoji font not installed (apt-get install fonts-noto-color-emoji)")


def test_emoji_source_is_procedural():
    emoji_font_or_skip()
    ds = build_dataset(DataConfig(source="emoji", size=64))
    a, b = BatchStream(ds, 2, seed=0).batch(0), BatchStream(ds, 2, seed=0).batch(0)
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert a["image"].shape == (2, 3, 64, 64) and "alpha" in a
    # another seed starts elsewhere on the scene ring: a continued run sees scenes it has not seen
    c = BatchStream(ds, 2, seed=5)
    assert c.indices(0) != BatchStream(ds, 2, seed=0).indices(0)
    assert c.indices(3) == BatchStream(ds, 2, seed=5).indices(3)
    assert not torch.equal(c.batch(0)["image"], a["image"])


def test_emoji_source_share_of_two_sprite_scenes():
    emoji_font_or_skip()
    def pairs(p: float) -> int:
        scenes = build_dataset(DataConfig(source="emoji", size=64, emoji_p_two=p)).scenes
        return sum(len(scenes.plan(i).emoji) == 2 for i in range(200))

    assert pairs(0.0) == 0 and pairs(1.0) == 200
    assert 40 < pairs(0.35) < 100
    with pytest.raises(ValueError, match="p_two"):
        build_dataset(DataConfig(source="emoji", size=64, emoji_p_two=float("nan")))


def test_buckets_and_stream_determinism(image_folder):
    assert bucket_size(64, 400, 300) == (80, 48) or bucket_size(64, 400, 300)[0] > bucket_size(64, 400, 300)[1]
    assert bucket_size(64, 300, 400)[0] < bucket_size(64, 300, 400)[1]
    ds = build_dataset(DataConfig(source="folder", path=str(image_folder), size=16))
    s0, s1 = BatchStream(ds, 2, seed=1, rank=0, world=2), BatchStream(ds, 2, seed=1, rank=1, world=2)
    seen = s0.indices(0) + s1.indices(0) + s0.indices(1) + s1.indices(1)
    assert sorted(seen[:4]) == [0, 1, 2, 3]  # ranks split one epoch without overlap
    assert s0.indices(5) == BatchStream(ds, 2, seed=1, rank=0, world=2).indices(5)


def test_worker_stream_draws_the_same_batches(image_folder):
    """Batches drawn ahead by worker processes are exactly the batches of those steps, in order."""
    ds = build_dataset(DataConfig(source="folder", path=str(image_folder), size=16, random_flip=True))
    stream = BatchStream(ds, 3, seed=2)
    ahead = stream.stream(5, workers=2)
    for step in range(5, 9):
        got, want = next(ahead), stream.batch(step)
        assert got["caption"] == want["caption"]
        assert torch.equal(got["image"], want["image"])


# --------------------------------------------------------------------------------------------------- stages


def losses_fall(history: list[dict], key: str = "loss") -> bool:
    vals = [h[key] for h in history]
    assert all(np.isfinite(vals))
    k = max(2, len(vals) // 4)
    return float(np.mean(vals[-k:])) < float(np.mean(vals[:k]))


@pytest.mark.parametrize("stage", ["vae", "text", "aesthetic", "class"])
def test_stage_loss_falls(stage, tiny_model, image_folder, tmp_path):
    source = "classes" if stage == "class" else "folder"
    path = image_folder
    if stage == "class":
        path = tmp_path / "classes"
        for name, rgb in COLORS.items():
            (path / name).mkdir(parents=True)
            square_image(rgb).save(path / name / "0.png")
    data = DataConfig(source=source, path=str(path), size=32, random_crop=False)
    cfg = run_cfg(tiny_model, tmp_path / "run", stage, data, steps=30, text_dropout=0.0)
    trainer = Trainer(cfg)
    history = trainer.train()
    assert len(history) == 30
    assert losses_fall(history), [round(h["loss"], 4) for h in history]
    exported = trainer.export()
    pipe = IrisPipeline.from_pretrained(exported)
    out = pipe.generate("a white square on red", steps=1, iterations=2)
    assert out.images[0].size == (32, 32)
    if stage == "class":
        assert pipe.config.generator.num_classes == 4


def test_decoder_refinement_keeps_the_latent_space(base_model, image_folder, tmp_path):
    """train_encoder=false: encoder weights and the latent normalisation (what the generator was trained on)
    come out unchanged, the decoder and the preview decoder change."""
    start = IrisPipeline.from_pretrained(base_model)
    data = DataConfig(source="folder", path=str(image_folder), size=32, random_crop=False)
    trainer = Trainer(run_cfg(base_model, tmp_path / "dec", "vae", data, steps=8, train_encoder=False))
    trainer.train()
    out = IrisPipeline.from_pretrained(trainer.export())
    assert (out.config.vae.scale, out.config.vae.shift) == (start.config.vae.scale, start.config.vae.shift)
    before, after = start.vae.encoder.state_dict(), out.vae.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    dec_before, dec_after = start.vae.decoder.state_dict(), out.vae.decoder.state_dict()
    assert any(not torch.equal(dec_before[k], dec_after[k]) for k in dec_before)


def test_distill_stage_runs_and_sets_sampler(base_model, image_folder, tmp_path):
    data = DataConfig(source="folder", path=str(image_folder), size=32, random_crop=False)
    trainer = Trainer(run_cfg(base_model, tmp_path / "d", "distill", data, steps=24, distill_intervals=4))
    history = trainer.train()
    assert losses_fall(history), [round(h["loss"], 5) for h in history]
    pipe = IrisPipeline.from_pretrained(trainer.export())
    assert pipe.config.distilled and pipe.config.sampler.sampler == "consistency"
    assert pipe.generate("x", steps=2, iterations=1).images[0].size == (32, 32)


def test_trajectory_cache_holds_the_teachers_guided_euler_solve(base_model, tmp_path):
    """Each cached state is the previous one plus one guided Euler step, and the end point is one more step:
    checked against the teacher's velocity recomputed by hand with the pipeline's own guidance."""
    from iris import sampling
    from iris.models.generator import TextCondition
    from iris.train import trajectories as tr

    teacher = IrisPipeline.from_pretrained(base_model)
    captions = ["a white square on red", "a white square on blue", "a white square on green"]
    states, ends, times = tr.solve(teacher, captions, seed=3, steps=3, iterations=2, guidance=2.5)
    assert states.shape == (3, 3, 16, 2, 2) and ends.shape == (3, 16, 2, 2) and times[0] == 1.0 and times[-1] == 0
    gen = teacher.generator
    with torch.no_grad():
        cond, null = teacher.text_encoder.encode(captions), teacher.text_encoder.encode([""] * 3)
        text = TextCondition(torch.cat([cond.tokens, null.tokens]), torch.cat([cond.mask, null.mask]))
        rng = torch.Generator().manual_seed(3)
        torch.randn(states[:, 0].shape, generator=rng)  # the initial noise comes first
        nxt = list(states.unbind(1)[1:]) + [ends]
        for k in range(3):
            z = states[:, k]
            c = gen.condition(torch.full((6,), times[k]), text)
            e = gen.embed(torch.cat([z, z]), c)
            s0 = gen.initial_state(e[:3], rng)
            s = torch.cat([s0, s0])
            for i in range(1, 3):
                s = gen.iterate(s, e, c, text, i)
            v = sampling.cfg_combine(*gen.decode(s, e, c).chunk(2), 2.5)
            assert torch.allclose(sampling.euler_step(z, v, times[k], times[k + 1]), nxt[k], atol=1e-5)
    traj = tr.Trajectories(states, ends, captions, times[:-1], {"seed": "3"})
    again = tr.load(",".join(str(tr.save(traj, tmp_path / f"t{i}.safetensors")) for i in range(2)))
    assert len(again) == 6 and torch.equal(again.states[3:], states) and again.captions[:3] == captions


def test_trajectory_solve_follows_the_teachers_guidance_interval(base_model):
    """With guidance only at t <= 0.9 the first step (t = 1) is the prompt alone: it matches the guidance-1 solve
    and not the guided one; later steps are guided again."""
    import dataclasses

    from iris.train import trajectories as tr

    teacher = IrisPipeline.from_pretrained(base_model)
    captions = ["a white square on red", "a white square on blue"]
    guided, _, _ = tr.solve(teacher, captions, seed=5, steps=3, iterations=2, guidance=2.5)
    plain, _, _ = tr.solve(teacher, captions, seed=5, steps=3, iterations=2, guidance=1.0)
    teacher.config.sampler = dataclasses.replace(teacher.config.sampler, guidance_max_t=0.9)
    interval, _, _ = tr.solve(teacher, captions, seed=5, steps=3, iterations=2, guidance=2.5)
    assert torch.allclose(interval[:, 1], plain[:, 1], atol=1e-5)
    assert not torch.allclose(interval[:, 1], guided[:, 1], atol=1e-3)
    assert not torch.allclose(interval[:, 2], plain[:, 2], atol=1e-3)


def test_trajectory_distillation_learns_the_cached_end_points(base_model, image_folder, tmp_path):
    """A student trained on cached solves gets closer to their end points from pure noise in one step."""
    from iris.train import trajectories as tr

    teacher = IrisPipeline.from_pretrained(base_model)
    captions = [f"a white square on {c}" for c in COLORS] * 2
    states, ends, times = tr.solve(teacher, captions, seed=0, steps=2, iterations=2, guidance=2.0)
    cache = tr.save(tr.Trajectories(states, ends, captions, times[:-1], {}), tmp_path / "cache.safetensors")
    data = DataConfig(source="folder", path=str(image_folder), size=32, random_crop=False)
    cfg = run_cfg(base_model, tmp_path / "t", "distill", data, steps=40, distill_method="trajectory",
                  distill_teacher_steps=2, distill_cache=str(cache))
    trainer = Trainer(cfg)

    def one_step_error(gen) -> float:
        with torch.no_grad():
            text = trainer.pipe.text_encoder.encode(captions)
            t = torch.ones(len(captions))
            x0 = states[:, 0] - gen(states[:, 0], t, text, 2, state_generator=torch.Generator().manual_seed(0))
            return float((x0 - ends).pow(2).mean())

    before = one_step_error(trainer.pipe.generator)
    trainer.train()
    pipe = IrisPipeline.from_pretrained(trainer.export())
    assert one_step_error(pipe.generator) < 0.7 * before, (before, one_step_error(pipe.generator))
    assert pipe.config.distilled and pipe.config.sampler.sampler == "consistency"


def test_a_model_folder_can_share_its_siblings_weights(base_model, tmp_path):
    """`shares`: a student folder with its own generator takes the VAE, text encoder and preview decoder from
    a sibling folder; names that leave the parent folder are refused."""
    import shutil

    from iris.errors import ModelLoadError

    teacher_dir = tmp_path / "teacher"
    shutil.copytree(base_model, teacher_dir)
    student = IrisPipeline.from_pretrained(teacher_dir)
    with torch.no_grad():
        for p in student.generator.parameters():
            p.mul_(0.5)
    folder = tmp_path / "student"
    folder.mkdir()
    student.config.shares = "teacher"
    student.config.save(folder / "config.json")
    from iris.hub import save_weights

    save_weights(student.generator, folder / "generator.safetensors")
    loaded = IrisPipeline.from_pretrained(folder)
    for a, b in zip(loaded.generator.parameters(), student.generator.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(loaded.vae.parameters(), IrisPipeline.from_pretrained(teacher_dir).vae.parameters()):
        assert torch.equal(a, b)
    for bad in ("../teacher", "/etc", "teacher/../..", ""):
        data = json.loads((folder / "config.json").read_text())
        data["shares"] = bad
        (folder / "config.json").write_text(json.dumps(data))
        if bad:
            with pytest.raises(ModelLoadError, match="shares"):
                IrisPipeline.from_pretrained(folder)
        else:
            with pytest.raises(ModelLoadError, match="missing"):
                IrisPipeline.from_pretrained(folder)


@pytest.mark.parametrize("stage", ["inpaint", "upscale", "control"])
def test_adapter_stages_train_only_the_adapter(stage, base_model, image_folder, tmp_path):
    if stage == "control":
        pytest.importorskip("iris.control")
    data = DataConfig(source="folder", path=str(image_folder), size=32, random_crop=False)
    trainer = Trainer(run_cfg(base_model, tmp_path / stage, stage, data, steps=24))
    before = {k: v.clone() for k, v in trainer.pipe.generator.state_dict().items()}
    history = trainer.train()
    assert losses_fall(history), [round(h["loss"], 4) for h in history]
    after = trainer.pipe.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "base generator must stay frozen"
    name = {"control": "control_canny"}.get(stage, stage)
    adapter = trainer.pipe.adapters[name]
    assert any(float(p.detach().abs().sum()) > 0 for n, p in adapter.named_parameters() if "proj" in n)
    pipe = IrisPipeline.from_pretrained(trainer.export())
    assert name in pipe.adapters


# --------------------------------------------------------------------------------------------------- resume


def test_resume_repeats_the_uninterrupted_run(tiny_model, image_folder, tmp_path):
    data = DataConfig(source="folder", path=str(image_folder), size=32)
    straight = Trainer(run_cfg(tiny_model, tmp_path / "a", "text", data, steps=6)).train()
    first = Trainer(run_cfg(tiny_model, tmp_path / "b", "text", data, steps=6, save_every=3))
    part1 = first.train(steps=3)
    del first
    second = Trainer(run_cfg(tiny_model, tmp_path / "b", "text", data, steps=6, save_every=3))
    assert second.step == 3
    part2 = second.train()
    assert [h["loss"] for h in straight] == [h["loss"] for h in part1 + part2]


def test_training_with_data_workers_matches_the_plain_run(tiny_model, image_folder, tmp_path):
    data = DataConfig(source="folder", path=str(image_folder), size=32)
    plain = Trainer(run_cfg(tiny_model, tmp_path / "a", "text", data, steps=5)).train()
    data_w = DataConfig(source="folder", path=str(image_folder), size=32, workers=2)
    trainer = Trainer(run_cfg(tiny_model, tmp_path / "b", "text", data_w, steps=5))
    ahead = trainer.train(steps=2) + trainer.train()  # a second call picks the stream up at its step
    assert [h["loss"] for h in plain] == [h["loss"] for h in ahead]


def test_time_limit_stops_saves_and_exports_with_the_decay_done(tiny_model, image_folder, tmp_path):
    """time_limit ends a run with a huge step count on the clock: checkpoint, export, and a cosine decay that
    was planned to end there (the learning rate is near its floor at the last step)."""
    from iris.train.cli import main

    out = tmp_path / "run"
    args = ["text", "--model", str(tiny_model), "--out", str(out), "--steps", "1000000",
            "--set", f'data.path="{image_folder}"', "--set", 'data.source="folder"', "--set", "data.size=32",
            "--set", "batch_size=2", "--set", "log_every=1", "--set", "save_every=0", "--set", "sample_every=0",
            "--set", "time_limit=0.04", "--set", "optim.decay=cosine", "--set", "optim.warmup_steps=1",
            "--set", "optim.lr=1e-3"]
    assert main(args) == 0
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 5 <= len(logs) < 1000000
    assert logs[-1]["lr"] < 0.5e-3 < max(h["lr"] for h in logs), [round(h["lr"], 6) for h in logs[-5:]]
    assert (out / "checkpoints" / f"step_{logs[-1]['step']:08d}" / "state.json").is_file()
    assert IrisPipeline.from_pretrained(out / "export").generate("a square", steps=1, iterations=1).images


def test_precision_setting(tiny_model, image_folder, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        TrainConfig.from_toml("", ["precision=\"fp8\""])
    data = DataConfig(source="folder", path=str(image_folder), size=32)
    history = Trainer(run_cfg(tiny_model, tmp_path / "bf16", "text", data, steps=2, precision="bf16")).train()
    assert all(np.isfinite(h["loss"]) for h in history)


def _ignore_sigint() -> None:
    """What a shell does to a job started with `&` from a script."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow  # a multi-process run
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_stops(sig, tiny_model, image_folder, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "iris.train.cli", "text", "--model", str(tiny_model), "--out", str(out),
           "--steps", "100000", "--set", f'data.path="{image_folder}"', "--set", 'data.source="folder"',
           "--set", "data.size=32", "--set", "batch_size=2", "--set", "log_every=1", "--set", "save_every=0",
           "--set", "sample_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigint)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved" in err
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1 and int(ckpts[0].name.split("_")[1]) >= 2
    resumed = Trainer(run_cfg(tiny_model, out, "text", DataConfig(source="folder", path=str(image_folder), size=32),
                              batch_size=2, steps=100000))
    assert resumed.step == int(ckpts[0].name.split("_")[1])
    assert not (out / "export").exists()  # a stopped run is not exported

# ------------------------------------------------------------------------------------------------------ DDP

DDP_SCRIPT = r"""
import json, os, sys, torch
from iris.train.config import DataConfig, TrainConfig
from iris.train.trainer import Trainer
model, images, out = sys.argv[1:4]
cfg = TrainConfig(stage="text", model=model, out_dir=out, steps=4, batch_size=2, log_every=1, save_every=0,
                  sample_every=0, device="cpu", data=DataConfig(source="folder", path=images, size=32))
t = Trainer(cfg)
t.train()
flat = torch.cat([p.detach().flatten() for p in t.params.values()])
json.dump({"sum": float(flat.double().sum()), "first": flat[:8].tolist()},
          open(os.path.join(out, f"rank{t.rank}.json"), "w"))
t.close()
"""


@pytest.mark.slow
def test_two_process_gloo_keeps_ranks_identical(tiny_model, image_folder, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), str(tiny_model), str(image_folder), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1
    start = IrisPipeline.from_pretrained(tiny_model).generator
    assert r0["sum"] != float(torch.cat([p.flatten() for p in start.parameters()]).double().sum())


def test_config_from_toml_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('stage = "vae"\nsteps = 7\n[data]\nsource = "folder"\n[optim]\nlr = 0.01\n')
    cfg = TrainConfig.from_toml(f, ["optim.lr=0.5", "data.size=64", "iterations=[2, 4]"])
    assert (cfg.stage, cfg.steps, cfg.optim.lr, cfg.data.size, cfg.iterations) == ("vae", 7, 0.5, 64, (2, 4))
    f.write_text('stage = "nope"\n')
    with pytest.raises(ValueError, match="stage"):
        TrainConfig.from_toml(f)
    f.write_text("bogus = 1\n")
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_toml(f)


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("configs/**/*.toml")))
def test_shipped_configs_parse(path):
    cfg = TrainConfig.from_toml(path)
    assert cfg.stage in path.stem or cfg.stage in ("vae", "text")  # file names say what they train
    assert cfg.steps > 0 and cfg.batch_size > 0


def test_pixel_upscale_stage_learns_to_beat_bicubic(tiny_model, tmp_path):
    """80 steps on emoji scenes: the exported upscaler beats bicubic on scenes it never saw; the rest of the
    model is unchanged."""
    emoji_font_or_skip()
    data = DataConfig(source="emoji", size=64)
    cfg = run_cfg(tiny_model, tmp_path / "run", "pixel_upscale", data, steps=80, batch_size=8, log_every=10)
    trainer = Trainer(cfg)
    trainer.train()
    pipe = IrisPipeline.from_pretrained(trainer.export())
    assert "pixel_upscale" in pipe.adapters and pipe.config.adapters == ["pixel_upscale"]
    base = IrisPipeline.from_pretrained(tiny_model)
    for a, b in zip(pipe.generator.parameters(), base.generator.parameters()):
        assert torch.equal(a, b)
    x = BatchStream(build_dataset(data), 16, seed=99).batch(0)["image"]
    low = torch.nn.functional.avg_pool2d(x, 2)
    with torch.no_grad():
        learned = pipe.adapters["pixel_upscale"](low).clamp(-1, 1)
    bicubic = torch.nn.functional.interpolate(low, scale_factor=2, mode="bicubic").clamp(-1, 1)
    mse = lambda y: float(torch.nn.functional.mse_loss(y, x))
    assert mse(learned) < 0.98 * mse(bicubic), (mse(learned), mse(bicubic))


def test_preview_stage_trains_the_tiny_decoder_and_ships_it(tiny_model, tmp_path):
    """The preview stage swaps in the tiny learned decoder, trains only it, and the exported folder loads it
    back (config vae.preview = "tiny"); on held-out scenes it is closer to the images than it was untrained."""
    from iris.models.vae import TinyPreviewDecoder

    emoji_font_or_skip()
    data = DataConfig(source="emoji", size=64)
    cfg = run_cfg(tiny_model, tmp_path / "run", "preview", data, steps=120, batch_size=8, log_every=10)
    trainer = Trainer(cfg)
    untrained = copy.deepcopy(trainer.pipe.previewer)
    trainer.train()
    pipe = IrisPipeline.from_pretrained(trainer.export())
    assert pipe.config.vae.preview == "tiny" and isinstance(pipe.previewer, TinyPreviewDecoder)
    base = IrisPipeline.from_pretrained(tiny_model)
    for a, b in zip((*pipe.generator.parameters(), *pipe.vae.parameters()),
                    (*base.generator.parameters(), *base.vae.parameters())):
        assert torch.equal(a, b)  # only the previewer trained
    x = BatchStream(build_dataset(data), 16, seed=99).batch(0)["image"]
    with torch.no_grad():
        z = pipe.vae.encode(x)
        target = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="area")  # 8 x the 4 x 4 latent grid
        mse = lambda previewer: float(torch.nn.functional.mse_loss(previewer(z), target))
        assert pipe.previewer(z).shape == target.shape
        assert mse(pipe.previewer) < 0.85 * mse(untrained), (mse(pipe.previewer), mse(untrained))


def test_random_blur_softens_the_chosen_share():
    from iris.train.stages import random_blur

    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(random_blur(x, 0.0, torch.Generator().manual_seed(1)), x)
    y = random_blur(x, 1.0, torch.Generator().manual_seed(1))
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    assert bool((tv(y) < 0.6 * tv(x)).all())
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02)  # a blur keeps the mean


def test_assembled_student_shares_all_but_its_generator(base_model, tmp_path):
    import shutil

    from iris.errors import ModelLoadError
    from iris.train.assemble import assemble_student

    teacher = tmp_path / "models" / "teacher"
    shutil.copytree(base_model, teacher)
    student = IrisPipeline.from_pretrained(teacher)
    with torch.no_grad():
        next(student.generator.parameters()).add_(1.0)
    export = student.save_pretrained(tmp_path / "export")
    out = assemble_student(str(export), str(teacher), str(tmp_path / "models" / "fast"), "fast", 2, 3, None)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generator.safetensors"]
    loaded = IrisPipeline.from_pretrained(out)
    s = loaded.config.sampler
    assert loaded.config.shares == "teacher" and (s.steps, s.iterations) == (2, 3)
    assert torch.equal(next(loaded.generator.parameters()), next(student.generator.parameters()))
    with torch.no_grad():  # a retrained teacher text encoder: the student keeps its own copy of the old one
        next(student.text_encoder.parameters()).add_(1.0)
    export_te = student.save_pretrained(tmp_path / "export_te")
    out_te = assemble_student(str(export_te), str(teacher), str(tmp_path / "models" / "fast_te"), "fast", 2, 3,
                              None)
    assert sorted(p.name for p in out_te.iterdir()) == ["config.json", "generator.safetensors",
                                                         "text_encoder.safetensors"]
    loaded_te = IrisPipeline.from_pretrained(out_te)
    assert torch.equal(next(loaded_te.text_encoder.parameters()), next(student.text_encoder.parameters()))
    assert torch.equal(next(loaded_te.vae.parameters()), next(IrisPipeline.from_pretrained(teacher).vae.parameters()))
    with torch.no_grad():
        next(student.vae.parameters()).add_(1.0)
    other = student.save_pretrained(tmp_path / "export2")
    with pytest.raises(ModelLoadError, match="vae"):
        assemble_student(str(other), str(teacher), str(tmp_path / "models" / "fast2"), "x", None, None, None)
    with pytest.raises(ModelLoadError, match="beside"):
        assemble_student(str(export), str(teacher), str(tmp_path / "elsewhere" / "fast"), "x", None, None, None)


def test_trajectory_distillation_without_a_cache_solves_the_teacher_online(base_model, image_folder, tmp_path):
    data = DataConfig(source="folder", path=str(image_folder), size=32, random_crop=False)
    cfg = run_cfg(base_model, tmp_path / "online", "distill", data, steps=3, distill_method="trajectory",
                  distill_teacher_steps=2)
    history = Trainer(cfg).train()
    assert len(history) == 3 and all(np.isfinite(h["traj"]) and h["traj"] > 0 for h in history)


def test_assemble_adds_a_position_embedding_that_changes_nothing_until_trained(base_model, tmp_path):
    from iris.errors import ModelLoadError
    from iris.hub import load_weights
    from iris.train.assemble import add_position_embedding, assemble

    out = assemble(str(base_model), None, [], str(tmp_path / "placed"), None, position_embedding=True)
    before, after = IrisPipeline.from_pretrained(base_model), IrisPipeline.from_pretrained(out)
    assert after.config.generator.position_embedding and not after.generator.pos_proj.weight.any()
    a, b = (np.asarray(p.generate("a cat on the left", steps=2, iterations=2, seed=1,
                                  preview_fraction=None).images[0]) for p in (before, after))
    assert np.array_equal(a, b)
    with pytest.raises(ModelLoadError, match="already"):
        add_position_embedding(after)
    # a folder whose config asks for the embedding but whose weights lack it is refused, not half-loaded
    with pytest.raises(ModelLoadError, match="pos_proj"):
        load_weights(after.generator, Path(base_model) / "generator.safetensors")


def test_lr_scales_speed_up_the_named_block_and_resume_exactly(tiny_model, image_folder, tmp_path):
    data = DataConfig(source="folder", path=str(image_folder), size=32)

    def cfg(out: str, **kw) -> TrainConfig:
        c = run_cfg(tiny_model, tmp_path / out, "text", data, steps=4, **kw)
        c.optim.lr_scales = {"generator.final": 10.0}
        return c

    trainer = Trainer(cfg("a"))
    scales = {g["lr_scale"] for g in trainer.optimizer.param_groups}
    assert scales == {1.0, 10.0}
    for group in trainer.optimizer.param_groups:  # one weight decay and one scale per group
        assert group["weight_decay"] in (0.0, trainer.cfg.optim.weight_decay)
    start = {k: p.detach().clone() for k, p in trainer.params.items()}
    history = trainer.train()
    step = {k: (p.detach() - start[k]).abs().max().item() for k, p in trainer.params.items()}
    scaled = [v for k, v in step.items() if k.startswith("generator.final.")]
    plain = [v for k, v in step.items() if not k.startswith("generator.final.") and v > 0]
    assert scaled and max(scaled) > 3 * max(plain)
    first = Trainer(cfg("b", save_every=2))
    part = first.train(steps=2)
    del first
    second = Trainer(cfg("b", save_every=2))
    assert second.step == 2
    assert [h["loss"] for h in history] == [h["loss"] for h in part + second.train()]
