"""Inference rewrites of the renderer: the same maths with much less work, all opt-in.

:mod:`.folding` folds spectral norm and BatchNorm and swaps in the layers of :mod:`.spade` (merged and
sub-pixel SPADE convolutions), :mod:`.fft_conv` (W's 7x7x7 mask convolution by FFT), :mod:`.nnpack`
(NNPACK's Winograd convolutions on the CPU) and :mod:`.winograd` (Winograd F(4x4, 3x3) on batched GEMMs, for
G's 3x3 layers with many channels on small maps); :class:`lp_renderer.Renderer` applies it with ``fold=True``.
:mod:`.autotune` times these kernels per layer shape (opt-in).
:mod:`.cpu_memory` holds the allocator settings a front door may apply for the whole process. Importing any of
these modules changes nothing.
"""
