"""Checkpoints written by PyTorch itself (timm ViT, URL pred-net, a ResNet-50 in
torchvision's naming) reproduce PyTorch's outputs after `import_torch`.

The fixtures in tests/fixtures/torch/ were made once by `tools/make_torch_fixtures.py` with
timm 1.0.31, torchvision 0.29.1 and torch 2.14.1 (random weights, a fixed input batch and the
PyTorch outputs); PyTorch is not needed here.
"""

import os

import keras
import numpy as np
import pytest

from keras_unc.backbones import resnet, vit
from keras_unc.backbones.pretrained import init_from, torch_import
from keras_unc.methods.url.modules import PredNet

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "torch")
OUT = np.load(os.path.join(FIXTURES, "outputs.npz"))


def _with_head(backbone, image_size, pred_net=None):
  images = keras.Input((image_size, image_size, 3))
  features = backbone(images)
  outputs = {"features": features, "logits": keras.layers.Dense(5, name="head")(features)}
  if pred_net is not None:
    outputs["uncertainty"] = pred_net(features)
  return keras.Model(images, outputs)


def _tiny_vit():
  return vit("Ti/4", width=16, depth=2, mlp_dim=32, num_heads=2, image_size=16)


@pytest.mark.parametrize(
  "name",
  ["timm_vit.safetensors", "timm_vit.pth", "timm_vit_wrapped.pth.tar", "timm_vit_legacy.pth.tar"],
)
def test_timm_vit_reproduces_pytorch(name):
  model = _with_head(_tiny_vit(), 16)
  report = init_from.import_weights(model, os.path.join(FIXTURES, name), keep_head=True)
  assert report["format"] == "timm_vit"
  out = model(OUT["vit_input"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
  np.testing.assert_allclose(out["features"], OUT["vit_features"], atol=1e-5)
  np.testing.assert_allclose(out["logits"], OUT["vit_logits"], atol=1e-5)


def test_url_checkpoint_reproduces_the_uncertainty():
  model = _with_head(_tiny_vit(), 16, PredNet(width=8, depth=2, name="pred_net"))
  report = torch_import.import_torch(model, os.path.join(FIXTURES, "url_vit.pth"), keep_head=True)
  assert report["format"] == "url_vit"
  out = model(OUT["vit_input"].transpose(0, 2, 3, 1))
  np.testing.assert_allclose(out["features"], OUT["vit_features"], atol=1e-5)
  np.testing.assert_allclose(out["uncertainty"], OUT["url_unc"], rtol=1e-5)


def test_resnet50_in_torchvision_naming_reproduces_pytorch():
  model = _with_head(resnet(50, width=0.125, image_size=32), 32)
  report = torch_import.import_torch(
    model, os.path.join(FIXTURES, "resnet50_eighth.pth"), keep_head=True
  )
  assert report["format"] == "torchvision_resnet"
  out = model(OUT["resnet_input"].transpose(0, 2, 3, 1))
  np.testing.assert_allclose(out["features"], OUT["resnet_features"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["logits"], OUT["resnet_logits"], rtol=1e-4, atol=1e-5)


def test_timm_gap_vit_without_class_token_reproduces_pytorch():
  backbone = vit("Ti/4", width=16, depth=2, mlp_dim=32, num_heads=2, image_size=16, pooling="gap")
  report = torch_import.import_torch(backbone, os.path.join(FIXTURES, "timm_vit_gap.safetensors"))
  assert report["format"] == "timm_vit"
  out = backbone(OUT["vit_input"].transpose(0, 2, 3, 1))
  np.testing.assert_allclose(out, OUT["gap_features"], atol=1e-5)
