"""Building blocks of the RVC conversion pipeline (docs/rvc-reference.md §8), used by :mod:`rvc_ray.infer`.

``audio``      decoding uploads/files to 16 kHz mono, peak limiting, the 48 Hz high-pass
``chunking``   cutting long inputs at quiet points (x_pad / x_query / x_center / x_max)
``retrieval``  k-NN feature retrieval from a voice's FAISS index, NaN-free weighting
``envelope``   ``rms_mix_rate`` loudness-envelope mixing
"""
