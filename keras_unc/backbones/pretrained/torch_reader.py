"""Read PyTorch state dicts without PyTorch: `.safetensors`, `.pth`, `.pth.tar`, `.bin`.

A checkpoint from outside is untrusted input. PyTorch's own format (`torch.save` since 1.6: a
zip archive holding `data.pkl` and one raw little-endian file per tensor storage; before 1.6,
as in SwAV's releases, a sequence of pickles followed by the raw storages) is a pickle,
and unpickling runs whatever callable the file names. `read_state_dict` unpickles with an
allow-list: the few functions `torch.save` writes for tensors (`torch._utils._rebuild_tensor_v2`
and friends, storage classes), `collections.OrderedDict`, NumPy scalars and arrays, and
`argparse.Namespace` (training scripts save their arguments) mapped to a plain dict. Any other
global (`os.system`, `builtins.eval`, `subprocess.Popen`, ...) is refused with
`UnsafeCheckpointError` before anything runs; tensors become NumPy arrays (bfloat16 as float32).

`.safetensors` files are a JSON header plus raw little-endian arrays (no code at all); they are
parsed here directly, which also reads bfloat16 (the `safetensors` package's NumPy API does not).

Nested checkpoints are unwrapped: `{"state_dict": ...}`, `{"model": ...}`, `{"module": ...}`
(and the other containers in `CONTAINER_KEYS`), and a `module.` prefix (DataParallel /
DistributedDataParallel) is removed from every key.

Example:
```python
from keras_unc.backbones.pretrained.torch_reader import read_state_dict

arrays = read_state_dict("resnet50-0676ba61.pth")  # {"conv1.weight": ndarray [64, 3, 7, 7], ...}
```
"""

import _compat_pickle
import collections
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np

# NumPy 2 moved numpy.core to numpy._core (the old name warns); pickles may name either.
_multiarray = (getattr(np, "_core", None) or np.core).multiarray

CONTAINER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "net")

