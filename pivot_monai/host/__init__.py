"""Everything specific to the machine PIVOT runs on, behind one object: :class:`HostTuning`.

The domain code (data, networks, inference) never calls the C library or private PyTorch operators; it asks the
:class:`HostTuning` of its run (``HostTuning.from_config(device_section, device)``) to

* :meth:`~HostTuning.apply` the process-wide settings (CPU threads, the heap keeping freed memory),
* :meth:`~HostTuning.prepare_network` an eval-mode network for inference on this host,
* run a forward inside :meth:`~HostTuning.forward_context`.

Nothing here changes process state on import. Each lever is kept only while it pays (>= 10 % of a fullsize scan's
end-to-end time or of its peak memory); the measurements are in ``benchmarks/README.md`` ("Host levers").
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HostTuning", "cpu_has_native_bf16", "forward_context", "passive_omp_threads"]

logger = logging.getLogger(__name__)


def passive_omp_threads() -> bool:
    """Have idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy.

    Call it before torch is imported (OpenMP reads the variable when it loads); the ``pivot`` command does.

    Returns:
        Whether the variable is PASSIVE now and can still take effect (torch not imported yet).
    """
    import sys

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE" and "torch" not in sys.modules


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (Intel AMX or AVX512-BF16), where bf16 autocast pays."""
    import torch

    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


@contextlib.contextmanager
def forward_context(device: Any) -> Iterator[None]:
    """The context a whole-volume inference forward on ``device`` runs in: oneDNN convolutions on an x86-64 CPU.

    On leaving it, a heap that keeps freed memory (``device.reuse_freed_memory``) hands it back if the host is low on
    memory (:func:`pivot_monai.host.allocator.release_freed_memory`): validation, mining and ``pivot infer`` run
    one volume after another in a long-lived process, and without the valve the kept memory grows with each new size.
    """
    from pivot_monai.host.allocator import release_freed_memory
    from pivot_monai.host.onednn import OneDNNConvolutions

    with OneDNNConvolutions() if getattr(device, "type", str(device)) == "cpu" else contextlib.nullcontext():
        yield
    release_freed_memory()


def _flag(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"device.{key} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class HostTuning:
    """The host levers of one run, from the guide's ``device`` section.

    Args:
        device: where the network runs (``torch.device`` or its name). Default CPU.
        num_threads: ``device.num_threads``: CPU threads for torch (``None``: torch's default).
        reuse_freed_memory: ``device.reuse_freed_memory`` (glibc): the heap keeps freed memory, so a forward's
            activations are not faulted in afresh each time. Default True.

    Example:
        >>> tuning = HostTuning.from_config({"reuse_freed_memory": False}, "cpu")
        >>> tuning.reuse_freed_memory, tuning.device
        (False, 'cpu')
    """

    device: Any = "cpu"
    num_threads: int | None = None
    reuse_freed_memory: bool = True

    @classmethod
    def from_config(cls, device_cfg: Mapping[str, Any] | None, device: Any = "cpu") -> HostTuning:
        """From the ``device`` section (missing keys take the defaults above).

        Raises:
            ValueError: a flag that is not a boolean, or a thread count below 1 (naming the key).
        """
        cfg = dict(device_cfg or {})
        threads = cfg.get("num_threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"device.num_threads must be a positive integer or null, got {threads!r}")
        return cls(
            device=device,
            num_threads=threads,
            reuse_freed_memory=_flag(cfg, "reuse_freed_memory", True),
        )

    @property
    def on_cpu(self) -> bool:
        """Whether the network runs on the CPU."""
        return getattr(self.device, "type", str(self.device).split(":")[0]) == "cpu"

    def apply(self) -> HostTuning:
        """Apply the process-wide settings (threads, the heap keeping freed memory); returns ``self``."""
        from pivot_monai.host.allocator import reuse_freed_memory

        if self.num_threads:
            import torch

            torch.set_num_threads(int(self.num_threads))
        if self.reuse_freed_memory:
            reuse_freed_memory()
        return self

    def prepare_network(self, network: Any) -> Any:
        """An eval-mode eager network ready for inference here: its batch norms folded into the convolutions.

        TorchScript, ONNX and networks in train mode are returned as they are.
        """
        import torch.nn as nn

        from pivot_monai.host.onednn import fuse_batch_norm

        if isinstance(network, nn.Module) and not network.training and not hasattr(network, "_c"):
            fuse_batch_norm(network)
        return network

    def forward_context(self) -> contextlib.AbstractContextManager:
        """The context the network's forwards run in (see :func:`forward_context`)."""
        return forward_context(self.device)

    def to_dict(self) -> dict[str, Any]:
        """The levers in effect, for reports."""
        return {
            "num_threads": self.num_threads,
            "reuse_freed_memory": self.reuse_freed_memory,
        }
