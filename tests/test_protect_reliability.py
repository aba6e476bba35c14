"""`unlearnable protect`: no file is ever lost or left broken (issue 10, section 2).

Each case runs the CLI and asserts its exit code and what is left on disk. Failures of the disk are
simulated by monkeypatching (tests run as root, where chmod does not stop a write); the kill -9 case
kills a real child process just before a photo is renamed into place.
"""
from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from unlearnable.cli.main import app
from unlearnable.data import storage
from unlearnable.data.photos.decode import read_photo
from unlearnable.eval.quality import psnr

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST = ["--max-rounds", "1", "--steps", "2", "--workers", "1", "--work-size", "16"]
runner = CliRunner()


def _photo(path: Path, sample: str = "astronaut.png", size=(40, 32), fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(SAMPLES / sample) as im:
        im.convert("RGB").resize(size).save(path, format=fmt, **save)
    return path


def _protect(src: Path, out: Path, *extra: str):
    return runner.invoke(app, ["protect", str(src), "-o", str(out), *FAST, *extra])


def _said(r) -> str:
    """The command's output with line wrapping undone (rich wraps long lines to the terminal width)."""
    return " ".join(r.output.split())


def _files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (hidden ones included)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _make_album(root: Path) -> Path:
    _photo(root / "alice" / "a.jpg", "astronaut.png", quality=92)
    _photo(root / "alice" / "b.png", "coffee.png")
    _photo(root / "bob" / "c.png", "chelsea.png")
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(album, OUT) of one finished run, shared by the tests (the noise search is the slow part)."""
    base = tmp_path_factory.mktemp("finished")
    album = _make_album(base / "photos")
    r = _protect(album, base / "out")
    assert r.exit_code == 0, r.output
    return album, base / "out"


@pytest.fixture
def album(tmp_path, finished) -> Path:
    """A fresh copy of the album; its search state is kept aside in ``album.seed`` (see :func:`_seed`)."""
    return Path(shutil.copytree(finished[0], tmp_path / "photos"))


def _seed(out: Path, finished: tuple[Path, Path]) -> Path:
    """Give ``out`` the finished run's search state only (no photos, no manifest, no journal): the
    run under test then skips the noise search, which is what makes these tests fast."""
    (out / ".unlearnable").mkdir(parents=True, exist_ok=True)
    shutil.copy2(finished[1] / ".unlearnable" / "search.pt", out / ".unlearnable" / "search.pt")
    return out


def _copy_done(tmp_path: Path, finished: tuple[Path, Path]) -> Path:
    """A copy of the finished OUT (photos, manifest, journal, state)."""
    return Path(shutil.copytree(finished[1], tmp_path / "out", symlinks=True))


def _photos(folder: Path) -> dict[str, str]:
    return {k: v for k, v in _files(folder).items() if not k.startswith(".") and k != "manifest.json"}


# ------------------------------------------------------------------------- 1. never overwrite a foreign file


def test_existing_file_not_written_by_us_is_refused_and_nothing_is_written(album, tmp_path):
    out = tmp_path / "out"
    _photo(out / "alice" / "b.png", "camera.png")  # the user's own file at an output path
    before = _files(out)
    r = _protect(album, out)
    assert r.exit_code == 2, r.output
    assert "was not written by unlearnable" in _said(r) and "refusing to overwrite" in _said(r)
    assert _files(out) == before and not (out / ".unlearnable").exists()


def test_users_own_manifest_json_is_refused(album, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"my": "shopping list"}')
    r = _protect(album, out)
    assert r.exit_code == 2 and "manifest" in _said(r), r.output
    assert _files(out) == {"manifest.json": hashlib.sha256(b'{"my": "shopping list"}').hexdigest()}


def test_symlinked_subfolder_of_out_is_refused(album, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _photo(elsewhere / "a.jpg", "rocket.jpg")
    before = _files(elsewhere)
    out.mkdir()
    (out / "alice").symlink_to(elsewhere)
    r = _protect(album, out)
    assert r.exit_code == 2 and "symbolic link" in _said(r), r.output
    assert _files(elsewhere) == before and sorted(os.listdir(out)) == ["alice"]


def test_input_folder_inside_out_is_a_usage_error(tmp_path):
    p = tmp_path / "P"
    _photo(p / "IMG_0001.jpg", "rocket.jpg")
    _photo(p / "me" / "IMG_0001.jpg", "astronaut.png")
    before = _files(p)
    r = _protect(p / "me", p)
    assert r.exit_code == 2 and "inside the output folder" in _said(r), r.output
    assert _files(p) == before


def test_output_edited_after_a_run_is_not_overwritten(album, tmp_path, finished):
    out = _copy_done(tmp_path, finished)
    _photo(out / "bob" / "c.png", "camera.png")  # the user edited a protected copy (a valid image)
    edited = _files(out)
    r = _protect(album, out)
    assert r.exit_code == 2 and "changed since unlearnable wrote it" in _said(r), r.output
    assert _files(out) == edited


# ---------------------------------------------------------------------------- 2. full disk, short writes


def test_disk_full_while_encoding_leaves_no_temp_and_no_final_file(album, tmp_path, monkeypatch, finished):
    out = _seed(tmp_path / "out", finished)
    real_save = Image.Image.save

    def full(self, fp, *args, **kwargs):
        if isinstance(fp, io.BufferedWriter):  # a photo being written to disk
            fp.write(b"\xff\xd8 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full)
    r = _protect(album, out)
    assert r.exit_code == 1, r.output
    failed = [line for line in r.output.splitlines() if line.startswith("failed")]
    assert len(failed) == 3 and all("No space left on device" in line for line in failed)
    assert _temps(out) == [] and not list(out.glob("[!.]*/*"))  # no temp, no partial file under a final name
    assert {e["status"] for e in _manifest(out)["images"]} == {"error"}


def test_silent_short_write_is_caught_before_the_rename(album, tmp_path, monkeypatch, finished):
    out = _seed(tmp_path / "out", finished)
    real_save = Image.Image.save

    def short(self, fp, *args, **kwargs):  # the encoder "succeeds" but half the bytes never land
        if not isinstance(fp, io.BufferedWriter):
            return real_save(self, fp, *args, **kwargs)
        buf = io.BytesIO()
        real_save(self, buf, *args, **kwargs)
        fp.write(buf.getvalue()[: len(buf.getvalue()) // 2])

    monkeypatch.setattr(Image.Image, "save", short)
    r = _protect(album, out)
    assert r.exit_code == 1, r.output
    assert _said(r).count("does not decode") == 3
    assert _temps(out) == [] and not list(out.glob("*/*.jpg")) and not list(out.glob("*/*.png"))


def test_disk_full_for_every_write_reports_each_photo_and_the_manifest(album, tmp_path, monkeypatch, finished):
    out = _seed(tmp_path / "out", finished)
    real = storage._create_temp

    def full(path):
        fd, tmp = real(path)
        os.close(fd)
        os.unlink(tmp)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "_create_temp", full)
    r = _protect(album, out)
    assert r.exit_code == 1, r.output
    failed = [line for line in r.output.splitlines() if line.startswith("failed")]
    assert len(failed) == 4 and "manifest.json: No space left on device" in failed[-1]
    assert "Traceback" not in r.output and _temps(out) == []
    assert not [f for f in out.rglob("*") if f.is_file() and ".unlearnable" not in f.parts]  # no photo, manifest, temp
    assert sorted(os.listdir(out / ".unlearnable")) == ["lock", "search.pt", "written.jsonl"]
    monkeypatch.undo()
    again = _protect(album, out)  # space is back: the same command finishes the job
    assert again.exit_code == 0 and _manifest(out)["summary"]["ok"] == 3
    assert _photos(out) == _photos(finished[1])


def test_read_only_output_folder_is_one_line_and_exit_1(album, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    inside = str(out) + os.sep
    real_mkdir, real_open = os.mkdir, os.open

    def ro_mkdir(path, *a, **k):
        if os.fspath(path).startswith(inside):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_mkdir(path, *a, **k)

    def ro_open(path, flags, *a, **k):
        if os.fspath(path).startswith(inside) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    monkeypatch.setattr(os, "open", ro_open)
    r = _protect(album, out)
    assert r.exit_code == 1, r.output
    assert "cannot write to the output folder" in _said(r) and "Read-only file system" in _said(r)
    assert "Traceback" not in r.output and os.listdir(out) == []


# ------------------------------------------------------------------------------ 3. tiny images, metrics


def test_images_below_11_pixels_are_protected_with_psnr_and_no_ssim(tmp_path):
    src, out = tmp_path / "tiny", tmp_path / "out"
    _photo(src / "dot.png", size=(1, 1))
    _photo(src / "strip.png", size=(10, 4000))
    _photo(src / "strip.jpg", size=(10, 300), quality=95)
    r = _protect(src, out)
    assert r.exit_code == 0, r.output
    for e in _manifest(out)["images"]:
        assert e["status"] == "ok" and (out / e["output"]).is_file()
        assert e["ssim"] is None and any("SSIM not computed" in n for n in e["notes"])
    fast = tmp_path / "fast"
    (fast / ".unlearnable").mkdir(parents=True)
    shutil.copy2(out / ".unlearnable" / "search.pt", fast / ".unlearnable" / "search.pt")
    r = _protect(src, fast, "--no-metrics")
    assert r.exit_code == 0, r.output
    assert all(e["psnr"] is None and e["ssim"] is None for e in _manifest(tmp_path / "fast")["images"])


def test_manifest_reports_budget_and_the_change_of_the_written_file(album, tmp_path, finished):
    out = _copy_done(tmp_path, finished)
    m = _manifest(out)
    assert m["eps_255"] == pytest.approx(8) and "max_change_levels" in m["measured"]
    jpeg = {e["output"]: e for e in m["images"]}["alice/a.jpg"]
    orig, written = read_photo(album / "alice" / "a.jpg"), read_photo(out / "alice" / "a.jpg")
    change = int(np.abs(orig.pixels.astype(int) - written.pixels.astype(int)).max())
    assert jpeg["max_change_levels"] == change and jpeg["noise_max_levels"] <= 8
    assert jpeg["max_change_levels"] > jpeg["noise_max_levels"]  # JPEG adds to the noise: both are reported
    assert jpeg["psnr"] == pytest.approx(psnr(orig.pixels, written.pixels), abs=1e-9)
    r = _protect(album, out)  # the table labels the measured figure as the written file's
    assert r.exit_code == 0 and "max Δ written" in _said(r) and "noise budget" in _said(r)


# ------------------------------------------------------------------------------ 4. unreadable subfolder


def test_unreadable_subfolder_is_reported_and_exits_1(album, tmp_path, monkeypatch, finished):
    locked = album / "bob"
    _seed(tmp_path / "out", finished)
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = _protect(album, tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert "cannot read folder: Permission denied" in _said(r) and str(locked) in r.output
    m = _manifest(tmp_path / "out")
    assert m["summary"]["ok"] == 2
    assert m["unreadable"] == [{"path": str(locked), "error": "cannot read folder: Permission denied"}]


# ------------------------------------------------------------------------- 5, 6. damaged or tampered state


def test_corrupt_search_state_and_manifest_are_redone(album, tmp_path, finished):
    out = _copy_done(tmp_path, finished)
    (out / ".unlearnable" / "search.pt").write_bytes(b"not a torch file")
    (out / "manifest.json").write_text('{"format": "unlearnable-protected-photos/1", "images": [')
    (out / "alice" / "a.jpg").unlink()
    r = _protect(album, out)
    assert r.exit_code == 0, r.output
    assert "search.pt is damaged" in _said(r) and "manifest.json was damaged" in _said(r)
    assert _manifest(out)["summary"]["ok"] == 3
    assert list((out / ".unlearnable").glob("manifest.damaged-*.json"))  # the damaged one is kept, not lost
    assert _photos(out) == _photos(finished[1])  # searched again with the same seed: byte-identical


def test_tampered_state_over_budget_is_rejected_and_searched_again(album, tmp_path, finished):
    out = _copy_done(tmp_path, finished)
    state = out / ".unlearnable" / "search.pt"
    blob = torch.load(state, weights_only=True)
    blob["patterns"] = blob["patterns"] * 30
    torch.save(blob, state)
    for p in out.glob("*/*.png"):
        p.unlink()
    r = _protect(album, out)
    assert r.exit_code == 0 and "exceeds the budget" in _said(r), r.output
    for e in _manifest(out)["images"]:
        if e["format"] == "PNG":  # lossless: what is written is the noise itself
            assert e["max_change_levels"] <= 8
    assert float(torch.load(state, weights_only=True)["patterns"].abs().max()) <= 8 / 255 + 1e-6


# ------------------------------------------------------------------------------- 7, 8. lock and leftovers


def test_second_run_on_the_same_out_is_refused_while_the_first_holds_it(album, tmp_path, finished):
    out = _seed(tmp_path / "out", finished)
    lock = out / ".unlearnable" / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, json.dumps({"pid": 4242, "host": "laptop"}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run holds the folder
    try:
        r = _protect(album, out)
        assert r.exit_code == 2 and "another unlearnable run (pid 4242" in _said(r), r.output
        assert sorted(os.listdir(out)) == [".unlearnable"]
        assert sorted(os.listdir(out / ".unlearnable")) == ["lock", "search.pt"]
    finally:
        os.close(fd)  # the first run ends (or is killed): the kernel drops its lock
    r = _protect(album, out)  # the lock file of a dead run does not block
    assert r.exit_code == 0, r.output


def test_rerun_removes_only_its_own_leftover_temp_files(album, tmp_path, finished):
    out = _copy_done(tmp_path, finished)
    ours = [out / "alice" / ".a.jpg.unlearnable-0badc0de.tmp", out / ".manifest.json.unlearnable-12345678.tmp",
            out / "bob" / ".c.png.89abcdef.tmp", out / "manifest.json.tmp"]  # the last two: older versions' names
    users = [out / "alice" / "notes.tmp", out / "alice" / ".a.jpg.unlearnable-xyz.tmp",
             out / "bob" / ".z.png.89abcdef.tmp"]
    for f in ours + users:
        f.write_bytes(b"left over")
    r = _protect(album, out)
    assert r.exit_code == 0 and "removed 4 temporary file(s)" in _said(r), r.output
    assert not any(f.exists() for f in ours) and all(f.exists() for f in users)


_KILL_BEFORE_RENAME = """
import os, signal, sys
import unlearnable.data.storage as storage
real = storage._place
def place(tmp, path, may_replace, before):
    if path.name == "b.png":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tmp, path, may_replace, before)
