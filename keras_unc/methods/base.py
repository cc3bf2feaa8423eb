"""What a method is: the pieces that differ between uncertainty methods, nothing else.

The trainer, data, evaluators and export are shared. A method only supplies backbone
overrides (layer factories), the head that maps the embedding to the output dict, the
per-example loss and extra callbacks. Hybrids are compositions of these pieces.
"""

from keras_unc import losses


class Method:
  """Base class; subclasses override what differs from the deterministic recipe."""

  name = "base"

  def backbone_overrides(self):
    """Keyword arguments for the backbone, e.g. `{"dense_factory": ...}`."""
    return {}

  def build_head(self, embedding, num_classes):
    """Maps the embedding tensor `[B, D]` to a dict with `logits [B, M, C]`, `probs [B, C]`,
    `uncertainty [B]` and `embedding [B, D]` (functional Keras tensors)."""
    raise NotImplementedError

  def loss(self, labels, outputs):
    """Per-example training loss `[B]` from labels (int `[B]` or soft `[B, C]`) and outputs."""
    return losses.member_cross_entropy(labels, outputs["logits"])

  def callbacks(self):
    """Extra Keras callbacks, e.g. resetting a GP precision matrix each epoch."""
    return []
