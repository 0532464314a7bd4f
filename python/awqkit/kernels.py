"""Fused INT4 linear layers on the CPU: :class:`PackedLinear` and :func:`int4_matmul`.

``PackedLinear.from_awq`` repacks AutoAWQ "gemm"-format tensors once into the native layout
(see ``csrc/int4_linear/packed_layout.h``): output channels in blocks of 16; per block and group
the 16 fp16 scales and zeros, then the codes as 64-byte runs of 8 inputs x 16 channels
(one dword per channel, nibble i = input i: the AWQ interleave undone). ``lin(x)`` then
computes ``x @ dequantize(W).T + bias`` without materialising the dequantized weight:

* on AVX-512 VNNI, every M runs the "digits" product: each row of x is split, per
  weight group, into three int8 digits (24-bit block floating point with a power-of-two
  step: every input kept to within absmax(group) * 2^-23, float32's precision relative to
  the group's largest input; groups below ~1e-31 get the step 2^-126), the 4-bit codes meet
  the digits in exact int32 ``vpdpbusd`` dot products, the zero point is removed in int32,
  and a fixed float epilogue applies scales and step. 3 + 6 vector ops per 128 weights
  instead of ~20 for nibble -> float + FMA, so the kernel outruns DRAM; on Gaussian x its
  error is below the float GEMV's and about numpy's (integer sums are exact). ``kernel="gemv"``
  is the float GEMV (vpermps nibble -> float, one FMA per 16 weights and row), used on AVX2
  and scalar;
* where the CPU has AMX-INT8, from 6 rows the same digits product runs on tiles
  (``tdpbssd``: 16 rows x 64 digits times 64 inputs x 16 channels of code - zero per
  instruction, 32/16/8 inputs for group sizes that are not multiples of 64), with the same
  bits; ``awqkit.use_amx(False)`` / ``AWQKIT_AMX=0`` turns it off;
* ``kernel="gemm"`` (and, on AVX-512, M >= 16 for group sizes above 2^20, which the digits
  cannot hold) is the float GEMM: 256 x 32 tiles dequantized into an L1-resident fp32 panel
  (exactly ``dequantize()``'s values) and a 12 x 32 register-blocked FMA micro-kernel. The
  automatic choice does not depend on M otherwise, so a row's output has the same bits
  whatever batch it is in (prefill and decode agree);
* ``activation="int8"`` (opt-in) quantizes x per row and group to a single int8 and
  multiplies with the codes in integers (AVX-512 VNNI ``vpdpbusd``), less exact (its
  measured error is in benchmarks/README.md); ``activation="int16"`` (opt-in) runs the
  digits product with two digits (16-bit block floating point), a third fewer products
  than the exact three.

A decode call on a small layer is a few microseconds of work, so the call path is kept
short: the packed buffer and bias are checked once when the layer is built (PackedLinear is
a Python subclass of the native ``_core.Int4Linear``, which holds them), and ``lin(x)`` on one
aligned, C-contiguous float32 [M, K] array is taken by the native call slot straight to the
kernel, with no Python frame and no argument matching (on one thread no OpenMP region is
entered either; the call overhead measured is in benchmarks/README.md). Everything else
(keywords, out=, float16, N-D, bad input) goes through :func:`int4_matmul`'s checks. x is split on the calling thread
for a few rows, so the worker threads meet only once. :func:`contiguous_layers` puts a model's layers
back to back in call order, so decode streams them as one sequence.

OpenMP gives each thread a contiguous run of 16-channel output blocks (the GEMM: of
32-channel panels). Every output is computed by one thread in a fixed order, so results are identical for
any thread count; in the GEMV and digits kernels a row's result also does not depend on
the other rows. The scalar path (``awqkit.use_isa("scalar")``) is the specification; the SIMD
float paths agree with it within float32 rounding (the GEMV splits the zero point out of
the inner loop, and both sum in another order). The digits and int8 paths are integer
arithmetic plus a fixed float epilogue: every ISA returns their scalar reference's bits
(without AVX-512 VNNI, ``kernel="digits"`` and ``activation="int8"`` run that reference,
slowly).

NaN and Inf are not checked: in the float paths they propagate as IEEE arithmetic does. A
NaN in row m of x makes y[m, :] NaN (like numpy's ``x @ W.T``); an Inf gives Inf or NaN
there (NaN wherever it meets a zero code in the GEMV). In the digits and int8 paths a NaN
or Inf makes its whole row NaN.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _core

__all__ = ["PackedLinear", "contiguous_layers", "gemm", "int4_matmul", "stream_read_bandwidth"]

_PATHS = {"auto": 0, "gemv": 1, "gemm": 2, "digits": 3}
_ACTIVATIONS = {"float": 0, "int8": 1, "int16": 2}
_ALIGN = 64


def _aligned_empty(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    off = (-raw.ctypes.data) % _ALIGN
    return raw[off : off + nbytes]


def _read_only(buf: np.ndarray) -> np.ndarray:
    """A view of ``buf`` that cannot be written through: what a layer keeps and exposes of its weights."""
    view = buf.view()
    view.flags.writeable = False
    return view


def _aligned_copy(buf: np.ndarray) -> np.ndarray:
    """``buf`` itself if 64-byte aligned, else an aligned uint8 copy (cache-line aligned blocks stream best)."""
    if buf.ctypes.data % _ALIGN == 0:
        return buf
    out = _aligned_empty(buf.nbytes)
    out[...] = buf
    return out


class PackedLinear(_core.Int4Linear):
    """An INT4 ``Linear`` (out_features N, in_features K) in the fused-kernel layout.

    Build it with :meth:`from_awq`; call it on float32 ``x`` of shape ``[..., K]``:
    ``lin(x, out=None, kernel="auto", activation="float")`` is :func:`int4_matmul` ``(x, lin, ...)``.
    Picklable (its state is a few numpy arrays and ints); :attr:`packed` and
    :attr:`bias` are the buffers a torch module may hold.
    """

    # The native base (_core.Int4Linear) holds the checked buffer view and bias and is the
    # call slot: ``lin(x)`` on one float32 [M, K] array runs the kernel with no Python frame;
    # every other call comes back to :meth:`_call_slow`.
    __slots__ = ("_packed", "_bias", "_n", "_k", "_group_size")

    def __init__(self, packed: np.ndarray, out_features: int, in_features: int, group_size: int, bias=None):
        """Wrap an existing packed buffer (as returned by :attr:`packed`); prefer :meth:`from_awq`.

        The layer reads ``packed`` in place when it is 64-byte aligned (else an aligned copy):
        do not write to it afterwards. What the layer exposes of it is read-only."""
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1:
            raise TypeError("packed must be a 1-D uint8 numpy array (PackedLinear.packed)")
        n, k, gs = int(out_features), int(in_features), int(group_size)
        expected = _core.int4_packed_nbytes(n, k, gs) if n > 0 and k > 0 and gs > 0 and k % gs == 0 else -1
        if packed.size != expected:
            raise ValueError(f"packed has {packed.size} bytes, expected {expected} for N={n}, K={k}, group_size={gs}")
        self._init_native(_aligned_copy(np.ascontiguousarray(packed)), n, k, gs, _check_bias(bias, n))

    def _init_native(self, packed: np.ndarray, n: int, k: int, gs: int, bias) -> None:
        # The native part checks the buffer once; calls then only check x. pybind11 ignores a
        # second __init__ on one object, so a re-initialised layer (__init__ or __setstate__
        # called again) is rebound instead. The layer holds a read-only view, so nothing it
        # hands out (packed, pickles, contiguous_layers) can overwrite the weights it runs on.
        packed = _read_only(packed)
        if hasattr(self, "_packed"):
            self._rebind(packed, n, k, gs, bias)
        else:
            _core.Int4Linear.__init__(self, packed, n, k, gs, bias)
        self._n, self._k, self._group_size, self._bias, self._packed = n, k, gs, bias, packed

    def _set_packed(self, packed: np.ndarray) -> None:
        packed = _read_only(packed)
        self._rebind(packed, self._n, self._k, self._group_size, self._bias)
        self._packed = packed

    @classmethod
    def from_awq(cls, qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int, bias=None) -> PackedLinear:
        """Repack AutoAWQ gemm tensors (``qweight`` int32 [K, N/8], ``qzeros`` int32 [G, N/8],
        ``scales`` float16 [G, N]) once. ``group_size`` must divide K and be a multiple of 8
        (-1: one group per row); N must be a multiple of 8. ``bias`` float32 [N] or None."""
        for name, arr in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales)):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
            raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
        gs = int(group_size)
        if gs == -1 and qweight.ndim == 2:
            gs = qweight.shape[0]
        packed = _core.int4_pack_from_awq(qweight, qzeros, scales, gs)
        return cls(packed, qweight.shape[1] * 8, qweight.shape[0], gs, bias)

    def to_awq(self) -> dict[str, np.ndarray]:
        """The AutoAWQ tensors this layer was built from, bit for bit."""
        qweight, qzeros, scales = _core.int4_unpack_to_awq(self._packed, self._n, self._k, self._group_size)
        return {"qweight": qweight, "qzeros": qzeros, "scales": scales}

    @property
    def in_features(self) -> int:
        return self._k

    @property
    def out_features(self) -> int:
        return self._n

    @property
    def group_size(self) -> int:
        return self._group_size

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features), like the weight of a torch Linear."""
        return (self._n, self._k)

    @property
    def packed(self) -> np.ndarray:
        """The packed weight bytes (a read-only array)."""
        return self._packed

    @property
    def bias(self) -> np.ndarray | None:
        return self._bias

    @property
    def nbytes(self) -> int:
        """Bytes a forward pass streams: packed weights (codes + fp16 scales/zeros) plus bias."""
        return int(self._packed.nbytes + (self._bias.nbytes if self._bias is not None else 0))

    # __call__(x, out=None, kernel="auto", activation="float") is the native slot of the
    # base: ``x @ W.T + bias``, see :func:`int4_matmul`; ``x`` is used in place when it is
    # C-contiguous float32. Calls it does not take itself land here.
    def _call_slow(self, x, out: np.ndarray | None = None, kernel: str = "auto", activation: str = "float") -> np.ndarray:
        return int4_matmul(x, self, out=out, kernel=kernel, activation=activation)

    def __reduce__(self):
        # Through the constructor, so every pickle protocol works (0 and 1 would otherwise
        # stop at the native base, which has no Python-level state).
        return (type(self), (self._packed, self._n, self._k, self._group_size, self._bias))

    def __getstate__(self):
        return {"packed": self._packed, "N": self._n, "K": self._k, "group_size": self._group_size, "bias": self._bias}

    def __setstate__(self, state):  # pickles written before __reduce__ existed
        n = state["N"]
        self._init_native(_aligned_copy(state["packed"]), n, state["K"], state["group_size"], _check_bias(state["bias"], n))

    def __repr__(self) -> str:
        return (
            f"PackedLinear(in_features={self._k}, out_features={self._n}, group_size={self._group_size}, "
            f"bias={self._bias is not None})"
        )


