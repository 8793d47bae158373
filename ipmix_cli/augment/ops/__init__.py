"""IPMix's image-level operations (AugMix's list) as numba kernels with Pillow's semantics.

``point`` (per-pixel and histogram ops), ``geometry`` (bilinear affine, rotate), ``enhance``
(ImageEnhance's blends) hold the kernels; ``dispatch`` maps the recipe's op number and severity
level to one of them. A new op is a kernel in the module of its kind plus a line in
``dispatch``, and a bit-exactness test against Pillow in ``tests/test_image_ops.py``.
"""
