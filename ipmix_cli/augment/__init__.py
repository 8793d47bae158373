"""THE RECIPE: IPMix on batches of uint8 images, pure (no file I/O), seeded per sample.

``config`` (the hyper-parameters and presets), ``engine`` (the public batch API), ``recipe``
(the jitted per-sample recipe), ``patch`` (patch-level mixing), ``pixel_rules`` (pixel-level
mixing rules and the reference's uint8 wrap), ``pretransform`` (CIFAR crop, ImageNet
RandomResizedCrop), ``mixing_set`` (mixing pictures prepared for one output size) and ``ops/``
(the image-level ops). Every random draw is made by the recipe layer from counter-keyed streams
(``fractals.rng``); the ops and rules are pure functions of their parameters.
"""
