"""training: models, datasets (built-in offline ones and local files), seeding, and the loop.

- :mod:`arturo_diag.training.models`: ``MLP``, ``SmallCNN``, the paper's ``FashionCNN`` and ``CifarCNN``, torchvision-style ResNets and
  ``build_model(name, in_channels=, num_classes=, image_size=)``.
- :mod:`arturo_diag.training.datasets`: ``ArrayDataset``, ``load_dataset(name, data_dir, seed=)``,
  ``batches`` and ``probe_batch``.
- :mod:`arturo_diag.training.seeding`: ``seed_everything`` and ``make_generator``.
"""
