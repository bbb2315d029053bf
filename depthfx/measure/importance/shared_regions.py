"""Run many entries' regions with the nodes they have in common computed once.

Pattern: the proxy's regions (:class:`~depthfx.measure.importance.regions.RegionFinder`) of
entries that start at the same block compute the same first convs from the same base values; they
part only where their activations or merge groups do. MobileNetV2's 1009 regions hold 107 G MACs
per image, of which 15 G are distinct.

Rewrite: every region node gets a structural key: what it computes (the module, function or
method and its constant arguments) from which keyed inputs. A region input is keyed by the
base value it reads; a module by identity, or, for a ``torch.nn`` built-in (whose forward its
type, ``repr``, parameters and buffers fix), by those, so the equal merged convs two entries
built separately are one. Nodes with equal keys form one step, run once per batch, in the order
the regions were given; each region's outputs are handed out as soon as its last step has run,
and every value is freed after its last reader.

Why: the regions are most of the proxy's time, and the values are computed by the same
kernels on the same inputs, so sharing them changes no bit of any result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import fx, nn

from depthfx.measure.importance.regions import Region

K = TypeVar("K", bound=Hashable)


@dataclass
class _Step:
    node: fx.Node
    owner: fx.GraphModule
    slots: dict[fx.Node, int]


class SharedRegions(Generic[K]):
    """``run(values)`` yields ``(key, outputs)`` of every region with a module, once, as soon
    as its outputs are computed, equal to ``region.module(*(values[n] for n in region.inputs))``.
    The outputs are freed when the caller asks for the next region: use them at once."""

    def __init__(self, regions: Mapping[K, Region]) -> None:
        self._slot_of: dict[Hashable, int] = {}
        self._inputs: dict[int, str] = {}
        self._steps: list[tuple[int, _Step]] = []
        self._position: dict[int, int] = {}
        self._results: dict[K, list[int]] = {}
        self._ready: dict[int, list[K]] = {}
        self._keep: list[Any] = []  # keeps the objects keyed by id alive
        self._tensor_keys: dict[int, Hashable] = {}
        self.nodes = 0
        for key, region in regions.items():
            if region.module is not None:
                self._add(key, region.module, region.inputs)
        last_use: dict[int, int] = {}
        for position, (_, step) in enumerate(self._steps):
            for arg in step.node.all_input_nodes:
                last_use[step.slots[arg]] = position
        for position, keys in self._ready.items():
            for key in keys:
                for slot in self._results[key]:
                    last_use[slot] = max(last_use.get(slot, -1), position)
        self._free_after: dict[int, list[int]] = {}
        for slot, position in last_use.items():
            self._free_after.setdefault(position, []).append(slot)

    def __len__(self) -> int:
        """Regions with a module (the ones ``run`` yields)."""
        return len(self._results)

    @property
    def steps(self) -> int:
        """Distinct nodes run per batch (``nodes``: all the regions' nodes)."""
        return len(self._steps)

    def run(self, values: Mapping[str, torch.Tensor]) -> Iterator[tuple[K, list[torch.Tensor]]]:
        env: dict[int, Any] = {slot: values[name] for slot, name in self._inputs.items()}
        for key in self._ready.get(-1, []):
            yield key, [env[s] for s in self._results[key]]
        for position, (slot, step) in enumerate(self._steps):
            env[slot] = _execute(step, env)
            for key in self._ready.get(position, []):
                yield key, [env[s] for s in self._results[key]]
            for dead in self._free_after.get(position, []):
                del env[dead]

    def _add(self, key: K, module: fx.GraphModule, inputs: list[str]) -> None:
        slots: dict[fx.Node, int] = {}
        ready = -1
        placeholders = iter(inputs)
        for node in module.graph.nodes:
            if node.op == "output":
                self._results[key] = [slots[n] for n in node.args[0]]
                continue
            if node.op == "placeholder":
                identity: Hashable = ("input", next(placeholders))
            else:
                identity = self._identity(module, node, slots)
            self.nodes += node.op != "placeholder"
            slot = self._slot_of.get(identity)
            if slot is None:
                slot = self._slot_of[identity] = len(self._slot_of)
                if node.op == "placeholder":
                    self._inputs[slot] = identity[1]
                else:
                    self._position[slot] = len(self._steps)
                    self._steps.append((slot, _Step(node, module, slots)))
            slots[node] = slot
            ready = max(ready, self._position.get(slot, -1))
        self._ready.setdefault(ready, []).append(key)

    def _identity(
        self, module: fx.GraphModule, node: fx.Node, slots: dict[fx.Node, int]
    ) -> Hashable:
        args = fx.node.map_arg((node.args, node.kwargs), lambda n: _SlotRef(slots[n]))
        if node.op == "call_module":
            target: Hashable = self._module_key(module.get_submodule(node.target))
        elif node.op == "get_attr":
            target = self._object_key(_attribute(module, node.target))
        else:
            target = node.target
        return node.op, target, repr(args)

    def _module_key(self, module: nn.Module) -> Hashable:
        if type(module).__module__.startswith("torch.nn.modules."):
            tensors = [*module.parameters(), *module.buffers()]
            return type(module), repr(module), tuple(self._tensor_key(t) for t in tensors)
        return self._object_key(module)

    def _object_key(self, obj: Any) -> Hashable:
        if isinstance(obj, torch.Tensor):
            return self._tensor_key(obj)
        self._keep.append(obj)
        return "object", id(obj)

    def _tensor_key(self, t: torch.Tensor) -> Hashable:
        """By content, hashed once per tensor object (unpadded convs share their parameters)."""
        if id(t) not in self._tensor_keys:
            self._keep.append(t)
            data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            digest = hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()
            self._tensor_keys[id(t)] = (str(t.dtype), tuple(t.shape), t.stride(), digest)
        return self._tensor_keys[id(t)]


@dataclass(frozen=True)
class _SlotRef:
    slot: int

    def __repr__(self) -> str:
        return f"%{self.slot}"


def _attribute(module: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def _execute(step: _Step, env: dict[int, Any]) -> Any:
    node = step.node
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[step.slots[n]])
    if node.op == "call_module":
        return step.owner.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "get_attr":
        return _attribute(step.owner, node.target)
    raise ValueError(f"unexpected node op {node.op!r} in a region")


__all__ = ["SharedRegions"]
