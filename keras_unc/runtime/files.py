"""Atomic writes: a reader (or a rerun after a kill) sees the old file or the new one, never
half of one.

Files are written beside their destination under `<name>.tmp-<pid>`, flushed to disk and
renamed over it (`os.replace` is atomic on POSIX within one file system). Folders
(checkpoints, the SavedModel) are written whole under a temporary name and swapped in with
`replace_dir`. Readers that clean up after a kill recognise the leftovers by `TMP_MARK`.
"""

import contextlib
import json
import os
import shutil

TMP_MARK = ".tmp"


def tmp_path(path: str) -> str:
  """`path.tmp-<pid>`: the temporary name of `path` for this process."""
  return f"{path}{TMP_MARK}-{os.getpid()}"


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", fsync: bool = True):
  """Opens a temporary file for writing; on success it replaces `path`, on error it is
  removed and `path` is untouched.

  Example:
    with atomic_write("manifest.json") as f:
      json.dump(manifest, f)
  """
  tmp = tmp_path(path)
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
      if fsync:
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_json(path: str, obj, **dump_kwargs) -> str:
  """Writes `obj` as JSON to `path` atomically; returns `path`."""
  with atomic_write(path) as f:
    json.dump(obj, f, **dump_kwargs)
  return path


def write_bytes(path: str, data: bytes, fsync: bool = True) -> str:
  """Writes `data` to `path` atomically; returns `path`."""
  with atomic_write(path, "wb", fsync=fsync) as f:
    f.write(data)
  return path


def replace_dir(tmp: str, final: str) -> str:
  """Swaps the finished folder `tmp` in as `final`.

  An existing `final` is first renamed aside to `final.tmp-old-<pid>` and deleted only after
  the swap, so a kill at any point leaves a complete copy under one of the two names (a
  reader restores a lone `.tmp-old-` folder: see `runtime.checkpoints`).
  """
  if os.path.exists(final):
    old = f"{final}{TMP_MARK}-old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, final)
  return final


def remove_leftovers(path: str) -> None:
  """Deletes `path.tmp*` files and folders that a killed writer of `path` left behind (only
  for destinations with a single writer, such as the SavedModel under the workdir lock).
  """
  folder, base = os.path.split(os.path.abspath(path))
  for name in os.listdir(folder) if os.path.isdir(folder) else ():
    if name.startswith(base + TMP_MARK):
      leftover = os.path.join(folder, name)
      if os.path.isdir(leftover):
        shutil.rmtree(leftover, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(leftover)
