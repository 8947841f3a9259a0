"""The demo pipeline (``trl-safedistill demo``) and the sweep: sizes, stages, data, training, probes, report."""
