"""The one way to define a fastgen op.

An op family (``fastgen/ops/<family>/``) is a Triton kernel, a plain-PyTorch reference and a
short declaration made here::

    @define_op("gated_pixel_step", family="gated_pixel_step", tf32="matmul",
               mutates_args=("p_out", "x_out", "e_row"))
    def _gated_pixel_step_kernel(p_in: Tensor, ...) -> None:      # typed: the torch.library schema
        launch(..., precision=_gated_pixel_step_kernel.precision(p_in))

    def gated_pixel_step(p_in, ..., backend=None):                # the public function
        check(...)                                                # ValueError/TypeError naming the argument
        if _gated_pixel_step_kernel.backend(p_in, backend, unsupported=why_not(...)) == "reference":
            return reference.gated_pixel_step(...)
        _gated_pixel_step_kernel(p_in, ...)

What the declaration gives every op the same way:

- **Registration**: ``torch.ops.fastgen.<name>`` (``torch.library.custom_op``) with its
  ``mutates_args`` and a fake kernel for ``torch.compile`` (ops that only write their arguments
  in place need none: their fake returns nothing).
- **Backend choice with a reason** (``OpDefinition.backend``): CUDA -> Triton, CPU -> the
  reference, ``FASTGEN_BACKEND`` / ``backend=`` force one.  ``unsupported`` is the family's
  answer to "can this kernel take this input?" (a shape it cannot tile, say): the automatic
  choice then falls back to the reference and logs why; a forced Triton backend raises a
  ``ValueError`` with that reason.  Every family reports the limits of its kernels this way.
- **Eager fast path vs the registered op** (``OpDefinition.__call__``): plain eager calls run the
  kernel function directly -- the custom-op dispatcher cost ~0.15 ms of host time per call on
  the H100 host we measured, more than a sampling step's kernel -- while ``torch.compile``
  (which must see the op and its fake) and calls with autograd recording (the op must then
  refuse backward loudly, not drop the gradient) go through the registered op.
- **The TF32 rule** (``dot_precision``), one for all ops.
- **Autograd** (``define_autograd``): the eager ``autograd.Function`` and the registered
  ``register_autograd`` built from one forward/backward pair, so no op wires its gradient twice.
- **The autocast rule** (``Autocast``), declared once per op and applied both to its public
  function (plain eager calls never reach the dispatcher, so a dispatcher rule alone would
  miss them) and to its registered op (what ``torch.compile`` traces).
- **A registry** (``REGISTRY``) that ``fastgen info`` lists.
"""
import dataclasses
import functools
import inspect
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastgen.ops import _backend

REGISTRY: Dict[str, "OpDefinition"] = {}

TF32_FLAGS = {
    # the op replaces a convolution: follow nn.Conv2d / nn.Conv1d
    "conv": lambda: torch.backends.cudnn.allow_tf32,
    # the op replaces matmuls (the fused sampling steps are chains of small GEMMs)
    "matmul": lambda: torch.backends.cuda.matmul.allow_tf32,
}
TF32_FLAG_NAMES = {"conv": "torch.backends.cudnn.allow_tf32", "matmul": "torch.backends.cuda.matmul.allow_tf32"}


def dot_precision(dtype: torch.dtype, device: torch.device, tf32: str) -> str:
    """How a kernel's ``tl.dot`` multiplies fp32 operands: "tf32" (tensor cores, ~1e-3 relative
    error) or "ieee" (exact fp32 products).

    The rule, for every op: **an op uses TF32 exactly when the PyTorch operation it replaces
    would** -- on a CUDA device, with the flag PyTorch itself reads for that operation.  An op
    declares which operation it replaces (``tf32='conv'|'matmul'``): convolutions read
    ``torch.backends.cudnn.allow_tf32`` (PyTorch's default: on), matmul-shaped ops read
    ``torch.backends.cuda.matmul.allow_tf32`` (default: off).  Why not one flag for all: a
    drop-in conv that is less precise or more precise than ``nn.Conv2d`` under the same settings
    is not a drop-in, and a fused sampling step must draw what the unfused PyTorch layers it
    replaces would draw (the naive sampler runs matmuls), so each follows its own operation's
    switch.  The CPU interpreter always multiplies exactly.  16-bit operands use the tensor
    cores whatever the flags ("tf32" is Triton's default setting; it only affects fp32)."""
    if dtype != torch.float32:
        return "tf32"
    on_gpu = torch.device(device).type == "cuda"
    return "tf32" if on_gpu and TF32_FLAGS[tf32]() else "ieee"


