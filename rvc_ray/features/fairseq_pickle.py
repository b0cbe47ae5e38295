"""Reading fairseq HuBERT/ContentVec checkpoints without fairseq, and without running code from the file.

fairseq pickles its config as fairseq/omegaconf objects, so ``torch.load(weights_only=True)`` refuses those
files. :data:`FAIRSEQ_PICKLE` is a ``pickle_module`` for ``torch.load(weights_only=False)`` whose unpickler
resolves only data types: torch's own weights-only allowlist (tensors, storages, dtypes, ``OrderedDict``...),
numpy arrays and scalars, ``argparse.Namespace`` and a few builtin containers. Every other global becomes an
inert :class:`Placeholder` class that just records its constructor arguments and state, so a hostile file
cannot reach ``os.system``, ``subprocess`` or ``torch.hub`` through it: dotted global names (pickle protocol 4
``torch`` + ``os.system``) are refused, and ``getattr`` works only on placeholders.
"""

from __future__ import annotations

import pickle
import types
from typing import Any

__all__ = ["FAIRSEQ_PICKLE", "FairseqUnpickler", "Placeholder", "node_value", "parse_conv_feature_layers"]

_EXTRA_ALLOWED = frozenset(
    {
        "argparse.Namespace",
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "builtins.complex",
        "builtins.bytearray",
        "collections.OrderedDict",
        "collections.defaultdict",
        "_codecs.encode",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
    }
)


class Placeholder:
    """Stands in for a class of a package that is not installed (fairseq, omegaconf) or not allowed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _allowed_globals() -> frozenset[str]:
    from torch import _weights_only_unpickler

    try:
        torch_allowed = frozenset(_weights_only_unpickler._get_allowed_globals())
    except AttributeError:  # a torch without the helper: tensors still need these
        torch_allowed = frozenset({"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"})
    return torch_allowed | _EXTRA_ALLOWED


def _placeholder_getattr(owner: Any, name: str) -> Any:
    """``getattr`` for pickles (e.g. an enum member by name), limited to placeholders."""
    if isinstance(owner, Placeholder) or (isinstance(owner, type) and issubclass(owner, Placeholder)):
        return type(str(name), (Placeholder,), {"__module__": getattr(owner, "__module__", "placeholder")})
    raise pickle.UnpicklingError(f"refusing getattr({type(owner).__name__}, {name!r}) in a fairseq checkpoint")


class FairseqUnpickler(pickle.Unpickler):
    """Resolves only data types; everything else is a :class:`Placeholder` (see the module docstring)."""

    _allowed: frozenset[str] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if "." in name:
            raise pickle.UnpicklingError(f"refusing the dotted global {module}:{name} in a fairseq checkpoint")
        if module == "builtins" and name == "getattr":
            return _placeholder_getattr
        if FairseqUnpickler._allowed is None:
            FairseqUnpickler._allowed = _allowed_globals()
        if f"{module}.{name}" in FairseqUnpickler._allowed:
            return super().find_class(module, name)
        return type(name, (Placeholder,), {"__module__": module})


FAIRSEQ_PICKLE = types.ModuleType("rvc_ray_fairseq_pickle")
FAIRSEQ_PICKLE.Unpickler = FairseqUnpickler  # type: ignore[attr-defined]
FAIRSEQ_PICKLE.load = lambda file, **kwargs: FairseqUnpickler(file, **kwargs).load()  # type: ignore[attr-defined]
FAIRSEQ_PICKLE.__name__ = "pickle"


def node_value(value: Any) -> Any:
    """The value of an omegaconf node read as a :class:`Placeholder` (its ``_val``), else ``value``."""
    state = getattr(value, "state", None) if isinstance(value, Placeholder) else None
    if isinstance(state, dict) and "_val" in state:
        return state["_val"]
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict) and "_val" in state[1]:
        return state[1]["_val"]  # (dict_state, slots_state) form
    return value


MAX_CONV_LAYERS = 64


def parse_conv_feature_layers(spec: str) -> list[tuple[int, ...]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``.

    fairseq ``eval``s it; this reads only integer tuples in lists joined by ``+`` and ``* <int>``, so a
    checkpoint cannot run code through it.

    Raises:
        ValueError: anything else, or more than :data:`MAX_CONV_LAYERS` layers.
    """
    import ast

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(evaluate(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [evaluate(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult) and isinstance(left, list) and type(right) is int:
                if not 0 <= right <= MAX_CONV_LAYERS:
                    raise ValueError(f"conv_feature_layers repeats a list {right} times")
                return left * right
        raise ValueError(f"conv_feature_layers may only hold integer tuples, lists, + and *; found {ast.dump(node)[:80]}")

    try:
        tree = ast.parse(spec, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"conv_feature_layers {spec!r} is not an expression: {exc}") from None
    layers = evaluate(tree.body)
    if not isinstance(layers, list) or not layers or len(layers) > MAX_CONV_LAYERS:
        raise ValueError(f"conv_feature_layers {spec!r} must give 1 to {MAX_CONV_LAYERS} layers")
    if not all(isinstance(layer, tuple) and len(layer) == 3 for layer in layers):
        raise ValueError(f"conv_feature_layers {spec!r}: every layer is a (dim, kernel, stride) tuple")
    return layers
