"""Files written whole or not at all (capsnet_jax.workdir.files) and the
writers that use them: the workdir's history and records, the report's
README rewrite, figures, the primary-capsule decoder's cache and bundle
export.
A failed write leaves the old file; temporary names are unique; a damaged
file is a one-line error or, for a cache, recomputed."""

import json
import os
import stat

import jax
import numpy as np
import pytest

from capsnet_jax.errors import WorkdirError
from capsnet_jax.workdir import files
from capsnet_jax.workdir import history
from capsnet_jax.workdir import record


def _disk_full_at_fsync(monkeypatch):
  """os.fsync fails as on a full disk (data that did not fit)."""
  def fsync(fd):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "fsync", fsync)


# --------------------------------------------------------------------------
# files.


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path,
                                                             monkeypatch):
  path = tmp_path / "results.json"
  files.atomic_write_json(str(path), {"step": 1})
  _disk_full_at_fsync(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    files.atomic_write_json(str(path), {"step": 2})
  monkeypatch.undo()
  assert json.loads(path.read_text()) == {"step": 1}
  assert os.listdir(tmp_path) == ["results.json"]


def test_a_replaced_file_keeps_its_permissions(tmp_path):
  path = tmp_path / "README.md"
  path.write_text("old")
  os.chmod(path, 0o644)
  files.atomic_write_text(str(path), "new")
  assert path.read_text() == "new"
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0600
  umask = os.umask(0o022)
  try:
    files.atomic_write_text(str(tmp_path / "fresh.txt"), "x")
  finally:
    os.umask(umask)
  assert stat.S_IMODE(os.stat(tmp_path / "fresh.txt").st_mode) == 0o644


def test_a_staged_folder_replaces_the_old_one_whole_or_not_at_all(
    tmp_path, monkeypatch):
  target = tmp_path / "bundle"
  target.mkdir()
  (target / "old.txt").write_text("old")
  # A failure inside the block: the old folder stays, the staging goes.
  with pytest.raises(RuntimeError, match="half written"):
    with files.staged_folder(str(target)) as staging:
      (tmp_path / staging / "new.txt").write_text("new")
      raise RuntimeError("half written")
  assert sorted(os.listdir(tmp_path)) == ["bundle"]
  assert os.listdir(target) == ["old.txt"]
  # A full disk while the new folder is synced: the same.
  with pytest.raises(OSError, match="No space left"):
    with files.staged_folder(str(target)) as staging:
      (tmp_path / staging / "new.txt").write_text("new")
      _disk_full_at_fsync(monkeypatch)
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["bundle"]
  assert os.listdir(target) == ["old.txt"]
  # Success: only the new content, with the umask's permissions (not
  # mkdtemp's 0700), and nothing left beside it.
  umask = os.umask(0o022)
  try:
    with files.staged_folder(str(target)) as staging:
      (tmp_path / staging / "new.txt").write_text("new")
  finally:
    os.umask(umask)
  assert sorted(os.listdir(tmp_path)) == ["bundle"]
  assert os.listdir(target) == ["new.txt"]
  assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
  # A new target in a new parent folder.
  with files.staged_folder(str(tmp_path / "a" / "b")) as staging:
    (tmp_path / staging / "x").write_text("x")
  assert os.listdir(tmp_path / "a") == ["b"]


def _old_and_new(tmp_path):
  target = tmp_path / "bundle"
  target.mkdir()
  (target / "old.txt").write_text("old")
  return target


def test_a_swapped_folder_is_never_missing(tmp_path, monkeypatch):
  """Where the OS can (renameat2 with RENAME_EXCHANGE), old and new are
  swapped in one step: at no rename is the target's name empty for a
  reader."""
  target = _old_and_new(tmp_path)
  missing_at = []
  real = os.replace

  def replace(src, dst):
    if not os.path.exists(target):
      missing_at.append((src, dst))
    real(src, dst)
    if not os.path.exists(target):
      missing_at.append((src, dst))
  monkeypatch.setattr(os, "replace", replace)
  with files.staged_folder(str(target)) as staging:
    (tmp_path / staging / "new.txt").write_text("new")
  assert not missing_at
  assert sorted(os.listdir(tmp_path)) == ["bundle"]
  assert os.listdir(target) == ["new.txt"]


def test_without_exchange_the_old_folder_comes_back(tmp_path, monkeypatch):
  """Where the OS cannot swap, a failure between putting the old folder
  aside and renaming the new one in puts the old one back; after a crash
  there, the next swap (or a reader of bundles) puts it back."""
  monkeypatch.setattr(files, "_libc_renameat2", lambda: None)
  target = _old_and_new(tmp_path)
  real = os.replace

  def replace(src, dst):
    if str(dst) == str(target):  # the new folder in: the disk fails
      raise OSError(5, "Input/output error")
    real(src, dst)
  monkeypatch.setattr(os, "replace", replace)
  with pytest.raises(OSError, match="Input/output error"):
    with files.staged_folder(str(target)) as staging:
      (tmp_path / staging / "new.txt").write_text("new")
  monkeypatch.setattr(os, "replace", real)
  assert sorted(os.listdir(tmp_path)) == ["bundle"]
  assert os.listdir(target) == ["old.txt"]
  # A crash left only the old folder aside: it comes back.
  aside = tmp_path / ".bundle.old.x1y2"
  aside.mkdir()
  os.rename(target, aside / "bundle")
  assert files.recover_folder(str(target))
  assert sorted(os.listdir(tmp_path)) == ["bundle"]
  assert os.listdir(target) == ["old.txt"]
  assert not files.recover_folder(str(target))  # nothing to do
  aside.mkdir()
  os.rename(target, aside / "bundle")
  with files.staged_folder(str(target)) as staging:
    (tmp_path / staging / "new.txt").write_text("new")
  assert sorted(os.listdir(tmp_path)) == ["bundle"]
  assert os.listdir(target) == ["new.txt"]


def test_names_are_printed_with_their_control_characters_escaped():
  assert files.printable("a\x1b[2Jb\x07\x9b\u202ec\udcff d.png") == (
      "a\\x1b[2Jb\\x07\\x9b\\u202ec\\xff d.png")
  assert files.printable("ordinary/ünïcode 7.png") == "ordinary/ünïcode 7.png"


def test_write_new_never_replaces_a_file(tmp_path):
  (tmp_path / "a.png").write_bytes(b"input")
  (tmp_path / "a-2.png").write_bytes(b"input 2")
  assert files.write_new(str(tmp_path), "a", ".png", b"fig") == str(
      tmp_path / "a-3.png")
  assert files.write_new(str(tmp_path), "b", ".png", b"fig b") == str(
      tmp_path / "b.png")
  assert (tmp_path / "a.png").read_bytes() == b"input"
  assert (tmp_path / "a-2.png").read_bytes() == b"input 2"
  assert (tmp_path / "a-3.png").read_bytes() == b"fig"
  assert sorted(os.listdir(tmp_path)) == ["a-2.png", "a-3.png", "a.png",
                                          "b.png"]


def test_copy_file_and_fsync_tree(tmp_path, monkeypatch):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "sub").mkdir()
  (tmp_path / "src" / "sub" / "x").write_bytes(b"x" * 10)
  os.utime(tmp_path / "src" / "sub" / "x", ns=(10**18, 10**18))
  files.copy_file(str(tmp_path / "src" / "sub" / "x"), str(tmp_path / "y"))
  assert (tmp_path / "y").read_bytes() == b"x" * 10
  assert os.stat(tmp_path / "y").st_mtime_ns == 10**18
  synced, real = [], os.fsync
  monkeypatch.setattr(os, "fsync", lambda fd: (
      synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
  files.fsync_tree(str(tmp_path / "src"))
  assert sorted(synced) == sorted(str(tmp_path / "src" / p)
                                  for p in ("", "sub", "sub/x"))


# --------------------------------------------------------------------------
# The workdir: history and records.


def test_history_rewrites_with_a_unique_temporary(tmp_path):
  """A fixed "eval_history.jsonl.tmp" is shared by two writers (and here,
  a folder of that name blocks it)."""
  for step in (4, 8, 12):
    history.append(str(tmp_path), {"step": step, "source": "train"})
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "eval_history.jsonl.tmp").mkdir()
  assert history.truncate_after(str(tmp_path), 8) == 1
  assert [r["step"] for r in history.read(str(tmp_path))] == [4, 8]


@pytest.mark.parametrize("name,read", [
    ("config.json", record.read_config),
    ("results.json", record.read_results),
])
@pytest.mark.parametrize("text", ['{"step": 3', "[1, 2]", "\xff\xfe"])
def test_a_damaged_record_is_a_one_line_workdir_error(tmp_path, name, read,
                                                      text):
  (tmp_path / name).write_bytes(text.encode("latin-1"))
  with pytest.raises(WorkdirError, match=f"{name}") as caught:
    read(str(tmp_path))
  assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------
# The report's README rewrite.


def test_the_report_rewrite_is_atomic(tmp_path, monkeypatch):
  from capsnet_jax.analysis import report  # pylint: disable=g-import-not-at-top
  readme = tmp_path / "README.md"
  text = ("# Results\n<!-- report: --table=summary run -->\nold table\n"
          "<!-- /report -->\nThe end.\n")
  readme.write_text(text)
  monkeypatch.setattr(report, "render", lambda argv, base, plots=True:
                      f"new table of {' '.join(argv)}")
  _disk_full_at_fsync(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    report.update_file(str(readme))
  assert readme.read_text() == text  # not truncated, not half-written
  assert os.listdir(tmp_path) == ["README.md"]
  monkeypatch.setattr(os, "fsync", lambda fd: None)
  assert report.update_file(str(readme)) == 1
  assert readme.read_text() == text.replace(
      "old table", "new table of --table=summary run")


# --------------------------------------------------------------------------
# Figures (capsnet_jax.analysis.plots): visualize's, the report's curves.


def test_a_figure_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  from capsnet_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  png, gif = tmp_path / "confusion.png", tmp_path / "rotation.gif"
  plots.plot_confusion(np.eye(3, dtype=np.int64) * 5, ["a", "b", "c"],
                       str(png))
  strip = {"inputs": np.zeros((2, 4, 4, 1), np.float32),
           "reconstructions": np.ones((2, 4, 4, 1), np.float32)}
  plots.save_rotation_gif(strip, str(gif))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert gif.read_bytes()[:6] == b"GIF89a"
  before = {p.name: p.read_bytes() for p in (png, gif)}
  _disk_full_at_fsync(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    plots.plot_confusion(np.eye(3, dtype=np.int64), ["a", "b", "c"], str(png))
  with pytest.raises(OSError, match="No space left"):
    plots.save_rotation_gif({"inputs": strip["inputs"]}, str(gif))
  monkeypatch.undo()
  assert {p.name: p.read_bytes() for p in (png, gif)} == before
  assert sorted(os.listdir(tmp_path)) == ["confusion.png", "rotation.gif"]


# --------------------------------------------------------------------------
# The primary-capsule decoder's cache (--mode=visualize).


def test_a_damaged_decoder_cache_is_recomputed_not_a_crash(tmp_path):
  from capsnet_jax.analysis import arrays  # pylint: disable=g-import-not-at-top
  template = {"dense": {"kernel": np.zeros((4, 3), np.float32),
                        "bias": np.zeros((3,), np.float32)}}
  params = {"dense": {"kernel": np.ones((4, 3), np.float32),
                      "bias": np.full((3,), 2.0, np.float32)}}
  cache = tmp_path / "primary_decoder.msgpack"
  arrays.write_primary_decoder(str(cache), params, step=5)
  assert os.listdir(tmp_path) == ["primary_decoder.msgpack"]
  got = arrays.read_primary_decoder(str(cache), template, 5)
  np.testing.assert_array_equal(got["dense"]["kernel"], 1.0)
  np.testing.assert_array_equal(got["dense"]["bias"], 2.0)
  assert arrays.read_primary_decoder(str(cache), template, 6) is None
  whole = cache.read_bytes()
  other = {"dense": {"kernel": np.zeros((5, 3), np.float32),
                     "bias": np.zeros((3,), np.float32)}}
  for damaged in (whole[:len(whole) // 2], b"\xc1garbage", b""):
    cache.write_bytes(damaged)
    assert arrays.read_primary_decoder(str(cache), template, 5) is None
  arrays.write_primary_decoder(str(cache), other, step=5)  # another model
  assert arrays.read_primary_decoder(str(cache), template, 5) is None
  assert arrays.read_primary_decoder(str(tmp_path / "none"), template, 5) is None


# --------------------------------------------------------------------------
# Bundle export.


def test_bundle_export_is_whole_and_checksums_its_config(tiny_run, tmp_path,
                                                         monkeypatch):
  from capsnet_jax.inference import bundled  # pylint: disable=g-import-not-at-top
  from capsnet_jax.inference import export  # pylint: disable=g-import-not-at-top
  root = tmp_path / "weights"
  meta = export.export(str(tiny_run.workdir), "tiny", which="latest",
                       out_root=str(root))
  folder = root / "tiny"
  assert sorted(os.listdir(root)) == ["tiny"]  # no temporary folder left
  assert sorted(os.listdir(folder)) == ["config.json", "weights.json",
                                        "weights.msgpack"]
  assert meta["config_sha256"] == files.sha256(str(folder / "config.json"))
  assert bundled.read(str(folder))[0] == meta
  before = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
  # An export that fails midway leaves the earlier bundle as it was.
  real = files.atomic_write_json

  def fail(path, obj):
    if path.endswith(bundled.META_FILE):
      raise OSError(28, "No space left on device")
    return real(path, obj)
  monkeypatch.setattr(files, "atomic_write_json", fail)
  with pytest.raises(OSError, match="No space left"):
    export.export(str(tiny_run.workdir), "tiny", which="latest",
                  out_root=str(root))
  monkeypatch.undo()
  assert sorted(os.listdir(root)) == ["tiny"]
  assert {n: (folder / n).read_bytes() for n in os.listdir(folder)} == before
  # config.json builds the model: a changed one is refused.
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps(config | {"decoder": "deconv"}))
  with pytest.raises(WorkdirError, match="config.json: sha256 .* differs"):
    bundled.read(str(folder))
  (folder / "weights.json").write_text("{not json")
  with pytest.raises(WorkdirError, match="weights.json cannot be read"):
    bundled.read(str(folder))


def test_bundle_decoder_float16_none_and_added_later(tiny_run, tmp_path):
  from capsnet_jax.inference import bundled  # pylint: disable=g-import-not-at-top
  from capsnet_jax.inference import export  # pylint: disable=g-import-not-at-top
  from capsnet_jax.inference import trained  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "weights")
  workdir = str(tiny_run.workdir)
  source = trained.load(workdir, which="latest")
  caps = np.asarray(source.predict(
      np.zeros((2, 28, 28), np.uint8), keys=("class_caps",)).class_caps)
  want = source.decode(caps, [1, 2])
  # The tiny model's decoder: 160x16 + 16, 16x32 + 32, 32x784 + 784 = 28,992
  # of its parameters.
  decoder_params = 160 * 16 + 16 + 16 * 32 + 32 + 32 * 784 + 784
  meta = export.export(workdir, "tiny", which="latest", out_root=root)
  assert (meta["decoder"], meta["decoder_dtype"], meta["left_out"]) == (
      True, "float16", [])
  _, variables = bundled.read(os.path.join(root, "tiny"))
  assert {np.asarray(x).dtype for x in
          jax.tree.leaves(variables["params"]["decoder"])} == {
              np.dtype(np.float16)}
  assert np.asarray(variables["params"]["stem"]["conv"]["kernel"]).dtype == (
      np.float32)
  half = trained.load(os.path.join(root, "tiny"))
  assert half.has_decoder
  # float16 storage: a pixel moves by far less than one grey level.
  np.testing.assert_allclose(half.decode(caps, [1, 2]), want, atol=2e-3)
  lean = export.export(workdir, "lean", which="latest", out_root=root,
                       decoder_dtype="none")
  assert (lean["decoder"], lean["left_out"]) == (False, ["decoder"])
  assert lean["params"] == meta["params"] - decoder_params
  with pytest.raises(ValueError, match="has no decoder"):
    trained.load(os.path.join(root, "lean")).decode(caps, [1, 2])
  added = export.add_decoder("lean", workdir, which="latest", out_root=root,
                             decoder_dtype="float32")
  assert added["decoder"] and added["params"] == meta["params"]
  assert added["test_accuracy"] == lean["test_accuracy"]  # the encoder's
  assert added["decoder_source"]["step"] == source.step
  np.testing.assert_array_equal(
      trained.load(os.path.join(root, "lean")).decode(caps, [1, 2]), want)
  with pytest.raises(WorkdirError, match="Unknown decoder_dtype 'int8'"):
    export.export(workdir, "x", out_root=root, decoder_dtype="int8")
  # A decoder of another kind is refused (it would fail only at loading).
  lean_config = os.path.join(root, "lean", bundled.CONFIG_FILE)
  with open(lean_config) as f:
    other = dict(json.load(f), decoder="deconv")
  with open(lean_config, "w") as f:
    json.dump(other, f)
  lean_meta = os.path.join(root, "lean", bundled.META_FILE)
  with open(lean_meta) as f:
    meta_json = dict(json.load(f), config_sha256=files.sha256(lean_config))
  with open(lean_meta, "w") as f:
    json.dump(meta_json, f)
  with pytest.raises(WorkdirError, match=f"^{workdir} is a run of decoder "
                     "'fc', the bundle lean of 'deconv'$"):
    export.add_decoder("lean", workdir, which="latest", out_root=root)
