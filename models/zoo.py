"""The model zoo: builders that return a `fourbit.models.layers.Sequential` for an input shape.

Layer roles follow the recipes (design.md section 3): the first layer that sees the data is
``first`` (a GEMM layer, or an embedding table), the last GEMM layer is ``last`` (the 4-bit
recipes keep both in FP16), depthwise convolutions are ``depthwise``, the rest ``hidden``.
"""

from __future__ import annotations

import numpy as np

from fourbit.models.layers import (
    GELU,
    LSTM,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Embedding,
    Flatten,
    Layer,
    LayerNorm,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    SelfAttention,
    Sequential,
    TokenPositionEmbedding,
)
from fourbit.traces.errors import ConfigError

__all__ = ["MODELS", "build_model"]


def _assign_roles(net: Sequential) -> Sequential:
    gemm = [layer for layer in net.gemm_layers() if layer.role != "attention"]  # attention keeps its role
    for layer in gemm:
        if layer.role != "depthwise":
            layer.role = "hidden"
    if net.layers[0].layer_type != "embedding":  # an embedding table is the first layer itself
        gemm[0].role = "first"
    gemm[-1].role = "last"
    leading = [layer for layer in net.layers if not isinstance(layer, Flatten)]
    if leading and leading[0] is gemm[0]:  # it sees the data: its bwd_data is recorded, not run
        gemm[0].needs_input_grad = False
    return net


def set_last_layers(net: Sequential, count: int) -> Sequential:
    """Give the ``last`` role to the final ``count`` GEMM layers (at least the last one; a
    recipe's ``last_layers``: e.g. how many final layers stay in BF16), counted among the layers
    that are not attention or depthwise, never the first.

    Raises ConfigError when ``count`` exceeds the GEMM layers after the first."""
    gemm = [layer for layer in net.gemm_layers() if layer.role not in ("attention", "depthwise")]
    if count > len(gemm) - 1:
        raise ConfigError(f"the recipe keeps the last {count} GEMM layers apart (last_layers, e.g. nvfp4's "
                          f"bf16_last), but {net.name} has {len(gemm) - 1} after its first layer")
    for layer in gemm[1:][-max(count, 1):]:
        layer.role = "last"
    return net


def mlp(input_shape: tuple[int, ...], n_classes: int, rng: np.random.Generator,
        hidden: tuple[int, ...] = (256, 256, 256)) -> Sequential:
    """Multi-layer perceptron: Linear + ReLU per hidden width, then a Linear classifier.

    The default 64-256-256-256-10 on digits has two INT4 hidden-to-hidden layers between the FP16
    first and last layers.
    """
    if not hidden:
        raise ConfigError("mlp needs at least one hidden layer (hidden=())")
    sizes = [int(np.prod(input_shape)), *hidden, n_classes]
    layers: list[Layer] = [Flatten("flatten")] if len(input_shape) > 1 else []
    for i in range(len(sizes) - 1):
        layers.append(Linear(f"fc{i + 1}", sizes[i], sizes[i + 1], rng))
        if i < len(sizes) - 2:
            layers.append(ReLU(f"relu{i + 1}"))
    return _assign_roles(Sequential("mlp", layers))


def lenet5(input_shape: tuple[int, ...], n_classes: int, rng: np.random.Generator) -> Sequential:
    """LeNet-5 (LeCun et al. 1998) for 1 x 28 x 28 images without padding: conv 5x5 6, max pool,
    conv 5x5 16, max pool, fc 120, fc 84, fc classes (ReLU activations)."""
    c, h, w = _image_shape(input_shape, "lenet5")
    side = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    if min(side) < 1:
        raise ConfigError(f"lenet5 needs images of at least 16 x 16, got {h} x {w}")
    layers = [
        Conv2d("conv1", c, 6, 5, rng), ReLU("relu1"), MaxPool2d("pool1"),
        Conv2d("conv2", 6, 16, 5, rng), ReLU("relu2"), MaxPool2d("pool2"), Flatten("flatten"),
        Linear("fc1", 16 * side[0] * side[1], 120, rng), ReLU("relu3"),
        Linear("fc2", 120, 84, rng), ReLU("relu4"),
        Linear("fc3", 84, n_classes, rng),
    ]
    return _assign_roles(Sequential("lenet5", layers))


