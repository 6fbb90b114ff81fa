"""The `iris` command as a user runs it: `python -m iris.cli ...` in a subprocess (or a forked child of one warm
interpreter, for the many bad-input cases), offline, one torch thread.

Every bad input ends with a non-zero exit and one line `iris: error: ...` on stderr, never a traceback; a good run
writes a PNG carrying its parameters; a failed write (unwritable folder, full disk) leaves no partial file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--model", "nano", "--steps", "1", "-r", "1"]
SENTINEL_NAME = "pickle-was-loaded"


def cli_env() -> dict[str, str]:
    """The environment every `iris` process of these tests runs in: offline, one thread, this checkout."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "PYTHONWARNINGS": "ignore"}


def iris(*args: str, cwd: Path | None = None, timeout: float = 120, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iris.cli", *args], cwd=cwd or ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


# One interpreter that has imported `iris.cli` forks a child per command: the child runs `main(args)` with its
# own stdout and stderr files and exits with its code, so each case costs a fork, not a torch import.
_FORK_SERVER = r"""
import json, os, signal, sys, traceback
import iris.cli
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.alarm(120)  # a command that hangs dies as `iris(..., timeout=120)` would end it
        os.chdir(req["cwd"])
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        try:
            code = iris.cli.main(req["args"])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class CliServer:
    """`run(*args)` is `iris(*args)` in a forked child of one warm interpreter: same exit code and output."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        self.proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=ROOT, env=cli_env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        request = {"args": list(args), "cwd": str(cwd or ROOT), "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, f"the CLI fork server exited (code {self.proc.poll()}) on {args}"
        stdout, stderr = (path.read_bytes().decode(errors="replace") for path in (out, err))
        return subprocess.CompletedProcess(["iris", *args], int(reply), stdout, stderr)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    server = CliServer(tmp_path_factory.mktemp("cli-output"))
    yield server.run
    server.close()


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]


