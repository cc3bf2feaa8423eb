"""PyTorch checkpoints without PyTorch: the reader (zip + restricted unpickler, safetensors),
its refusals, and timm ViT / URL / torchvision ResNet name maps on our own weights.

`torch_zip` writes PyTorch's `torch.save` zip layout by hand (a pickle whose tensors are
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls and whose storages
are persistent ids pointing at `archive/data/<key>`), through a stand-in `torch` module so
that `pickle` can name the globals; the fixtures made by PyTorch itself are checked in
`test_torch_fixtures.py`.
"""

import argparse
import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

import gin
import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

from keras_unc.backbones import resnet, vit
from keras_unc.backbones.pretrained import init_from, torch_import, torch_reader
from keras_unc.methods import URL, Deterministic
from keras_unc.training import build_network

# ------------------------------------------------------------------ a hand-made torch.save


class _Storage:
  def __init__(self, kind, key, data):
    self.kind, self.key, self.data = kind, key, data


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

  def __reduce__(self):
    return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


def _fake_torch(monkeypatch):
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("only pickled, never called")

  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in ("FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "DoubleStorage"):
    setattr(torch, name, type(name, (), {"__module__": "torch"}))
  torch._utils = utils
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)
  return torch


class _Pickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", obj.kind, obj.key, "cpu", len(obj.data))
    return None


def torch_zip(path, obj, monkeypatch, storages):
  """Writes `obj` (with `_Tensor`s over `storages`) in torch.save's zip layout."""
  buf = io.BytesIO()
  _Pickler(buf, protocol=2).dump(obj)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for s in storages:
      z.writestr(f"archive/data/{s.key}", s.data)
  return str(path)


def _float_tensor(torch, key, array, transpose=False):
  """A float32 tensor; `transpose` stores it column-major (a non-contiguous stride)."""
  array = np.asarray(array, "<f4")
  raw = (array.T if transpose else array).copy().tobytes()
  storage = _Storage(torch.FloatStorage, key, raw)
  rows, cols = array.shape
  stride = (1, rows) if transpose else (cols, 1)
  return _Tensor(storage, 0, array.shape, stride), storage


def test_reads_a_torch_zip_with_strides_offsets_dtypes_and_wrappers(tmp_path, monkeypatch):
  torch = _fake_torch(monkeypatch)
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(2, 5)).astype("float32")
  ta, sa = _float_tensor(torch, "0", a)
  tb, sb = _float_tensor(torch, "1", b, transpose=True)
  shared = np.arange(10, dtype="<f4")
  s_shared = _Storage(torch.FloatStorage, "2", shared.tobytes())
  offset_view = _Tensor(s_shared, 4, (3,), (2,))  # shared[4], shared[6], shared[8]
  half = np.array([1.5, -2.25], "<f2")
  s_half = _Storage(torch.HalfStorage, "3", half.tobytes())
  bf16_values = np.array([1.0, -3.5, 0.15625], "float32")
  s_bf16 = _Storage(
    torch.BFloat16Storage, "4", (bf16_values.view("<u4") >> 16).astype("<u2").tobytes()
  )
  state = collections.OrderedDict(
    [
      ("module.a", ta),
      ("module.b", tb),
      ("module.view", offset_view),
      ("module.half", _Tensor(s_half, 0, (2,), (1,))),
      ("module.bf16", _Tensor(s_bf16, 0, (3,), (1,))),
    ]
  )
  checkpoint = {
    "state_dict": state,
    "epoch": 7,
    "args": argparse.Namespace(lr=0.1, arch="resnet50"),
    "best_acc1": np.float64(0.75),
  }
  path = torch_zip(
    tmp_path / "ckpt.pth.tar", checkpoint, monkeypatch, [sa, sb, s_shared, s_half, s_bf16]
  )
  monkeypatch.delitem(sys.modules, "torch")  # Reading needs no torch at all.
  arrays = torch_reader.read_state_dict(path)
  assert sorted(arrays) == ["a", "b", "bf16", "half", "view"]  # Unwrapped, `module.` removed.
  np.testing.assert_array_equal(arrays["a"], a)
  np.testing.assert_array_equal(arrays["b"], b)  # Column-major storage, same values.
  np.testing.assert_array_equal(arrays["view"], [4.0, 6.0, 8.0])
  np.testing.assert_array_equal(arrays["half"], half)
  np.testing.assert_array_equal(arrays["bf16"], bf16_values)  # Exactly representable values.
  assert arrays["bf16"].dtype == np.float32