# --------------------------------------------------------------------------------- autocast

AUTOCAST_RULES = ("lower", "keep")
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}
_LIBRARY = torch.library.Library("fastgen", "FRAGMENT")     # holds the ops' Autocast kernels


@dataclasses.dataclass(frozen=True)
class Autocast:
    """What an op does inside ``torch.autocast(device_type, dtype)`` -- one rule, declared once
    and given both to the op's public function (``@rule``, for plain eager calls, which skip
    the dispatcher) and to ``define_op(..., autocast=rule)`` (the registered op's Autocast
    kernel, what ``torch.compile`` traces).  Rules, after PyTorch's own autocast op lists:

    - ``'lower'`` -- like ``F.conv2d`` and ``torch.matmul``: the floating-point tensors named in
      ``cast`` that live on the autocast device are cast to the autocast dtype (float64 is left
      alone, as autocast does) and the op returns that dtype.  The casts are ordinary autograd
      ops, so float32 parameters receive float32 gradients.
    - ``'keep'`` -- like the elementwise ops autocast leaves alone: nothing is cast, the op runs
      in the dtypes it is given, by its own dtype rule.

    Under either rule the op body runs with autocast disabled, so its own math -- a reference's
    float32 ``F.conv2d``, a helper matmul beside a kernel -- is not lowered a second time."""
    rule: str
    cast: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.rule not in AUTOCAST_RULES:
            raise ValueError(f"autocast rule must be one of {AUTOCAST_RULES}, got {self.rule!r}")
        if self.rule == "keep" and self.cast:
            raise ValueError("the 'keep' autocast rule casts nothing; cast must be empty")

    def _positions(self, fn: Callable) -> Dict[str, int]:
        names = list(inspect.signature(fn).parameters)
        missing = [name for name in self.cast if name not in names]
        if missing:
            raise ValueError(f"autocast casts {missing}, which {fn.__name__} has no argument called")
        return {name: names.index(name) for name in self.cast}

    def _inputs(self, device_type: str, positions: Dict[str, int], args: tuple, kwargs: dict):
        """(args, kwargs) with the named tensors cast for the 'lower' rule (unchanged for 'keep')."""
        if not positions:
            return args, kwargs
        dtype = torch.get_autocast_dtype(device_type)

        def cast(value):
            eligible = (isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64
                        and value.device.type == device_type)
            return value.to(dtype) if eligible else value

        args, kwargs = list(args), dict(kwargs)
        for name, i in positions.items():
            if i < len(args):
                args[i] = cast(args[i])
            elif name in kwargs:
                kwargs[name] = cast(kwargs[name])
        return tuple(args), kwargs

    def __call__(self, fn: Callable) -> Callable:
        """Decorate an op's public function (its first argument the tensor that gives the device)."""
        positions = self._positions(fn)
        first = next(iter(inspect.signature(fn).parameters))

        @functools.wraps(fn)
        def public(*args, **kwargs):
            like = args[0] if args else kwargs.get(first)
            device_type = like.device.type if isinstance(like, Tensor) else None
            if device_type not in _AUTOCAST_KEYS or not torch.is_autocast_enabled(device_type):
                return fn(*args, **kwargs)                        # the common case: one check
            args, kwargs = self._inputs(device_type, positions, args, kwargs)
            with torch.autocast(device_type, enabled=False):
                return fn(*args, **kwargs)
        return public

    def register(self, name: str, registered: Callable, kernel: Callable) -> None:
        """Give ``torch.ops.fastgen.<name>`` this rule at the Autocast dispatch keys.  Not
        ``torch.library.register_autocast``: that casts to one dtype fixed at registration,
        while autocast's dtype is chosen per region (bf16 or fp16 on CUDA)."""
        positions = self._positions(kernel)
        for device_type, key in _AUTOCAST_KEYS.items():
            def autocast_kernel(*args, _device_type=device_type):
                args, _ = self._inputs(_device_type, positions, args, {})
                # autocast off: the body's own math stays as written, and the call below
                # does not come back to this kernel
                with torch.autocast(_device_type, enabled=False):
                    return registered(*args)
            _LIBRARY.impl(name, autocast_kernel, key)


