"""Measuring a model: fidelity and perceptual metrics, ``gqtok eval`` (evaluate), the
matched-rate comparison with classical codecs (compare), RD plots and CPU cost estimates."""