storage._place = place
from unlearnable.cli.main import app
app(sys.argv[1:])
"""


def _killed(script: str, album: Path, out: Path) -> list[str]:
    """Run ``unlearnable protect ALBUM -o OUT`` under ``script`` (which SIGKILLs the process at some
    point), check that it died by SIGKILL, and return the arguments for the rerun."""
    args = ["protect", str(album), "-o", str(out), *FAST]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    return args


def test_kill_9_mid_write_then_rerun_cleans_up_and_gives_identical_outputs(album, tmp_path, finished):
    out = _seed(tmp_path / "out", finished)
    args = _killed(_KILL_BEFORE_RENAME, album, out)
    assert _temps(out) == [".b.png.unlearnable-" + _temps(out)[0].split("unlearnable-")[1]]  # one hidden temp left
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "removed 1 temporary file" in _said(r), r.output
    assert _temps(out) == [] and _photos(out) == _photos(finished[1])


_KILL_AFTER_LOGGING = """
import os, signal, sys
from unlearnable.data.photos import outdir
real = outdir.EntryLog.append
def append(self, entry):
    real(self, entry)
    if entry["output"] == "alice/b.png":
        os.kill(os.getpid(), signal.SIGKILL)
outdir.EntryLog.append = append
from unlearnable.cli.main import app
app(sys.argv[1:])
"""


def test_kill_9_after_two_photos_resumes_them_from_the_entry_log(album, tmp_path, finished):
    out = _seed(tmp_path / "out", finished)
    args = _killed(_KILL_AFTER_LOGGING, album, out)
    assert not (out / "manifest.json").exists()  # the manifest is written at the end, not after every photo
    logged = (out / ".unlearnable" / "entries.jsonl").read_text().splitlines()
    assert json.loads(logged[0])["settings"]["work_size"] == 16
    assert [json.loads(line)["output"] for line in logged[1:]] == ["alice/a.jpg", "alice/b.png"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "(2 already done)" in _said(r), r.output
    m = _manifest(out)
    assert m["summary"]["ok"] == 3 and m["summary"]["resumed"] == 2
    assert not (out / ".unlearnable" / "entries.jsonl").exists()  # compacted into the manifest
    assert _photos(out) == _photos(finished[1])


def test_manifest_is_written_once_at_the_end_however_long_the_run(album, tmp_path, monkeypatch, finished):
    import unlearnable.protect.photos as protect

    out = _seed(tmp_path / "out", finished)
    made: list[str] = []
    real_temp, real_one = storage._create_temp, protect._protect_one
    monkeypatch.setattr(storage, "_create_temp", lambda path: made.append(Path(path).name) or real_temp(path))

    def slow(*args):  # photos that take a while each: progress is logged, the manifest not rewritten
        time.sleep(1.1)
        return real_one(*args)

    monkeypatch.setattr(protect, "_protect_one", slow)
    r = _protect(album, out)
    assert r.exit_code == 0, r.output
    assert made.count("manifest.json") == 1 and _manifest(out)["summary"]["ok"] == 3


def test_each_input_is_read_once_per_phase(album, tmp_path, monkeypatch, finished):
    out = _seed(tmp_path / "out", finished)
    _photo(album / "carol" / "d.png", "rocket.jpg")  # a new class: previewed and searched in this run
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(str(album) + os.sep):
            opened.append(Path(file).relative_to(album).as_posix())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    r = _protect(album, out)
    assert r.exit_code == 0 and _manifest(out)["summary"]["ok"] == 4, r.output
    # phase 1: hash (and preview, for d.png) from one read; phase 3: hash check and full decode from one read
    assert sorted(opened) == sorted(2 * ["alice/a.jpg", "alice/b.png", "bob/c.png", "carol/d.png"])


def test_entry_log_skips_a_torn_line_and_restarts_for_other_settings(tmp_path):
    from unlearnable.data.photos.outdir import EntryLog, state_dir

    out = tmp_path / "out"
    state_dir(out)
    log = EntryLog(out)
    assert log.read({"eps": 8}) == {}
    for entry in ({"output": "x.png", "v": 1}, {"output": "y.png", "v": 1}, {"output": "x.png", "v": 2}):
        log.append(entry)
    with open(log.path, "ab") as f:
        f.write(b'{"output": "z.pn')  # torn by a crash
    again = EntryLog(out)
    assert again.read({"eps": 8}) == {"x.png": {"output": "x.png", "v": 2}, "y.png": {"output": "y.png", "v": 1}}
    again.append({"output": "z.png", "v": 1})
    assert EntryLog(out).read({"eps": 8})["z.png"] == {"output": "z.png", "v": 1}
    other = EntryLog(out)
    assert other.read({"eps": 4}) == {}
    other.append({"output": "w.png"})
    assert EntryLog(out).read({"eps": 8}) == {} and EntryLog(out).read({"eps": 4}) == {"w.png": {"output": "w.png"}}


# ------------------------------------------------------------------------------- 9. options and Ctrl-C


@pytest.mark.parametrize("option", [["--work-size", "0"], ["--work-size", "-3"], ["--clusters", "0"],
                                    ["--clusters", "-1"], ["--max-megapixels", "0"], ["--max-megapixels", "-5"],
                                    ["--workers", "0"]])
def test_nonpositive_sizes_are_usage_errors(album, tmp_path, option):
    r = _protect(album, tmp_path / "out", *option)
    said = _said(r).replace("-", " ")  # the CLI's range check or the library's "work size must be >= 1"
    assert r.exit_code == 2 and option[0].strip("-").replace("-", " ") in said, r.output
    assert not (tmp_path / "out").exists()


def test_ctrl_c_says_rerun_resumes_and_the_rerun_does(album, tmp_path, monkeypatch, finished):
    import unlearnable.protect.photos as protect

    out = _seed(tmp_path / "out", finished)
    real = protect._protect_one
    calls = []

    def ctrl_c_during_second(*args):  # a real SIGINT, delivered to the main thread as Ctrl-C is
        calls.append(1)
        if len(calls) == 2:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        return real(*args)

    # Python's own Ctrl-C handler, as an interactive shell gives it: a job started in the background
    # (`cmd &`, nohup) inherits SIGINT ignored, and this test would then see no Ctrl-C at all
    monkeypatch.setattr(protect, "_protect_one", ctrl_c_during_second)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = _protect(album, out)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert r.exit_code == 130, r.output
    assert r.output.strip().startswith("interrupted") and "rerun the same command to resume" in _said(r)
    assert "Traceback" not in r.output and _temps(out) == []
    done = _manifest(out)["summary"]["ok"]
    assert done >= 1 and len(_photos(out)) == done  # every photo on disk is recorded; no partial file
    monkeypatch.undo()
    r = _protect(album, out)
    assert r.exit_code == 0 and f"({done} already done)" in _said(r), r.output
    assert _photos(out) == _photos(finished[1])


# ------------------------------------------------------------------------ 10. GIFs, photos added later


def test_gif_in_a_folder_is_refused_like_a_named_gif(album, tmp_path, finished):
    Image.new("RGB", (20, 20), "red").save(album / "bob" / "anim.gif")
    _seed(tmp_path / "out", finished)
    r = _protect(album, tmp_path / "out")
    assert r.exit_code == 1, r.output
    m = _manifest(tmp_path / "out")
    gif = {e["output"]: e for e in m["images"]}["bob/anim.gif"]
    assert gif["status"] == "error" and "GIF" in gif["error"] and "convert it to PNG" in gif["error"]
    assert not any(s["path"].endswith(".gif") for s in m["skipped_files"])
    assert any(line.startswith("failed") and "anim.gif" in line for line in r.output.splitlines())


def test_photo_added_to_a_class_gets_the_stored_class_pattern(album, tmp_path, finished):
    out = _copy_done(tmp_path, finished)
    first = {e["output"]: e for e in _manifest(out)["images"]}
    _photo(album / "alice" / "new.png", "rocket.jpg")
    r = _protect(album, out)
    assert r.exit_code == 0 and "got their class's stored pattern (alice)" in _said(r), r.output
    m = _manifest(out)
    new = {e["output"]: e for e in m["images"]}["alice/new.png"]
    assert new["pattern"] == "class-reused" and new["pattern_sha256"] == first["alice/b.png"]["pattern_sha256"]
    assert m["search"]["resumed"] is True and m["search"]["searched_now"] is None
    assert m["summary"]["resumed"] == 3 and m["summary"]["class_pattern_reused"] == 1