def _requires_grad(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_requires_grad(v) for v in value)
    return isinstance(value, Tensor) and value.requires_grad


def _returns_nothing(*args, **kwargs):
    return None


@dataclasses.dataclass
class OpDefinition:
    """One op: ``torch.ops.fastgen.<name>``, the kernel function behind it, and its dispatch."""
    name: str
    family: str
    kernel: Callable            # the Triton path, without the dispatcher (the registered op's body)
    registered: Callable        # torch.ops.fastgen.<name>
    tf32: str                   # which PyTorch operation's TF32 flag it follows (``dot_precision``)
    summary: str                # one line for ``fastgen info``
    eager: Optional[Callable] = None   # set by ``define_autograd``: the eager autograd.Function
    autocast: Optional[Autocast] = None   # its rule under torch.autocast (None: none declared)

    def backend(self, like: Tensor, backend: Optional[str] = None, unsupported: Optional[str] = None) -> str:
        """'reference' or 'triton' for inputs like ``like`` (device and dtype).  ``unsupported``:
        why the Triton kernel cannot take these inputs (None if it can) -- the automatic choice
        then runs the reference; a forced Triton backend raises a ValueError naming the reason."""
        if unsupported is not None:
            if _backend.requested_backend(backend) == "triton":
                raise ValueError(f"{self.name} on Triton: {unsupported}")
            _backend.log_decision("%s: reference backend (the kernel cannot take this input: %s)",
                                  self.name, unsupported)
            return "reference"
        return _backend.choose_backend(self.name, like, backend)

    def precision(self, like: Tensor, dtype: Optional[torch.dtype] = None) -> str:
        """``dot_precision`` for operands of ``dtype`` (default ``like.dtype``) on ``like``'s device."""
        return dot_precision(dtype or like.dtype, like.device, self.tf32)

    def __call__(self, *args):
        """Run the Triton path: directly in plain eager calls; through the registered op while
        torch.compile traces or autograd records for an input (see the module docstring)."""
        if torch.compiler.is_compiling():
            return self.registered(*args)
        if self.eager is not None:                      # differentiable op: its autograd.Function
            return self.eager(*args)
        if torch.is_grad_enabled() and any(_requires_grad(a) for a in args):
            return self.registered(*args)
        return self.kernel(*args)


def define_op(name: str, *, family: str, tf32: str, mutates_args: Sequence[str] = (),
              fake: Optional[Callable] = None, autocast: Optional[Autocast] = None
              ) -> Callable[[Callable], OpDefinition]:
    """Decorator: register the typed kernel function as ``torch.ops.fastgen.<name>`` and return its
    ``OpDefinition``.  ``fake`` builds outputs for torch.compile (default: the op returns
    nothing, it only writes ``mutates_args`` in place); ``tf32``: 'conv' | 'matmul' (see
    ``dot_precision``); ``autocast``: the op's rule under torch.autocast (``Autocast``; the
    public function takes the same rule as its decorator).  Without one, the registered op gets
    its inputs as they are and runs with autocast still on."""
    if tf32 not in TF32_FLAGS:
        raise ValueError(f"tf32 must be one of {tuple(TF32_FLAGS)}, got {tf32!r}")

    def wrap(kernel: Callable) -> OpDefinition:
        registered = torch.library.custom_op(f"fastgen::{name}", mutates_args=tuple(mutates_args))(kernel)
        registered.register_fake(fake or _returns_nothing)
        summary = (kernel.__doc__ or "").strip().split("\n")[0]
        definition = OpDefinition(name, family, kernel, getattr(torch.ops.fastgen, name), tf32, summary,
                                  autocast=autocast)
        if autocast is not None:
            autocast.register(name, definition.registered, kernel)
        REGISTRY[name] = definition
        return definition
    return wrap


