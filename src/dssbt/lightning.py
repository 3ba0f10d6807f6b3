"""PyTorch Lightning checkpoints read without running code from the file; OmegaConf hyper-parameters as plain data.

state-spaces/s4's training script saves ``self.hparams`` (an OmegaConf ``DictConfig``) under ``hyper_parameters``
and its class under ``hparams_type``. Unpickling those normally imports omegaconf and runs its ``__setstate__``;
``torch.load(weights_only=True)`` refuses them ("Unsupported global: omegaconf.dictconfig.DictConfig"). Here the
file is read with ``weights_only=True`` and an allowlist of inert stand-in classes registered under OmegaConf's
names (containers, nodes, metadata), ``typing.Any`` / ``Dict`` / ``List``, ``builtins.dict`` / ``list`` / ``int``
(class references in the metadata) and ``collections.defaultdict``: nothing from the file is executed and omegaconf
need not be installed. ``to_plain`` turns the stand-ins into dicts and lists, resolving plain references such as
``${..dropout}`` or ``${model.d_model}``; any other interpolation (a resolver such as ``${oc.select:...}``) is kept
as its string. Structured configs (a user dataclass as ``object_type``) and enum nodes name a class that is not on
the allowlist: they are refused with its name.

Writing (``save_checkpoint``) keeps a stand-in class (``hparams_type``) pickled under OmegaConf's own name, so that
Lightning's ``load_from_checkpoint`` still turns the (now plain) hyper-parameters into a ``DictConfig``.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import typing
from typing import Any

import torch

from .io import atomic_path


class _Inert:
    """State restored by ``__dict__.update`` (torch's weights-only BUILD); no method of OmegaConf's runs."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (state, slotstate)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state)


def _standin(module: str, name: str, kind: str) -> type:
    cls = type(name, (_Inert,), {"_omegaconf": f"{module}.{name}", "_kind": kind, "__module__": __name__})
    return cls


_NODES = (
    "ValueNode",
    "AnyNode",
    "StringNode",
    "IntegerNode",
    "FloatNode",
    "BooleanNode",
    "BytesNode",
    "PathNode",
    "InterpolationResultNode",
)
STANDINS: dict[str, type] = {
    "omegaconf.dictconfig.DictConfig": _standin("omegaconf.dictconfig", "DictConfig", "dict"),
    "omegaconf.listconfig.ListConfig": _standin("omegaconf.listconfig", "ListConfig", "list"),
    "omegaconf.base.UnionNode": _standin("omegaconf.base", "UnionNode", "union"),
    "omegaconf.base.Metadata": _standin("omegaconf.base", "Metadata", "meta"),
    "omegaconf.base.ContainerMetadata": _standin("omegaconf.base", "ContainerMetadata", "meta"),
    **{f"omegaconf.nodes.{n}": _standin("omegaconf.nodes", n, "value") for n in _NODES},
}
# class references inside OmegaConf's metadata (object_type=dict, key_type=int, ...) and its resolver cache
_PLAIN_GLOBALS = [
    (dict, "builtins.dict"),
    (list, "builtins.list"),
    (int, "builtins.int"),
    (float, "builtins.float"),
    (str, "builtins.str"),
    (bool, "builtins.bool"),
    (typing.Any, "typing.Any"),
    (typing.Dict, "typing.Dict"),  # noqa: UP006 (OmegaConf's ref_type of a dict-typed node)
    (typing.List, "typing.List"),  # noqa: UP006
    (collections.defaultdict, "collections.defaultdict"),
]
SAFE_GLOBALS = [(cls, name) for name, cls in STANDINS.items()] + _PLAIN_GLOBALS


def load_checkpoint(path: str | os.PathLike) -> Any:
    """The object in a torch file, read with ``weights_only=True`` and the OmegaConf stand-ins allowed.

    ValueError naming the file and, for a class outside the allowlist, that class (nothing is imported for it)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, KeyError) as e:
        msg = str(e)
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
        if m:
            raise ValueError(
                f"{path}: the file references {m.group(1)}, which dssbt does not load: it reads checkpoints without "
                "running code from them (tensors, plain containers, and OmegaConf hyper-parameters as plain data)"
            ) from None
        raise ValueError(f"{path}: not a readable torch file ({type(e).__name__}: {msg.splitlines()[-1]})") from None


_REF = re.compile(r"^\$\{(\.*)([\w.\-]*)\}$")


def to_plain(obj: Any) -> Any:
    """OmegaConf stand-ins (and dicts, lists, tuples holding them) as plain dicts and lists, plain references
    (``${a.b}`` from the root, ``${.x}`` / ``${..x}`` relative) resolved. Other values are returned as they are."""
    tree = _plain(obj)
    return _resolve(tree, tree, [], 0)


def _plain(obj: Any) -> Any:
    kind = getattr(type(obj), "_kind", None)
    if kind in ("dict", "list", "union"):
        content = obj.__dict__.get("_content")
        if isinstance(content, dict):
            return {k: _plain(v) for k, v in content.items()}
        if isinstance(content, list):
            return [_plain(v) for v in content]
        return _plain(content)  # None, "???" (missing) or an interpolation string; a UnionNode's child node
    if kind == "value":
        return _plain(obj.__dict__.get("_val"))
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _lookup(root: Any, parents: list[Any], dots: str, path: str) -> tuple[bool, Any]:
    if dots:  # "." = the container holding the value, each further dot one level up
        up = len(dots) - 1
        if up >= len(parents):
            return False, None
        node = parents[len(parents) - 1 - up]
    else:
        node = root
    for part in path.split(".") if path else []:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _resolve(node: Any, root: Any, parents: list[Any], depth: int) -> Any:
    if isinstance(node, dict):
        return {k: _resolve(v, root, [*parents, node], depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, [*parents, node], depth) for v in node]
    if isinstance(node, str) and depth < 20:
        m = _REF.match(node)
        if m:
            ok, value = _lookup(root, parents, m.group(1), m.group(2))
            if ok and not isinstance(value, dict | list):
                return _resolve(value, root, parents, depth + 1)
    return node


def walk(tree: Any, path: str = "") -> typing.Iterator[tuple[str, dict[str, Any]]]:
    """Every dict in a plain tree with its dotted path ("" for the root; list items by index)."""
    if isinstance(tree, dict):
        yield path, tree
        for k, v in tree.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from walk(v, f"{path}.{i}" if path else str(i))


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, writing a stand-in class as a reference to OmegaConf's class of that name."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = getattr(obj, "_omegaconf", None) if isinstance(obj, type) and issubclass(obj, _Inert) else None
        if target is None:
            return super().save_global(obj, name)
        module, _, qualname = target.rpartition(".")
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


class _PickleModule:
    """What ``torch.save(pickle_module=...)`` needs of a pickle module."""

    Pickler = _Pickler
    Unpickler = pickle.Unpickler
    load = staticmethod(pickle.load)


def save_checkpoint(payload: Any, path: str | os.PathLike) -> None:
    """``torch.save`` of ``payload`` to ``path``, atomically; a stand-in class in it (``hparams_type``) is written
    as OmegaConf's class of the same name. Raises ValueError for a stand-in instance (convert with ``to_plain``)."""
    bad = [k for k, v in (payload.items() if isinstance(payload, dict) else []) if isinstance(v, _Inert)]
    if bad:
        raise ValueError(f"entries {bad} still hold OmegaConf stand-ins: convert them with to_plain first")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp, pickle_module=_PickleModule)


def omegaconf_name(obj: Any) -> str | None:
    """OmegaConf's name of a stand-in class or instance (e.g. omegaconf.dictconfig.DictConfig), else None."""
    return getattr(obj, "_omegaconf", None)


__all__ = ["SAFE_GLOBALS", "STANDINS", "load_checkpoint", "omegaconf_name", "save_checkpoint", "to_plain", "walk"]
