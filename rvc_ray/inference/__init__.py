"""Voice conversion with a trained RVC voice (docs/rvc-reference.md §8), shared by ``rvc-ray convert`` and Serve.

``converter``  :class:`VoiceConverterPipeline` (one loaded voice) and ``convert_file`` (offline conversion)
``options``    per-request :class:`ConversionOptions`, the report and result, the input errors
``analysis``   the shared content encoders and F0 extractors
``chunking``   cutting long inputs at quiet points (x_pad / x_query / x_center / x_max)
``retrieval``  k-NN feature retrieval from a voice's FAISS index, NaN-free weighting
``envelope``   ``rms_mix_rate`` loudness-envelope mixing
``defaults``   which F0 method a conversion uses when the request names none

Decoding, resampling, the 48 Hz high-pass and peak limiting are :mod:`rvc_ray.audio`'s, the same code
preprocessing runs on the training data.
"""