def _check_bias(bias, n: int) -> np.ndarray | None:
    if bias is None:
        return None
    if not isinstance(bias, np.ndarray):
        raise TypeError(f"bias must be a numpy array or None, got {type(bias).__name__}")
    if bias.dtype not in (np.float32, np.float16):
        raise TypeError(f"bias must be float32 or float16, got {bias.dtype}")
    if bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
    return np.ascontiguousarray(bias, dtype=np.float32)


def contiguous_layers(layers) -> np.ndarray:
    """Move the packed weights of ``layers`` into one buffer, back to back in the given
    order, and return that buffer (the layers now hold views of it; their old buffers are
    freed once nothing else refers to them). Results do not change. The buffer is read-only:
    the layers run on it.

    Pass the layers in the order a forward pass calls them (``load_quantized`` does): a
    decode step then reads the weights as one ascending stream, and the hardware and
    software prefetches that run past the end of one layer fetch the start of the next
    instead of unrelated memory. The gain is small: in bench_gemm's decode rows it is within
    noise of copies allocated one by one ("scattered", benchmarks/README.md).
    """
    unique: dict[int, PackedLinear] = {}
    for lin in layers:
        if not isinstance(lin, PackedLinear):
            raise TypeError(f"contiguous_layers takes PackedLinear layers, got {type(lin).__name__}")
        unique.setdefault(id(lin), lin)
    # Every layer's size is a multiple of 64 bytes, so each slice stays 64-byte aligned.
    arena = _aligned_empty(sum(lin.packed.nbytes for lin in unique.values()))
    offset = 0
    for lin in unique.values():
        size = lin.packed.nbytes
        view = arena[offset : offset + size]
        view[...] = lin.packed
        lin._set_packed(view)
        offset += size
    arena.flags.writeable = False
    return arena


