"""Load a trained detector (checkpoint, TorchScript or ONNX) and predict dense maps over a whole volume.

:func:`load_model` accepts

* a training checkpoint ``model.pt`` (the network ``state_dict``, or ``{"model": state_dict}``) plus the ``model``
  config section it was trained with (or an already built network to load it into);
* a TorchScript file ``model.ts`` (``torch.jit.load``; no PIVOT training code needed);
* an ONNX file ``model.onnx`` run by onnxruntime (outputs mapped back to ``heatmap``, ``diameter``, ``malignancy``).

:class:`Predictor` runs any of them with MONAI's :class:`~monai.inferers.SlidingWindowInferer` (dict outputs, maps at
``1 / output_stride`` of the input resolution) and optional test-time augmentation (:mod:`pivot_monai.inference.tta`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import Inferer
from monai.utils import optional_import

from pivot_monai.inference.inferers import FittedWindowInferer, TTAInferer
from pivot_monai.inference.tta import TTASettings
from pivot_monai.networks import OUTPUT_KEYS, build_network
from pivot_monai.networks.cpu_inference import fuse_activations, fuse_batch_norm

__all__ = [
    "OnnxModel",
    "Predictor",
    "inference_autocast",
    "load_checkpoint",
    "load_model",
    "load_state_dict",
    "resolve_device",
]

logger = logging.getLogger(__name__)

TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")
ONNX_SUFFIXES = (".onnx",)
_WRAPPER_KEYS = ("model", "state_dict", "network")
_ORT_HINT = "pip install onnxruntime (or pip install 'pivot-monai[export]')"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``torch.device`` for ``device`` (default CPU); an unavailable CUDA device falls back to CPU with a warning.

    Raises:
        ValueError: an unparsable device string.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        logger.warning("device %s requested but CUDA is not available; running on CPU", dev)
        return torch.device("cpu")
    return dev


def load_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The network ``state_dict`` stored in ``checkpoint`` (bare, or wrapped as ``{"model": ...}``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a PyTorch checkpoint holding a state dict.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (expected the model.pt written by training)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            f"pass a .ts file with --model for TorchScript, .onnx for ONNX"
        ) from err
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a network state_dict (or {{'model': state_dict}}), got {type(obj).__name__}"
        )
    return dict(obj)


def load_checkpoint(network: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load ``checkpoint`` into ``network`` (strictly) and return it in eval mode.

    Raises:
        ValueError: the weights do not fit the network; the message names the file and the first mismatches.
    """
    state = load_state_dict(checkpoint)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:400]
        raise ValueError(
            f"{checkpoint}: weights do not match the network built from the `model` config ({detail}); use the "
            f"model section the checkpoint was trained with (--config, or model#base_filters/depth/output_stride)"
        ) from err
    return network.eval()


class OnnxModel:
    """An ONNX detector run by onnxruntime, called like the PyTorch network.

    Args:
        path: ``.onnx`` file.
        device: ``cuda`` uses the CUDA execution provider when onnxruntime has it. Default CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: onnxruntime cannot load it.
    """

    def __init__(self, path: str | Path, device: torch.device | None = None) -> None:
        ort, has_ort = optional_import("onnxruntime")
        if not has_ort:
            raise ImportError(f"running {path} needs onnxruntime: {_ORT_HINT}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found")
        providers = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load it ({err})") from err
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        if set(OUTPUT_KEYS) <= set(names):
            self.output_names = list(OUTPUT_KEYS)
        elif len(names) >= len(OUTPUT_KEYS):
            logger.info("%s: outputs %s read in order as %s", self.path, names, list(OUTPUT_KEYS))
            self.output_names = names[: len(OUTPUT_KEYS)]
        else:
            raise ValueError(f"{self.path}: expected {len(OUTPUT_KEYS)} outputs {list(OUTPUT_KEYS)}, got {names}")

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 1, X, Y, Z) image -> dict of (B, 1, X/s, Y/s, Z/s) maps on ``x``'s device."""
        outputs = self.session.run(self.output_names, {self.input_name: x.detach().cpu().float().numpy()})
        return {k: torch.from_numpy(np.asarray(v)).to(x.device) for k, v in zip(OUTPUT_KEYS, outputs)}


