"""Image geometry and exact world (mm) <-> voxel conversion.

Conventions (ITK / LUNA16, used everywhere in PIVOT):

* Voxel indices are ``(i, j, k)`` in ITK order, i.e. ``(x, y, z)``; arrays are stored in that same axis order
  (``array[i, j, k]``), which is also what MONAI's readers return.
* World coordinates are millimetres in the scanner's LPS frame, as in LUNA16 ``annotations.csv``.
* ``direction`` is the 3x3 ITK direction matrix whose *columns* are the world directions of the index axes, so
  ``world = origin + direction @ (spacing * index)``. This holds for identity, flipped and oblique directions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Geometry", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _as_vec3(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,):
        raise ValueError(f"{name} must have 3 components (x, y, z), got {arr.tolist()}")
    return arr


@dataclass(frozen=True)
class Geometry:
    """Physical geometry of a 3D image.

    Args:
        origin: world position (mm) of voxel ``(0, 0, 0)``.
        spacing: voxel size (mm) along index axes ``(x, y, z)``; all positive.
        direction: 3x3 direction cosines, columns are index axes (ITK convention). Default identity.
        size: number of voxels along ``(x, y, z)``.

    Raises:
        ValueError: on non-positive spacing or a singular direction matrix.
    """

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    size: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", _as_vec3(self.origin, "origin"))
        object.__setattr__(self, "spacing", _as_vec3(self.spacing, "spacing"))
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if np.any(self.spacing <= 0) or not np.all(np.isfinite(self.spacing)):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing.tolist()}")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise ValueError(f"direction matrix is singular: {direction.tolist()}")

    # ------------------------------------------------------------------ conversions
    @property
    def index_to_world_matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix mapping ``(i, j, k, 1)`` to LPS world mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map continuous voxel indices ``(..., 3)`` in ``(x, y, z)`` order to world mm ``(..., 3)``."""
        idx = np.asarray(index, dtype=np.float64)
        return self.origin + (idx * self.spacing) @ self.direction.T

    def world_to_index(self, world: np.ndarray) -> np.ndarray:
        """Map world mm ``(..., 3)`` to continuous voxel indices ``(..., 3)`` (exact inverse of ``index_to_world``)."""
        w = np.asarray(world, dtype=np.float64)
        local = np.linalg.solve(self.direction, (w - self.origin).reshape(-1, 3).T).T
        return (local / self.spacing).reshape(w.shape)

    def contains_index(self, index: np.ndarray, margin: float = 0.5) -> np.ndarray:
        """Whether continuous indices lie inside the image (voxel centres ``0 .. size-1`` padded by ``margin``)."""
        idx = np.atleast_2d(np.asarray(index, dtype=np.float64))
        size = np.asarray(self.size, dtype=np.float64)
        return np.all((idx >= -margin) & (idx <= size - 1 + margin), axis=-1)

    # ------------------------------------------------------------------ derived geometries
    def crop(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> Geometry:
        """Geometry of the sub-volume ``[start, stop)`` (index order x, y, z)."""
        start_arr = np.asarray(start, dtype=np.float64)
        size = tuple(int(b - a) for a, b in zip(start, stop))
        return Geometry(self.index_to_world(start_arr), self.spacing, self.direction, size)

    def resampled(self, spacing: tuple[float, float, float]) -> Geometry:
        """Geometry covering the same physical extent at a new spacing, same origin and direction."""
        new_spacing = _as_vec3(spacing, "target spacing")
        extent = np.asarray(self.size, dtype=np.float64) * self.spacing
        size = tuple(int(max(1, np.round(e / s))) for e, s in zip(extent, new_spacing))
        return Geometry(self.origin, new_spacing, self.direction, size)

    def affine_ras(self) -> np.ndarray:
        """(4, 4) NIfTI-style affine: voxel index to RAS world mm (LPS flipped on x and y)."""
        return LPS_TO_RAS @ self.index_to_world_matrix

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin.tolist(),
            "spacing": self.spacing.tolist(),
            "direction": self.direction.tolist(),
            "size": list(self.size),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(d["origin"], d["spacing"], d.get("direction", np.eye(3)), tuple(d.get("size", (0, 0, 0))))

    @classmethod
    def from_sitk(cls, image: Any) -> Geometry:
        """Geometry of a ``SimpleITK.Image``."""
        return cls(
            image.GetOrigin(), image.GetSpacing(), np.asarray(image.GetDirection()).reshape(3, 3), image.GetSize()
        )

    def apply_to_sitk(self, image: Any) -> Any:
        """Copy origin, spacing and direction onto a ``SimpleITK.Image`` (in place) and return it."""
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return image