def int4_matmul(x, lin: PackedLinear, out: np.ndarray | None = None, kernel: str = "auto", activation: str = "float") -> np.ndarray:
    """``x @ dequantize(W).T + bias`` for ``x`` float32 (or float16) of shape ``[..., K]``.

    A C-contiguous float32 ``x`` is used in place (no copy); float16 is converted to a
    float32 copy first. Non-contiguous ``x`` is refused (pass ``np.ascontiguousarray(x)``).
    Returns float32 ``[..., N]`` (written into ``out`` [M, N] float32 when given; ``out`` must
    not share memory with ``x``, the bias or the layer's packed weights: ValueError).
    ``kernel`` forces ``"digits"``, ``"gemv"`` (the float GEMV) or ``"gemm"`` (the float panel
    GEMM) (tests and benchmarks; ``"auto"`` picks by M and ISA: on AVX-512 VNNI digits below 16 rows and, where AMX-INT8 is active, from 16
    too, else gemm; gemv elsewhere).

    ``activation="int8"`` (opt-in, for prefill): x is quantized per row and per weight
    group to int8 (symmetric, scale absmax/127) and multiplied with the 4-bit codes in
    integers (AVX-512 VNNI ``vpdpbusd``; the scalar reference on other ISAs). Faster, less
    exact: see benchmarks/README.md for its measured error. ``kernel`` does not apply.

    ``activation="int16"`` (opt-in, for prefill on CPUs without AMX): the digits product with
    two int8 digits per input instead of three, so x is kept per row and weight group to
    within absmax(group) * 2^-15 (16-bit block floating point) instead of float32's 2^-23;
    a third fewer integer products. Every ISA returns its scalar reference's bits (AVX-512
    VNNI natively). ``kernel`` does not apply.
    """
    if not isinstance(lin, PackedLinear):
        raise TypeError(f"int4_matmul takes a PackedLinear, got {type(lin).__name__}")
    if not hasattr(lin, "_packed"):
        raise TypeError("the PackedLinear was made with __new__ and its __init__ never ran; build it with PackedLinear.from_awq")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    if kernel not in _PATHS:
        raise ValueError(f"kernel must be one of {sorted(_PATHS)}, got {kernel!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    elif x.dtype != np.float32:
        raise TypeError(f"x must be float32 or float16, got {x.dtype} (convert explicitly, e.g. x.astype(np.float32))")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension [..., in_features]")
    if x.shape[-1] != lin.in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension, the layer expects in_features = {lin.in_features}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous; pass np.ascontiguousarray(x)")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, lin.in_features)  # a view: x is contiguous
    if x2.shape[0] == 0:
        raise ValueError(f"x has no rows (shape {x.shape})")
    y = lin._forward(x2, out, _PATHS[kernel], _ACTIVATIONS[activation])
    return y if out is not None else y.reshape(*lead, lin.out_features)


def gemm(x, lin: PackedLinear, out: np.ndarray | None = None, kernel: str = "auto", activation: str = "float") -> np.ndarray:
    """Deprecated name of :func:`int4_matmul` ("gemm" also names the AutoAWQ format and a
    kernel path); kept for compatibility, same arguments and results."""
    warnings.warn("awqkit.gemm is deprecated; use awqkit.int4_matmul", DeprecationWarning, stacklevel=2)
    return int4_matmul(x, lin, out=out, kernel=kernel, activation=activation)


def stream_read_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """The machine's streaming-read bandwidth in GB/s (median of ``repeats`` passes over a
    fresh ``nbytes`` buffer with the current thread count): the bound a decode GEMV can reach.

    Uses the native AVX-512 probe of the benchmark module ``awqkit._bench_probes``, which a
    wheel built with the defaults does not have (``make dev`` and ``make install`` build it:
    CMake option ``AWQKIT_BENCH_PROBES``). ``RuntimeError`` without it or without AVX-512.
    """
    import time

    try:
        from . import _bench_probes
    except ImportError as e:
        raise RuntimeError("the streaming-read probe is in awqkit._bench_probes, not built here "
                           "(build with -DAWQKIT_BENCH_PROBES=ON: make dev or make install)") from e
    if _core.detected_isa() != "avx512_vnni":
        raise RuntimeError(f"the streaming-read probe needs AVX-512 (this CPU's level: {_core.detected_isa()})")
    nbytes -= nbytes % _ALIGN
    buf = _aligned_copy(np.ones(nbytes, dtype=np.uint8))
    _bench_probes.probe_stream_read(buf)  # warm: fault the pages in
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        _bench_probes.probe_stream_read(buf)
        times.append(time.perf_counter() - t0)
    return nbytes / float(np.median(times)) / 1e9
