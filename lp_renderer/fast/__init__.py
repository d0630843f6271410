"""Inference rewrites of the renderer: the same maths with much less work, all opt-in.

:mod:`.folding` folds spectral norm and BatchNorm and swaps in the layers of :mod:`.spade` (merged and
sub-pixel SPADE convolutions), :mod:`.fft_conv` (W's 7x7x7 mask convolution by FFT) and :mod:`.nnpack`
(Winograd convolutions on the CPU); :class:`lp_renderer.Renderer` applies it with ``fold=True``.
:mod:`.cpu_memory` holds the allocator settings a front door may apply for the whole process. Importing any of
these modules changes nothing.
"""
