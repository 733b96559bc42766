"""What a user runs at home, not on Kaggle: ``eval`` (scoring with gold answers), ``profile`` (where a run's
time went, and the competition projected), ``calibrate`` (this engine's decode speed), ``quantize``/``verify``
(8-bit GPTQ on CPU), ``bundle`` (the offline wheelhouse). Each registers its own commands with the CLI.
"""