def load_model(
    model: str | Path | nn.Module | Callable,
    model_cfg: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    network: nn.Module | None = None,
    channels_last: bool = True,
    fuse_norm: bool = True,
) -> Callable[[torch.Tensor], Any]:
    """A callable detector from a checkpoint, TorchScript or ONNX file (by suffix), or a module as is.

    Args:
        model: ``.pt``/``.pth`` checkpoint, ``.ts`` TorchScript, ``.onnx`` file, or an ``nn.Module``/callable.
        model_cfg: ``model`` config section used to build the network for a checkpoint. Default: the defaults.
        device: where to run it. Default CPU.
        network: an already built network to load a checkpoint into (instead of building one from ``model_cfg``).
        channels_last: put a checkpoint-built or TorchScript network in ``channels_last_3d`` memory format
            (``device.channels_last``; 1.3-1.9x faster 3D convolutions on the CPUs measured in ``benchmarks/``).
            Default True.
        fuse_norm: fold each batch norm of a checkpoint-built network into the convolution before it
            (:func:`~pivot_monai.networks.cpu_inference.fuse_batch_norm`; the same outputs to about 1e-6, one pass
            less per activation), and the ReLU/LeakyReLU after it into a oneDNN post-op on CPU
            (:func:`~pivot_monai.networks.cpu_inference.fuse_activations`; bitwise the same). Default True.

    Returns:
        The model in eval mode on ``device``; called on a (B, 1, X, Y, Z) tensor it returns the dict (or tuple) of
        maps ``heatmap``, ``diameter``, ``malignancy``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be loaded, or a checkpoint does not fit the model config.
    """
    dev = resolve_device(device)
    if isinstance(model, nn.Module):
        return model.to(dev).eval()
    if callable(model) and not isinstance(model, (str, Path)):
        return model
    path = Path(model)
    name = path.name.lower()
    if name.endswith(ONNX_SUFFIXES):
        return OnnxModel(path, dev)
    if name.endswith(TORCHSCRIPT_SUFFIXES):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: TorchScript model not found")
        try:
            scripted = torch.jit.load(str(path), map_location=dev).eval()
            # same memory format as a checkpoint-built network, so both give identical outputs
            return scripted.to(memory_format=torch.channels_last_3d) if channels_last else scripted
        except RuntimeError as err:
            raise ValueError(f"{path}: not a TorchScript archive ({str(err).splitlines()[0][:200]})") from err
    net = network if network is not None else build_network(model_cfg)
    net = load_checkpoint(net, path).to(dev)
    if fuse_norm:
        fuse_batch_norm(net)
        fuse_activations(net)
    return net.to(memory_format=torch.channels_last_3d) if channels_last else net


def _as_dict(out: Any, where: str = "network output") -> dict[str, torch.Tensor]:
    if isinstance(out, Mapping):
        missing = [k for k in OUTPUT_KEYS if k not in out]
        if missing:
            raise ValueError(f"{where} lacks {missing}; expected a dict with keys {list(OUTPUT_KEYS)}")
        return {k: out[k] for k in OUTPUT_KEYS}
    if isinstance(out, (tuple, list)) and len(out) >= len(OUTPUT_KEYS):
        return dict(zip(OUTPUT_KEYS, out))
    raise ValueError(f"{where} must be a dict (or tuple) of {list(OUTPUT_KEYS)}, got {type(out).__name__}")


