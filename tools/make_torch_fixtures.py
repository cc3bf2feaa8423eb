"""Makes the PyTorch checkpoint fixtures of tests/transfer/test_torch_fixtures.py (run once).

Not part of the package or its tests (PyTorch is not a dependency): the fixtures are small
random-weight models built by timm's and torchvision's own classes, saved the way their
users save them, with a fixed input batch and PyTorch's outputs, so the tests can check that
`keras_unc.backbones.pretrained.torch_import` reproduces PyTorch to float32 tolerance.

    python -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm safetensors numpy
    /tmp/torchvenv/bin/python tools/make_torch_fixtures.py tests/fixtures/torch

Fixtures (each well under 1 MiB):
  timm_vit.safetensors, timm_vit.pth          timm VisionTransformer (patch 4, width 16,
                                              depth 2, 2 heads, 16 px, 5 classes)
  timm_vit_legacy.pth.tar                     the same in torch.save's pre-1.6 (non-zip) format
  timm_vit_wrapped.pth.tar                    the same under {"state_dict": {"module.<k>": ...},
                                              "epoch": 3, "args": Namespace(...)} (DDP + args)
  timm_vit_gap.safetensors                    the same without class token, average pooling
                                              (the layout of vit_medium_patch16_gap_256)
  url_vit.pth                                 mkirchhof/url's UncertaintyViaNetwork layout:
                                              "model.<timm key>" + "unc_module.unc_module.<i>"
  resnet50_eighth.pth                        torchvision's ResNet-50 at an eighth of the width
                                              (its own Bottleneck and _make_layer), 5 classes,
                                              BN statistics randomised, eval mode (a full-width
                                              ResNet-50 would be a 100 MB fixture)
  outputs.npz                                 the fixed inputs and PyTorch's outputs
"""

import argparse
import os
import sys

import numpy as np
import timm
import torch
import torchvision
from safetensors.torch import save_file


class UncertaintyNetwork(torch.nn.Module):
  """mkirchhof/url `timm/models/_uncertainizer.py` UncertaintyNetwork, transcribed."""

  def __init__(self, in_channels, width, depth):
    super().__init__()
    layers = [torch.nn.Linear(in_channels, width), torch.nn.LeakyReLU()]
    for _ in range(depth - 1):
      layers += [torch.nn.Linear(width, width), torch.nn.LeakyReLU()]
    layers += [torch.nn.Linear(width, 1), torch.nn.Softplus()]
    self.unc_module = torch.nn.Sequential(*layers)

  def forward(self, x):
    return 1e-6 + self.unc_module(x)


def tiny_vit(**kwargs):
  """Timm's VisionTransformer at 16 px: patch 4, width 16, depth 2, 2 heads, 5 classes."""
  return timm.models.vision_transformer.VisionTransformer(
    img_size=16,
    patch_size=4,
    in_chans=3,
    num_classes=5,
    embed_dim=16,
    depth=2,
    num_heads=2,
    mlp_ratio=2.0,
    **kwargs,
  ).eval()


def main(out):
  os.makedirs(out, exist_ok=True)
  torch.manual_seed(0)
  results = {}

  vit = tiny_vit(global_pool="token")
  with torch.no_grad():  # Non-zero class token and position embedding (timm inits them small).
    vit.cls_token.normal_(0, 0.5)
    vit.pos_embed.normal_(0, 0.5)
  x = torch.rand(2, 3, 16, 16)
  with torch.no_grad():
    results["vit_input"] = x.numpy()
    results["vit_features"] = vit.forward_head(vit.forward_features(x), pre_logits=True).numpy()
    results["vit_logits"] = vit(x).numpy()
  state = {k: v.contiguous() for k, v in vit.state_dict().items()}
  save_file(state, os.path.join(out, "timm_vit.safetensors"))
  torch.save(state, os.path.join(out, "timm_vit.pth"))
  # The pre-1.6 (non-zip) format of older releases such as SwAV's.
  torch.save(
    {"state_dict": state},
    os.path.join(out, "timm_vit_legacy.pth.tar"),
    _use_new_zipfile_serialization=False,
  )
  torch.save(
    {
      "state_dict": {f"module.{k}": v for k, v in state.items()},
      "epoch": 3,
      "best_acc1": np.float64(0.5),
      "args": argparse.Namespace(model="vit_tiny", lr=0.1),
    },
    os.path.join(out, "timm_vit_wrapped.pth.tar"),
  )

  # vit_medium_patch16_gap_256's layout: no class token, LayerNorm then average pooling.
  gap = tiny_vit(class_token=False, global_pool="avg", fc_norm=False)
  with torch.no_grad():
    gap.pos_embed.normal_(0, 0.5)
    results["gap_features"] = gap.forward_head(gap.forward_features(x), pre_logits=True).numpy()
  save_file(
    {k: v.contiguous() for k, v in gap.state_dict().items()},
    os.path.join(out, "timm_vit_gap.safetensors"),
  )

  unc = UncertaintyNetwork(16, 8, 2).eval()
  with torch.no_grad():
    results["url_unc"] = unc(torch.from_numpy(results["vit_features"]))[:, 0].numpy()
  url_state = {f"model.{k}": v for k, v in state.items()}
  url_state.update({f"unc_module.{k}": v for k, v in unc.state_dict().items()})
  torch.save(url_state, os.path.join(out, "url_vit.pth"))

  # torchvision's ResNet-50 (Bottleneck, [3, 4, 6, 3]) rebuilt at an eighth of the width with
  # torchvision's own _make_layer: our resnet(50, width=0.125).
  resnet = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3])
  resnet.inplanes = 8
  resnet.conv1 = torch.nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
  resnet.bn1 = torch.nn.BatchNorm2d(8)
  bottleneck = torchvision.models.resnet.Bottleneck
  resnet.layer1 = resnet._make_layer(bottleneck, 8, 3)
  resnet.layer2 = resnet._make_layer(bottleneck, 16, 4, stride=2)
  resnet.layer3 = resnet._make_layer(bottleneck, 32, 6, stride=2)
  resnet.layer4 = resnet._make_layer(bottleneck, 64, 3, stride=2)
  resnet.fc = torch.nn.Linear(256, 5)
  with torch.no_grad():
    for m in resnet.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  resnet.eval()
  xr = torch.rand(2, 3, 32, 32)
  with torch.no_grad():
    results["resnet_input"] = xr.numpy()
    trunk = torch.nn.Sequential(*list(resnet.children())[:-1])  # up to the average pool
    results["resnet_features"] = trunk(xr).flatten(1).numpy()
    results["resnet_logits"] = resnet(xr).numpy()
  torch.save(resnet.state_dict(), os.path.join(out, "resnet50_eighth.pth"))

  np.savez(os.path.join(out, "outputs.npz"), **results)
  print({k: v.shape for k, v in results.items()})
  print(
    "torch", torch.__version__, "timm", timm.__version__, "torchvision", torchvision.__version__
  )


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/torch")
