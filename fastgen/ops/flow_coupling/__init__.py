"""Normalizing flows' coupling transform (NICE, RealNVP, Glow) fused with its log-determinant,
and the bundle every flow layer returns."""
from fastgen.ops.flow_coupling.bundles import FlowOutput
from fastgen.ops.flow_coupling.op import affine_coupling

__all__ = ["FlowOutput", "affine_coupling"]