def inference_autocast(
    device: torch.device,
    device_cfg: Mapping[str, Any] | None = None,
    amp: bool | None = None,
    native_bf16: bool | None = None,
) -> tuple[bool, torch.dtype]:
    """Whether (and in which dtype) inference runs under autocast.

    With ``device.mixed_precision`` on (train.yaml's default), as the bundle's engines decide:

    * CUDA: autocast in ``device.amp_dtype`` (float16 by default);
    * CPU: only with ``device.force_cpu_amp``. Otherwise float32 on every CPU, so results do not depend on the host.

    ``amp`` (``--amp`` / ``--no-amp``) overrides this. On a CPU the dtype is always bfloat16
    (:func:`~pivot_monai.engines.runtime.autocast_dtype`): float16 autocast ran the demo network slower than float32
    (0.33 vs 0.24 s per lung box). bf16 pays on CPUs that compute it natively
    (AMX or AVX512-BF16, :func:`~pivot_monai.engines.runtime.cpu_has_native_bf16`): measured on such a VM, the demo
    network ran 2.3x faster with the same held-out CPM (0.887) and size MAE 1.34 vs 1.35 mm, and 1.2x faster once
    float32 ran on oneDNN convolutions (:mod:`~pivot_monai.networks.cpu_inference`); elsewhere it is emulated and
    slower, and ``--amp`` warns.

    Args:
        device: where the network runs.
        device_cfg: the guide's ``device`` section, or ``None`` (no mixed precision).
        amp: explicit on/off, or ``None`` to follow ``device_cfg``.
        native_bf16: whether the CPU has native bfloat16 (for the ``--amp`` warning); ``None`` asks the CPU.

    Returns:
        (enabled, dtype).
    """
    from pivot_monai.engines.runtime import autocast_dtype, cpu_has_native_bf16, use_amp, use_cpu_autocast

    cfg = dict(device_cfg or {})
    dtype = autocast_dtype(device, cfg.get("amp_dtype", "float16"))
    if amp is None:
        mixed, force = bool(cfg.get("mixed_precision", False)), bool(cfg.get("force_cpu_amp", False))
        on_cpu = device.type == "cpu"
        return (use_cpu_autocast(device, mixed, force) if on_cpu else use_amp(device, mixed, force)), dtype
    native = cpu_has_native_bf16() if native_bf16 is None else bool(native_bf16)
    if amp and device.type == "cpu" and not native:
        logger.warning("--amp on a CPU without native bfloat16 (AMX/AVX512-BF16): bf16 is emulated and slow")
    return bool(amp), dtype