def _conv_bn_relu(name: str, cin: int, cout: int, rng, stride: int = 1) -> list[Layer]:
    return [Conv2d(f"{name}.conv", cin, cout, 3, rng, stride=stride, padding=1), BatchNorm2d(f"{name}.bn", cout),
            ReLU(f"{name}.relu")]


def resnet(input_shape: tuple[int, ...], n_classes: int, rng: np.random.Generator, depth: int = 8,
           width: int = 16) -> Sequential:
    """CIFAR-style ResNet-(6n+2) (He et al., CVPR 2016, section 4.2): a 3x3 conv of ``width``
    channels, three stages of n basic blocks (``width``, 2x, 4x channels; stride 2 at the second
    and third), global average pooling and a classifier. Shortcuts are identities or 1x1
    convolutions with BatchNorm where the shape changes; the additions are full precision."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"resnet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
    c, _, _ = _image_shape(input_shape, "resnet")
    n = (depth - 2) // 6
    layers: list[Layer] = _conv_bn_relu("stem", c, width, rng)
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}.{block}"
            main = Sequential(f"{name}.main", [
                *_conv_bn_relu(f"{name}.a", cin, cout, rng, stride),
                Conv2d(f"{name}.b.conv", cout, cout, 3, rng, padding=1), BatchNorm2d(f"{name}.b.bn", cout)])
            shortcut = None
            if stride != 1 or cin != cout:
                shortcut = Sequential(f"{name}.shortcut", [Conv2d(f"{name}.shortcut.conv", cin, cout, 1, rng, stride=stride),
                                                           BatchNorm2d(f"{name}.shortcut.bn", cout)])
            layers += [Residual(name, main, shortcut), ReLU(f"{name}.relu")]
            cin = cout
    layers += [AvgPool2d("pool"), Linear("fc", cin, n_classes, rng)]
    return _assign_roles(Sequential(f"resnet{depth}", layers))


def speech(input_shape: tuple[int, ...], n_classes: int, rng: np.random.Generator,
           channels: tuple[int, int, int] = (16, 32, 64), head: str = "avg") -> Sequential:
    """A small CNN for log-mel spectrograms (1 x mels x frames): three 3x3 conv + BatchNorm +
    ReLU blocks (max pooling after the first two), then the ``head``: ``"avg"`` global average
    pooling and a classifier, or ``"flatten"`` a third max pooling, flatten and a classifier over
    c3 x (mels // 8) x (frames // 8) features. Sized to train on spoken digits in minutes (a
    raw-audio M5 would need ~500 GMAC per epoch). The default width is what 4-bit training needs:
    with channels (8, 16, 32), 20 epochs of `int4` reached 89.0 % against 94.3 % for `fp32`; with
    (16, 32, 64), 94.3 % against 97.0 % (fsdd, batch 32, seed 0).

    The head matters to FP4 gradients: BatchNorm before global average pooling gives block3 an
    output gradient that is nearly constant over each sample's positions, and FP4's rounding of
    it leaves a systematic error in block3's bwd_weight ([P] section 4.1, eq. 2): at
    initialisation its cosine with the FP32-backward gradient is 0.51 with ``"avg"`` and 0.87
    with ``"flatten"`` (`fourbit.models.diagnostics.gradient_fidelity`, 8 batches of 32). The flatten
    head closes the `int4` gap (94.0 % for both at seed 0) but `fp32` then overfits (94.0 %
    against 97.0 %), so ``"avg"`` stays the default.

    Raises ConfigError for an unknown ``head``."""
    c, h, w = _image_shape(input_shape, "speech")
    if head not in ("avg", "flatten"):
        raise ConfigError(f"speech head must be 'avg' or 'flatten', got {head!r}")
    c1, c2, c3 = channels
    layers = [*_conv_bn_relu("block1", c, c1, rng), MaxPool2d("pool1"),
              *_conv_bn_relu("block2", c1, c2, rng), MaxPool2d("pool2"),
              *_conv_bn_relu("block3", c2, c3, rng)]
    if head == "avg":
        layers += [AvgPool2d("pool3"), Linear("fc", c3, n_classes, rng)]
    else:
        layers += [MaxPool2d("pool3"), Flatten("flatten"), Linear("fc", c3 * (h // 8) * (w // 8), n_classes, rng)]
    return _assign_roles(Sequential("speech", layers))


def lstm(input_shape: tuple[int, ...], n_classes: int, rng: np.random.Generator, embed: int = 64,
         hidden: int = 128, layers: int = 2) -> Sequential:
    """A character-level language model: an embedding, ``layers`` LSTM layers and a classifier
    over the vocabulary at every position (the paper's 2-layer LSTM, [P] Table 3). Input (B, T)
    token ids; output (B, T, vocab) logits."""
    if layers < 1:
        raise ConfigError(f"lstm needs at least one layer, got {layers}")
    stack: list[Layer] = [Embedding("embed", n_classes, embed, rng)]
    size = embed
    for i in range(layers):
        stack.append(LSTM(f"lstm{i + 1}", size, hidden, rng))
        size = hidden
    stack.append(Linear("fc", size, n_classes, rng))
    return _assign_roles(Sequential("lstm", stack))


def gpt(input_shape: tuple[int, ...], n_classes: int, rng: np.random.Generator, layers: int = 4,
        width: int = 128, heads: int = 4, mlp_ratio: int = 4, context: int | None = None) -> Sequential:
    """A character-level decoder-only transformer in GPT-2's layout (Radford et al. 2019): token
    and position embeddings, ``layers`` pre-LayerNorm blocks (causal self-attention with ``heads``
    heads between a QKV and an output projection; a GELU MLP of ``mlp_ratio`` x ``width``), each
    inside a residual add, a final LayerNorm and the vocabulary projection (no bias). Linear
    weights are drawn with std 0.02, as GPT-2's. Input (B, T) token ids, T <= ``context``
    (default: the data's sequence length, input_shape[0]); output (B, T, vocab) logits.

    Raises ConfigError for fewer than one layer, a width not divisible by ``heads``, or
    non-positive sizes."""
    context = int(input_shape[0]) if context is None else context
    for name, value in (("layers", layers), ("width", width), ("heads", heads), ("mlp_ratio", mlp_ratio),
                        ("context", context)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"gpt: {name} must be an integer >= 1, got {value!r}")
    if width % heads:
        raise ConfigError(f"gpt: width {width} is not divisible by heads {heads}")

    def linear(name: str, n_in: int, n_out: int, bias: bool = True) -> Linear:
        return Linear(name, n_in, n_out, rng, bias=bias, signed_input=True, std=0.02)

    blocks: list[Layer] = []
    for i in range(layers):
        h = f"h{i}"
        blocks.append(Residual(f"{h}.attn.res", Sequential(f"{h}.attn.main", [
            LayerNorm(f"{h}.ln1", width), linear(f"{h}.attn.qkv", width, 3 * width),
            SelfAttention(f"{h}.attn", width, heads), linear(f"{h}.attn.proj", width, width)])))
        blocks.append(Residual(f"{h}.mlp.res", Sequential(f"{h}.mlp.main", [
            LayerNorm(f"{h}.ln2", width), linear(f"{h}.mlp.fc", width, mlp_ratio * width), GELU(f"{h}.gelu"),
            linear(f"{h}.mlp.proj", mlp_ratio * width, width)])))
    return _assign_roles(Sequential("gpt", [TokenPositionEmbedding("embed", n_classes, context, width, rng), *blocks,
                                            LayerNorm("ln_f", width), linear("lm_head", width, n_classes, bias=False)]))


def _image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"{model} takes images (channels, height, width), got inputs of shape {input_shape}")
    return input_shape


MODELS = {"mlp": mlp, "lenet5": lenet5, "resnet": resnet, "speech": speech, "lstm": lstm, "gpt": gpt}


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, seed: int, **params) -> Sequential:
    """Build model ``name`` with weights drawn from ``numpy.random.default_rng(seed)``.

    Raises ConfigError for an unknown model (the message lists the known ones), inputs of the
    wrong shape or bad parameters.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    import inspect

    known = [p for p in inspect.signature(MODELS[name]).parameters if p not in ("input_shape", "n_classes", "rng")]
    for key in params:
        if key not in known:
            raise ConfigError(f"model {name!r} has no parameter {key!r}; its parameters: {', '.join(known) or 'none'}")
    try:
        return MODELS[name](tuple(input_shape), n_classes, np.random.default_rng(seed), **params)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from exc