def assert_one_line_error(proc: subprocess.CompletedProcess, *, only: bool = True, contains: str = "") -> str:
    """Non-zero exit, no traceback, exactly one `iris: error:` line (the last one; with `only`, the only one)."""
    lines = error_lines(proc)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    errors = [line for line in lines if line.startswith("iris: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    if only:
        assert lines == errors, proc.stderr
    assert contains.lower() in errors[0].lower(), errors[0]
    return errors[0]


class Payload:
    """Unpickling this touches a sentinel file: proof that a pickle was (wrongly) loaded."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    Image.fromarray((np.random.RandomState(0).rand(24, 40, 3) * 255).astype(np.uint8)).save(base / "photo.png")
    (base / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 64)
    (base / "empty.png").write_bytes(b"")
    # a model folder whose weights are a pickle: under the safetensors name, and as .bin / .pt beside a config
    from iris import variant_config

    pickled = base / "pickled-model"
    pickled.mkdir()
    variant_config("nano").save(pickled / "config.json")
    sentinel = base / SENTINEL_NAME
    for name in ("generator.safetensors", "generator.bin", "vae.pt", "text_encoder.ckpt"):
        (pickled / name).write_bytes(pickle.dumps(Payload(sentinel)))
    bins = base / "bin-model"
    bins.mkdir()
    variant_config("nano").save(bins / "config.json")
    (bins / "generator.bin").write_bytes(pickle.dumps(Payload(sentinel)))
    broken = base / "broken-config"
    broken.mkdir()
    (broken / "config.json").write_text('{"name": "iris-nano", "generator": {"dim": ')
    wrong = base / "wrong-config"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps([1, 2, 3]))
    return base


def bad_cases(base: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, a word the error line must contain)."""
    photo = str(base / "photo.png")
    return {
        "missing image file": (["edit", str(base / "nope.png"), "x", *FAST], "not found"),
        "corrupt image": (["edit", str(base / "corrupt.png"), "x", *FAST], "not a readable image"),
        "zero-byte image": (["upscale", str(base / "empty.png"), *FAST], "empty"),
        "corrupt mask": (["inpaint", photo, str(base / "corrupt.png"), "x", *FAST], "not a readable image"),
        "steps 0": (["generate", "x", "--model", "nano", "--steps", "0"], "steps"),
        "steps 201": (["generate", "x", "--model", "nano", "--steps", "201"], "steps"),
        "iterations 99": (["generate", "x", "--model", "nano", "-r", "99"], "iterations"),
        "guidance nan": (["generate", "x", *FAST, "--guidance", "nan"], "guidance"),
        "guidance -1": (["generate", "x", *FAST, "--guidance", "-1"], "guidance"),
        "negative seed": (["generate", "x", *FAST, "--seed", "-1"], "seed"),
        "seed 2^64": (["generate", "x", *FAST, "--seed", str(2**64)], "seed"),
        "width 100000": (["generate", "x", *FAST, "--width", "100000"], "width"),
        "prompt over 10,000 chars": (["generate", "x" * 10_001, *FAST], "limit"),
        "strength 2": (["edit", photo, "x", *FAST, "--strength", "2"], "strength"),
        "pickle weights folder": (["generate", "x", "--model", str(base / "pickled-model")], "safetensors"),
        "only .bin weights": (["generate", "x", "--model", str(base / "bin-model")], "missing"),
        "offline hub id": (["generate", "x", "--model", "someone/model"], "hub"),
        "malformed config.json": (["info", "--model", str(base / "broken-config")], "config"),
        "config.json not an object": (["info", "--model", str(base / "wrong-config")], "config"),
        "model is a file": (["info", "--model", photo], "folder"),
        "unknown variant path": (["info", "--model", "no/such/folder/at/all"], "hub id"),
    }


CASES = list(bad_cases(Path("/")).keys())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_error(cli, files, case, tmp_path):
    args, word = bad_cases(files)[case]
    proc = cli(*args, "-o", str(tmp_path / "out.png")) if args[0] != "info" else cli(*args)
    assert_one_line_error(proc, contains=word)
    assert not (tmp_path / "out.png").exists()
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp files
    assert not (files / SENTINEL_NAME).exists(), "a pickle file was unpickled"


@pytest.mark.parametrize("args", [["generate", "x", "--steps", "abc"], ["generate", "x", "--seed", "1.5"],
                                  ["upscale", "a.png", "--scale", "3"], ["frobnicate"]])
def test_malformed_arguments_exit_2_without_traceback(cli, args):
    proc = cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert re.match(r"^iris( \w+)?: error: ", error_lines(proc)[-1]), proc.stderr  # argparse: `iris edit: error:`


def test_generate_writes_a_png_with_its_parameters(tmp_path):
    from iris.pngmeta import read_params

    proc = iris("generate", "a red apple ✓", *FAST, "--seed", "7", "--width", "64", "--height", "48", "-o",
                "out.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "wrote out.png (64x48" in proc.stdout
    image = Image.open(tmp_path / "out.png")
    assert image.format == "PNG" and image.size == (64, 48)
    params = read_params(tmp_path / "out.png")
    assert params["prompt"] == "a red apple ✓" and params["seed"] == 7 and params["steps"] == 1
    assert params["iterations"] == 1 and params["task"] == "generate" and params["model_source"] == "random:nano"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left behind


def test_info_small_reports_about_47m_generator_params(cli):
    proc = cli("info", "--model", "small")
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"params\s+generator\s+([\d.]+)M", proc.stdout)
    assert match, proc.stdout
    assert abs(float(match.group(1)) - 47.0) <= 4.7, proc.stdout
    assert re.search(r"^cpu\s+native kernels (on|off)", proc.stdout, re.M), proc.stdout  # and why, when off


# ----------------------------------------------------------------------------------------------- faults
def test_output_path_under_a_file_gives_one_line_error(cli, files, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = cli("edit", str(files / "photo.png"), "x", *FAST, "-o", str(blocker / "sub" / "out.png"))
    assert_one_line_error(proc, only=False)  # after the progress line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and blocker.read_text() == "not a folder"



@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_an_output_that_is_a_folder_or_a_device_is_refused_before_the_run(cli, tmp_path, kind):
    """`-o FOLDER` failed after the run with the temp file's name; `-o /dev/null` (here a FIFO standing in for a
    device) was replaced by a regular file. Both are refused at once, without a progress line."""
    import stat

    target = tmp_path / "out.png"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    proc = cli("generate", "x", *FAST, "-o", str(target))
    line = assert_one_line_error(proc, contains="folder" if kind == "folder" else "not a regular file")
    assert ".out-" not in line and proc.returncode == 1
    mode = os.lstat(target).st_mode
    assert stat.S_ISDIR(mode) if kind == "folder" else stat.S_ISFIFO(mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_an_empty_model_means_the_bundled_demo(cli, tmp_path):
    """`--model ""` (an unset variable in a script) said ". has no config.json": it is the default model."""
    proc = cli("info", "--model", "", cwd=tmp_path)
    assert proc.returncode == 0 and "(demo)" in proc.stdout.splitlines()[0], proc.stdout + proc.stderr


def test_a_reader_that_goes_away_is_no_error():
    """`iris info | head -1` printed "iris: error: [Errno 32] Broken pipe": the reader closing is not an error."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        proc = subprocess.run([sys.executable, "-m", "iris.cli", "info", "--model", "nano"], cwd=ROOT, env=cli_env(),
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and "error" not in proc.stderr.lower() and "Traceback" not in proc.stderr

@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o500 does not stop root from writing "
                                              "(the parent-is-a-file test covers an unwritable output path)")
def test_read_only_output_folder_gives_one_line_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        proc = iris("generate", "x", *FAST, "--width", "32", "--height", "32", "-o", str(folder / "out.png"))
        assert_one_line_error(proc, only=False, contains="permission")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_full_disk_leaves_no_partial_file(tmp_path):
    """RLIMIT_FSIZE makes every write past 64 bytes fail with EFBIG (Python ignores SIGXFSZ): a full disk."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    out = tmp_path / "out"
    out.mkdir()
    proc = iris("generate", "x", *FAST, "--width", "32", "--height", "32", "-o", str(out / "img.png"),
                preexec_fn=small_files)
    assert_one_line_error(proc, only=False, contains="too large")
    assert list(out.iterdir()) == []  # the temp file was removed, no img.png


def test_full_disk_in_process_removes_the_temp_file(tmp_path, monkeypatch):
    """The same fault inside one process: PIL's save writes half a file then hits ENOSPC."""
    import errno

    from PIL import Image as PILImage

    from iris import cli

    real_save = PILImage.Image.save

    def failing_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        if hasattr(fp, "truncate"):
            fp.truncate(10)
        else:  # a path (iris.files.atomic_path's temp file)
            os.truncate(fp, 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", failing_save)
    code = cli.main(["generate", "x", *FAST, "--width", "16", "--height", "16", "-q", "-o", str(tmp_path / "a.png")])
    assert code == 1
    assert list(tmp_path.iterdir()) == []


def test_grid_writes_a_labelled_png_with_every_cell(tmp_path):
    from iris.pngmeta import read_params

    out = tmp_path / "grid.png"
    proc = iris("grid", "a cat", "--model", "nano", "--grid-iterations", "1,2", "--grid-steps", "1", "-o", str(out),
                "--seed", "3", "-q")
    assert proc.returncode == 0, proc.stderr
    params = read_params(out)
    assert params["task"] == "grid" and params["seed"] == 3 and len(params["cells"]) == 2
    assert Image.open(out).size == (48 + 2 * 160, 48 + 160 + 16)
    assert_one_line_error(iris("grid", "a cat", "--model", "nano", "--grid-steps", "0", "-q"), contains="steps")


@pytest.mark.parametrize("args,contains", [
    (["generate", "x", "--model", "nano", "--device", "garbage"], "device"),
    (["generate", "x", "--model", "nano", "--device", "meta"], "device"),
    (["generate", "\udcff\udcfe", "--model", "nano"], "not valid Unicode"),
])
def test_devices_and_undecodable_prompts_give_one_line_errors(cli, args, contains):
    assert_one_line_error(cli(*args, "-q"), contains=contains)