class Predictor:
    """Dense maps for a whole volume: sliding window (and TTA) over any loaded detector.

    Args:
        network: callable returning the dict (or tuple) of maps for a (B, 1, *roi_size) tensor (see
            :func:`load_model`).
        roi_size: sliding-window patch size ``(X, Y, Z)`` voxels (``data.patch_size``).
        overlap: window overlap in [0, 1). Default 0.25.
        sw_batch_size: windows per forward pass. Default 2.
        blend_mode: ``gaussian`` or ``constant``. Default ``gaussian``.
        device: where the network runs. Default CPU.
        tta: :class:`~pivot_monai.inference.tta.TTASettings`, an ``inference.tta`` mapping or a bool. Default off.
        output_stride: input/output resolution ratio; ``None`` takes the network's ``output_stride`` attribute (a
            :class:`~pivot_monai.networks.PivotDetector`, also scripted) or else measures it with one forward pass of
            a zero patch (0.09 s of a fresh process's first forward for the demo network). Default None.
        inferer: a MONAI inferer to use instead of building a ``SlidingWindowInferer`` from the arguments above.
        max_roi: ``inference.roi_size``: fit the window to each volume, whole axes up to this size (see
            :meth:`window`); ``None`` slides ``roi_size`` windows. Default None.
        multiple: fitted windows are multiples of it (``2 ** model.depth``). Default 16.
        autocast: run the network under ``torch.autocast`` on ``device`` (mixed precision; see
            :func:`inference_autocast`); the maps come back float32 either way. Default False.
        autocast_dtype: the autocast dtype (``device.amp_dtype``). Default ``torch.float16``.

    Example:
        >>> net = build_network({"base_filters": 4, "depth": 2}).eval()
        >>> out = Predictor(net, (16, 16, 16))(torch.zeros(1, 1, 20, 24, 18))
        >>> tuple(out["heatmap"].shape)
        (1, 1, 20, 24, 18)
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], Any],
        roi_size: Sequence[int],
        *,
        overlap: float = 0.25,
        sw_batch_size: int = 2,
        blend_mode: str = "gaussian",
        device: str | torch.device | None = None,
        tta: TTASettings | Mapping[str, Any] | bool | None = None,
        output_stride: int | None = None,
        inferer: Inferer | None = None,
        max_roi: Sequence[int] | None = None,
        multiple: int = 16,
        autocast: bool = False,
        autocast_dtype: torch.dtype = torch.float16,
    ) -> None:
        self.roi_size = tuple(int(v) for v in roi_size)
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ValueError(f"data.patch_size must be 3 positive voxel counts, got {list(roi_size)}")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"inference.overlap must be in [0, 1), got {overlap}")
        if int(sw_batch_size) < 1:
            raise ValueError(f"inference.sw_batch_size must be >= 1, got {sw_batch_size}")
        if blend_mode not in ("gaussian", "constant"):
            raise ValueError(f"inference.blend_mode must be 'gaussian' or 'constant', got {blend_mode!r}")
        self.network = network
        self.max_roi = None if max_roi is None else tuple(int(v) for v in max_roi)
        self.multiple = int(multiple)
        self.overlap, self.sw_batch_size, self.blend_mode = float(overlap), int(sw_batch_size), blend_mode
        self.device = resolve_device(device)
        self.autocast, self.autocast_dtype = bool(autocast), autocast_dtype
        self.tta = TTASettings.from_config(tta)
        if output_stride is None and isinstance(getattr(network, "output_stride", None), int):
            output_stride = network.output_stride  # PivotDetector (also scripted) states it: no measuring forward
        self.output_stride = output_stride
        # a measured stride is set on the windows in stride()
        self.windows = FittedWindowInferer(
            self.roi_size,
            self.max_roi,
            self.multiple,
            self.sw_batch_size,
            self.overlap,
            self.blend_mode,
            stride=output_stride or 1,
        )
        self.inferer = inferer or self.windows
        if self.output_stride is not None:
            self._check_alignment()

    @classmethod
    def from_config(
        cls,
        model: str | Path | nn.Module | Callable,
        data: Mapping[str, Any] | None = None,
        model_cfg: Mapping[str, Any] | None = None,
        inference: Mapping[str, Any] | None = None,
        *,
        device: str | torch.device | None = None,
        tta: bool | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        device_cfg: Mapping[str, Any] | None = None,
        amp: bool | None = None,
    ) -> Predictor:
        """Load ``model`` (see :func:`load_model`) and set the window from the config sections.

        ``data.patch_size`` is the smallest window and ``inference.roi_size`` the largest (``null``: always the
        patch); ``inference.overlap``, ``sw_batch_size``, ``blend_mode`` and ``tta`` the rest; fitted windows are
        multiples of ``2 ** model.depth``; mixed precision from the ``device`` section ``device_cfg`` (see
        :func:`inference_autocast`). Keyword arguments that are not ``None`` override the config (CLI flags).
        """
        data, inference = dict(data or {}), dict(inference or {})
        depth = int(dict(model_cfg or {}).get("depth", 4))
        dev = resolve_device(device)
        autocast, dtype = inference_autocast(dev, device_cfg, amp)
        return cls(
            load_model(model, model_cfg, dev),
            data.get("patch_size", (64, 64, 64)),
            overlap=inference.get("overlap", 0.25) if overlap is None else overlap,
            sw_batch_size=inference.get("sw_batch_size", 2) if sw_batch_size is None else sw_batch_size,
            blend_mode=inference.get("blend_mode", "gaussian"),
            device=dev,
            tta=TTASettings.from_config(inference.get("tta"), enabled=tta),
            max_roi=inference.get("roi_size"),
            multiple=2**depth,
            autocast=autocast,
            autocast_dtype=dtype,
        )

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast):
            out = _as_dict(self.network(x))
        return {k: v.float() for k, v in out.items()}

    def stride(self, in_channels: int = 1) -> int:
        """The network's output stride (measured once on a zero patch unless given)."""
        if self.output_stride is None:
            with torch.no_grad():
                out = self._forward(torch.zeros(1, in_channels, *self.roi_size, device=self.device))
            shape = tuple(out["heatmap"].shape[2:])
            ratios = {r / s for r, s in zip(self.roi_size, shape)}
            if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
                raise ValueError(
                    f"network maps {list(shape)} are not an integer fraction of the patch "
                    f"{list(self.roi_size)}; check data.patch_size against the model"
                )
            self.output_stride = int(next(iter(ratios)))
            self.windows.stride = self.output_stride
            logger.debug("measured output stride %d", self.output_stride)
            self._check_alignment()
        return int(self.output_stride)

    def _check_alignment(self) -> None:
        """Warn when sliding-window steps are not whole output voxels (blended maps then shift by a fraction)."""
        overlap = getattr(self.inferer, "overlap", None)
        if overlap is None or self.output_stride in (None, 1):
            return
        overlaps = overlap if isinstance(overlap, Sequence) else [overlap] * 3
        steps = [max(1, int(r * (1.0 - o))) for r, o in zip(self.roi_size, overlaps)]
        if any(step % self.output_stride for step in steps):
            logger.warning(
                "sliding-window steps %s (patch %s, overlap %s) are not multiples of the output stride %d; "
                "choose an overlap giving whole steps (e.g. 0.25 or 0.5)",
                steps,
                list(self.roi_size),
                overlap,
                self.output_stride,
            )

    def __call__(self, image: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Predict the maps of one volume.

        Args:
            image: (1, 1, X, Y, Z) (or (X, Y, Z)) processed image in [0, 1].

        Returns:
            dict of (1, 1, ceil(X/s), ceil(Y/s), ceil(Z/s)) float32 CPU tensors ``heatmap``, ``diameter`` (mm) and
            ``malignancy``, ``s`` = :meth:`stride`; averaged over the TTA passes when enabled.
        """
        x = torch.as_tensor(image, dtype=torch.float32)
        if x.dim() == 3:
            x = x[None, None]
        if x.dim() != 5:
            raise ValueError(f"Predictor expects a (1, 1, X, Y, Z) or (X, Y, Z) volume, got shape {list(x.shape)}")
        x = x.to(self.device)
        s = self.stride(x.shape[1])
        size = x.shape[2:]
        # padding happens at the far end, so the input index mapping stays unchanged: TTAInferer pads to a multiple of
        # the stride (flips invert exactly at low resolution), FittedWindowInferer to its window of each (possibly
        # rotated) input
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)  # MONAI
            out = _as_dict(TTAInferer(self.inferer, self.tta, s)(x, self._forward), "sliding-window output")
        crop = tuple(slice(0, math.ceil(n / s)) for n in size)
        return {k: v[(..., *crop)].cpu() for k, v in out.items()}

    def forward_bytes(self, size: Sequence[int] | None = None) -> int:
        """Estimated host memory of the two largest feature maps of one network call over a volume of ``size``.

        Those are the first level's (``features[0]`` channels at full resolution, two alive at once: 120 MB of the
        demo network's 123 MB of fresh pages on a 136 x 96 x 144 lung box), per window, for as many windows as one
        call takes. It sizes :class:`~pivot_monai.engines.prefault.HeapPrefault` in ``pivot infer``.

        Args:
            size: (X, Y, Z) voxels of the preprocessed volume; ``None``: the largest window the predictor runs
                (``max_roi``, else ``roi_size``), ``sw_batch_size`` of them.

        Returns:
            Bytes; 0 when the network does not state its ``features`` (ONNX, a TorchScript or module without them).
        """
        features = getattr(self.network, "features", None)
        if not isinstance(features, (tuple, list)) or not features:
            return 0
        if size is None:
            window, windows = self.max_roi or self.roi_size, self.sw_batch_size
        else:
            window = self.window(size)
            steps = [max(1, int(r * (1.0 - self.overlap))) for r in window]
            windows = math.prod(1 + max(0, math.ceil((n - r) / st)) for n, r, st in zip(size, window, steps))
        itemsize = 2 if self.autocast else 4
        return 2 * int(features[0]) * itemsize * math.prod(window) * min(self.sw_batch_size, windows)

    def window(self, size: Sequence[int]) -> tuple[int, int, int]:
        """The sliding window used for a (padded) volume of ``size``: ``roi_size``, or fitted under ``max_roi``.

        With ``max_roi`` the window comes from :func:`~pivot_monai.inference.inferers.fit_roi`: whole axes where
        they fit, else a few equal windows, never smaller than ``roi_size``.
        """
        return self.windows.window(size)  # type: ignore[return-value]
