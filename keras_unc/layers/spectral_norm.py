"""Spectral normalisation wrapper (SNGP, part 1) that never assigns the wrapped kernel.

`keras.layers.SpectralNormalization` writes the normalised kernel back into the wrapped
layer's variable, which breaks the gradient path through σ (keras issue 20309). This wrapper
instead computes `W̃ = W / max(1, σ / c)` as a tensor in every call and runs the wrapped
layer's forward math with `W̃`, so gradients reach `W` through both `W` and σ(W).
"""

import keras
from keras import ops

_EPS = 1e-12
SUPPORTED_LAYERS = (
  "keras.layers.Dense",
  "keras.layers.Conv2D",
  "any layer with a `kernel` and a `kernel_call(inputs, kernel)` method",
)


def _normalize(x):
  return x * ops.rsqrt(ops.sum(ops.square(x)) + _EPS)


def _unit_normal(shape, dtype=None):
  """Initializer of u: a standard normal draw scaled to unit length."""
  return _normalize(keras.random.normal(shape, dtype=dtype or "float32"))


class _Float32(keras.layers.Layer):
  """Runs `fn(u, training)` as a float32 layer, so variables are read in float32 also when
  called from a layer of a mixed dtype policy (Keras casts variable reads to the compute
  dtype of the innermost layer being called). Created by its owner, not serialized.
  """

  def __init__(self, fn, **kwargs):
    super().__init__(dtype="float32", **kwargs)
    self.fn = fn  # A bound method of the owner (not a layer: not tracked).

  def call(self, u, training=False):
    return self.fn(u, training)


