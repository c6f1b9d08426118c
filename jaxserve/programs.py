"""The runner's compiled programs: built ahead of time, one per argument layout, looked up per step.

jax.jit compiles a program the first time it is called with a new layout, inside whichever step
needs it, and can only be warmed up by running it. Here each step function's programs are built
explicitly (lower, then compile) and kept in a table keyed by the layout of the arguments, so that
- warm-up builds every program without running any (no pools touched, nothing to wait for);
- a thread can build programs in the background while the engine thread serves: a step that
  needs a program being built waits for that build instead of starting a second one;
- programs come from an ExecutableStore when one is enabled (a restart deserializes them rather
  than tracing, lowering and compiling), and runners of one process with the same fingerprint
  share them in memory (the second engine of a test or a notebook builds nothing).

Programs are built from the abstract layout of their arguments (jax.ShapeDtypeStruct with the
sharding of each device array), so a build on another thread never touches arrays the engine
thread may be donating. What they close over is the runner's fingerprint.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable

import jax
import numpy as np

from jaxserve.executable_store import ExecutableStore

log = logging.getLogger(__name__)

# (fingerprint, step name, layout key) -> Compiled, for every runner of this process. Weak: a
# program lives as long as some runner holds it. Each XLA:CPU executable keeps about ten memory
# mappings; holding every program a long process ever built (a test session builds thousands)
# reached the kernel's map limit (vm.max_map_count, 65530), and the next mmap inside XLA crashed
# the process (segfault or abort while compiling or serializing).
_shared: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


class CompileCounter:
    """What a runner built: `count` programs it did not have before (compiled by XLA, loaded from
    the store or from JAX's persistent cache, or shared by another runner of the process), `keys`
    describing each in order."""

    def __init__(self):
        self.count = 0
        self.compiled = 0        # built by XLA here
        self.loaded = 0          # deserialized from the ExecutableStore
        self.seconds = 0.0       # spent obtaining programs (any of the three ways)
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def record(self, what: str, how: str, seconds: float) -> None:
        with self._lock:
            self.count += 1
            self.compiled += how == "compiled"
            self.loaded += how == "loaded"
            self.seconds += seconds
            self.keys.append(what)
        log.info("%s %s in %.2f s (program #%d)", how, what, seconds, self.count)


def _sharding(x):
    """The sharding a program is specialised on: a committed device array's (or a
    ShapeDtypeStruct's); None for host arrays and uncommitted device arrays, which go wherever
    the committed arguments are (as under jax.jit)."""
    if isinstance(x, jax.Array):
        return x.sharding if x.committed else None
    return getattr(x, "sharding", None)


def _leaf_layout(x) -> tuple:
    return (np.shape(x), getattr(x, "dtype", type(x)), _sharding(x))


def layout_key(args: tuple, static: dict) -> tuple:
    """What a program is specialised on: pytree structure (with static fields), each leaf's shape,
    dtype and (device arrays) sharding, and the static keyword arguments."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    return (tree, tuple(_leaf_layout(x) for x in leaves), tuple(sorted(static.items())))


class StepFunction:
    """One jitted step function and its programs, called like the function itself."""

    def __init__(self, name: str, jitted, describe: Callable[[tuple, dict], str],
                 counter: CompileCounter, fingerprint: str, store: ExecutableStore | None):
        self.name = name
        self._jitted = jitted
        self._describe = describe
        self._counter = counter
        self._fingerprint = fingerprint
        self._store = store
        self._programs: dict[tuple, Any] = {}
        self._building: dict[tuple, Future] = {}
        self._lock = threading.Lock()

    def __call__(self, *args, **static):
        return self.program(*args, **static)(*args)

    def program(self, *args, **static):
        """The compiled program for these arguments' layout, built (not run) if needed."""
        key = layout_key(args, static)
        program = self._programs.get(key)
        return program if program is not None else self._obtain(key, args, static)

    def _obtain(self, key: tuple, args: tuple, static: dict):
        with self._lock:
            if key in self._programs:
                return self._programs[key]
            future = self._building.get(key)
            mine = future is None
            if mine:
                future = self._building[key] = Future()
        if not mine:                   # another thread is building it: wait for that build
            return future.result()
        try:
            program = self._build(key, args, static)
        except BaseException as e:
            future.set_exception(e)
            with self._lock:
                del self._building[key]
            raise
        with self._lock:
            self._programs[key] = program
            del self._building[key]
        future.set_result(program)
        return program

    def _build(self, key: tuple, args: tuple, static: dict):
        t0 = time.perf_counter()
        shared_key = (self._fingerprint, self.name, key)
        with _shared_lock:
            program = _shared.get(shared_key)
        how = "shared"
        if program is None and self._store is not None:
            program = self._store.load(self.name, key)
            how = "loaded"
        if program is None:
            specs = jax.tree_util.tree_map(_spec, args)
            lowered = self._jitted.lower(*specs, **static)
            _jax_cache.hit = False
            program = lowered.compile()
            how = "compiled"
            if _jax_cache.hit:
                # An XLA:CPU executable that JAX's persistent cache loaded serializes without its
                # code ("Function ... not found" when the copy runs), so it is not stored.
                how = "from JAX's cache"
            elif self._store is not None:
                self._store.save(self.name, key, program)
        with _shared_lock:
            _shared.setdefault(shared_key, program)
        self._counter.record(self._describe(args, static), how, time.perf_counter() - t0)
        return program


_jax_cache = threading.local()   # .hit: the last compile on this thread came from JAX's cache


def _on_jax_event(event: str, *args, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":   # recorded on the compiling thread
        _jax_cache.hit = True


jax.monitoring.register_event_listener(_on_jax_event)


def _spec(x):
    """An argument's abstract value for lowering (committed device arrays keep their sharding)."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_sharding(x))
    return x
