"""Triton kernels (installed as ``fastgen.kernels``).

Kernels take tensors, pointers and strides and launch a grid; they know nothing of
autograd, modules or dispatch.  Import a submodule only when a kernel is needed: this
package imports Triton, which the CPU reference path never requires.
"""