@keras.saving.register_keras_serializable(package="keras_unc")
class SpectralNormalization(keras.layers.Wrapper):
  """Rescales the wrapped layer's kernel so its spectral norm is at most `norm_bound`.

  In every call the largest singular value σ of the kernel is estimated by power
  iteration, σ = vᵀ W u with the unit vectors u, v held constant (stop-gradient) and σ
  differentiable in W, and the wrapped layer's math runs with
  `W̃ = W · min(1, c / σ) = W / max(1, σ / c)`. The wrapped kernel variable is never
  assigned, so the optimizer keeps updating the raw `W` and the gradient includes the
  ∂σ/∂W term.

  Kernels of rank > 2 (Conv2D: `[kh, kw, c_in, c_out]`) are reshaped to the matrix
  `[kh·kw·c_in, c_out]` before the power iteration (the convention of Miyato et al. 2018
  and of `keras.layers.SpectralNormalization`). This bounds the norm of that matrix, a
  cheap surrogate for the operator norm of the convolution itself (which would need power
  iteration through conv / transposed conv and depends on the input size).

  The power-iteration vector `u` (`[c_out]`, unit length) is a non-trainable layer
  variable, so `.keras` files and checkpoints keep it. A `training=True` call runs
  `power_iterations` steps `v ← Wu/‖Wu‖, u ← Wᵀv/‖Wᵀv‖` from the stored `u` and assigns
  the result; any other call uses the stored `u` unchanged (σ = ‖W u‖ in both cases).
  `u` is created with `aggregation="only_first_replica"`: every replica computes the same
  `u` from the same mirrored kernel, and this is the mode under which `assign` inside
  `tf.distribute.MirroredStrategy.run` works without an all-reduce. Under Keras' JAX
  backend there are no per-replica copies (one program over the global batch) and the
  aggregation mode has no effect: there is one `u`.

  Mixed precision: the power iteration, σ and `W̃` are computed in float32 from the float32
  kernel (in a nested float32 layer: Keras would otherwise read the kernel in the compute
  dtype, which moves `u` and σ by ~1e-3 under bfloat16); `W̃` is then cast to the compute
  dtype, in which the wrapped layer's math runs.

  Supported wrapped layers: `keras.layers.Dense`, `keras.layers.Conv2D` (matmul / conv
  + bias + activation, honouring the wrapped layer's strides, padding, dilation,
  data_format, groups, use_bias and activation), and any layer with a `kernel` attribute
  and a method `kernel_call(inputs, kernel)` that runs the layer with another kernel
  (e.g. the BatchEnsemble layers of `keras_unc.layers.batch_ensemble`).

  Args:
    layer: the layer to wrap (see above).
    norm_bound: c > 0, the bound on the spectral norm (SNGP uses values 0.95 … 6).
    power_iterations: power-iteration steps per training call (≥ 1; 1 in SNGP).
    **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

  Example:
    ```python
    x = keras.Input((32,))
    h = SpectralNormalization(keras.layers.Dense(64, activation="relu"), norm_bound=0.95)(x)
    ```

  Reference: Liu et al., "Simple and Principled Uncertainty Estimation with Deterministic
  Deep Learning via Distance Awareness", NeurIPS 2020.
  """

  def __init__(self, layer, norm_bound=1.0, power_iterations=1, **kwargs):
    if not (
      isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
      or callable(getattr(layer, "kernel_call", None))
    ):
      raise TypeError(
        f"SpectralNormalization cannot wrap {type(layer).__name__}: supported "
        f"are {'; '.join(SUPPORTED_LAYERS)}."
      )
    if not norm_bound > 0:
      raise ValueError(
        f"norm_bound must be > 0, got {norm_bound!r}: pass the bound c on the "
        "spectral norm, e.g. norm_bound=1.0 (SNGP uses 0.95 to 6)."
      )
    if int(power_iterations) != power_iterations or power_iterations < 1:
      raise ValueError(
        f"power_iterations must be an integer >= 1, got {power_iterations!r}: "
        "use power_iterations=1 (one step per training call, as in SNGP)."
      )
    super().__init__(layer, **kwargs)
    self.norm_bound = float(norm_bound)
    self.power_iterations = int(power_iterations)
    self.float32_part = _Float32(self._normalized_kernel, name="power_iteration")

  def build(self, input_shape):
    super().build(input_shape)
    if getattr(self.layer, "quantization_mode", None):
      raise TypeError(f"SpectralNormalization cannot wrap the quantized layer {self.layer.name}.")
    kernel = getattr(self.layer, "kernel", None)
    if kernel is None:
      raise TypeError(
        f"SpectralNormalization needs a layer with a `kernel`; {self.layer.name} "
        f"has none after build. Supported are {'; '.join(SUPPORTED_LAYERS)}."
      )
    self.u = self.add_weight(
      shape=(kernel.shape[-1],),
      initializer=_unit_normal,
      trainable=False,
      name="u",
      dtype="float32",
      autocast=False,
      aggregation="only_first_replica",
    )
    self.built = True

  def _kernel_matrix(self, kernel):
    return ops.reshape(ops.cast(kernel, "float32"), (-1, kernel.shape[-1]))

  def _sigma(self, w_mat, u):
    """σ = vᵀ W u with v = Wu/‖Wu‖; u and v constant, gradient ∂σ/∂W = v uᵀ."""
    u = ops.stop_gradient(u)
    wu = ops.einsum("mn,n->m", w_mat, u)
    v = ops.stop_gradient(_normalize(wu))
    return ops.sum(v * wu)

  def spectral_norm(self):
    """Current estimate of σ from the stored u (no power-iteration update)."""
    return self._sigma(
      self._kernel_matrix(ops.convert_to_tensor(self.layer.kernel)), ops.convert_to_tensor(self.u)
    )

  def normalized_kernel(self, training=False):
    """`W / max(1, σ/c)` (float32); with `training=True` first updates u by power iteration."""
    return self.float32_part(ops.convert_to_tensor(self.u), training=bool(training))

  def _normalized_kernel(self, u, training):
    kernel = ops.convert_to_tensor(self.layer.kernel)  # float32: called by `float32_part`.
    w_mat = self._kernel_matrix(kernel)
    if training:
      w_const = ops.stop_gradient(w_mat)
      for _ in range(self.power_iterations):
        v = _normalize(ops.einsum("mn,n->m", w_const, u))
        u = _normalize(ops.einsum("mn,m->n", w_const, v))
      u = ops.stop_gradient(u)
      self.u.assign(u)
    sigma = self._sigma(w_mat, u)
    scale = 1.0 / ops.maximum(1.0, sigma / self.norm_bound)  # No 0/0 when W = 0.
    return kernel * ops.cast(scale, kernel.dtype)

  def call(self, inputs, training=None):
    layer = self.layer
    kernel = self.normalized_kernel(training=bool(training))  # float32.
    if callable(getattr(layer, "kernel_call", None)):
      return layer.kernel_call(inputs, ops.cast(kernel, layer.compute_dtype))
    kernel = ops.cast(kernel, self.compute_dtype)  # Inputs and bias are autocast to it.
    if isinstance(layer, keras.layers.Dense):
      outputs = ops.matmul(inputs, kernel)
      if layer.use_bias:
        outputs = ops.add(outputs, layer.bias)
    else:  # Conv2D.
      outputs = layer.convolution_op(inputs, kernel)
      if layer.use_bias:
        if layer.data_format == "channels_last":
          bias = ops.reshape(layer.bias, (1, 1, 1, layer.filters))
        else:
          bias = ops.reshape(layer.bias, (1, layer.filters, 1, 1))
        outputs = ops.add(outputs, bias)
    if layer.activation is not None:
      outputs = layer.activation(outputs)
    return outputs

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)

  def get_config(self):
    return {
      **super().get_config(),
      "norm_bound": self.norm_bound,
      "power_iterations": self.power_iterations,
    }