def define_autograd(op: OpDefinition, *, forward: Callable, backward: Callable, backward_op: Callable,
                    backward_fake: Callable, tensor_inputs: int, differentiable_backward: bool = False) -> None:
    """Give ``op`` a gradient, eager and registered, from one forward/backward pair.

    forward(*args) -> (output, saved): the kernel path, also returning the tensors backward
        needs (e.g. packed weights, a relaid-out input) so eager backward recomputes nothing;
    backward(grad, saved, args, needs) -> grads of the first ``tensor_inputs`` arguments
        (None where ``needs`` is False); ``grad`` is a tuple when the op returns several tensors;
    backward_op(grad, *args) -> [grads]: the same as a typed function (one grad argument per
        output, each possibly None for an output that was not used), registered as
        ``torch.ops.fastgen.<name>_backward`` (what torch.compile traces; it saves only the inputs
        and recomputes ``saved`` from them), with ``backward_fake`` its fake.
    Non-tensor arguments get no gradient.

    ``differentiable_backward``: the eager ``backward`` is built from differentiable ops (other
    ops with autograd), so a second derivative flows through it (``create_graph=True``: R1, path
    lengths).  Without it a backward run with ``create_graph=True`` raises: a kernel's gradients
    carry no graph, and PyTorch would otherwise return second derivatives with those terms
    silently missing."""
    backward_registered = torch.library.custom_op(f"fastgen::{op.name}_backward", mutates_args=())(backward_op)
    backward_registered.register_fake(backward_fake)
    backward_call = getattr(torch.ops.fastgen, f"{op.name}_backward")

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output, saved = forward(*args)
            ctx.save_for_backward(*saved)
            ctx.args = args
            return output

        @staticmethod
        def backward(ctx, *grad):
            if torch.is_grad_enabled() and not differentiable_backward:     # create_graph=True
                raise RuntimeError(f"fastgen.ops {op.name}: its Triton backward is not differentiable, so a second "
                                   f"derivative through it (create_graph=True) is not available; call the op with "
                                   f"backend='reference' (or FASTGEN_BACKEND=reference) for double backward")
            grad = grad if len(grad) > 1 else grad[0]
            grads = backward(grad, ctx.saved_tensors, ctx.args, ctx.needs_input_grad[:tensor_inputs])
            return (*grads, *([None] * (len(ctx.args) - tensor_inputs)))

    Eager.__name__ = Eager.__qualname__ = f"{op.name}_autograd"

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:tensor_inputs])
        ctx.args = inputs[tensor_inputs:]
        ctx.has_input = [t is not None for t in inputs[:tensor_inputs]]

    def registered_backward(ctx, *grad):
        grads = backward_call(*grad, *ctx.saved_tensors, *ctx.args)
        grads = [g if has else None for g, has in zip(grads, ctx.has_input)]
        return (*grads, *([None] * len(ctx.args)))

    torch.library.register_autograd(f"fastgen::{op.name}", registered_backward, setup_context=setup_context)
    op.eager = Eager.apply


def ops_by_family() -> Dict[str, Tuple[OpDefinition, ...]]:
    """The registry grouped by family (import ``fastgen.ops`` first: it declares every op)."""
    families: Dict[str, list] = {}
    for op in REGISTRY.values():
        families.setdefault(op.family, []).append(op)
    return {family: tuple(ops) for family, ops in sorted(families.items())}
