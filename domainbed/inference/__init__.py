"""Using a trained model after a sweep: the exported model file and what reads it.

- :mod:`.model_file`: the self-describing file ``export_model`` writes, and
  :func:`load_model`, which turns it into a module mapping images to logits;
- :mod:`.export`: which run and step a selection rule picks, and where its weights are;
- :mod:`.images`: image files and folders as inputs (transform, layouts, unreadable files);
- :mod:`.report`: per-domain metrics of a model (accuracy, per class, macro-F1, calibration),
  their table and reliability diagram;
- :mod:`.feature_drift`: how far a finished job's features moved from the pre-trained prior's
  on its held-out domain (linear CKA, mean squared distance).

Who uses it: the scripts export_model, evaluate, predict and feature_drift, ``domainbed.load_model`` and notebooks.
"""