def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"weight": Evil()}, protocol=2))
  with pytest.raises(torch_reader.UnsafeCheckpointError, match=r"run posix\.system|run os\.system"):
    torch_reader.read_state_dict(str(path))
  assert not marker.exists()
  with pytest.raises(torch_reader.UnsafeCheckpointError, match=r"run builtins\.eval"):
    with zipfile.ZipFile(tmp_path / "eval.pth", "w") as z:

      class Eval:
        def __reduce__(self):
          return (eval, ("1 + 1",))

      z.writestr("archive/data.pkl", pickle.dumps([Eval()], protocol=2))
    torch_reader.read_state_dict(str(tmp_path / "eval.pth"))


def test_safetensors_and_bfloat16(tmp_path):
  rng = np.random.default_rng(1)
  arrays = {"w": rng.normal(size=(3, 2)).astype("float32"), "i": np.arange(4, dtype="int64")}
  save_file(arrays, str(tmp_path / "m.safetensors"))
  read = torch_reader.read_state_dict(str(tmp_path / "m.safetensors"))
  assert sorted(read) == ["i", "w"]
  np.testing.assert_array_equal(read["w"], arrays["w"])
  np.testing.assert_array_equal(read["i"], arrays["i"])
  # bfloat16, which safetensors' NumPy API cannot write: the format by hand.
  values = np.array([[0.5, -1.0], [2.0, 0.0]], "float32")
  raw = (values.view("<u4") >> 16).astype("<u2").tobytes()
  header = json.dumps({"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, len(raw)]}})
  with open(tmp_path / "bf16.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header.encode() + raw)
  np.testing.assert_array_equal(
    torch_reader.read_state_dict(str(tmp_path / "bf16.safetensors"))["x"], values
  )
  with open(tmp_path / "cut.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header.encode() + raw[:3])
  with pytest.raises(torch_reader.CheckpointFormatError, match="truncated"):
    torch_reader.read_state_dict(str(tmp_path / "cut.safetensors"))


class _LegacyPickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", obj.kind, obj.key, "cpu", len(obj.data) // 4, None)
    if isinstance(obj, tuple) and obj and obj[0] == "view":
      _, root, offset, size = obj
      return (
        "storage",
        root.kind,
        root.key,
        "cpu",
        len(root.data) // 4,
        (f"{root.key}v", offset, size),
      )
    return None


def test_reads_the_legacy_pre_1_6_format(tmp_path, monkeypatch):
  # SwAV's released checkpoints predate the zip format: pickles, then the raw storages.
  torch = _fake_torch(monkeypatch)
  w = np.arange(12, dtype="<f4").reshape(3, 4)
  ts, s = _float_tensor(torch, "140", w)
  view = _Tensor(("view", s, 4, 4), 0, (2, 2), (2, 1))  # elements 4..7 of the same storage
  buf = io.BytesIO()
  for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
    pickle.dump(header, buf, protocol=2)
  _LegacyPickler(buf, protocol=2).dump(
    {"state_dict": {"module.w": ts, "module.v": view}, "epoch": 800}
  )
  pickle.dump([s.key], buf, protocol=2)
  buf.write(struct.pack("<q", w.size) + s.data)
  path = tmp_path / "swav_400ep_pretrain.pth.tar"
  path.write_bytes(buf.getvalue())
  monkeypatch.delitem(sys.modules, "torch")
  arrays = torch_reader.read_state_dict(str(path))
  np.testing.assert_array_equal(arrays["w"], w)
  np.testing.assert_array_equal(arrays["v"], [[4.0, 5.0], [6.0, 7.0]])
  path.write_bytes(buf.getvalue()[:-8])  # Cut short.
  with pytest.raises(torch_reader.CheckpointFormatError, match="truncated"):
    torch_reader.read_state_dict(str(path))


def test_files_that_are_not_checkpoints_are_named(tmp_path):
  legacy = tmp_path / "old.pth"
  legacy.write_bytes(pickle.dumps(119547037146038801333356, protocol=2))  # the magic, no more
  with pytest.raises(torch_reader.CheckpointFormatError, match="ends early"):
    torch_reader.read_state_dict(str(legacy))
  other = tmp_path / "other.pth"
  other.write_bytes(pickle.dumps({"a": 1}, protocol=2))
  with pytest.raises(torch_reader.CheckpointFormatError, match="not a torch.save"):
    torch_reader.read_state_dict(str(other))
  text = tmp_path / "notes.bin"
  text.write_text("hello")
  with pytest.raises(torch_reader.CheckpointFormatError, match="neither"):
    torch_reader.read_state_dict(str(text))
  with pytest.raises(FileNotFoundError):
    torch_reader.read_state_dict(str(tmp_path / "missing.pth"))


# ------------------------------------------------------------------ name maps on our weights

TINY_VIT = dict(variant="Ti/4", width=16, depth=2, mlp_dim=32, num_heads=2, image_size=16)


def _images(n=2, size=16, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _network(method, backbone, image_size, seed):
  keras.utils.set_random_seed(seed)
  return build_network(
    method,
    num_classes=5,
    input_shape=(image_size, image_size, 3),
    backbone=backbone,
    image_size=image_size,
  )


def test_timm_vit_round_trip_through_safetensors_and_the_import_weights_path(tmp_path):
  make = lambda seed: _network(
    Deterministic(head_init="glorot_uniform"), lambda **kw: vit(**{**TINY_VIT, **kw}), 16, seed
  )
  source, target = make(1), make(2)
  state = torch_import.export_torch(source, "timm_vit")
  assert "blocks.1.attn.qkv.weight" in state and state["blocks.1.attn.qkv.weight"].shape == (48, 16)
  assert state["patch_embed.proj.weight"].shape == (16, 3, 4, 4)
  assert state["pos_embed"].shape == (1, 17, 16)  # With the class-token row, as timm.
  save_file(state, str(tmp_path / "vit.safetensors"))
  x = _images()
  assert not np.allclose(source(x)["logits"], target(x)["logits"])
  report = init_from.import_weights(target, str(tmp_path / "vit.safetensors"), keep_head=True)
  assert report["format"] == "timm_vit"
  np.testing.assert_allclose(target(x)["logits"], source(x)["logits"], atol=1e-5)


def test_url_vit_with_its_prednet(tmp_path):
  gin.clear_config()
  make = lambda seed: _network(
    URL(unc_width=8, unc_depth=2, unc_start_value=0.0),
    lambda **kw: vit(**{**TINY_VIT, **kw}),
    16,
    seed,
  )
  source, target = make(3), make(4)
  state = torch_import.export_torch(source, "url_vit")
  assert "model.cls_token" in state and "unc_module.unc_module.4.weight" in state
  assert state["unc_module.unc_module.0.weight"].shape == (8, 16)  # torch Linear [out, in]
  x = _images()
  report = torch_import.import_torch(target, state, keep_head=True)
  assert report["format"] == "url_vit"
  np.testing.assert_allclose(target(x)["uncertainty"], source(x)["uncertainty"], rtol=1e-5)
  np.testing.assert_allclose(target(x)["embedding"], source(x)["embedding"], atol=1e-5)
  # A network without a pred-net cannot take a URL checkpoint: the message says what to do.
  plain = _network(Deterministic(), lambda **kw: vit(**{**TINY_VIT, **kw}), 16, 5)
  with pytest.raises(torch_import.TorchImportError, match="URL.module = 'pred_net'"):
    torch_import.import_torch(plain, state)


def test_torchvision_resnet_round_trip_pth_and_swav(tmp_path, monkeypatch):
  backbone = lambda **kw: resnet(18, width=0.25, stem="cifar", **kw)
  source = _network(Deterministic(head_init="glorot_uniform"), backbone, 16, 5)
  target = _network(Deterministic(head_init="glorot_uniform"), backbone, 16, 6)
  state = torch_import.export_torch(source, "torchvision_resnet")
  assert state["conv1.weight"].shape == (16, 3, 3, 3)  # cifar stem: 3x3
  assert "layer2.0.downsample.0.weight" in state and "layer2.0.downsample.1.running_var" in state
  state["layer1.0.bn1.num_batches_tracked"] = np.array(3)
  torch = _fake_torch(monkeypatch)
  tensors, storages = collections.OrderedDict(), []
  for i, (k, v) in enumerate(state.items()):
    v = np.asarray(v, "<f4") if v.dtype != np.int64 else v.astype("<i8")
    kind = torch.LongStorage if v.dtype == np.int64 else torch.FloatStorage
    s = _Storage(kind, str(i), v.tobytes())
    strides = tuple(int(st // v.itemsize) for st in v.strides) if v.ndim else ()
    tensors[k] = _Tensor(s, 0, v.shape, strides)
    storages.append(s)
  path = torch_zip(tmp_path / "r18.pth", {"model": tensors}, monkeypatch, storages)
  x = _images()
  report = torch_import.import_torch(target, path, keep_head=True)
  assert (
    report["format"] == "torchvision_resnet"
    and "layer1.0.bn1.num_batches_tracked" in report["skipped"]
  )
  np.testing.assert_allclose(target(x)["logits"], source(x)["logits"], atol=1e-4)
  # SwAV: no fc, a projection head and prototypes that are skipped.
  swav = {k: v for k, v in state.items() if not k.startswith("fc.")}
  swav.update(
    {
      "projection_head.0.weight": np.zeros((4, 64), "float32"),
      "prototypes.weight": np.zeros((3, 4), "float32"),
    }
  )
  fresh = _network(Deterministic(), backbone, 16, 7)
  report = torch_import.import_torch(fresh, swav)
  assert report["format"] == "swav_resnet" and "prototypes.weight" in report["skipped"]
  np.testing.assert_allclose(fresh(x)["embedding"], source(x)["embedding"], atol=1e-4)


def test_names_that_do_not_fit_are_listed(tmp_path):
  backbone = lambda **kw: resnet(18, width=0.25, stem="cifar", **kw)
  net = _network(Deterministic(), backbone, 16, 8)
  state = torch_import.export_torch(net, "torchvision_resnet", head=False)
  del state["layer3.1.conv2.weight"]
  state["layer9.0.conv1.weight"] = np.zeros((1,), "float32")
  with pytest.raises(torch_import.TorchImportError) as e:
    torch_import.import_torch(net, state, "torchvision_resnet")
  assert "layer3.1.conv2.weight" in str(e.value) and "layer9.0.conv1.weight" in str(e.value)
  assert "Expected by the model" in str(e.value)
  vit_net = _network(Deterministic(), lambda **kw: vit(**{**TINY_VIT, **kw}), 16, 9)
  with pytest.raises(torch_import.TorchImportError, match="keras_unc.backbones.vit"):
    torch_import.import_torch(net, torch_import.export_torch(vit_net, "timm_vit"))
  with pytest.raises(torch_import.TorchImportError, match="Cannot tell"):
    torch_import.detect_format({"foo.weight": np.zeros(1)})
  with pytest.raises(ValueError, match="timm_vit, url_vit, torchvision_resnet"):
    init_from.import_weights(net, str(tmp_path), format="nope")


def test_cat_members_and_two_stage_heads_from_pytorch_files(tmp_path):
  from keras_unc.transfer import cat

  backbone = lambda **kw: resnet(18, width=0.25, stem="cifar", **kw)
  sources = [
    _network(Deterministic(head_init="glorot_uniform"), backbone, 16, seed) for seed in (11, 12)
  ]
  paths = []
  for i, net in enumerate(sources):
    paths.append(str(tmp_path / f"member{i}.safetensors"))
    save_file(torch_import.export_torch(net, "torchvision_resnet"), paths[-1])
  members = [lambda **kw: resnet(18, width=0.25, stem="cifar", **kw)] * 2
  catted = cat.cat_backbone(image_size=16, members=members, checkpoints=paths)
  x = _images()
  features = np.asarray(catted(x))
  for i, net in enumerate(sources):
    own = np.asarray(net.backbone(x))
    np.testing.assert_allclose(
      features[:, i * own.shape[1] : (i + 1) * own.shape[1]], own, atol=1e-4
    )
  kernel = cat.member_head_kernel(paths).values()
  bias = cat.member_head_bias(paths).values()
  heads = [net.get_layer("head") for net in sources]
  np.testing.assert_allclose(
    kernel, np.concatenate([h.kernel.numpy() for h in heads]) / 2, rtol=1e-6
  )
  np.testing.assert_allclose(bias, (heads[0].bias.numpy() + heads[1].bias.numpy()) / 2, rtol=1e-6)