# torch storage class -> NumPy dtype ("bfloat16" is converted to float32 after reading).
_STORAGE_DTYPES = {
  "DoubleStorage": "<f8",
  "FloatStorage": "<f4",
  "HalfStorage": "<f2",
  "BFloat16Storage": "bfloat16",
  "LongStorage": "<i8",
  "IntStorage": "<i4",
  "ShortStorage": "<i2",
  "CharStorage": "i1",
  "ByteStorage": "u1",
  "BoolStorage": "?",
}
_SAFETENSORS_DTYPES = {
  "F64": "<f8",
  "F32": "<f4",
  "F16": "<f2",
  "BF16": "bfloat16",
  "I64": "<i8",
  "I32": "<i4",
  "I16": "<i2",
  "I8": "i1",
  "U8": "u1",
  "BOOL": "?",
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint's pickle names a callable outside the allow-list: nothing was run."""


class CheckpointFormatError(ValueError):
  """The file is not a checkpoint this reader understands."""


def _bfloat16_to_float32(raw):
  """bfloat16 is the top half of a float32: shift the 16 bits up."""
  return (raw.astype(np.uint32) << 16).view(np.float32)


def _frombuffer(data, dtype, count=-1, offset=0):
  if dtype == "bfloat16":
    return _bfloat16_to_float32(np.frombuffer(data, "<u2", count, offset))
  return np.frombuffer(data, dtype, count, offset)


class _Storage:
  """A storage's elements, read lazily from the archive entry `data/<key>`."""

  def __init__(self, read, key, dtype):
    self.read, self.key, self.dtype = read, key, dtype
    self._array = None

  def array(self):
    if self._array is None:
      self._array = _frombuffer(self.read(self.key), self.dtype)
    return self._array


class _View:
  """A legacy (pre-1.6) storage view: `size` elements of `root` from element `offset`."""

  def __init__(self, root, offset, size):
    self.root, self.offset, self.size = root, offset, size

  def array(self):
    return self.root.array()[self.offset : self.offset + self.size]


class _Deferred:
  """A tensor to build once its storage's bytes are readable (after the whole pickle in the
  legacy format, whose storages follow it).
  """

  def __init__(self, storage, storage_offset, size, stride):
    self.args = (storage, storage_offset, size, stride)

  def build(self):
    return _build_tensor(*self.args)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor_v2`: a strided view of a storage (built after loading)."""
  return _Deferred(storage, storage_offset, size, stride)


def _resolve(obj):
  """Builds every deferred tensor inside dicts, lists and tuples."""
  if isinstance(obj, _Deferred):
    return obj.build()
  if isinstance(obj, dict):
    for key in list(obj):
      obj[key] = _resolve(obj[key])
    return obj
  if isinstance(obj, list):
    return [_resolve(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_resolve(v) for v in obj)
  return obj


def _build_tensor(storage, storage_offset, size, stride):
  """The strided view of a storage, copied to an array."""
  flat = storage.array()
  size, stride = tuple(size), tuple(stride)
  if not size:  # A 0-d tensor (e.g. BatchNorm's num_batches_tracked).
    return np.array(flat[storage_offset])
  extent = 1 + sum((n - 1) * s for n, s in zip(size, stride) if n)
  if storage_offset + extent > flat.size:
    raise CheckpointFormatError(
      f"Tensor of size {size} and stride {stride} at offset {storage_offset} runs past its "
      f"storage of {flat.size} elements: the checkpoint is corrupt."
    )
  view = np.lib.stride_tricks.as_strided(
    flat[storage_offset:], size, tuple(s * flat.itemsize for s in stride), writeable=False
  )
  return np.array(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
  del requires_grad, backward_hooks
  return data  # A _Deferred tensor, built with the others.


class _StorageType:
  """Stands for a `torch.<X>Storage` class in the pickle: only its dtype is used."""

  def __init__(self, name):
    self.dtype = _STORAGE_DTYPES[name]


class _Namespace(dict):
  """`argparse.Namespace` of saved training arguments, as a plain dict."""

  def __setstate__(self, state):
    self.update(state)


def _allowed():
  allowed = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("argparse", "Namespace"): _Namespace,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    # NumPy values that training scripts store beside the weights (e.g. best accuracy).
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
  }
  for name in _STORAGE_DTYPES:
    allowed[("torch", name)] = _StorageType(name)
  return allowed


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only allow-listed globals; storages come from the zip archive."""

  def __init__(self, file, read_record, where):
    super().__init__(file)
    self._read, self._where, self._allowed = read_record, where, _allowed()
    self._storages = {}

  def find_class(self, module, name):
    # Protocol 2 (torch.save's) names Python 3's builtins the Python 2 way (__builtin__).
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
        f"{self._where} asks to run {module}.{name} while loading: refused, a checkpoint may "
        "only hold tensors, dicts, lists and numbers (a pickle can run any code, so only "
        "what torch.save writes for tensors is allowed). If you trust and need this file, "
        "load it with PyTorch, keep only the tensors (`model.state_dict()`) and save them as "
        ".safetensors."
      ) from None

  def persistent_load(self, pid):
    # ("storage", type, key, location, numel) since 1.6; the legacy format adds a view:
    # (..., view_metadata) with view_metadata None or (view_key, offset, view_size).
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 3):
      raise UnsafeCheckpointError(
        f"{self._where}: persistent id {str(pid)[:80]!r} is not a tensor storage (a "
        "checkpoint of whole modules with their source code?): refused."
      )
    storage_type, key = pid[1], str(pid[2])
    if not isinstance(storage_type, _StorageType):
      raise CheckpointFormatError(
        f"{self._where}: storage of type {storage_type!r} is not supported; supported: "
        f"{', '.join(sorted(_STORAGE_DTYPES))}."
      )
    if key not in self._storages:
      self._storages[key] = _Storage(self._read, key, storage_type.dtype)
    view = pid[5] if len(pid) > 5 else None
    if view is not None:
      _, offset, size = view
      return _View(self._storages[key], int(offset), int(size))
    return self._storages[key]


def _read_torch_zip(path):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise CheckpointFormatError(
        f"{path} is a zip archive without exactly one data.pkl (found {pickles[:3]}): not a "
        "torch.save checkpoint."
      )
    root = pickles[0][: -len("data.pkl")]
    byteorder = root + "byteorder"
    if byteorder in names and archive.read(byteorder).strip() != b"little":
      raise CheckpointFormatError(f"{path} was written on a big-endian machine: not supported.")

    def read_record(key):
      return archive.read(f"{root}data/{key}")

    unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), read_record, path)
    return _resolve(unpickler.load())


# torch.save's format before 1.6: pickles of a magic number, a protocol version and system
# information, then the object (storages as persistent ids), then the list of storage keys,
# then each storage as a little-endian int64 element count followed by its bytes.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _read_torch_legacy(path):
  raw = {}
  with open(path, "rb") as f:

    def plain():  # A pickle of plain values: the allow-list refuses any global.
      return _RestrictedUnpickler(f, None, path).load()

    if plain() != _LEGACY_MAGIC:
      raise CheckpointFormatError(f"{path} is a pickle but not a torch.save checkpoint.")
    if plain() != _LEGACY_PROTOCOL:
      raise CheckpointFormatError(f"{path}: unsupported legacy torch.save protocol version.")
    info = plain()
    if isinstance(info, dict) and not info.get("little_endian", True):
      raise CheckpointFormatError(f"{path} was written on a big-endian machine: not supported.")
    unpickler = _RestrictedUnpickler(f, raw.__getitem__, path)
    obj = unpickler.load()
    for key in map(str, plain()):
      storage = unpickler._storages.get(key)
      if storage is None:
        raise CheckpointFormatError(f"{path}: storage {key!r} is listed but never used.")
      (count,) = struct.unpack("<q", f.read(8))
      itemsize = 2 if storage.dtype == "bfloat16" else np.dtype(storage.dtype).itemsize
      data = f.read(count * itemsize)
      if len(data) != count * itemsize:
        raise CheckpointFormatError(f"{path} is truncated (storage {key!r} is cut short).")
      raw[key] = data
  return _resolve(obj)


def _read_safetensors(path):
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise CheckpointFormatError(f"{path} is too short to be a .safetensors file.")
  (length,) = struct.unpack("<Q", data[:8])
  if 8 + length > len(data):
    raise CheckpointFormatError(f"{path}: header length {length} runs past the file: truncated?")
  header = json.loads(data[8 : 8 + length])
  body, arrays = 8 + length, {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
      raise CheckpointFormatError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}.")
    start, end = info["data_offsets"]
    count = int(np.prod(info["shape"], dtype=np.int64))
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if end - start != count * itemsize or body + end > len(data):
      raise CheckpointFormatError(f"{path}: tensor {name!r} has inconsistent offsets: truncated?")
    flat = _frombuffer(data, dtype, count, body + start)
    arrays[name] = flat.reshape(info["shape"]).copy()
  return arrays


def _unwrap(obj, path):
  """The flat `{name: array}` state dict inside a checkpoint."""
  while isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
    inner = [k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)]
    if not inner:
      raise CheckpointFormatError(
        f"{path} holds no tensors at its top level nor under any of {CONTAINER_KEYS}; found "
        f"keys {sorted(map(str, obj))[:10]}."
      )
    obj = obj[inner[0]]
  if not isinstance(obj, dict):
    raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a state dict.")
  arrays = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
  if arrays and all(k.startswith("module.") for k in arrays):
    arrays = {k[len("module.") :]: v for k, v in arrays.items()}
  return arrays


def read_state_dict(path):
  """`{parameter name: np.ndarray}` of a PyTorch checkpoint, without running its code.

  Args:
    path: a `.safetensors` file, or a `torch.save` zip archive (`.pth`, `.pth.tar`, `.pt`,
      `.bin`; also the pre-1.6 non-zip format of older releases such as SwAV's), possibly wrapping the state dict in `CONTAINER_KEYS` and prefixing `module.`.

  Returns:
    The tensors as NumPy arrays (bfloat16 widened to float32), non-tensor entries dropped.

  Raises:
    UnsafeCheckpointError: the pickle names a global outside the allow-list (nothing ran).
    CheckpointFormatError: not a checkpoint this reader understands.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint {path} does not exist.")
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  if zipfile.is_zipfile(path):
    return _unwrap(_read_torch_zip(path), path)
  with open(path, "rb") as f:
    head = f.read(16)
  if head[:1] == b"\x80":  # A pickle: torch.save's format before PyTorch 1.6.
    try:
      return _unwrap(_read_torch_legacy(path), path)
    except (EOFError, struct.error) as e:
      raise CheckpointFormatError(
        f"{path} ends early: a truncated torch.save file, or a pickle that is not one ({e})."
      ) from e
  raise CheckpointFormatError(
    f"{path} is neither a .safetensors file nor a torch.save zip archive (first bytes {head[:8]!r})."
  )
