"""Forward-mode differentiation in float64 numpy (dual numbers), for the catalog's numeric
reference gradients: a value carries its derivatives along P directions at once, and each
operation applies the elementary rule (product, quotient, chain through a scalar function).
It knows nothing of memory forms; the catalog writes the paper's forward pass with it."""

from __future__ import annotations

import numpy as np


class Dual:
    """`val` of shape S with `tan` of shape S + (P,): d val / d direction p in tan[..., p]."""

    __array_priority__ = 100  # numpy arrays defer to Dual's reflected operators

    def __init__(self, val, tan):
        self.val = np.asarray(val, dtype=np.float64)
        self.tan = np.asarray(tan, dtype=np.float64)

    @classmethod
    def constant(cls, val, directions: int) -> Dual:
        val = np.asarray(val, dtype=np.float64)
        return cls(val, np.zeros(val.shape + (directions,)))

    @classmethod
    def variables(cls, values: list[np.ndarray]) -> list[Dual]:
        """Each entry of each array is one direction, in order."""
        total = sum(v.size for v in values)
        out, start = [], 0
        for v in values:
            tan = np.zeros((v.size, total))
            tan[:, start:start + v.size] = np.eye(v.size)
            out.append(cls(v, tan.reshape(v.shape + (total,))))
            start += v.size
        return out

    @property
    def directions(self) -> int:
        return self.tan.shape[-1]

    def _lift(self, other) -> Dual:
        return other if isinstance(other, Dual) else Dual.constant(other, self.directions)

    def __add__(self, other):
        other = self._lift(other)
        return Dual(self.val + other.val, self.tan + other.tan)

    __radd__ = __add__

    def __neg__(self):
        return Dual(-self.val, -self.tan)

    def __sub__(self, other):
        return self + (-self._lift(other))

    def __rsub__(self, other):
        return self._lift(other) - self

    def __mul__(self, other):
        other = self._lift(other)
        return Dual(self.val * other.val,
                    self.tan * other.val[..., None] + self.val[..., None] * other.tan)

    __rmul__ = __mul__

    def __truediv__(self, other):
        other = self._lift(other)
        q = self.val / other.val
        return Dual(q, (self.tan - q[..., None] * other.tan) / other.val[..., None])

    def __rtruediv__(self, other):
        return self._lift(other) / self

    def __matmul__(self, other):
        other = self._lift(other)
        return Dual(self.val @ other.val,
                    np.einsum("ij,jkp->ikp", self.val, other.tan)
                    + np.einsum("ijp,jk->ikp", self.tan, other.val))

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    def apply(self, f, f_prime) -> Dual:
        """An elementwise scalar function with its derivative (chain rule)."""
        return Dual(f(self.val), f_prime(self.val)[..., None] * self.tan)

    def sqrt(self) -> Dual:
        root = np.sqrt(self.val)
        return Dual(root, self.tan / (2 * root)[..., None])

    def mean(self) -> Dual:
        return Dual(self.val.mean(), self.tan.reshape(-1, self.directions).mean(axis=0))

    def sum(self) -> Dual:
        return Dual(self.val.sum(), self.tan.reshape(-1, self.directions).sum(axis=0))
